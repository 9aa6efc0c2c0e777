"""List-based NMS that mimics the original conquer ``NMS()`` (spec §3.3), step by step.

The original sorts the masks by area (``sorted(..., reverse=True)``, stable), keeps a list of
kept positions, and for every still-kept position i compares the masks at positions
``range(i + 1, min(n, i + step))`` and ``list.remove``s those with IoU > threshold.
Returns input indices (not masks) of the kept ones, in sorted order.
"""

from __future__ import annotations

import numpy as np


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(np.logical_and(a, b))
    union = np.count_nonzero(a) + np.count_nonzero(b) - inter
    if union == 0:
        return 0
    return inter / union


def nms_loop(masks, scores, threshold: float = 0.9, step: int | None = 5) -> list[int]:
    """``step=None``: compare every later position (plain greedy NMS)."""
    ranked = sorted(range(len(masks)), key=lambda k: scores[k], reverse=True)
    kept_positions = list(range(len(ranked)))
    for i in range(len(ranked)):
        if i in kept_positions:
            stop = len(ranked) if step is None else min(len(ranked), i + step)
            for j in range(i + 1, stop):
                if _iou(masks[ranked[i]], masks[ranked[j]]) > threshold:
                    if j in kept_positions:
                        kept_positions.remove(j)
    return [ranked[i] for i in kept_positions]
