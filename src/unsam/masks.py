"""Stateless mask math shared by every stage: boxes and resizing (NMS: unsam.conquer.filter for
crop masks, the segmenter's RLE NMS for full-resolution masks).

Dense masks here are numpy bool arrays or torch bool tensors; RLE math lives in unsam.records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

__all__ = [
    "boxes_xyxy_from_masks",
    "resize_mask",
    "resize_image",
]


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
