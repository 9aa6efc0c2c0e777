"""Eval input coverage (issue 8.7): polygon results at the GT sizes, bbox-only results, bad RLEs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unsam import evaluate
from unsam.records import encode_mask, rle_counts_errors


def _gt(tmp_path: Path) -> Path:
    m = np.zeros((20, 30), bool)
    m[5:15, 10:20] = True  # box x=10, y=5, w=10, h=10
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "height": 20, "width": 30}],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 1,
                        "category_id": 1,
                        "segmentation": encode_mask(m),
                        "area": 100,
                        "bbox": [10, 5, 10, 10],
                        "iscrowd": 0,
                    }
                ],
                "categories": [{"id": 1, "name": "object"}],
            }
        )
    )
    return gt


def test_polygon_results_use_the_gt_image_size(tmp_path: Path) -> None:
    # the polygon of the GT square; pycocotools rasterises it at the GT image's size
    poly = [[10, 5, 20, 5, 20, 15, 10, 15]]
    pred = [{"image_id": 1, "category_id": 1, "segmentation": poly, "score": 0.9}]
    m = evaluate(_gt(tmp_path), pred)
    assert m["AR@1"] == pytest.approx(1.0)
    shifted = [
        {
            "image_id": 1,
            "category_id": 1,
            "segmentation": [[18, 5, 28, 5, 28, 15, 18, 15]],
            "score": 0.9,
        }
    ]
    assert evaluate(_gt(tmp_path), shifted)["AR@1"] == pytest.approx(0.0)


def test_bbox_only_results_score_with_iou_type_bbox(tmp_path: Path) -> None:
    exact = [{"image_id": 1, "bbox": [10, 5, 10, 10], "score": 0.9}]
    assert evaluate(_gt(tmp_path), exact, iou_type="bbox")["AR@1"] == pytest.approx(1.0)
    # IoU 50/150 = 0.33 < 0.5: not a match at any threshold
    off = [{"image_id": 1, "bbox": [15, 5, 10, 10], "score": 0.9}]
    assert evaluate(_gt(tmp_path), off, iou_type="bbox")["AR@1"] == pytest.approx(0.0)
    # IoU 90/110 = 0.818: matched at thresholds 0.50 .. 0.80 (7 of 10)
    close = [{"image_id": 1, "bbox": [11, 5, 10, 10], "score": 0.9}]
    assert evaluate(_gt(tmp_path), close, iou_type="bbox")["AR@1"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match='missing field "segmentation"; it has only a bbox'):
        evaluate(_gt(tmp_path), exact)


def test_rle_checker_accepts_every_pycocotools_encoding_and_names_each_defect() -> None:
    rng = np.random.default_rng(0)
    rles = []
    for _ in range(300):
        h, w = rng.integers(1, 50, 2)
        rles.append(encode_mask(rng.random((h, w)) < rng.random()))
    rles.append(encode_mask(np.zeros((7, 9), bool)))
    rles.append(encode_mask(np.ones((300, 400), bool)))
    assert rle_counts_errors(rles) == []
    good = rles[0]["counts"]
    h, w = rles[0]["size"]
    bad = [
        {
            "size": [h, w],
            "counts": good[:-1] + chr(ord("0") + 0x20),
        },  # continuation bit on the last char
        {"size": [h, w + 1], "counts": good},  # runs do not add up to H*W
        {"size": [h, w], "counts": good + "~"},  # outside the alphabet
        {"size": [h, w], "counts": ""},
    ]
    reasons = dict(rle_counts_errors(rles + bad))
    n = len(rles)
    assert set(reasons) == {n, n + 1, n + 2, n + 3}
    assert (
        "truncated" in reasons[n] and "add up to" in reasons[n + 1] and "alphabet" in reasons[n + 2]
    )
