"""Coverage filter, per-region NMS and pasting (spec §3.3) against loop references."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference.nms_loop import nms_loop
from unsam.conquer.filter import coverage, paste_mask, windowed_nms


def blob_masks(seed: int, n: int = 40, hw: tuple[int, int] = (64, 72)) -> np.ndarray:
    """Rectangles and their slightly shifted/grown copies: many pairs with IoU around 0.9."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, *hw), dtype=bool)
    base = []
    for k in range(n):
        if base and rng.random() < 0.7:  # near-duplicate of an earlier rectangle
            y0, x0, y1, x1 = base[rng.integers(len(base))]
            y0, x0 = y0 + rng.integers(-1, 2), x0 + rng.integers(-1, 2)
            y1, x1 = y1 + rng.integers(-1, 2), x1 + rng.integers(-1, 2)
        else:
            y0, x0 = rng.integers(0, hw[0] - 30), rng.integers(0, hw[1] - 30)
            y1, x1 = y0 + rng.integers(16, 30), x0 + rng.integers(16, 30)
            base.append((y0, x0, y1, x1))
        masks[k, max(y0, 0) : y1, max(x0, 0) : x1] = True
    return masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [2, 3, 5, None])
def test_windowed_nms_matches_loop_reference(seed: int, window: int | None) -> None:
    masks = blob_masks(seed)
    areas = masks.sum(axis=(1, 2))
    expected = nms_loop(list(masks), areas.tolist(), threshold=0.9, step=window)
    if window is None:
        got = windowed_nms(masks, areas, 0.9, full_nms=True)
    else:
        got = windowed_nms(masks, areas, 0.9, window)
    assert got == expected


def test_reference_cases_actually_remove_masks() -> None:
    masks = blob_masks(0)
    areas = masks.sum(axis=(1, 2))
    windowed = windowed_nms(masks, areas, 0.9, 5)
    full = windowed_nms(masks, areas, 0.9, full_nms=True)
    assert len(full) < len(windowed) < len(masks)


def test_window_counts_positions() -> None:
    """Six identical masks: window 5 reaches positions 1..4 only, so the sixth survives (bug 17)."""
    masks = np.zeros((6, 4, 4), dtype=bool)
    masks[:, 1:3, 1:3] = True
    areas = [4] * 6
    assert windowed_nms(masks, areas, 0.9, 5) == [0, 5]
    assert windowed_nms(masks, areas, 0.9, 2) == [0, 2, 4]
    assert windowed_nms(masks, areas, 0.9, full_nms=True) == [0]


def test_ranking_by_score_and_strict_threshold() -> None:
    masks = np.zeros((3, 1, 10), dtype=bool)
    masks[0, 0, :10] = True  # area 10
    masks[1, 0, :9] = True  # IoU with mask 0 = 0.9 exactly: not a duplicate (> 0.9 is)
    masks[2, 0, :1] = True
    assert windowed_nms(masks, [10, 9, 1], 0.9) == [0, 1, 2]
    assert windowed_nms(masks, [10, 9, 1], 0.89) == [0, 2]
    # scores other than area: the highest-scored mask wins the duplicate pair
    assert windowed_nms(masks, [1.0, 5.0, 3.0], 0.89) == [1, 2]


def test_nms_edge_cases() -> None:
    assert windowed_nms(np.zeros((0, 3, 3), dtype=bool), []) == []
    empty = np.zeros((2, 3, 3), dtype=bool)
    assert windowed_nms(empty, [0, 0]) == [0, 1]  # IoU of empty masks is 0
    with pytest.raises(ValueError, match="one value per mask"):
        windowed_nms(empty, [1.0])
    with pytest.raises(ValueError, match="window must be >= 2"):
        windowed_nms(empty, [1, 1], window=1)
    with pytest.raises(ValueError, match="same grid"):
        windowed_nms([np.ones((2, 2), bool), np.ones((3, 3), bool)], [1, 1])


def test_coverage_hand_values() -> None:
    region = np.zeros((4, 4), dtype=bool)
    region[:, :2] = True
    masks = np.zeros((4, 4, 4), dtype=bool)
    masks[0, :2, :2] = True  # fully inside
    masks[1, 0, :] = True  # half inside
    masks[2, :, 3] = True  # outside
    cov = coverage(masks, region)
    np.testing.assert_array_equal(cov, [1.0, 0.5, 0.0, 0.0])  # last one is empty: 0
    assert cov.dtype == np.float64
    with pytest.raises(ValueError, match="region"):
        coverage(masks, region[:3])


def test_paste_mask() -> None:
    crop = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)
    out = paste_mask(crop, (2, 1, 5, 3), (4, 6))
    expected = np.zeros((4, 6), dtype=bool)
    expected[1:3, 2:5] = crop
    np.testing.assert_array_equal(out, expected)
    full = paste_mask(np.ones((4, 6), bool), (0, 0, 6, 4), (4, 6))  # box touching the far edges
    assert full.all()
    with pytest.raises(ValueError, match="needs"):
        paste_mask(crop, (2, 1, 6, 3), (4, 6))
    with pytest.raises(ValueError, match="not inside"):
        paste_mask(crop, (4, 1, 7, 3), (4, 6))
