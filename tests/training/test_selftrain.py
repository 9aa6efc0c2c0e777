"""Self-training selection and the UnSAM+ ground-truth merge on hand-made masks (spec §6.6)."""

from __future__ import annotations

import numpy as np
import pytest

from unsam.records import ImageRecord, MaskRecord, annotation_id
from unsam.training.whole_image.selftrain import (
    MergeGTConfig,
    SelfTrainConfig,
    add_model_masks,
    merge_ground_truth,
    overlap_matrix,
    select_new_masks,
)

H = W = 20


def _mask(rows: tuple[int, int], cols: tuple[int, int], **fields: object) -> MaskRecord:
    m = np.zeros((H, W), dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return MaskRecord.from_mask(m, **fields)


def test_overlap_matrix_iou_and_ioa_hand_computed() -> None:
    a = [_mask((9, 12), (12, 15))]  # 9 px, 3 of them in row 9
    b = [_mask((0, 10), (0, 20))]  # 200 px
    assert overlap_matrix(a, b, "iou")[0, 0] == pytest.approx(3 / 206)
    assert overlap_matrix(a, b, "ioa")[0, 0] == pytest.approx(3 / 9)
    assert overlap_matrix([], b).shape == (0, 1)


# ----------------------------------------------------------------------------- UnSAM+ merge
def _gt_and_pseudo() -> tuple[list[ImageRecord], list[ImageRecord]]:
    gt = [
        ImageRecord(
            7,
            "a.png",
            H,
            W,
            (
                _mask((0, 10), (0, 20), id=1, image_id=7),
                _mask((15, 20), (15, 20), id=2, image_id=7),
            ),
        ),
        ImageRecord(
            8, "c.png", H, W, (_mask((0, 5), (0, 5), id=3, image_id=8),)
        ),  # no pseudo-labels
    ]
    pseudo = [
        ImageRecord(
            1,
            "a.png",
            H,
            W,
            (
                _mask((0, 10), (0, 20), id=101, image_id=1),  # = GT 1: IoU 1
                _mask((10, 15), (0, 10), id=102, image_id=1),  # touches no GT
                _mask(
                    (9, 11), (0, 10), id=103, image_id=1, parent_id=101
                ),  # IoU 10/210 = 0.048 with GT 1
                _mask(
                    (9, 12), (12, 15), id=104, image_id=1, parent_id=102
                ),  # IoU 3/206 = 0.015, IoA 3/9
            ),
        ),
        ImageRecord(2, "b.png", H, W, (_mask((0, 3), (0, 3), id=201, image_id=2),)),  # no GT
    ]
    return gt, pseudo


def test_merge_gt_keeps_pseudo_masks_that_overlap_no_gt_mask() -> None:
    gt, pseudo = _gt_and_pseudo()
    merged, stats = merge_ground_truth(gt, pseudo)
    assert [(img.id, img.file_name) for img in merged] == [(1, "a.png"), (2, "b.png"), (8, "c.png")]
    a, b, c = merged
    assert [m.id for m in a.masks] == [
        1,
        2,
        102,
        104,
    ]  # GT first (ids kept), then surviving pseudo-masks
    assert [m.source for m in a.masks[:2]] == ["gt", "gt"] and all(m.image_id == 1 for m in a.masks)
    assert a.masks[3].parent_id == 102  # its parent survived
    assert [m.id for m in b.masks] == [201]  # no ground truth: kept as is
    assert [m.id for m in c.masks] == [3] and c.masks[0].source == "gt"
    assert (stats.base_masks, stats.added_masks, stats.dropped_masks, stats.unmatched_images) == (
        3,
        3,
        2,
        1,
    )


def test_merge_gt_intersection_over_pseudo_area() -> None:
    gt, pseudo = _gt_and_pseudo()
    merged, _ = merge_ground_truth(gt, pseudo, MergeGTConfig(overlap="ioa"))
    assert [m.id for m in merged[0].masks] == [1, 2, 102]


def test_merge_gt_threshold_is_strict() -> None:
    gt, pseudo = _gt_and_pseudo()
    merged, _ = merge_ground_truth(gt, pseudo, MergeGTConfig(iou_thresh=10 / 210))
    assert 103 not in [m.id for m in merged[0].masks]  # IoU == threshold: dropped
    merged, _ = merge_ground_truth(gt, pseudo, MergeGTConfig(iou_thresh=10 / 210 + 1e-9))
    assert 103 in [m.id for m in merged[0].masks]
    assert (
        next(m for m in merged[0].masks if m.id == 103).parent_id is None
    )  # parent 101 was dropped


def test_merge_gt_renumbers_colliding_gt_ids_and_matches_by_id() -> None:
    gt = [ImageRecord(5, "other.png", H, W, (_mask((0, 2), (0, 2), id=102, image_id=5),))]
    pseudo = [ImageRecord(5, "z.png", H, W, (_mask((10, 15), (0, 10), id=102, image_id=5),))]
    merged, stats = merge_ground_truth(gt, pseudo)
    assert len(merged) == 1 and stats.unmatched_images == 0  # matched by id
    assert [m.id for m in merged[0].masks] == [annotation_id(5, 1), 102]


def test_merge_gt_size_mismatch_is_an_error() -> None:
    gt = [ImageRecord(1, "a.png", 10, 10, ())]
    pseudo = [ImageRecord(1, "a.png", H, W, ())]
    with pytest.raises(
        ValueError,
        match=(
            r"ground-truth image 1 \(a.png\) is 10x10 but "
            r"pseudo-label image 1 \(a.png\) is 20x20"
        ),
    ):
        merge_ground_truth(gt, pseudo)


# ----------------------------------------------------------------------------- self-training
def _predictions() -> list[MaskRecord]:
    return [
        _mask((10, 20), (10, 20), score=0.3),  # q4: below the score threshold
        _mask((0, 10), (0, 20), score=0.9),  # q1: duplicates the pseudo-mask
        _mask((10, 20), (0, 10), score=0.8),  # q2: new
        _mask((10, 20), (0, 9), score=0.7),  # q3: IoU 0.9 with q2
        _mask((10, 20), (10, 20), score=0.6),  # q5: new
    ]


def test_select_new_masks_by_score_and_iou() -> None:
    existing = [_mask((0, 10), (0, 20))]
    got = select_new_masks(
        existing, _predictions(), SelfTrainConfig(score_thresh=0.5, iou_thresh=0.5)
    )
    assert [m.score for m in got] == [0.8, 0.6]
    got = select_new_masks(
        existing, _predictions(), SelfTrainConfig(score_thresh=0.5, iou_thresh=0.5, dedupe=False)
    )
    assert [m.score for m in got] == [0.8, 0.7, 0.6]
    got = select_new_masks(
        existing, _predictions(), SelfTrainConfig(score_thresh=0.2, iou_thresh=0.5)
    )
    assert [m.score for m in got] == [0.8, 0.6]  # q4 (0.3) now passes the score but duplicates q5


def test_add_model_masks_assigns_deterministic_ids() -> None:
    pseudo = [
        ImageRecord(
            1, "a.png", H, W, (_mask((0, 10), (0, 20), id=annotation_id(1, 0), image_id=1),)
        ),
        ImageRecord(2, "b.png", H, W, (_mask((0, 3), (0, 3), id=annotation_id(2, 0), image_id=2),)),
    ]
    out, stats = add_model_masks(pseudo, {1: _predictions()}, SelfTrainConfig())
    assert [m.id for m in out[0].masks] == [
        annotation_id(1, 0),
        annotation_id(1, 1),
        annotation_id(1, 2),
    ]
    assert [m.source for m in out[0].masks[1:]] == ["model", "model"]
    assert [m.score for m in out[0].masks[1:]] == [0.8, 0.6]
    assert out[1] == pseudo[1]  # no predictions for image 2
    assert (stats.base_masks, stats.added_masks, stats.dropped_masks, stats.unmatched_images) == (
        2,
        2,
        2,
        1,
    )
    again, _ = add_model_masks(pseudo, {1: _predictions()}, SelfTrainConfig())
    assert [m.id for m in again[0].masks] == [m.id for m in out[0].masks]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="score_thresh=1.5 is outside"):
        SelfTrainConfig(score_thresh=1.5)
    with pytest.raises(ValueError, match="iou_thresh=0.0 is outside"):
        MergeGTConfig(iou_thresh=0.0)
