"""Naive reference of the interactive-evaluation click rule and metrics (PROMPTABLE.md §5).

Written straight from kornia 0.7.0's ``distance_transform`` description, pixel by pixel in float64
on the **whole** padded image (no bounding-box crop), and from the original's metric definitions.
Does not import unsam.
"""

from __future__ import annotations

import math

import numpy as np


def distance_transform_naive(
    sources: np.ndarray, kernel_size: int = 3, h: float = 0.35
) -> np.ndarray:
    """(H, W) float sources (non-zero = distance 0) -> (H, W) float64 kornia-style distance."""
    height, width = sources.shape
    half = kernel_size // 2
    kernel = np.zeros((kernel_size, kernel_size))
    for i in range(kernel_size):
        for j in range(kernel_size):
            kernel[i, j] = math.exp(-math.sqrt((i - half) ** 2 + (j - half) ** 2) / h)
    boundary = sources.astype(np.float64).copy()
    out = np.zeros((height, width))
    for it in range(math.ceil(max(height, width) / half)):
        new_boundary = boundary.copy()
        changed = False
        for y in range(height):
            for x in range(width):
                c = 0.0
                for i in range(kernel_size):
                    for j in range(kernel_size):
                        yy = min(max(y + i - half, 0), height - 1)  # replicate padding
                        xx = min(max(x + j - half, 0), width - 1)
                        c += kernel[i, j] * boundary[yy, xx]
                d = 0.0 if c == 0 else -h * math.log(c)
                if d > 0:
                    out[y, x] += (it * kernel_size) // 2 + d
                    new_boundary[y, x] = 1.0
                    changed = True
        if not changed:
            break
        boundary = new_boundary
    return out


def click_naive(mask: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(x, y, distance map) of the original's click: pad 1 px, invert, transform, crop, first
    maximum in row-major order, values within 1e-5 * max(1, max) of it counting as tied (unsam's
    documented machine-independent tie rule; the original takes the exact argmax)."""
    padded = np.pad(mask.astype(bool), 1)
    dist = distance_transform_naive(1.0 - padded.astype(np.float64))[1:-1, 1:-1]
    top = float(dist.max())
    flat = int(np.flatnonzero(dist.reshape(-1) >= top - 1e-5 * max(1.0, abs(top)))[0])
    y, x = divmod(flat, mask.shape[1])
    return x, y, dist


def point_metrics_naive(
    per_segment: list[tuple[np.ndarray, np.ndarray, np.ndarray]], thresholds=(0.5, 0.8, 0.85, 0.9)
) -> dict[str, float]:
    """One click per segment. Each item: (gt (H, W) bool, masks (K, H, W) bool, predicted_iou
    (K,))."""
    max_ious, oracle_ious = [], []
    for gt, masks, pred in per_segment:
        ious = []
        for m in masks:
            inter = np.logical_and(m, gt).sum()
            union = np.logical_or(m, gt).sum()
            ious.append(inter / union)
        best = 0
        for k in range(len(pred)):
            if pred[k] > pred[best]:
                best = k
        max_ious.append(ious[best])
        oracle_ious.append(max(ious))
    out = {"max": sum(max_ious) / len(max_ious), "oracle": sum(oracle_ious) / len(oracle_ious)}
    for t in thresholds:
        out[f"NoC@{t:g}"] = sum(1 if v >= t else 20 for v in max_ious) / len(max_ious)
    return out
