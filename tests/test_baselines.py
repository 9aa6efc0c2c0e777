"""unsam.baselines: cross-scale de-duplication and the ranking (coarse scales first, larger
first)."""

from __future__ import annotations

import numpy as np
import pytest

from unsam import baselines
from unsam.baselines import BaselineConfig, BaselineProducer, baseline_masks
from unsam.records import decode_rle

H, W = 20, 20


def _label_maps() -> list[np.ndarray]:
    """Three segmentations of a 20x20 image, coarse to fine (the order _segmentations returns).

    scale 0: left (8 columns, 160 px) | right (12 columns, 240 px)
    scale 1: left (the same region again) | right-top (rows 0-11, 144 px) | right-bottom (96 px)
    scale 2: left-top (rows 0-4, 40 px) | left-bottom (120 px) | right-top (the same again) |
             right-bottom split into columns 8-13 (48 px) and 14-19 (48 px)
    """
    s0 = np.zeros((H, W), np.int64)
    s0[:, 8:] = 1
    s1 = s0.copy()
    s1[12:, 8:] = 2
    s2 = np.zeros((H, W), np.int64)
    s2[5:, :8] = 1
    s2[:12, 8:] = 2
    s2[12:, 8:14] = 3
    s2[12:, 14:] = 4
    return [s0 * 7 + 3, s1, s2 + 10]  # arbitrary label values: the code renumbers them


@pytest.fixture
def fake_segmentations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baselines, "_segmentations", lambda image, config: _label_maps())


def _described(records) -> list[tuple[int, int]]:
    """(scale rank, area) of each record; level = 1 + the scale's rank (0 means object-level)."""
    return [(r.level - 1, int(decode_rle(r.rle).sum())) for r in records]


def test_duplicates_across_scales_are_dropped(fake_segmentations: None) -> None:
    image = np.zeros((H, W, 3), np.uint8)
    out = baseline_masks(image, BaselineConfig())
    # 2 + 3 + 5 = 10 regions; the left half repeats at scale 1 and the right-top at scale 2: 8 kept
    assert len(out) == 8
    assert _described(out) == [
        (0, 240),
        (0, 160),  # scale 0: larger first
        (1, 144),
        (1, 96),  # scale 1 without its copy of the left half
        (2, 120),
        (2, 48),
        (2, 48),
        (2, 40),  # scale 2 without its copy of the right-top
    ]
    masks = [decode_rle(r.rle) for r in out]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert not np.array_equal(masks[i], masks[j])
    assert all(r.source == "felzenszwalb" for r in out)
    # nothing is a duplicate at a threshold of 1.0 (IoU > 1 never holds): all 10 come out
    assert len(baseline_masks(image, BaselineConfig(dedup_iou_thresh=1.0))) == 10


def test_scores_rank_coarse_scales_first_then_larger_regions(fake_segmentations: None) -> None:
    out = baseline_masks(np.zeros((H, W, 3), np.uint8), BaselineConfig())
    scores = [r.score for r in out]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores[:5])) == 5 and scores[5] == scores[6]  # the two 48-px regions tie
    # score = (levels - level + sqrt(area fraction)) / (levels + 1), levels = 3
    expected = [(3 - lv + np.sqrt(area / (H * W))) / 4 for lv, area in _described(out)]
    assert scores == pytest.approx(expected, abs=1e-12)
    # every mask of a coarser scale ranks above every mask of a finer one
    levels = [r.level for r in out]
    assert levels == sorted(levels)
    # max_masks keeps the best: the two coarse halves
    top2 = baseline_masks(np.zeros((H, W, 3), np.uint8), BaselineConfig(max_masks=2))
    assert _described(top2) == [(0, 240), (0, 160)]


def test_area_limits(fake_segmentations: None) -> None:
    # regions of 40 px (0.1 of the image) and less are dropped by min_area_frac 0.11; halves by
    # max 0.5
    out = baseline_masks(
        np.zeros((H, W, 3), np.uint8), BaselineConfig(min_area_frac=0.11, max_area_frac=0.5)
    )
    assert _described(out) == [(0, 160), (1, 144), (1, 96), (2, 120), (2, 48), (2, 48)]


def test_real_felzenszwalb_repeats_are_kept_once() -> None:
    """Two flat rectangles on a flat background segment the same way at every one of the 5 scales
    (without pre-smoothing, which would add boundary strips): 3 regions each, 15 in all, 3 after
    de-duplication, all from the coarsest scale (the background first: larger)."""
    image = np.full((64, 96, 3), (40, 40, 40), np.uint8)
    image[5:40, 5:40] = (230, 30, 30)  # 1225 px
    image[20:60, 50:90] = (30, 30, 230)  # 1600 px
    config = BaselineConfig(felzenszwalb_sigma=0.0)
    out = baseline_masks(image, config)
    assert [r.level for r in out] == [1, 1, 1]
    areas = [int(decode_rle(r.rle).sum()) for r in out]
    assert areas == [64 * 96 - 1225 - 1600, 1600, 1225]
    loose = baseline_masks(image, BaselineConfig(felzenszwalb_sigma=0.0, dedup_iou_thresh=1.0))
    assert sorted(r.level for r in loose) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    producer = BaselineProducer(config)
    records = producer(image, image_id=7)
    assert [r.image_id for r in records] == [7, 7, 7]
    assert (
        producer.settings()["producer"] == "baseline"
        and producer.settings()["method"] == "felzenszwalb"
    )


def test_real_felzenszwalb_coarsest_scale_is_level_1() -> None:
    """With the default pre-smoothing the same image gives 3 regions at scale 3000 and ~30 at 50
    (blur strips along the edges): level 1 must be the coarse one, ranked first."""
    image = np.full((64, 96, 3), (40, 40, 40), np.uint8)
    image[5:40, 5:40] = (230, 30, 30)
    image[20:60, 50:90] = (30, 30, 230)
    out = baseline_masks(image, BaselineConfig())
    levels = [r.level for r in out]
    assert levels == sorted(levels) and levels[:3] == [1, 1, 1] and max(levels) == 5
    per_level = {
        lv: [int(decode_rle(r.rle).sum()) for r in out if r.level == lv] for lv in set(levels)
    }
    assert per_level[1] == [64 * 96 - 1225 - 1600, 1600, 1225]
    assert (
        len(per_level[5]) > 20 and float(np.median(per_level[5])) < 100
    )  # the finest: many strips
