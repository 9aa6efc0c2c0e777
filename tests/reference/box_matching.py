"""Greedy one-to-one matching of two detection sets by box IoU (no unsam import).

Used to compare two runs of a detector (float32 against bf16, CPU against CUDA): each of ``a``'s
boxes, in ``a``'s order (score order for detections), takes the unused box of ``b`` it overlaps
most, if that IoU is at least ``thresh``.
"""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of XYXY boxes (no +1), in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def greedy_box_matching(a: np.ndarray, b: np.ndarray, thresh: float = 0.5) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``: box ``i`` of ``a`` matched to box ``j`` of ``b`` (each used once)."""
    iou = box_iou(a, b)
    used: set[int] = set()
    pairs = []
    for i in range(len(a)):
        for j in np.argsort(-iou[i]):
            if int(j) not in used and iou[i, j] >= thresh:
                used.add(int(j))
                pairs.append((i, int(j)))
                break
    return pairs
