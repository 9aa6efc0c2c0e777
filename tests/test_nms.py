"""unsam.masks.greedy_nms / box_nms: the one NMS, on every IoU form, against the naive loop."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch

from tests.reference.nms_loop import nms_loop
from unsam.masks import batched_box_nms, box_nms, greedy_nms, mask_iou


def _random_masks(seed: int, n: int = 40) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        m = np.zeros((24, 24), bool)
        y, x = rng.integers(0, 12, 2)
        h, w = rng.integers(6, 13, 2)
        m[y : y + h, x : x + w] = True
        masks.append(m)
    masks += [masks[3].copy(), masks[7].copy()]  # exact duplicates
    scores = rng.integers(0, 6, len(masks)).astype(float)  # many ties: stable order matters
    return masks, scores


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("window", [None, 2, 5])
@pytest.mark.parametrize("thresh", [0.3, 0.6, 0.9])
def test_every_iou_form_equals_the_naive_loop(seed: int, window: int | None, thresh: float) -> None:
    masks, scores = _random_masks(seed)
    n = len(masks)
    dense = np.array([[mask_iou(masks[i], masks[j]) for j in range(n)] for i in range(n)])
    expected = nms_loop(masks, scores.tolist(), threshold=thresh, step=window)
    assert greedy_nms(scores, dense, thresh, window=window) == expected
    assert greedy_nms(scores, scipy.sparse.csr_matrix(dense), thresh, window=window) == expected
    calls: list[tuple[int, int]] = []

    def lazy(i: int, j: int) -> float:
        calls.append((i, j))
        return dense[i, j]

    assert greedy_nms(scores, lazy, thresh, window=window) == expected
    if window is not None:  # only pairs within the window are ever looked at
        rank = {k: r for r, k in enumerate(np.argsort(-scores, kind="stable"))}
        assert all(0 < rank[j] - rank[i] < window for i, j in calls)


def test_threshold_is_strictly_greater() -> None:
    iou = np.array([[1.0, 0.5], [0.5, 1.0]])
    assert greedy_nms([2.0, 1.0], iou, 0.5) == [0, 1]  # IoU == thresh keeps both
    assert greedy_nms([2.0, 1.0], iou, 0.49) == [0]


def _naive_box_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda k: -scores[k])  # stable
    keep: list[int] = []
    for i in order:
        ok = True
        for k in keep:
            a, b = boxes[i], boxes[k]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_box_nms_matches_a_naive_loop_and_groups_stay_apart() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (60, 2))
    wh = rng.uniform(5, 30, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.integers(0, 10, 60).astype(np.float32)
    got = box_nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).tolist()
    assert got == _naive_box_nms(boxes.astype(np.float64), scores, 0.4)
    groups = torch.tensor([0, 1] * 30)
    kept = batched_box_nms(torch.from_numpy(boxes), torch.from_numpy(scores), groups, 0.4).tolist()
    expected = set()
    for g in (0, 1):
        idx = np.flatnonzero(groups.numpy() == g)
        expected |= {
            int(idx[k]) for k in _naive_box_nms(boxes[idx].astype(np.float64), scores[idx], 0.4)
        }
    assert set(kept) == expected
    assert [scores[k] for k in kept] == sorted((scores[k] for k in kept), reverse=True)
