"""Point(Max): the mask chosen among the model's 6 is the one with the highest *raw* predicted IoU,
the first one on ties (the original's ``argmax``). Hand-made cases whose answers are stated below,
through ``evaluate_segment``, ``summarize_points`` and the promptable predictor's wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.points_ref import point_metrics_naive
from unsam.evaluation.points import (
    PointEvalConfig,
    evaluate_segment,
    mask_ious,
    predictor_predict_fn,
    summarize_points,
)

HW = (10, 10)


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(HW, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# GT: rows 2-5 x cols 2-5 (16 px); its click is inside it. Six masks with distinct IoUs:
GT = _box(2, 6, 2, 6)
MASKS = np.stack(
    [
        _box(2, 6, 2, 6),  # 0: the GT                       IoU 16/16 = 1
        _box(2, 6, 2, 4),  # 1: left half (8 px)             IoU 8/16  = 0.5
        _box(2, 4, 2, 4),  # 2: quarter (4 px)               IoU 4/16  = 0.25
        np.zeros(HW, bool),  # 3: empty                      IoU 0/16  = 0
        _box(2, 6, 2, 8),  # 4: GT + 8 px to the right       IoU 16/24 = 2/3
        _box(2, 5, 2, 6),  # 5: top three rows (12 px)       IoU 12/16 = 0.75
    ]
)
IOUS = [1.0, 0.5, 0.25, 0.0, 2 / 3, 0.75]

# (predicted IoUs, index Point(Max) must pick): each case separates the rule from a plausible
# wrong one (named after the '#').
CASES = [
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.9], 5),  # the max is the last token (a range that stops at 5)
    ([0.9, 0.1, 0.2, 0.3, 0.4, 0.5], 0),  # the max is the first token
    ([0.2, 0.8, 0.1, 0.3, 0.8, 0.5], 1),  # tie 1 / 4: the first (not the last) maximum
    ([1.1, 1.3, 0.5, 0.2, 1.2, 0.0], 1),  # raw, unbounded IoUs (clipping to 1 ties 0, 1, 4 -> 0)
    ([-0.5, -0.1, -0.9, -0.3, -0.2, -0.8], 1),  # all negative (argmax of |p| would give 2)
    ([0.1, 0.2, 0.3, 0.95, 0.4, 0.5], 3),  # the chosen mask is empty: Max 0 while Oracle is 1
    ([0.3, 0.1, 0.2, 0.15, 0.25, 0.6], 5),  # the oracle mask (0) ranks second
]


def _fixed(masks: np.ndarray, pred: list[float]):  # type: ignore[no-untyped-def]
    def predict(image, points, labels):  # type: ignore[no-untyped-def]
        return masks, np.asarray(pred, dtype=np.float64)

    return predict


def test_the_six_masks_have_the_stated_ious() -> None:
    np.testing.assert_allclose(mask_ious(MASKS, GT), IOUS)


def test_mask_ious_of_partly_overlapping_masks() -> None:
    """Neither inside nor around the GT (rows 2-5 x cols 2-5, 16 px), so the union is larger
    than both areas: shifted right by 2 (16 px): 8 / 24; a 2 x 8 band across it (16 px): 8 / 24;
    a 3 x 3 at its corner (9 px): 4 / 21; disjoint: 0 / 20."""
    masks = np.stack([_box(2, 6, 4, 8), _box(3, 5, 0, 8), _box(4, 7, 4, 7), _box(7, 9, 7, 9)])
    np.testing.assert_allclose(mask_ious(masks, GT), [8 / 24, 8 / 24, 4 / 21, 0.0])


@pytest.mark.parametrize(("pred", "best"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_point_max_takes_the_first_highest_raw_predicted_iou(pred: list[float], best: int) -> None:
    image = np.zeros((*HW, 3), np.uint8)
    res = evaluate_segment(_fixed(MASKS, pred), image, GT, config=PointEvalConfig(short_side=None))
    assert res.max_ious == pytest.approx((IOUS[best],))
    assert res.oracle_ious == pytest.approx((1.0,))


def test_point_max_over_the_cases_matches_hand_sums_and_the_naive_reference() -> None:
    """Mean Max IoU over the 7 cases = (0.75 + 1 + 0.5 + 0.5 + 0.5 + 0 + 0.75) / 7 = 4 / 7;
    NoC@0.5: 6 cases reach 0.5 with one click (1 each), one never does (20) -> 26 / 7."""
    image = np.zeros((*HW, 3), np.uint8)
    config = PointEvalConfig(short_side=None)
    results = [evaluate_segment(_fixed(MASKS, p), image, GT, config=config) for p, _ in CASES]
    metrics = summarize_points(results, config=config)
    assert metrics["point_max_miou"] == pytest.approx(4 / 7)
    assert metrics["point_oracle_miou"] == pytest.approx(1.0)
    assert metrics["NoC@0.5"] == pytest.approx(26 / 7)
    naive = point_metrics_naive([(GT, MASKS, np.array(p)) for p, _ in CASES])
    assert metrics["point_max_miou"] == pytest.approx(naive["max"])
    assert metrics["NoC@0.5"] == pytest.approx(naive["NoC@0.5"])


class FakePromptablePredictor:
    """The two predictor calls the evaluation wrapper makes: logits +4 inside each of the 6 masks,
    -4 outside, and the given raw IoUs (one click)."""

    def __init__(self, pred: list[float]) -> None:
        self.pred = pred
        self.images = 0

    def set_image(self, image: np.ndarray) -> None:
        self.images += 1

    def predict_logits(self, points, *, independent, box_size):  # type: ignore[no-untyped-def]
        assert independent and box_size == 6.0 and len(points) == 1
        logits = torch.from_numpy(np.where(MASKS, 4.0, -4.0)).float()[None]
        return logits, torch.tensor([self.pred], dtype=torch.float32)


@pytest.mark.parametrize(("pred", "best"), CASES[2:5], ids=["tie", "unbounded", "negative"])
def test_predictor_wrapper_passes_the_six_raw_ious_and_masks(pred: list[float], best: int) -> None:
    fake = FakePromptablePredictor(pred)
    image = np.zeros((*HW, 3), np.uint8)
    config = PointEvalConfig(short_side=None)
    res = evaluate_segment(predictor_predict_fn(fake), image, GT, config=config)
    assert res.max_ious == pytest.approx((IOUS[best],))
    assert res.oracle_ious == pytest.approx((1.0,))
    assert fake.images == 1
