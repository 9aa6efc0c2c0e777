"""Stateless mask math shared by every stage: IoU matrices, mask NMS, boxes, resizing.

Dense masks here are numpy bool arrays or torch bool tensors; RLE math lives in unsam.records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

__all__ = [
    "mask_iou_matrix",
    "mask_nms",
    "boxes_xyxy_from_masks",
    "resize_mask",
    "resize_image",
]


def mask_iou_matrix(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Pairwise IoU of binary masks via one matmul.

    Args:
        a: (N, H, W) bool masks.
        b: (M, H, W) bool masks on the same grid; defaults to ``a``.

    Returns:
        (N, M) float32 tensor; IoU of two empty masks is 0.
    """
    ta = torch.as_tensor(np.asarray(a) if isinstance(a, np.ndarray) else a)
    tb = ta if b is None else torch.as_tensor(np.asarray(b) if isinstance(b, np.ndarray) else b)
    if ta.ndim != 3 or tb.ndim != 3 or ta.shape[1:] != tb.shape[1:]:
        raise ValueError(f"masks must be (N, H, W) on one grid, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    fa = ta.reshape(ta.shape[0], -1).to(torch.float32)
    fb = tb.reshape(tb.shape[0], -1).to(torch.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def mask_nms(
    masks: torch.Tensor | np.ndarray,
    scores: Sequence[float] | np.ndarray | torch.Tensor,
    iou_thresh: float,
    *,
    window: int | None = None,
) -> list[int]:
    """Greedy mask NMS; returns kept indices in descending score order.

    Masks are visited by descending score (stable: ties keep input order). A kept mask removes
    every later mask whose IoU with it is ``> iou_thresh``. With ``window=k`` a kept mask at
    sorted position i only looks at positions i+1 .. i+k-1 (the original conquer NMS uses
    ``NMS-step 5`` → window 5, i.e. the 4 following masks; spec §3.3).

    Args:
        masks: (N, H, W) bool.
        scores: (N,) ranking scores (e.g. area for the conquer NMS).
        iou_thresh: IoU cutoff in [0, 1]; a pair strictly above it is a duplicate.
        window: None for full NMS, else the window size (>= 2).
    """
    n = len(scores)
    if n == 0:
        return []
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    m = torch.as_tensor(np.asarray(masks) if isinstance(masks, np.ndarray) else masks)
    iou = mask_iou_matrix(m[torch.as_tensor(order)]).numpy()
    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(int(order[i]))
        stop = n if window is None else min(n, i + window)
        dup = iou[i, i + 1 : stop] > iou_thresh
        removed[i + 1 : stop] |= dup
    return keep


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


def resize_mask(mask: npt.NDArray[np.bool_], hw: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Resize a binary mask the way the original does (spec §2.2 step 11, §3.3 step 1).

    The mask becomes a 0/255 uint8 image, is resized with PIL bicubic to (H, W) and binarised at
    half of its maximum (> 127.5 when non-empty).

    Args:
        mask: (h, w) bool.
        hw: target (H, W).

    Returns:
        (H, W) bool.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (h, w), got shape {mask.shape}")
    h, w = int(hw[0]), int(hw[1])
    if mask.shape == (h, w):
        return mask.astype(bool, copy=True)
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img)
    top = int(arr.max()) if arr.size else 0
    if top == 0:
        return np.zeros((h, w), dtype=bool)
    return arr > top / 2.0


def resize_image(
    image: npt.NDArray[np.uint8], hw: tuple[int, int], resample: int = Image.BICUBIC
) -> npt.NDArray[np.uint8]:
    """Resize an (H, W, 3) uint8 RGB image to ``hw`` = (H', W') with PIL (default bicubic)."""
    h, w = int(hw[0]), int(hw[1])
    if image.shape[:2] == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((w, h), resample))  # writable (C code may need it)
