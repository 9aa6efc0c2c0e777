"""unsam.evaluate: class-agnostic COCO AR/AP, checked against plain pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from scipy import ndimage

from tests.reference.coco_reference import pycocotools_metrics
from unsam.evaluation import METRIC_KEYS, evaluate
from unsam.evaluation.ar import prepare_ground_truth
from unsam.io.coco import MaskFileError, write_sam_json
from unsam.records import ImageRecord, MaskRecord, decode_rle, encode_mask, encode_masks

KEYS = [k for k in METRIC_KEYS if k != "images"]


def _degraded_predictions(gt_path: Path, seed: int = 0) -> list[dict]:
    """GT masks eroded/dilated/shifted/dropped plus random false positives, with random scores."""
    rng = np.random.default_rng(seed)
    coco = COCO(str(gt_path))
    results = []
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        h, w = info["height"], info["width"]
        for ann in coco.imgToAnns[img_id]:
            if rng.random() < 0.2:
                continue  # missed object
            m = coco.annToMask(ann).astype(bool)
            op = rng.integers(0, 4)
            if op == 1:
                m = ndimage.binary_erosion(m, iterations=int(rng.integers(1, 4)))
            elif op == 2:
                m = ndimage.binary_dilation(m, iterations=int(rng.integers(1, 6)))
            elif op == 3:
                m = np.roll(m, int(rng.integers(-8, 9)), axis=int(rng.integers(0, 2)))
            results.append(
                {
                    "image_id": img_id,
                    "category_id": 1,
                    "segmentation": encode_mask(m),
                    "score": float(rng.random()),
                }
            )
        for _ in range(int(rng.integers(0, 6))):  # false positives
            m = np.zeros((h, w), bool)
            y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
            m[y : y + int(rng.integers(5, 60)), x : x + int(rng.integers(5, 60))] = True
            results.append(
                {
                    "image_id": img_id,
                    "category_id": 1,
                    "segmentation": encode_mask(m),
                    "score": float(rng.random()),
                }
            )
    return results


@pytest.mark.data
def test_every_gt_mask_decodes_like_pycocotools(coco_gt: Path) -> None:
    coco = COCO(str(coco_gt))
    gt = prepare_ground_truth(coco_gt)
    assert len(gt["annotations"]) == len(coco.anns) == 1218
    for ours, ann in zip(gt["annotations"], coco.dataset["annotations"]):
        np.testing.assert_array_equal(
            decode_rle(ours["segmentation"]), coco.annToMask(ann).astype(bool)
        )
        assert ours["iscrowd"] == ann["iscrowd"] and ours["area"] == ann["area"]


@pytest.mark.data
def test_gt_against_itself_is_perfect(coco_gt: Path) -> None:
    m = evaluate(coco_gt, coco_gt)
    for key in ("AR@100", "AR@1000", "AP", "AP50", "AP75", "ARs@1000", "ARm@1000", "ARl@1000"):
        assert m[key] == pytest.approx(1.0), key
    assert m["images"] == 144 and m["gt_masks"] == 1204


@pytest.mark.data
@pytest.mark.parametrize("backend", ["faster-coco-eval", "pycocotools"])
def test_degraded_predictions_match_pycocotools(
    coco_gt: Path, tmp_path: Path, backend: str
) -> None:
    results = _degraded_predictions(coco_gt)
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(results))
    ours = evaluate(coco_gt, path, backend=backend)
    ref = pycocotools_metrics(coco_gt, path)
    for key in KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert 0.3 < ours["AR@1000"] < 0.95  # really degraded, really not empty


def _toy_gt(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    masks = [np.zeros((20, 30), bool) for _ in range(2)]
    masks[0][2:10, 3:12] = True
    masks[1][5:18, 15:28] = True
    gt = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 20, "width": 30},
            {"id": 2, "file_name": "b.jpg", "height": 20, "width": 30},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 5,
                "iscrowd": 0,
                "segmentation": encode_mask(masks[0]),
                "area": int(masks[0].sum()),
                "bbox": [3, 2, 9, 8],
            },
            {
                "id": 11,
                "image_id": 2,
                "category_id": 7,
                "iscrowd": 0,
                "segmentation": encode_mask(masks[1]),
                "area": int(masks[1].sum()),
                "bbox": [15, 5, 13, 13],
            },
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path, masks


def test_images_without_predictions_still_count(tmp_path: Path) -> None:
    """Regression (spec §10 bug 24): the original evaluated only images that had detections."""
    gt, masks = _toy_gt(tmp_path)
    pred = [{"image_id": 1, "category_id": 1, "segmentation": encode_mask(masks[0]), "score": 0.9}]
    m = evaluate(gt, pred)
    assert m["AR@1000"] == pytest.approx(0.5) and m["images"] == 2


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_paused_then_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """evaluate() runs with the cyclic GC off (a third of its time on large inputs) and leaves it
    as it found it, also when it raises."""
    import gc

    from unsam.evaluation import ar

    gt, masks = _toy_gt(tmp_path)
    pred = [{"image_id": 1, "category_id": 1, "segmentation": encode_mask(masks[0]), "score": 0.9}]
    seen: list[bool] = []
    real = ar._evaluate

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(ar, "_evaluate", spy)
    (gc.enable if enabled else gc.disable)()
    try:
        assert evaluate(gt, pred)["AR@1000"] == pytest.approx(0.5)
        assert seen == [False] and gc.isenabled() is enabled
        with pytest.raises(MaskFileError):
            evaluate(gt, [{"image_id": 1}])
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_pseudo_label_dataset_matched_by_file_name(tmp_path: Path) -> None:
    gt, masks = _toy_gt(tmp_path)
    # a pseudo-label dataset with other image ids and no scores: matched by file name, score 1.0
    pred = {
        "images": [
            {"id": 500, "file_name": "b.jpg", "height": 20, "width": 30},
            {"id": 501, "file_name": "sub/a.jpg", "height": 20, "width": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 500, "segmentation": encode_mask(masks[1])},
            {"id": 2, "image_id": 501, "segmentation": encode_mask(masks[0])},
        ],
    }
    m = evaluate(gt, pred)
    assert m["AR@1000"] == pytest.approx(1.0) and m["AP"] == pytest.approx(1.0)
    # class-agnostic: GT categories 5 and 7 do not matter
    swapped = evaluate(gt, [{"image_id": 2, "segmentation": encode_mask(masks[0]), "score": 1.0}])
    assert swapped["AR@1000"] == 0.0


def test_sa1b_folder_ground_truth(tmp_path: Path) -> None:
    _, masks = _toy_gt(tmp_path)
    folder = tmp_path / "sa1b"
    for i, m in enumerate(masks):
        rec = ImageRecord(id=i + 1, file_name=f"sa_{i + 1}.jpg", height=20, width=30)
        write_sam_json(
            folder / f"sa_{i + 1}.json", rec.with_masks([MaskRecord.from_mask(m)], assign_ids=True)
        )
    pred = [
        {"image_id": 1, "segmentation": encode_mask(masks[0]), "score": 0.5},
        {"image_id": 2, "segmentation": encode_masks(masks[1][None])[0], "score": 0.4},
    ]
    assert evaluate(folder, pred)["AR@1000"] == pytest.approx(1.0)


def test_crowd_regions_are_ignored_not_missed(tmp_path: Path) -> None:
    gt_path, masks = _toy_gt(tmp_path)
    gt = json.loads(gt_path.read_text())
    gt["annotations"][1]["iscrowd"] = 1
    m = evaluate(gt, [{"image_id": 1, "segmentation": encode_mask(masks[0]), "score": 1.0}])
    assert m["AR@1000"] == pytest.approx(1.0) and m["gt_masks"] == 1


@pytest.mark.parametrize(
    ("pred", "message"),
    [
        ([{"image_id": 1, "score": 1.0}], 'missing field "segmentation"'),
        (
            [{"image_id": 1, "segmentation": encode_mask(np.ones((5, 5), bool)), "score": 1.0}],
            'field "segmentation.size" is \\[5, 5\\] but ground-truth image 1 is \\[20, 30\\]',
        ),
        (
            [{"image_id": 1, "segmentation": encode_mask(np.ones((20, 30), bool)), "score": "x"}],
            'field "score"',
        ),
        ({"foo": 1}, "a dataset needs"),
    ],
)
def test_bad_predictions_name_the_field(tmp_path: Path, pred: object, message: str) -> None:
    gt, _ = _toy_gt(tmp_path)
    with pytest.raises(MaskFileError, match=message):
        evaluate(gt, pred)  # type: ignore[arg-type]


def test_bad_ground_truth_file(tmp_path: Path) -> None:
    bad = tmp_path / "gt.json"
    bad.write_text(
        '{"images": [{"id": 1, "height": 2, "width": 2}], '
        '"annotations": [{"image_id": 1, "segmentation": 3}]}'
    )
    with pytest.raises(MaskFileError, match=r"gt.json: annotations\[0\]: field \"segmentation\""):
        evaluate(bad, [])
    with pytest.raises(FileNotFoundError, match="no such file"):
        evaluate(tmp_path / "missing.json", [])
