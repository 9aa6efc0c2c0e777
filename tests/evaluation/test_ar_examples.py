"""unsam.evaluate against plain pycocotools on the committed examples/coco (runs in a clean clone).

examples/coco holds 5 COCO val2017 images and their 31 official masks (small, medium and large).
The predictions are tests.reference.coco_reference.degraded_predictions(seed=3): one image with
141 predictions (half its true matches ranked behind 130 false positives, so every number at 100
detections differs from the one at 1000), one image with a single prediction, one with none.
The data checks below make sure that swapping any two metrics, or reading any of them at the
wrong maxDets index, changes a compared number by more than 1e-3 (the comparison tolerance is 1e-6).
"""

from __future__ import annotations

import collections
import itertools
import json
from pathlib import Path

import pytest

from tests.reference.coco_reference import (
    degraded_predictions,
    pycocotools_metrics,
    pycocotools_summary,
)
from unsam.evaluation import METRIC_KEYS, evaluate

GT = Path(__file__).resolve().parents[2] / "examples" / "coco" / "instances.json"
SEED = 3
KEYS = (
    "AR@1",
    "AR@10",
    "AR@100",
    "AR@1000",
    "AP",
    "AP50",
    "AP75",
    "ARs@1000",
    "ARm@1000",
    "ARl@1000",
)


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return degraded_predictions(GT, SEED)


@pytest.fixture(scope="module")
def reference(results: list[dict]) -> dict[str, float | None]:
    return pycocotools_metrics(GT, results)


# pycocotools 2.0.11 on this prediction set; a change of the data, the builder or the protocol shows
FROZEN = {
    "AR@1": 0.05161290322580645,
    "AR@10": 0.29032258064516125,
    "AR@100": 0.3709677419354839,
    "AR@1000": 0.5064516129032258,
    "AP": 0.22141900535949177,
    "AP50": 0.3440984301132816,
    "AP75": 0.2370010376898022,
    "ARs@1000": 0.3454545454545454,
    "ARm@1000": 0.5142857142857145,
    "ARl@1000": 0.7833333333333334,
}


def test_prediction_set_exercises_every_metric(results: list[dict], reference: dict) -> None:
    gt = json.loads(GT.read_text())
    per_image = collections.Counter(r["image_id"] for r in results)
    counts = sorted(per_image.get(img["id"], 0) for img in gt["images"])
    assert len(counts) == 5 and counts[0] == 0 and counts[1] == 1 and counts[-1] > 100, counts
    assert set(reference) == set(KEYS)
    for key in KEYS:
        assert reference[key] == pytest.approx(FROZEN[key], abs=1e-9), key
    # any two metrics differ, so a swap of two labels cannot go unnoticed
    for a, b in itertools.combinations(KEYS, 2):
        assert abs(reference[a] - reference[b]) > 1e-3, (a, b)
    # every number read at the last maxDets differs from the same number read at 100
    at100 = pycocotools_metrics(GT, results, max_dets=(1, 10, 100))
    for key in ("AP", "AP50", "AP75", "ARs", "ARm", "ARl"):
        assert (
            abs(
                reference[key if key.startswith("AP") else f"{key}@1000"]
                - at100[key if key.startswith("AP") else f"{key}@100"]
            )
            > 1e-3
        ), key
    assert reference["AR@1000"] - reference["AR@100"] > 0.03
    assert (
        0.03
        < reference["AR@1"]
        < reference["AR@10"]
        < reference["AR@100"]
        < reference["AR@1000"]
        < 0.9
    )


def test_reference_reads_the_arrays_like_pycocotools_summarize(
    results: list[dict], reference: dict
) -> None:
    """The reference's array indices agree with pycocotools' own summarize() (a second reader)."""
    summary = pycocotools_summary(GT, results)
    for key in ("AR@1", "AR@10", "AR@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000"):
        assert reference[key] == pytest.approx(summary[key], abs=1e-12), key
    assert reference["AP50"] == pytest.approx(summary["AP50@1000"], abs=1e-12)
    assert reference["AP75"] == pytest.approx(summary["AP75@1000"], abs=1e-12)


@pytest.mark.parametrize("backend", ["faster-coco-eval", "pycocotools"])
def test_every_metric_matches_pycocotools(
    results: list[dict], reference: dict, tmp_path: Path, backend: str
) -> None:
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(results))
    ours = evaluate(GT, path, backend=backend)
    assert [k for k in METRIC_KEYS if k != "images"] == list(KEYS)
    for key in KEYS:
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key
    assert (ours["images"], ours["gt_masks"], ours["pred_masks"]) == (5, 31, len(results))
