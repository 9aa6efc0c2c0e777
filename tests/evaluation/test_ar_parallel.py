"""Parallel evaluation (unsam.evaluation.ar, workers > 1) equals the one-process path exactly.

Data: the committed examples/coco (5 images, 31 masks) and degraded_predictions(seed=3) from
tests/reference/coco_reference.py (one image with 141 predictions, one with one, one with none),
plus the same predictions with every score rounded to 1 decimal, so that many detections tie and
the merge order of the per-image results would show in the accumulated arrays.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from tests.reference.coco_reference import degraded_predictions, pycocotools_metrics
from unsam.evaluation import ar as ar_module
from unsam.evaluation import evaluate
from unsam.evaluation.ar import prepare_ground_truth, prepare_predictions

GT = Path(__file__).resolve().parents[2] / "examples" / "coco" / "instances.json"


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return degraded_predictions(GT, 3)


@pytest.fixture(scope="module")
def tied_results(results: list[dict]) -> list[dict]:
    tied = copy.deepcopy(results)
    for r in tied:
        r["score"] = round(float(r["score"]), 1)
    return tied


def _without_seconds(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "seconds"}


@pytest.mark.parametrize("workers", [2, 3, 5, 8])
@pytest.mark.parametrize("which", ["results", "tied_results"])
def test_parallel_metrics_equal_serial_exactly(request, which: str, workers: int) -> None:
    preds = request.getfixturevalue(which)
    serial = evaluate(GT, copy.deepcopy(preds), workers=1)
    parallel = evaluate(GT, copy.deepcopy(preds), workers=workers)
    assert _without_seconds(parallel) == _without_seconds(serial)  # exact, every key
    assert serial["AR@1000"] > serial["AR@100"] > 0  # a non-trivial case
    if which == "results":
        ref = pycocotools_metrics(GT, preds)
        for k, v in ref.items():
            assert parallel[k] == pytest.approx(v, abs=1e-12), k


def _inputs(preds: list[dict]) -> tuple[dict, list[dict], list[int]]:
    gt = prepare_ground_truth(GT)
    res, _ = prepare_predictions(copy.deepcopy(preds), gt)
    for k, r in enumerate(res):
        r["id"] = k + 1
        r["iscrowd"] = 0
    return gt, res, sorted(img["id"] for img in gt["images"])


@pytest.mark.parametrize("workers", [2, 4])
def test_worker_ious_and_accumulated_arrays_are_the_serial_ones(tied_results, workers: int) -> None:
    """Element by element: every image's IoU matrix, and the precision / recall / scores arrays."""
    gt, res, ids = _inputs(tied_results)
    serial = ar_module._faster_cocoeval(gt, res, ids, [1, 10, 100, 1000], "segm", separate=False)
    serial.evaluate()
    serial.accumulate()
    parallel = ar_module._evaluate_parallel(gt, res, ids, [1, 10, 100, 1000], "segm", workers)
    groups = ar_module._split_images(ids, gt, res, workers)
    assert len(groups) > 1 and any(len(g) for g in groups[1:])  # workers did compute some
    assert set(parallel.ious) == set(serial.ious)
    for key, matrix in serial.ious.items():
        np.testing.assert_array_equal(np.asarray(parallel.ious[key]), np.asarray(matrix))
    for key in ("precision", "recall", "scores"):
        np.testing.assert_array_equal(np.asarray(parallel.eval[key]), np.asarray(serial.eval[key]))


def test_split_covers_every_image_once(results) -> None:
    gt, res, ids = _inputs(results)
    for workers in (2, 3, 99):
        groups = ar_module._split_images(ids, gt, res, workers)
        assert sorted(i for g in groups for i in g) == ids
        assert all(g == sorted(g) for g in groups) and all(groups[1:])  # no empty worker group
    groups = ar_module._split_images(ids, gt, res, 2)
    busiest = max({r["image_id"] for r in res}, key=lambda i: sum(r["image_id"] == i for r in res))
    assert busiest in groups[1]  # the parent decodes everything, so a worker takes the big image


def test_worker_count_rules(results) -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        evaluate(GT, copy.deepcopy(results), workers=0)
    # the pycocotools backend ignores workers and still agrees
    py = evaluate(GT, copy.deepcopy(results), backend="pycocotools", workers=2)
    fast = evaluate(GT, copy.deepcopy(results), workers=2)
    for k in ("AR@1", "AR@10", "AR@100", "AR@1000", "AP"):
        assert fast[k] == pytest.approx(py[k], abs=1e-12)
