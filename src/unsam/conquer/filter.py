"""Conquer-mask filtering: coverage against the divide mask, per-region NMS, pasting (spec §3.3).

All masks here live in crop coordinates (the divide mask's bounding box); only
:func:`paste_mask` builds a full-image mask, when a caller needs one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from unsam.masks import greedy_nms, mask_iou

__all__ = ["coverage", "windowed_nms", "paste_mask"]


def coverage(
    masks: npt.NDArray[np.bool_], region: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Fraction of each mask that lies inside ``region``: ``|m ∩ R| / |m|``.

    Args:
        masks: (N, h, w) bool candidate masks (crop grid).
        region: (h, w) bool, e.g. the divide mask cropped to the same box.

    Returns:
        (N,) float64 in [0, 1]; 0 for an empty mask (so it never passes a ``> thresh`` filter).
    """
    masks = np.asarray(masks, dtype=bool)
    region = np.asarray(region, dtype=bool)
    if masks.ndim != 3 or region.shape != masks.shape[1:]:
        raise ValueError(
            f"masks must be (N, h, w) and region (h, w); got {masks.shape} and {region.shape}"
        )
    flat = masks.reshape(masks.shape[0], -1)
    areas = np.count_nonzero(flat, axis=1)
    inside = np.count_nonzero(flat & region.reshape(1, -1), axis=1)
    return np.where(areas > 0, inside / np.maximum(areas, 1), 0.0)


def windowed_nms(
    masks: npt.NDArray[np.bool_]
    | Sequence[npt.NDArray[np.bool_] | Callable[[], npt.NDArray[np.bool_]]],
    areas_or_scores: Sequence[float] | npt.NDArray[np.floating] | npt.NDArray[np.integer],
    iou_thresh: float = 0.9,
    window: int = 5,
    *,
    full_nms: bool = False,
    areas: Sequence[int] | None = None,
) -> list[int]:
    """Greedy mask NMS with the original conquer window rule (spec §3.3; ``NMS()``).

    Masks are ranked by descending score (stable: ties keep input order; the original ranks by
    area). Walking the ranking, every mask not yet removed is kept and removes the masks at the
    next ``window - 1`` ranking positions whose IoU with it is ``> iou_thresh`` (positions, not
    kept masks: the original's ``range(i + 1, i + step)``). So duplicates further apart in the
    ranking survive (spec §10 bug 17); ``full_nms=True`` compares with all later positions.

    IoU is exact (float64) and computed lazily per pair instead of as an (N, N) float32 matrix
    over (N, h*w) copies, so large crops with many candidates stay cheap. Pairs whose area ratio
    already bounds the IoU to ``<= iou_thresh`` (``IoU <= min(area) / max(area)``) are skipped
    without touching the pixels.

    Args:
        masks: (N, h, w) bool array, or N (h, w) bool arrays on one grid, or N functions
            returning them: those are called only when a pixel comparison is needed and at most
            ``window + 1`` of their masks are held at once (``full_nms``: two).
        areas_or_scores: (N,) ranking scores, usually the mask areas.
        iou_thresh: a pair with IoU strictly above this is a duplicate.
        window: window size, >= 2 (``NMS-step`` of the original; 5 compares 4 followers).
        full_nms: compare every pair (classical greedy NMS); ``window`` is then ignored.
        areas: (N,) pixel counts of the masks when known (saves building lazy masks to count).

    Returns:
        Indices of the kept masks, in ranking order (highest score first).
    """
    lazy = len(masks) > 0 and callable(masks[0])
    items = list(masks) if lazy else [np.asarray(m, dtype=bool) for m in masks]
    scores = areas_or_scores
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    s = np.asarray(scores, dtype=np.float64)
    n = len(items)
    if s.shape != (n,):
        raise ValueError(f"areas_or_scores must have one value per mask ({n}), got shape {s.shape}")
    if n and not lazy and any(m.shape != items[0].shape or m.ndim != 2 for m in items):
        raise ValueError("masks must all be (h, w) arrays on the same grid")
    if not full_nms and window < 2:
        raise ValueError(f"window must be >= 2 (the original uses NMS-step 5), got {window}")
    if not 0.0 <= iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in [0, 1], got {iou_thresh}")
    cache: OrderedDict[int, npt.NDArray[np.bool_]] = OrderedDict()  # least recently used first
    limit = 2 if full_nms else window + 1

    def get(k: int) -> npt.NDArray[np.bool_]:
        if not lazy:
            return items[k]
        if k in cache:
            cache.move_to_end(k)
        else:
            if len(cache) >= limit:
                cache.popitem(last=False)
            cache[k] = np.asarray(items[k](), dtype=bool)
        return cache[k]

    if areas is None:
        areas = [int(np.count_nonzero(get(k))) for k in range(n)]
    elif len(areas) != n:
        raise ValueError(f"areas must have one value per mask ({n}), got {len(areas)}")

    def pair_iou(i: int, j: int) -> float:
        small, large = sorted((areas[i], areas[j]))  # type: ignore[index]
        if large == 0 or small / large <= iou_thresh:
            return (
                0.0  # IoU <= small / large <= iou_thresh: cannot be a duplicate, pixels untouched
            )
        return mask_iou(get(i), get(j))

    return greedy_nms(s, pair_iou, iou_thresh, window=None if full_nms else window)


def paste_mask(
    crop_mask: npt.NDArray[np.bool_], box_xyxy: tuple[int, int, int, int], image_hw: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """Place a crop-grid mask into an all-False (H, W) canvas.

    Args:
        crop_mask: (y1 - y0, x1 - x0) bool.
        box_xyxy: (x0, y0, x1, y1) in image pixels, x1/y1 exclusive, inside the image.
        image_hw: (H, W) of the canvas.

    Returns:
        (H, W) bool.
    """
    x0, y0, x1, y1 = (int(v) for v in box_xyxy)
    h, w = int(image_hw[0]), int(image_hw[1])
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(
            f"box {box_xyxy} (x0, y0, x1, y1; exclusive x1, y1) is not inside an image of (H, W) = "
            f"{(h, w)}"
        )
    crop_mask = np.asarray(crop_mask, dtype=bool)
    if crop_mask.shape != (y1 - y0, x1 - x0):
        raise ValueError(
            f"crop_mask has shape {crop_mask.shape}, but box {box_xyxy} needs {(y1 - y0, x1 - x0)}"
        )
    canvas = np.zeros((h, w), dtype=bool)
    canvas[y0:y1, x0:x1] = crop_mask
    return canvas
