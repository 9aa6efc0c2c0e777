"""Stateless mask math shared by every stage: boxes, resizing, IoU and the one greedy NMS.

Dense masks here are numpy bool arrays or torch bool tensors; RLE math lives in unsam.records.
Every NMS in unsam is :func:`greedy_nms` (masks: dense, sparse or lazily computed IoU) or
:func:`box_nms` (boxes, torchvision's float32 semantics); both suppress at IoU strictly ``>`` the
threshold.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "boxes_xyxy_from_masks",
    "MASK_RESIZE_RULES",
    "resize_mask",
    "resize_image",
    "LogitResizePlan",
    "logit_resize_plan",
    "resize_logits_transposed",
    "mask_iou",
    "greedy_nms",
    "box_iou_matrix",
    "box_nms",
    "batched_box_nms",
]


#: Binarisation rules of :func:`resize_mask`.
MASK_RESIZE_RULES: tuple[str, ...] = ("half_max", "unsam")


def boxes_xyxy_from_masks(masks: torch.Tensor | np.ndarray) -> np.ndarray:
    """Tight boxes (x0, y0, x1, y1) with exclusive x1/y1, (N, 4) int64; zeros for empty masks."""
    m = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {m.shape}")
    out = np.zeros((m.shape[0], 4), dtype=np.int64)
    rows = m.any(axis=2)
    cols = m.any(axis=1)
    for i in range(m.shape[0]):
        ys = np.flatnonzero(rows[i])
        xs = np.flatnonzero(cols[i])
        if ys.size:
            out[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out


def resize_mask(
    mask: npt.NDArray[np.bool_], hw: tuple[int, int], *, rule: str = "half_max"
) -> npt.NDArray[np.bool_]:
    """Resize a binary mask through a PIL bicubic resize of its 0/255 image, then binarise.

    The mask becomes a 0/255 uint8 image and is resized with PIL bicubic to (H, W) (the original's
    ``Image.resize`` default; spec §2.2 step 11, §3.3 step 1). Let ``top`` be the maximum of the
    result. The rules differ only when ``top < 128``, i.e. when a small mask is downsampled so far
    that no pixel reaches half of 255 (a cluster of a few patches of the 32×32 conquer grid pasted
    into a crop narrower than about 32 px):

    - ``"half_max"`` (default): keep the pixels ``> top / 2``; an empty result only for an empty
      mask (``top == 0``). Such a small cluster survives as a few pixels.
    - ``"unsam"``: the released UnSAM conquer rule (``divide_conquer.py``: ``resize_mask`` sets the
      pixels ``> top / 2`` to ``top`` and the others to the minimum, then ``mask > 0.5 * 255``):
      keep the pixels ``> top / 2`` when ``top >= 128``, else nothing, so that cluster vanishes
      (and then fails the coverage filter). Both rules agree whenever ``top >= 128``, in particular
      for every upsampling of a non-empty mask.

    MaskCut's original (CutLER ``maskcut.py``) applies the same ``top / 2`` split and then encodes
    every non-zero pixel: it equals ``"half_max"`` unless the resized minimum is above 0 as well (a
    mask covering nearly the whole image), where it keeps every pixel.

    Args:
        mask: (h, w) bool.
        hw: target (H, W).
        rule: ``"half_max"`` or ``"unsam"`` (see above).

    Returns:
        (H, W) bool.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (h, w), got shape {mask.shape}")
    if rule not in MASK_RESIZE_RULES:
        raise ValueError(f"rule must be one of {MASK_RESIZE_RULES}, got {rule!r}")
    h, w = int(hw[0]), int(hw[1])
    if mask.shape == (h, w):
        return mask.astype(bool, copy=True)
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img)
    top = int(arr.max()) if arr.size else 0
    if top == 0 or (rule == "unsam" and top < 128):
        return np.zeros((h, w), dtype=bool)
    return arr > top / 2.0


def resize_image(
    image: npt.NDArray[np.uint8], hw: tuple[int, int], resample: int = Image.BICUBIC
) -> npt.NDArray[np.uint8]:
    """Resize an (H, W, 3) uint8 RGB image to ``hw`` = (H', W') with PIL (default bicubic)."""
    h, w = int(hw[0]), int(hw[1])
    if image.shape[:2] == (h, w):
        return image
    return np.array(
        Image.fromarray(image).resize((w, h), resample)
    )  # writable (C code may need it)


#: One axis of a :class:`LogitResizePlan`: ``[(out_start, out_stop, in_start, in_stop, weights)]``.
AxisBlocks = list[tuple[int, int, int, int, torch.Tensor]]


@dataclass(frozen=True)
class LogitResizePlan:
    """Mask-logit resizing upsample -> crop -> resize, as one banded matrix per axis.

    Made by :func:`logit_resize_plan`, applied by :func:`resize_logits_transposed`.

    Attributes:
        rows: the (H, h) matrix of the row axis, in blocks of output rows.
        cols: the (W, w) matrix of the column axis, in blocks of output columns.
        out_hw: (H, W).
    """

    rows: AxisBlocks
    cols: AxisBlocks
    out_hw: tuple[int, int]


def _axis_blocks(
    n_in: int, n_pad: int, n_valid: int, n_out: int, device: torch.device | str, block: int
) -> AxisBlocks:
    """One axis of :func:`logit_resize_plan`: the chain applied to the identity, in row blocks,
    each with the input range it reads (at most 4 nonzeros a row, in a diagonal band)."""
    eye = torch.eye(n_in, dtype=torch.float32)[:, None, :]
    m = F.interpolate(eye, size=n_pad, mode="linear", align_corners=False)[..., :n_valid]
    if n_valid != n_out:
        m = F.interpolate(m, size=n_out, mode="linear", align_corners=False)
    m = m[:, 0, :].T.contiguous()  # (n_out, n_in)
    blocks = []
    for start in range(0, n_out, block):
        stop = min(start + block, n_out)
        cols = (m[start:stop] != 0).any(0).nonzero()[:, 0]
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 1)
        blocks.append((start, stop, lo, hi, m[start:stop, lo:hi].contiguous().to(device)))
    return blocks


def logit_resize_plan(
    low_hw: Sequence[int],
    padded_hw: Sequence[int],
    valid_hw: Sequence[int],
    out_hw: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    block: int = 64,
) -> LogitResizePlan:
    """Plan the mask-logit resize of Mask2Former-style models as banded matrices.

    The models predict mask logits at ``low_hw`` (1/4 of the padded input); the originals
    upsample them bilinearly to the padded input ``padded_hw``, keep the top-left ``valid_hw``
    (the image inside the padding) and resize that bilinearly to the image ``out_hw`` (skipped
    when equal), all ``align_corners=False``. Bilinear resizing is separable and linear, so along
    each axis the chain is one matrix (made by sending the identity through the same
    ``F.interpolate`` calls) with at most 4 nonzeros a row. Each is cut into blocks of ``block``
    output rows with the input range each block reads, so that applying it costs a few small
    matrix products per mask instead of a padded-size intermediate. Plans are cached (the last 16
    sizes): consecutive images and clicks of one photo reuse them; their tensors are read only.
    """
    sizes = tuple(
        (int(a), int(b), int(c), int(d)) for a, b, c, d in zip(low_hw, padded_hw, valid_hw, out_hw)
    )
    return _cached_plan(sizes, torch.device(device), int(block))


@functools.lru_cache(maxsize=16)
def _cached_plan(
    sizes: tuple[tuple[int, int, int, int], ...], device: torch.device, block: int
) -> LogitResizePlan:
    rows, cols = (_axis_blocks(*axis, device, block) for axis in sizes)
    return LogitResizePlan(rows, cols, (sizes[0][3], sizes[1][3]))


def resize_logits_transposed(low: torch.Tensor, plan: LogitResizePlan) -> torch.Tensor:
    """Resize (n, h, w) float logits by ``plan``; returned transposed, (n, W, H).

    ``out[i, x, y]`` is the logit of mask ``i`` at pixel (y, x): each mask's pixels in
    column-major order, the order COCO RLE runs in (so :func:`unsam.records.encode_transposed_masks`
    encodes them with no copy). Equal to the two ``F.interpolate`` calls and the crop up to float
    rounding (~1e-6; tests/models/test_whole_image_segmenter.py). Memory: the output plus the
    (n, H, w) row-resized logits.
    """
    n = low.shape[0]
    h_out, w_out = plan.out_hw
    by_rows = low.new_empty((n, h_out, low.shape[2]))
    for start, stop, lo, hi, weights in plan.rows:
        torch.matmul(weights, low[:, lo:hi, :], out=by_rows[:, start:stop, :])
    by_rows_t = by_rows.transpose(1, 2)  # (n, w, H)
    out = low.new_empty((n, w_out, h_out))
    for start, stop, lo, hi, weights in plan.cols:
        torch.matmul(weights, by_rows_t[:, lo:hi, :], out=out[:, start:stop, :])
    return out


def mask_iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """IoU of two (h, w) bool masks on one grid: |a ∩ b| / |a ∪ b| (0.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 0.0


def greedy_nms(
    scores: Sequence[float] | npt.NDArray[np.floating],
    iou: npt.NDArray[np.floating] | Any | Callable[[int, int], float],
    iou_thresh: float,
    *,
    window: int | None = None,
) -> list[int]:
    """Greedy non-maximum suppression, the one rule every mask NMS of unsam uses.

    Items are visited by descending score (stable: ties keep input order). Each item not yet
    removed is kept and removes the later items whose IoU with it is strictly ``> iou_thresh``;
    with ``window``, only the items at the next ``window - 1`` ranking *positions* (the original
    conquer rule, spec §3.3: removed items still occupy their position).

    Args:
        scores: (N,) ranking scores.
        iou: the pairwise IoU as a dense (N, N) array, a scipy sparse (N, N) matrix (missing
            entries: 0) or a function ``iou(i, j)`` called only for pairs that still matter.
        iou_thresh: cutoff in [0, 1].
        window: compare only within this many ranking positions (>= 2), or all later ones.

    Returns:
        Kept indices in ranking order (highest score first).
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[0]
    if window is not None and window < 2:
        raise ValueError(f"window must be >= 2 or None, got {window}")
    order = np.argsort(-s, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    sparse = hasattr(iou, "indptr")
    dense = isinstance(iou, np.ndarray)
    if (sparse or dense) and tuple(iou.shape) != (n, n):
        raise ValueError(f"iou must be ({n}, {n}), got {tuple(iou.shape)}")
    for pos, i in enumerate(order.tolist()):
        if removed[i]:
            continue
        keep.append(i)
        stop = n if window is None else min(n, pos + window)
        if dense:
            later = order[pos + 1 : stop]
            removed[later[iou[i, later] > iou_thresh]] = True
        elif sparse:
            lo, hi = iou.indptr[i], iou.indptr[i + 1]
            cols, vals = iou.indices[lo:hi], iou.data[lo:hi]
            inside = (rank[cols] > pos) & (rank[cols] < stop)
            removed[cols[inside & (vals > iou_thresh)]] = True
        else:
            for j in order[pos + 1 : stop].tolist():
                if not removed[j] and iou(i, j) > iou_thresh:
                    removed[j] = True
    return keep


def box_iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` float32 IoU of XYXY boxes, with the torchvision NMS kernel's exact float ops
    (no +1; NaN for two empty boxes)."""
    x0, y0, x1, y1 = boxes.float().unbind(dim=1)
    area = (x1 - x0) * (y1 - y0)
    w = torch.minimum(x1[:, None], x1[None, :]) - torch.maximum(x0[:, None], x0[None, :])
    h = torch.minimum(y1[:, None], y1[None, :]) - torch.maximum(y0[:, None], y0[None, :])
    inter = w.clamp(min=0) * h.clamp(min=0)
    return inter / (area[:, None] + area[None, :] - inter)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy box NMS (torchvision ``nms`` semantics) through :func:`greedy_nms`.

    Args:
        boxes: ``(N, 4)`` XYXY boxes (compared in float32).
        scores: ``(N,)`` scores.
        iou_thresh: a box whose IoU with a kept box is ``> iou_thresh`` is dropped (NaN never is).

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by descending score. Memory is O(N²).
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4) XYXY, got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must be ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    iou = np.nan_to_num(box_iou_matrix(boxes).cpu().numpy(), nan=0.0)  # NaN > t is False anyway
    # float64 scores: the stable descending order equals torch.sort(stable=True)'s
    keep = greedy_nms(scores.detach().cpu().double().numpy(), iou, iou_thresh)
    return torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_box_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_thresh: float
) -> torch.Tensor:
    """:func:`box_nms` inside each group independently (torchvision ``batched_nms``).

    Returns:
        ``(K,)`` int64 indices of the kept boxes over all groups, by descending score (stable).
    """
    if groups.shape != (boxes.shape[0],):
        raise ValueError(f"groups must be ({boxes.shape[0]},), got {tuple(groups.shape)}")
    keep_mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for g in torch.unique(groups).tolist():
        idx = torch.nonzero(groups == g).flatten()
        keep_mask[idx[box_nms(boxes[idx], scores[idx], iou_thresh)]] = True
    keep = torch.nonzero(keep_mask).flatten()
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
