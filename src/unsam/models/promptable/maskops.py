"""Stateless mask math of the promptable predictor and its automatic mask generator.

Ports of SAM's ``utils/amg.py`` helpers that the original promptable code uses (spec
PROMPTABLE.md §2.8, §4): small-region cleanup, stability score, boxes with inclusive max
coordinates, greedy box NMS, the normalised point grid, and the original resize rules.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "box_nms",
    "boxes_xyxy_inclusive",
    "point_grid",
    "remove_small_regions",
    "resized_hw",
    "stability_scores",
]


def remove_small_regions(
    mask: npt.NDArray[np.bool_], area_thresh: float, mode: Literal["holes", "islands"]
) -> tuple[npt.NDArray[np.bool_], bool]:
    """Fill holes or remove islands smaller than ``area_thresh`` pixels (SAM's rule, 8-connected).

    In "islands" mode, if every island is small the largest one is kept.

    Args:
        mask: (H, W) bool.
        area_thresh: regions with fewer pixels than this are changed.
        mode: "holes" (background components inside or touching the mask) or "islands".

    Returns:
        The new (H, W) bool mask and whether anything changed.
    """
    import cv2

    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = (correct_holes ^ mask.astype(bool)).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[:, -1][1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask.astype(bool), False
    fill = [0, *small]
    if not correct_holes:
        fill = [i for i in range(n_labels) if i not in fill]
        if not fill:
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def stability_scores(
    mask_logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0
) -> torch.Tensor:
    """SAM's stability score: |logit > t + offset| / |logit > t - offset| per mask.

    Args:
        mask_logits: ``(N, H, W)`` float.

    Returns:
        ``(N,)`` float32 in [0, 1] (1 when both counts are 0).
    """
    inter = (mask_logits > threshold + offset).flatten(1).sum(-1, dtype=torch.int64)
    union = (mask_logits > threshold - offset).flatten(1).sum(-1, dtype=torch.int64)
    return torch.where(
        union > 0, inter.float() / union.clamp(min=1).float(), torch.ones_like(inter).float()
    )


def boxes_xyxy_inclusive(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes (x0, y0, x1, y1) with **inclusive** max coordinates, ``(N, 4)`` int64.

    Empty masks give (0, 0, 0, 0), as SAM's ``batched_mask_to_box``.

    Args:
        masks: ``(N, H, W)`` bool.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    out = torch.zeros((n, 4), dtype=torch.int64)
    if n == 0:
        return out
    rows = masks.any(2)
    cols = masks.any(1)
    nonempty = rows.any(1)
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    y1 = torch.where(rows, ar_h, -1).max(1).values
    y0 = torch.where(rows, ar_h, h).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values
    x0 = torch.where(cols, ar_w, w).min(1).values
    boxes = torch.stack([x0, y0, x1, y1], 1)
    out[nonempty] = boxes[nonempty]
    return out


def box_nms(boxes_xyxy: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy single-class box NMS: visit boxes by score (descending, stable), drop every box whose
    IoU with a kept box is > ``iou_thresh``. IoU on float xyxy, no +1 (torchvision's convention).

    Args:
        boxes_xyxy: ``(N, 4)`` boxes.
        scores: ``(N,)`` float.

    Returns:
        ``(K,)`` int64 indices of kept boxes, in descending score order.
    """
    n = boxes_xyxy.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    b = boxes_xyxy.to(torch.float64)
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    order = torch.sort(scores.to(torch.float64), descending=True, stable=True).indices
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        lt = torch.maximum(b[i, :2], b[:, :2])
        rb = torch.minimum(b[i, 2:], b[:, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        union = area[i] + area - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
        suppressed |= iou > iou_thresh
    return torch.tensor(keep, dtype=torch.int64)


def point_grid(points_per_side: int) -> npt.NDArray[np.float64]:
    """Normalised grid ((i + 0.5) / n): ``(n², 2)`` (x, y), y in the outer loop, x fastest."""
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    offset = 1.0 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs = np.tile(side[None, :], (points_per_side, 1))
    ys = np.tile(side[:, None], (1, points_per_side))
    return np.stack([xs, ys], -1).reshape(-1, 2)


def resized_hw(
    hw: tuple[int, int], short_side: int | None, max_side: int | None = None
) -> tuple[int, int]:
    """Model-input size of an image (spec §1.1).

    - ``short_side=None``: no resize.
    - ``max_side=None``: the demo / predictor rule (torchvision ``Resize(short_side)``): the short
      side becomes ``short_side``, the long side ``int(short_side · long / short)`` (truncated).
    - ``max_side`` given: detectron2 ``ResizeShortestEdge`` (the evaluation's 800 / 1333):
      scale = short_side / short, lowered to max_side / long if the long side would exceed it;
      sides rounded with int(x + 0.5).

    Returns:
        (H', W') in pixels.
    """
    h, w = int(hw[0]), int(hw[1])
    if short_side is None:
        return h, w
    if max_side is None:
        if h <= w:
            return short_side, int(short_side * w / h)
        return int(short_side * h / w), short_side
    scale = short_side / min(h, w)
    if max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)
