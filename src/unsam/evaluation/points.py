"""Interactive (point-prompt) evaluation of the promptable model (PROMPTABLE.md §5, UNSAM_SPEC
§8.2).

Protocol (the original's ``evaluate_interactive`` + ``interactive_evaluation``):

1. Ground truth: every **non-crowd** mask of an image (COCO instances JSON, or COCO panoptic
   PNG + JSON with things and stuff). The image is resized with detectron2's
   ``ResizeShortestEdge(800, 1333)`` (PIL bilinear) and the masks with nearest neighbour; every
   IoU is computed at that resolution (:class:`PointEvalConfig` ``short_side=None`` keeps the
   original resolution).
2. Click: one positive click per GT mask at the pixel deepest inside it by kornia's approximate
   distance transform (:func:`distance_transform`, kernel 3, h = 0.35), the first maximum in
   row-major order (:func:`click_point`). *Deliberate difference:* values within
   :data:`CLICK_TIE_RTOL` ``* max(1, max)`` of the maximum count as tied. The transform's values
   tie only up to float rounding, which depends on the CPU's kernels, so the original's exact
   argmax (which has the same ambiguity) can click a different pixel on another machine; with the
   tolerance the click is the same everywhere.
3. The model returns 6 masks and 6 predicted IoUs for the click. **Point(Max)** is the IoU of the
   mask with the highest predicted IoU (first maximum on ties); **Point(Oracle)** the best IoU
   of the 6. mIoU is the mean over all GT masks of the dataset (per instance, not per image),
   also split by GT area (COCO small < 32², medium < 96², large; area in pixels at the
   *original* resolution, as COCO's ``area``).
4. NoC@t (t in 0.5, 0.8, 0.85, 0.9): clicks needed until the Max mask reaches IoU >= t, or
   ``max_noc`` (20) when it never does, averaged over GT masks. With the original's single click
   (``max_clicks=1``) this is exactly its definition: 1 if IoU >= t else 20 (``ieval:108-116``).
   With ``max_clicks > 1`` the usual iterative protocol (RITM) runs: each next click goes to the
   deepest point (same distance transform) of the false-negative or false-positive region of the
   current Max mask, whichever is deeper (positive resp. negative label; positive on ties, with
   the same tolerance). The
   loop stops early when the IoU reaches the largest threshold or the mask is perfect (NoC does
   not depend on later clicks). The UnSAM promptable model (Semantic-SAM) takes one click per
   object, so the CLI uses ``max_clicks=1``; the iterative mode is for predictors that accept
   several clicks of one object.

The model is reached through a plain callable (:data:`PredictFn`), so every metric is testable
without it.

Length: the protocol's steps (ground truth, click, IoUs, summary, readers of the two ground-truth
formats) are one procedure, kept in one file so that it reads in order against the original.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image

from unsam.config import param
from unsam.io.coco import MaskFileError, load_coco_dataset
from unsam.records import ImageRecord, MaskRecord, decode_rle, encode_mask

__all__ = [
    "CLICK_TIE_RTOL",
    "SIZE_RANGES",
    "PointEvalConfig",
    "PredictFn",
    "SegmentResult",
    "click_point",
    "first_maximum",
    "distance_transform",
    "evaluate_image",
    "evaluate_points",
    "evaluate_segment",
    "format_point_metrics",
    "is_panoptic_json",
    "load_instances_gt",
    "load_panoptic_gt",
    "mask_ious",
    "resize_shortest_edge",
    "rgb_to_id",
    "summarize_points",
]

logger = logging.getLogger(__name__)

#: ``predict(image, points, labels) -> (masks, predicted_iou)``.
#: image (H, W, 3) uint8 RGB; points (n, 2) float64 pixel (x, y) of all clicks so far on one
#: object; labels (n,) int64, 1 = positive, 0 = negative. Returns masks (K, H, W) bool (K = 6 for
#: the promptable model) and predicted_iou (K,) float.
PredictFn = Callable[
    [npt.NDArray[np.uint8], npt.NDArray[np.float64], npt.NDArray[np.int64]],
    tuple[npt.NDArray[np.bool_], npt.NDArray[np.floating[Any]]],
]

#: COCO area ranges in pixels: small < 32², medium in [32², 96²), large >= 96².
SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}


@dataclass(frozen=True)
class PointEvalConfig:
    """Interactive evaluation settings (PROMPTABLE.md §5); defaults are the original's."""

    short_side: int | None = param(
        800,
        "evaluation resize: shortest side in pixels (detectron2 ResizeShortestEdge); None = "
        "original size",
    )
    max_size: int = param(1333, "evaluation resize: cap on the longest side, pixels")
    max_clicks: int = param(
        1, "clicks per GT mask (1 = the original protocol; > 1 = iterative, see module doc)"
    )
    thresholds: tuple[float, ...] = param((0.5, 0.8, 0.85, 0.9), "IoU thresholds of NoC@t")
    max_noc: int = param(
        20, "NoC value of a GT mask that never reaches the threshold (the original: 20)"
    )
    kernel_size: int = param(3, "kornia distance-transform kernel size (odd)")
    h: float = param(0.35, "kornia distance-transform softness h")

    def __post_init__(self) -> None:
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"PointEvalConfig.short_side={self.short_side} must be >= 1 or None")
        if self.max_size < 1 or self.max_clicks < 1 or self.max_noc < 1:
            raise ValueError("PointEvalConfig.max_size, max_clicks and max_noc must be >= 1")
        if not self.thresholds or any(not 0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(
                f"PointEvalConfig.thresholds={self.thresholds} must be non-empty, each in (0, 1]"
            )
        if self.kernel_size < 3 or self.kernel_size % 2 == 0 or not self.h > 0:
            raise ValueError("PointEvalConfig.kernel_size must be odd >= 3 and h > 0")


# ---------------------------------------------------------------------------------------------
# Click rule
# ---------------------------------------------------------------------------------------------
def distance_transform(image: torch.Tensor, kernel_size: int = 3, h: float = 0.35) -> torch.Tensor:
    """kornia 0.7.0 ``distance_transform``: approximate distance to the nearest non-zero pixel.

    A cascade of ``exp(-d/h)`` convolutions (replicate padding). At iteration i, every pixel not yet
    reached whose soft-min distance to the current boundary is positive gets
    ``offset_i + d`` with ``offset_i = (i * kernel_size) // 2`` (kornia 0.7.0's operator order),
    and joins the boundary. It stops when no pixel changes or after
    ``ceil(max(H, W) / (kernel_size // 2))`` iterations. Pure PyTorch, float32 in → float32 out.

    Args:
        image: (B, C, H, W) float; non-zero pixels are the sources (distance 0).
        kernel_size: odd kernel side.
        h: softness of the soft-min; smaller is closer to the exact Euclidean distance.

    Returns:
        (B, C, H, W) tensor of the same dtype: 0 at sources and where no source is reachable.

    Example:
        >>> x = torch.zeros(1, 1, 1, 5); x[..., 0] = 1
        >>> distance_transform(x).round(decimals=4)
        tensor([[[[0.0000, 0.8328, 1.8328, 3.8328, 4.8328]]]])
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (B, C, H, W) tensor, got {shape}")
    if kernel_size % 2 == 0 or kernel_size < 3:
        raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
    if not image.is_floating_point():
        image = image.float()
    _b, c, height, width = image.shape
    half = kernel_size // 2
    n_iters = math.ceil(max(height, width) / half)
    offsets = torch.arange(kernel_size, dtype=image.dtype, device=image.device) - half
    grid_y, grid_x = torch.meshgrid(offsets, offsets, indexing="ij")
    kernel = torch.exp(torch.hypot(grid_x, grid_y) / -h)
    weight = kernel.expand(c, 1, kernel_size, kernel_size).contiguous()
    out = torch.zeros_like(image)
    boundary = image.clone()
    for i in range(n_iters):
        padded = F.pad(boundary, (half, half, half, half), mode="replicate")
        cdt = F.conv2d(padded, weight, groups=c)
        cdt = -h * torch.log(cdt)
        cdt = torch.nan_to_num(cdt, posinf=0.0)  # log(0): nothing reachable yet
        reached = cdt > 0
        if not bool(reached.any()):
            break
        offset = i * kernel_size // 2
        out = out + (offset + cdt) * reached
        boundary = torch.where(reached, torch.ones_like(boundary), boundary)
    return out


#: Relative tolerance of a tie between distance-transform values: ``a`` ties with the maximum ``m``
#: when ``a >= m - CLICK_TIE_RTOL * max(1, |m|)``. Float32 rounding differs between machines by a
#: few ulps (~1e-7 relative); real depth differences are far above 1e-5.
CLICK_TIE_RTOL = 1e-5


def _tie_tol(value: float) -> float:
    return CLICK_TIE_RTOL * max(1.0, abs(value))


def first_maximum(values: torch.Tensor | npt.NDArray[np.floating]) -> int:
    """Flat index of the first value, in row-major order, that ties with the maximum: within
    ``CLICK_TIE_RTOL * max(1, |max|)`` of it. Machine-independent where an exact argmax is not
    (values that tie up to float rounding).

    Args:
        values: any shape, float; must not be empty.

    Returns:
        An index into ``values.reshape(-1)``.
    """
    flat = torch.as_tensor(values).reshape(-1)
    if flat.numel() == 0:
        raise ValueError("first_maximum of an empty array")
    top = float(flat.max())
    return int(torch.nonzero(flat >= top - _tie_tol(top))[0, 0])


def click_point(
    mask: npt.NDArray[np.bool_] | torch.Tensor, *, kernel_size: int = 3, h: float = 0.35
) -> tuple[int, int, float]:
    """The click of the interactive evaluation: the pixel deepest inside ``mask`` (PROMPTABLE.md
    §5).

    The mask is padded with one pixel of background and inverted (background = sources), kornia's
    :func:`distance_transform` runs on it, the border is cropped and the **first** maximum in
    row-major order wins, values within :data:`CLICK_TIE_RTOL` of the maximum counting as tied
    (:func:`first_maximum`; the original takes the exact argmax, whose choice among values equal
    up to rounding depends on the machine). The work is done on the mask's bounding box plus that
    one-pixel margin: outside it everything is background, so the values inside are the full
    image's.

    Args:
        mask: (H, W) bool.
        kernel_size, h: distance-transform settings.

    Returns:
        (x, y, depth): column, row (pixels) and the distance value there. An empty mask gives
        (0, 0, 0.0), the original's argmax of an all-zero map.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    m = m.astype(bool, copy=False)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return 0, 0, 0.0
    cols = np.flatnonzero(m.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=np.float32)
    crop[1:-1, 1:-1] = m[y0:y1, x0:x1]
    sources = torch.from_numpy(1.0 - crop)[None, None]
    dist = distance_transform(sources, kernel_size=kernel_size, h=h)[0, 0, 1:-1, 1:-1]
    flat = first_maximum(dist)  # first maximum, ties up to rounding included
    w = x1 - x0
    row, col = divmod(flat, w)
    return x0 + col, y0 + row, float(dist[row, col])


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def mask_ious(pred: npt.NDArray[np.bool_], gt: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """IoU of each predicted mask with one GT mask: |P∩G| / |P∪G| (NaN only when both are empty).

    Args:
        pred: (K, H, W) bool.
        gt: (H, W) bool.

    Returns:
        (K,) float64.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.ndim != 3 or pred.shape[1:] != gt.shape:
        raise ValueError(f"pred must be (K, H, W) with (H, W) = gt's {gt.shape}, got {pred.shape}")
    flat = pred.reshape(pred.shape[0], -1)
    g = gt.reshape(-1)
    inter = (flat & g).sum(axis=1).astype(np.float64)
    union = (flat | g).sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


@dataclass(frozen=True)
class SegmentResult:
    """Evaluation of one GT mask.

    Attributes:
        image_id: id of the image.
        segment_id: annotation / panoptic segment id (None when the GT had none).
        area: GT area in pixels at the original resolution (the size bucket uses it).
        clicks: ((x, y, label), ...) in pixels of the evaluation resolution; label 1 / 0.
        max_ious: per click, IoU of the mask with the highest predicted IoU.
        oracle_ious: per click, best IoU of the K masks.
    """

    image_id: int
    segment_id: int | None
    area: float
    clicks: tuple[tuple[int, int, int], ...]
    max_ious: tuple[float, ...]
    oracle_ious: tuple[float, ...]

    @property
    def size(self) -> str:
        """ "small", "medium" or "large" (COCO area ranges, :data:`SIZE_RANGES`)."""
        for name, (lo, hi) in SIZE_RANGES.items():
            if lo <= self.area < hi:
                return name
        return "large"

    def noc(self, threshold: float, max_noc: int = 20) -> int:
        """Clicks until the Max IoU is >= ``threshold``; ``max_noc`` when it never is."""
        for k, iou in enumerate(self.max_ious, start=1):
            if iou >= threshold:
                return k
        return max_noc


def _check_prediction(
    masks: Any, ious: Any, hw: tuple[int, int]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    masks = np.asarray(masks)
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    if (
        masks.ndim != 3
        or masks.shape[1:] != hw
        or masks.shape[0] == 0
        or masks.shape[0] != ious.shape[0]
    ):
        raise ValueError(
            f"predict must return masks (K, H, W) with (H, W) = {hw} and K >= 1, and predicted_iou "
            f"(K,); got masks {masks.shape}, predicted_iou {ious.shape}"
        )
    return masks.astype(bool, copy=False), ious


def evaluate_segment(
    predict: PredictFn,
    image: npt.NDArray[np.uint8],
    gt: npt.NDArray[np.bool_],
    *,
    config: PointEvalConfig = PointEvalConfig(),
    image_id: int = 0,
    segment_id: int | None = None,
    area: float | None = None,
) -> SegmentResult:
    """Click on one GT mask (and, with ``max_clicks > 1``, correct the result) and score it.

    Args:
        predict: the model, see :data:`PredictFn`.
        image: (H, W, 3) uint8 RGB at the evaluation resolution.
        gt: (H, W) bool GT mask at the same resolution, non-empty.
        config: protocol settings (module doc).
        image_id, segment_id: copied into the result.
        area: GT area for the size bucket (default: ``gt.sum()``).

    Returns:
        A :class:`SegmentResult`.
    """
    gt = np.asarray(gt, dtype=bool)
    if image.ndim != 3 or image.shape[:2] != gt.shape:
        raise ValueError(
            f"image must be (H, W, 3) with (H, W) = gt's {gt.shape}, got {image.shape}"
        )
    if not gt.any():
        raise ValueError(
            f"image {image_id}: GT mask {segment_id} is empty; empty masks cannot be clicked"
        )
    x, y, _ = click_point(gt, kernel_size=config.kernel_size, h=config.h)
    clicks = [(x, y, 1)]
    max_ious: list[float] = []
    oracle_ious: list[float] = []
    top = max(config.thresholds)
    while True:
        points = np.array([[c[0], c[1]] for c in clicks], dtype=np.float64)
        labels = np.array([c[2] for c in clicks], dtype=np.int64)
        masks, pred_iou = _check_prediction(*predict(image, points, labels), gt.shape)
        ious = mask_ious(masks, gt)
        best = int(np.argmax(pred_iou))  # first maximum on ties, as the original's argmax
        max_ious.append(float(ious[best]))
        oracle_ious.append(float(np.max(ious)))
        if len(clicks) >= config.max_clicks or max_ious[-1] >= top:
            break
        chosen = masks[best]
        fn_x, fn_y, fn_depth = click_point(gt & ~chosen, kernel_size=config.kernel_size, h=config.h)
        fp_x, fp_y, fp_depth = click_point(chosen & ~gt, kernel_size=config.kernel_size, h=config.h)
        if fn_depth <= 0 and fp_depth <= 0:
            break  # nothing left to correct
        positive = fn_depth >= fp_depth - _tie_tol(max(fn_depth, fp_depth))  # ties: positive
        clicks.append((fn_x, fn_y, 1) if positive else (fp_x, fp_y, 0))
    return SegmentResult(
        image_id=int(image_id),
        segment_id=segment_id,
        area=float(gt.sum()) if area is None else float(area),
        clicks=tuple(clicks),
        max_ious=tuple(max_ious),
        oracle_ious=tuple(oracle_ious),
    )


def resize_shortest_edge(hw: tuple[int, int], short_side: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``: (H', W') with rounding ``int(x +
    0.5)``."""
    h, w = hw
    scale = short_side / min(h, w)
    new_h, new_w = (short_side, scale * w) if h < w else (scale * h, short_side)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def _resize_nearest(mask: npt.NDArray[np.bool_], hw: tuple[int, int]) -> npt.NDArray[np.bool_]:
    if mask.shape == hw:
        return mask
    img = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(img.resize((hw[1], hw[0]), Image.NEAREST)).astype(bool)


def evaluate_image(
    predict: PredictFn,
    image: npt.NDArray[np.uint8],
    record: ImageRecord,
    *,
    config: PointEvalConfig = PointEvalConfig(),
) -> list[SegmentResult]:
    """Evaluate every GT mask of one image (resized per the config first).

    Args:
        predict: the model, see :data:`PredictFn`; it receives the resized image.
        image: (H, W, 3) uint8 RGB at the original resolution (= ``record.hw``).
        record: the image's non-crowd GT masks (crowd masks must already be left out).
        config: protocol settings.

    Returns:
        One :class:`SegmentResult` per GT mask that is non-empty after resizing, in record order.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != record.hw:
        raise ValueError(
            f"image {record.id} ({record.file_name}): image shape {image.shape} does not match the "
            f"GT size {record.hw} (H, W)"
        )
    hw = record.hw
    if config.short_side is not None:
        hw = resize_shortest_edge(record.hw, config.short_side, config.max_size)
    resized = image
    if hw != record.hw:
        resized = np.array(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))
    out = []
    for m in record.masks:
        full = decode_rle(m.rle)
        gt = _resize_nearest(full, hw)
        if not gt.any():
            logger.debug("image %d: GT mask %s is empty at %s; skipped", record.id, m.id, hw)
            continue
        out.append(
            evaluate_segment(
                predict,
                resized,
                gt,
                config=config,
                image_id=record.id,
                segment_id=m.id,
                area=float(full.sum()),
            )
        )
    return out


def evaluate_points(
    predict: PredictFn,
    records: Sequence[ImageRecord],
    load: Callable[[ImageRecord], npt.NDArray[np.uint8]],
    *,
    config: PointEvalConfig = PointEvalConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], list[SegmentResult]]:
    """Run the interactive evaluation over a dataset and summarise it.

    Args:
        predict: the model, see :data:`PredictFn`.
        records: GT images (non-crowd masks only), e.g. from :func:`load_instances_gt`.
        load: returns an image's (H, W, 3) uint8 RGB pixels.
        config: protocol settings.
        progress: called as ``progress(done_images, total_images)``.

    Returns:
        (metrics of :func:`summarize_points`, per-mask results).
    """
    results: list[SegmentResult] = []
    for i, rec in enumerate(records):
        if rec.masks:
            results += evaluate_image(predict, load(rec), rec, config=config)
        if progress is not None:
            progress(i + 1, len(records))
    metrics = summarize_points(results, config=config)
    metrics["num_images"] = len(records)
    return metrics, results


def summarize_points(
    results: Iterable[SegmentResult], *, config: PointEvalConfig = PointEvalConfig()
) -> dict[str, Any]:
    """Dataset metrics from per-mask results (fractions in [0, 1]; None where nothing was counted).

    Keys: ``point_max_miou``, ``point_oracle_miou`` (IoU of the first click, mean over masks),
    ``point_max_miou_{small,medium,large}``, ``point_oracle_miou_{small,medium,large}``,
    ``NoC@{t}`` for each threshold (mean clicks, Max mask), ``num_segments`` and
    ``num_segments_{small,medium,large}``, ``max_clicks``.
    """
    results = list(results)
    out: dict[str, Any] = {}

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    out["point_max_miou"] = mean([r.max_ious[0] for r in results])
    out["point_oracle_miou"] = mean([r.oracle_ious[0] for r in results])
    for size in SIZE_RANGES:
        sel = [r for r in results if r.size == size]
        out[f"point_max_miou_{size}"] = mean([r.max_ious[0] for r in sel])
        out[f"point_oracle_miou_{size}"] = mean([r.oracle_ious[0] for r in sel])
    for t in config.thresholds:
        out[f"NoC@{t:g}"] = mean([float(r.noc(t, config.max_noc)) for r in results])
    out["num_segments"] = len(results)
    for size in SIZE_RANGES:
        out[f"num_segments_{size}"] = sum(1 for r in results if r.size == size)
    out["max_clicks"] = config.max_clicks
    return out


def format_point_metrics(metrics: dict[str, Any], title: str = "") -> str:
    """A text table: mIoU rows in %, NoC rows in clicks, counts as integers."""
    lines = [title] if title else []
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        if value is None:
            text = "-"
        elif "miou" in key:
            text = f"{100.0 * value:6.2f}"
        elif key.startswith("NoC"):
            text = f"{value:6.2f}"
        else:
            text = f"{value:6d}" if isinstance(value, int) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def predictor_predict_fn(predictor: Any, *, box_size: float = 6.0) -> PredictFn:
    """Wrap a :class:`unsam.models.promptable.PromptablePredictor` as a :data:`PredictFn`.

    The image is encoded once and reused while the same array object is passed (the evaluation
    passes one array per image). Clicks are decoded as in the original evaluation: pb = 0, a
    ``box_size``-pixel box (6), independent clicks. Build the predictor with ``short_side=None``
    so that the model input is the (already resized) evaluation image.

    Raises:
        ValueError: more than one click, or a negative click (the model takes one positive click
            per object; use ``max_clicks=1``).
    """
    cache: dict[str, Any] = {}

    def predict(
        image: npt.NDArray[np.uint8], points: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        if len(points) != 1 or int(labels[0]) != 1:
            raise ValueError(
                "the promptable model takes one positive click per object; evaluate with "
                "max_clicks=1"
            )
        if cache.get("image") is not image:
            predictor.set_image(image)
            cache["image"] = image
        logits, iou = predictor.predict_logits(points, independent=True, box_size=box_size)
        masks = logits[0] > 0
        if tuple(masks.shape[-2:]) != image.shape[:2]:
            raise ValueError(
                f"the predictor returned {tuple(masks.shape[-2:])} masks for a {image.shape[:2]} "
                "image; build it with short_side=None"
            )
        return masks.cpu().numpy(), iou[0].double().cpu().numpy()

    return predict


# ---------------------------------------------------------------------------------------------
# Ground-truth readers
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MaskFileError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


def load_instances_gt(path: str | os.PathLike[str]) -> list[ImageRecord]:
    """Non-crowd masks of a COCO instances JSON (any COCO-style dataset JSON), one record per image.

    Reads the file with :func:`unsam.io.coco.load_coco_dataset`; the crowd flags, which MaskRecord
    does not carry, come from the raw JSON (same annotation order per image).

    Returns:
        ImageRecords in the file's image order, with ``source="gt"`` masks; crowd masks left out.
    """
    path = Path(path)
    records = load_coco_dataset(path)
    raw = _read_json(path)
    crowd: dict[int, list[bool]] = {}
    for ann in raw.get("annotations", []):
        crowd.setdefault(int(ann["image_id"]), []).append(bool(ann.get("iscrowd", 0)))
    out = []
    for rec in records:
        flags = crowd.get(rec.id, [])
        if len(flags) != len(rec.masks):
            raise MaskFileError(
                f"{path}: image {rec.id}: annotation count changed while reading; re-run"
            )
        masks = [m.replace(source="gt") for m, c in zip(rec.masks, flags, strict=True) if not c]
        out.append(rec.with_masks(masks))
    return out


def rgb_to_id(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """COCO panoptic segment id of each pixel: R + 256·G + 256²·B.

    Args:
        rgb: (H, W, 3) uint8.

    Returns:
        (H, W) int64.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"panoptic PNG must be (H, W, 3) RGB, got shape {rgb.shape}")
    c = rgb.astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def _iter_panoptic(path: Path, png_dir: Path, max_images: int | None) -> Iterator[ImageRecord]:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise MaskFileError(
            f'{path}: missing list field "annotations" (is this a COCO panoptic JSON?)'
        )
    infos = {int(img["id"]): img for img in data.get("images", [])}
    count = 0
    for i, ann in enumerate(data["annotations"]):
        if max_images is not None and count >= max_images:
            return
        where = f"{path}: annotations[{i}]"
        if "segments_info" not in ann or "file_name" not in ann or "image_id" not in ann:
            raise MaskFileError(
                f'{where}: needs "image_id", "file_name" and "segments_info" (COCO panoptic)'
            )
        image_id = int(ann["image_id"])
        info = infos.get(image_id, {})
        png_path = png_dir / str(ann["file_name"])
        if not png_path.is_file():
            raise FileNotFoundError(
                f"{png_path}: panoptic PNG of image {image_id} not found (check --panoptic-dir)"
            )
        with Image.open(png_path) as im:
            ids = rgb_to_id(np.asarray(im.convert("RGB")))
        hw = ids.shape
        if info and (int(info["height"]), int(info["width"])) != hw:
            raise MaskFileError(
                f"{png_path}: size {hw[0]}x{hw[1]} differs from the JSON's "
                f"{info['height']}x{info['width']}"
            )
        masks = []
        for seg in ann["segments_info"]:
            if seg.get("iscrowd", 0):
                continue
            mask = ids == int(seg["id"])
            if not mask.any():
                logger.warning(
                    "%s: segment %s has no pixel in %s; skipped", where, seg["id"], png_path.name
                )
                continue
            masks.append(
                MaskRecord(rle=encode_mask(mask), image_id=image_id, id=int(seg["id"]), source="gt")
            )
        file_name = info.get("file_name", Path(str(ann["file_name"])).with_suffix(".jpg").name)
        count += 1
        yield ImageRecord(
            id=image_id, file_name=file_name, height=hw[0], width=hw[1], masks=tuple(masks)
        )


def load_panoptic_gt(
    path: str | os.PathLike[str],
    png_dir: str | os.PathLike[str] | None = None,
    *,
    max_images: int | None = None,
) -> list[ImageRecord]:
    """Non-crowd segments (things and stuff) of a COCO panoptic JSON + PNG folder.

    Args:
        path: ``panoptic_val2017.json`` (``annotations[].segments_info``, ``file_name`` of the PNG).
        png_dir: folder of the PNGs; default: the JSON's path without ``.json``
            (``panoptic_val2017.json`` → ``panoptic_val2017/``), as COCO ships them.
        max_images: read only the first N annotations.

    Returns:
        ImageRecords in annotation order; segment id = R + 256·G + 256²·B of the PNG.

    Raises:
        FileNotFoundError / MaskFileError: naming the file and what is wrong.
    """
    path = Path(path)
    folder = Path(png_dir) if png_dir is not None else path.with_suffix("")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: panoptic PNG folder not found; pass it with --panoptic-dir"
        )
    return list(_iter_panoptic(path, folder, max_images))


def is_panoptic_json(path: str | os.PathLike[str]) -> bool:
    """True when the JSON's first annotation has ``segments_info`` (COCO panoptic format)."""
    data = _read_json(Path(path))
    anns = data.get("annotations") if isinstance(data, dict) else None
    return bool(anns) and isinstance(anns[0], dict) and "segments_info" in anns[0]
