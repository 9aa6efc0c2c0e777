"""unsam.records: the one mask-record type and the RLE codec (pycocotools)."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from unsam.records import (
    ImageRecord,
    MaskRecord,
    annotation_id,
    decode_rle,
    decode_rles,
    encode_mask,
    encode_masks,
    encode_transposed_masks,
    normalize_rle,
    rle_iou_matrix,
)


def _random_masks(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        masks[i, y0 : rng.integers(y0 + 1, h), x0 : rng.integers(x0 + 1, w)] = True
        masks[i] ^= rng.random((h, w)) < 0.05
    return masks


def test_encode_decode_round_trip_matches_pycocotools() -> None:
    masks = _random_masks(7, 23, 31)
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [23, 31] for r in rles)
    np.testing.assert_array_equal(decode_rles(rles), masks)
    # the codec is pycocotools' own: same bytes as its batch encoder
    ref = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in rles] == [r["counts"].decode() for r in ref]
    np.testing.assert_array_equal(decode_rle(encode_mask(masks[3])), masks[3])


def test_transposed_masks_encode_to_the_same_rles() -> None:
    """(N, W, H) masks stored transposed give the bytes encode_masks gives the (N, H, W) masks."""
    masks = _random_masks(5, 23, 31, seed=4)
    rles = encode_transposed_masks(np.ascontiguousarray(masks.transpose(0, 2, 1)))
    assert rles == encode_masks(masks)
    assert all(r["size"] == [23, 31] for r in rles)
    assert encode_transposed_masks(np.zeros((0, 3, 2), dtype=bool)) == []
    as_uint8 = masks.transpose(0, 2, 1).astype(np.uint8) * 7  # nonzero is foreground
    assert encode_transposed_masks(as_uint8) == rles


def test_area_and_bbox_are_derived_from_the_rle() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    rec = MaskRecord.from_mask(mask, image_id=4, score=0.5)
    assert rec.area == 18
    assert rec.bbox == [3.0, 2.0, 6.0, 3.0]
    assert rec.image_hw == (10, 12)
    empty = MaskRecord.from_mask(np.zeros((4, 4), bool))
    assert empty.area == 0 and empty.bbox == [0.0, 0.0, 0.0, 0.0]


def test_polygon_and_uncompressed_rle_normalise_to_compressed() -> None:
    poly = [[1.0, 1.0, 8.0, 1.0, 8.0, 6.0, 1.0, 6.0]]
    rle = normalize_rle(poly, (10, 10))
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, 10, 10)))
    np.testing.assert_array_equal(decode_rle(rle), ref.astype(bool))
    unc = {"size": [3, 2], "counts": [1, 2, 3]}
    np.testing.assert_array_equal(
        decode_rle(normalize_rle(unc, None)), np.array([[0, 0], [1, 0], [1, 0]], bool)
    )  # column-major runs
    with pytest.raises(ValueError, match="needs the image height"):
        normalize_rle(poly, None)
    with pytest.raises(ValueError, match="expected polygons"):
        normalize_rle(42, (3, 3))


def test_coco_dict_round_trip_keeps_every_field() -> None:
    mask = np.zeros((6, 7), bool)
    mask[1:4, 2:6] = True
    rec = MaskRecord.from_mask(
        mask,
        image_id=3,
        id=annotation_id(3, 2),
        score=0.25,
        predicted_iou=0.9,
        stability_score=0.8,
        point_coords=((2.0, 3.0),),
        crop_box=(0.0, 0.0, 7.0, 6.0),
        level=2,
        parent_id=annotation_id(3, 0),
        theta=0.5,
        source="conquer",
        refined="crf",
    )
    back = MaskRecord.from_coco(rec.to_coco(), (6, 7))
    assert back == rec
    sam = rec.to_sam()
    assert sam["predicted_iou"] == 0.9 and sam["point_coords"] == [[2.0, 3.0]] and sam["area"] == 12
    assert rec.to_result() == {
        "image_id": 3,
        "category_id": 1,
        "segmentation": rec.rle,
        "score": 0.25,
    }


def test_bad_records_name_the_field() -> None:
    with pytest.raises(ValueError, match="compressed RLE"):
        MaskRecord(rle={"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match='a.json: \\[3\\]: field "score" must be a number'):
        MaskRecord.from_coco(
            {"segmentation": encode_mask(np.ones((2, 2), bool)), "score": "high"},
            where="a.json: [3]",
        )
    with pytest.raises(
        ValueError, match='field "segmentation.size" is \\[2, 2\\] but the image is \\[3, 3\\]'
    ):
        MaskRecord.from_coco({"segmentation": encode_mask(np.ones((2, 2), bool))}, (3, 3))


def test_annotation_ids_are_deterministic_and_unique() -> None:
    rec = ImageRecord(id=139, file_name="a.jpg", height=4, width=4)
    masks = [MaskRecord.from_mask(np.eye(4, dtype=bool)) for _ in range(3)]
    out = rec.with_masks(masks, assign_ids=True)
    assert [m.id for m in out.masks] == [139_000_000, 139_000_001, 139_000_002]
    assert {m.image_id for m in out.masks} == {139}
    assert annotation_id(1, 0) != annotation_id(0, 999_999)
    with pytest.raises(ValueError):
        annotation_id(1, 1_000_000)


def test_rle_iou_matrix_matches_dense_iou() -> None:
    masks = _random_masks(5, 16, 16, seed=1)
    rles = encode_masks(masks)
    iou = rle_iou_matrix(rles, rles[:3])
    for i in range(5):
        for j in range(3):
            inter = (masks[i] & masks[j]).sum()
            union = (masks[i] | masks[j]).sum()
            assert iou[i, j] == pytest.approx(inter / union)


def test_sam_fields_are_null_when_nothing_computed_them() -> None:
    """Issue 11.3: no placeholder stability 1.0 / predicted_iou = score / point_coords []."""
    import numpy as np

    from unsam.records import MaskRecord

    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    sam = MaskRecord.from_mask(mask, score=0.3, source="conquer").to_sam()
    assert (
        sam["predicted_iou"] is None
        and sam["stability_score"] is None
        and sam["point_coords"] is None
    )
    back = MaskRecord.from_coco({**sam, "image_id": 0}, (4, 5))
    assert back.score == 0.3 and back.predicted_iou is None and back.stability_score is None
    no_score = {k: v for k, v in sam.items() if k != "score"}
    assert MaskRecord.from_coco({**no_score, "image_id": 0}, (4, 5)).score == 1.0
