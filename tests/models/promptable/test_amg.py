"""Automatic mask generator of the promptable model and its mask math (spec PROMPTABLE.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unsam.models.promptable import PromptableConfig, build_model
from unsam.models.promptable.amg import AMGConfig, PromptableMaskGenerator
from unsam.models.promptable.maskops import (
    box_nms,
    boxes_xyxy_inclusive,
    point_grid,
    remove_small_regions,
    stability_scores,
)
from unsam.models.promptable.predictor import PromptablePredictor


def test_remove_small_regions_hand_made() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a 1-px hole
    mask[7, 7] = True  # a 1-px island
    filled, changed = remove_small_regions(mask, 2, "holes")
    assert changed and filled[3, 3] and filled[7, 7]
    cleaned, changed = remove_small_regions(filled, 2, "islands")
    assert changed and not cleaned[7, 7] and cleaned.sum() == 25
    same, changed = remove_small_regions(cleaned, 2, "islands")
    assert not changed and np.array_equal(same, cleaned)
    two = np.zeros((6, 6), dtype=bool)
    two[0, 0:2] = True
    two[4, 4] = True
    kept, changed = remove_small_regions(two, 10, "islands")  # all small: keep the largest
    assert changed and kept.sum() == 2 and kept[0, 0] and not kept[4, 4]


def test_boxes_stability_grid_hand_made() -> None:
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert boxes_xyxy_inclusive(masks).tolist() == [[2, 1, 4, 2], [0, 0, 0, 0]]
    logits = torch.tensor([[[2.0, 0.5, -0.5, -2.0]], [[-3.0, -3.0, -3.0, -3.0]]])
    assert stability_scores(logits).tolist() == pytest.approx([1 / 3, 1.0])
    np.testing.assert_allclose(
        point_grid(2), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    )


def test_box_nms_hand_made() -> None:
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 4]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.8, 0.95, 0.85])
    # box 1 overlaps box 0 with IoU 0.81 > 0.7; box 3 overlaps box 0 with IoU 0.4
    assert box_nms(boxes, scores, 0.7).tolist() == [2, 0, 3]
    assert box_nms(boxes, scores, 0.85).tolist() == [2, 0, 3, 1]
    assert box_nms(boxes[:0], scores[:0], 0.7).numel() == 0


@pytest.fixture(scope="module")
def predictor() -> PromptablePredictor:
    torch.manual_seed(0)
    m = build_model(PromptableConfig.tiny()).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return PromptablePredictor(m)


def _image() -> np.ndarray:
    rng = np.random.default_rng(1)
    img = np.full((48, 64, 3), 30, dtype=np.uint8)
    img[8:30, 10:40] = (220, 200, 30)
    return np.clip(img + rng.integers(0, 50, size=img.shape), 0, 255).astype(np.uint8)


def _permissive(**kw) -> AMGConfig:
    return AMGConfig(
        points_per_side=6, pred_iou_thresh=-1e9, stability_score_thresh=0.0, short_side=64, **kw
    )


def test_amg_records_and_nms(predictor) -> None:
    image = _image()
    records = PromptableMaskGenerator(predictor, _permissive(min_mask_region_area=0)).generate(
        image, 4
    )
    assert records and all(r.rle["size"] == [48, 64] and r.image_id == 4 for r in records)
    assert all(1 <= r.level <= 6 and r.stability_score is not None for r in records)
    ious = [r.predicted_iou for r in records]
    assert ious == sorted(ious, reverse=True)
    assert len(records) < 36 * 6  # NMS removed duplicates
    # no two kept masks at model-input size have box IoU > 0.7: recompute boxes from records
    b = torch.tensor(
        [
            [r.bbox[0], r.bbox[1], r.bbox[0] + r.bbox[2] - 1, r.bbox[1] + r.bbox[3] - 1]
            for r in records
        ],
        dtype=torch.float32,
    )
    assert len(box_nms(b, torch.tensor(ious), 0.7)) == len(records)


def test_amg_thresholds_filter(predictor) -> None:
    image = _image()
    loose = PromptableMaskGenerator(
        predictor, _permissive(box_nms_thresh=1.0, min_mask_region_area=0)
    )
    all_masks = loose.generate(image)
    assert len(all_masks) == 36 * 6  # nothing filtered, NMS at 1.0 keeps everything
    cut = float(np.median([r.predicted_iou for r in all_masks]))
    strict = PromptableMaskGenerator(
        predictor,
        AMGConfig(
            points_per_side=6,
            pred_iou_thresh=cut,
            stability_score_thresh=0.0,
            box_nms_thresh=1.0,
            min_mask_region_area=0,
            short_side=64,
        ),
    )
    kept = strict.generate(image)
    assert len(kept) == sum(r.predicted_iou > cut for r in all_masks)


def test_independent_amg_does_not_depend_on_batching(predictor) -> None:
    image = _image()
    a = PromptableMaskGenerator(
        predictor, _permissive(independent=True, points_per_batch=7)
    ).generate(image)
    b = PromptableMaskGenerator(
        predictor, _permissive(independent=True, points_per_batch=36)
    ).generate(image)
    assert [r.rle for r in a] == [r.rle for r in b]
    c = PromptableMaskGenerator(predictor, _permissive(points_per_batch=7)).generate(image)
    assert [r.predicted_iou for r in c] != [
        r.predicted_iou for r in a
    ]  # joint mode: batches interact


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="points_per_side"):
        AMGConfig(points_per_side=0)
    assert AMGConfig.demo().points_per_side == 80 and AMGConfig.demo().pred_iou_thresh == 0.7
