"""Brute-force reference of the many-to-many click matching (PROMPTABLE.md §3.5).

Costs are computed entry by entry from their formulas; the assignment enumerates every way to
give each target its own token of the same click and keeps the cheapest. Only for tiny cases
(a few clicks, a few targets each). Does not import unsam.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, t: float) -> float:
    # -(t log σ(x) + (1 - t) log(1 - σ(x)))
    p = _sigmoid(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def cost_naive(
    logits: np.ndarray,
    labels: np.ndarray,
    pred_boxes=None,
    target_boxes=None,
    w_ce: float = 5.0,
    w_dice: float = 5.0,
    w_l1: float = 5.0,
    w_giou: float = 2.0,
) -> np.ndarray:
    """logits (Q, P), labels (T, P) in [0, 1], boxes (Q, 4) / (T, 4) cxcywh -> (Q, T) float64."""
    q_n, p_n = logits.shape
    t_n = labels.shape[0]
    out = np.zeros((q_n, t_n))
    for q in range(q_n):
        for t in range(t_n):
            ce = sum(_bce(float(logits[q, p]), float(labels[t, p])) for p in range(p_n)) / p_n
            probs = [_sigmoid(float(v)) for v in logits[q]]
            inter = sum(probs[p] * labels[t, p] for p in range(p_n))
            dice = 1 - (2 * inter + 1) / (sum(probs) + labels[t].sum() + 1)
            c = w_ce * ce + w_dice * dice
            if pred_boxes is not None:
                c += w_l1 * float(np.abs(pred_boxes[q] - target_boxes[t]).sum())
                c -= w_giou * giou_naive(pred_boxes[q], target_boxes[t])
            out[q, t] = c
    return out


def giou_naive(a, b) -> float:
    """GIoU of two (cx, cy, w, h) boxes."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def brute_force_match(cost: np.ndarray, query_click, target_click) -> tuple[float, dict[int, int]]:
    """Cheapest assignment target -> query of the same click, each query used at most once.

    Returns:
        (total cost, {target index: query index}).
    """
    clicks = sorted({int(c) for c in target_click})
    best_total = 0.0
    best: dict[int, int] = {}
    for c in clicks:  # clicks are independent: the optimum is the sum of per-click optima
        targets = [t for t, tc in enumerate(target_click) if tc == c]
        queries = [q for q, qc in enumerate(query_click) if qc == c]
        click_best = (math.inf, None)
        for perm in itertools.permutations(queries, len(targets)):
            total = sum(cost[q, t] for q, t in zip(perm, targets))
            if total < click_best[0]:
                click_best = (total, perm)
        best_total += click_best[0]
        best.update({t: q for t, q in zip(targets, click_best[1])})
    return best_total, best
