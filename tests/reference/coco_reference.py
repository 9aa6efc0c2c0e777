"""Reference class-agnostic metrics computed the plain way with pycocotools (no unsam code).

Used by tests and by benchmarks/eval_speed.py as the thing unsam.evaluate must agree with.

- :func:`pycocotools_metrics`: COCOeval(segm, useCats=0, maxDets 1/10/100/1000) over all GT images,
  every metric read off the ``recall`` / ``precision`` arrays.
- :func:`pycocotools_summary`: the same numbers as pycocotools' own ``summarize()`` prints them,
  a second read of the arrays (by pycocotools' code, not ours) to check the first.
- :func:`degraded_predictions`: a deterministic, imperfect results list built from a GT file
  (eroded / dilated / shifted / dropped / duplicated masks, false positives, random scores), with
  pycocotools' RLE encoder only.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any

import numpy as np

AREA_LABELS = ((1, "s"), (2, "m"), (3, "l"))  # COCOeval areaRng order: all, small, medium, large


def _run_cocoeval(
    gt_path: str | Path, results: str | Path | list[dict[str, Any]], max_dets: tuple[int, ...]
) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(
            copy.deepcopy(results) if isinstance(results, list) else str(results)
        )  # it edits them
        E = COCOeval(gt, dt, iouType="segm")
        E.params.useCats = 0
        E.params.maxDets = list(max_dets)
        E.params.imgIds = sorted(gt.getImgIds())
        E.evaluate()
        E.accumulate()
    return E


def pycocotools_metrics(
    gt_path: str | Path,
    results: str | Path | list[dict[str, Any]],
    max_dets: tuple[int, ...] = (1, 10, 100, 1000),
) -> dict[str, float | None]:
    """Load GT and a results list with pycocotools, run COCOeval(segm, useCats=0) over all GT
    images, and read every metric off the ``recall`` / ``precision`` arrays.

    ``recall`` is [T=10 IoU thresholds, K=1 category, A=4 areas, M=len(max_dets)]; ``precision`` is
    [T, R=101 recall points, K, A, M]. AP and the per-area ARs are read at the last max_dets.
    """
    E = _run_cocoeval(gt_path, results, max_dets)
    recall, precision = E.eval["recall"], E.eval["precision"]
    assert recall.shape == (10, 1, 4, len(max_dets)), recall.shape
    assert np.allclose(E.params.iouThrs[[0, 5]], (0.5, 0.75))

    def mean(x: np.ndarray) -> float | None:
        v = x[x > -1]
        return float(v.mean()) if v.size else None

    out: dict[str, float | None] = {
        f"AR@{k}": mean(recall[:, :, 0, m]) for m, k in enumerate(max_dets)
    }
    out["AP"] = mean(precision[:, :, :, 0, -1])
    out["AP50"] = mean(precision[0, :, :, 0, -1])
    out["AP75"] = mean(precision[5, :, :, 0, -1])
    for a, label in AREA_LABELS:
        out[f"AR{label}@{max_dets[-1]}"] = mean(recall[:, :, a, -1])
    return out


def pycocotools_summary(
    gt_path: str | Path, results: str | Path | list[dict[str, Any]]
) -> dict[str, float]:
    """The metrics as pycocotools' ``summarize()`` computes them (its ``stats`` vector).

    ``summarize`` reads AP50/AP75/AP per area/AR per area at ``maxDets[2]`` and AR at maxDets[0..2],
    so it runs twice: with maxDets (1, 10, 100) and with (1, 10, 1000). -1 (undefined) stays -1.
    (AP over all thresholds is always read at a literal 100 detections there, so it is not here.)
    """
    out: dict[str, float] = {}
    for dets in ((1, 10, 100), (1, 10, 1000)):
        E = _run_cocoeval(gt_path, results, dets)
        with contextlib.redirect_stdout(io.StringIO()):
            E.summarize()
        s = [float(v) for v in E.stats]
        k = dets[2]
        out.update(
            {
                "AR@1": s[6],
                "AR@10": s[7],
                f"AR@{k}": s[8],
                f"AP50@{k}": s[1],
                f"AP75@{k}": s[2],
                f"ARs@{k}": s[9],
                f"ARm@{k}": s[10],
                f"ARl@{k}": s[11],
            }
        )
    return out


def _encode(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def degraded_predictions(
    gt_path: str | Path,
    seed: int = 0,
    *,
    many: int | None = 2,
    one: int | None = 0,
    none: int | None = 1,
) -> list[dict[str, Any]]:
    """A deterministic, imperfect COCO results list for the GT file's images (sorted by id).

    Every image's GT masks are dropped (p 0.2), kept, eroded, dilated or shifted, and sometimes
    duplicated (a near-copy), with random scores; a few random rectangles are false positives.
    Three images are special, by position in the sorted id list:

    - ``many``: > 100 predictions: 130 false positives with scores in [0.1, 0.3); each GT-derived
      mask scores in [0.3, 1) or, with p 0.5, in [0, 0.1), behind the 130, beyond the 100th
      detection: the numbers at 100 and 1000 detections differ;
    - ``one``: exactly one prediction (a dilated GT mask);
    - ``none``: no prediction at all (the image still counts in every metric).
    """
    from pycocotools.coco import COCO
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
    results: list[dict[str, Any]] = []

    def add(img_id: int, mask: np.ndarray, score: float) -> None:
        results.append(
            {
                "image_id": img_id,
                "category_id": 1,
                "segmentation": _encode(mask),
                "score": float(score),
            }
        )

    def score() -> (
        float
    ):  # on the ``many`` image half the true matches rank behind its 130 false ones
        if pos != many:
            return float(rng.random())
        return float(rng.uniform(0.3, 1.0) if rng.random() < 0.5 else rng.uniform(0.0, 0.1))

    def rectangle(h: int, w: int) -> np.ndarray:
        m = np.zeros((h, w), bool)
        y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
        m[y : y + int(rng.integers(5, 80)), x : x + int(rng.integers(5, 80))] = True
        return m

    for pos, img_id in enumerate(sorted(coco.getImgIds())):
        info = coco.imgs[img_id]
        h, w = info["height"], info["width"]
        gts = [
            coco.annToMask(a).astype(bool)
            for a in sorted(coco.imgToAnns[img_id], key=lambda a: a["id"])
        ]
        if pos == none:
            continue
        if pos == one:
            add(img_id, ndimage.binary_dilation(gts[0], iterations=2), 0.5)
            continue
        for m in gts:
            if rng.random() < 0.2:
                continue  # missed object
            op = int(rng.integers(0, 4))
            if op == 1:
                m = ndimage.binary_erosion(m, iterations=int(rng.integers(1, 4)))
            elif op == 2:
                m = ndimage.binary_dilation(m, iterations=int(rng.integers(1, 6)))
            elif op == 3:
                m = np.roll(m, int(rng.integers(-8, 9)), axis=int(rng.integers(0, 2)))
            if not m.any():
                continue
            add(img_id, m, score())
            if rng.random() < 0.3:  # a duplicate: one more, shifted by a pixel
                add(img_id, np.roll(m, 1, axis=1), score())
        for _ in range(130 if pos == many else int(rng.integers(1, 6))):  # false positives
            add(img_id, rectangle(h, w), rng.uniform(0.1, 0.3) if pos == many else rng.random())
    return results
