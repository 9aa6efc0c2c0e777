"""Reference class-agnostic metrics computed the plain way with pycocotools (no unsam code).

Used by tests and by benchmarks/eval_speed.py as the thing unsam.evaluate must agree with.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np


def pycocotools_metrics(gt_path: str | Path, results: str | Path | list[dict[str, Any]],
                        max_dets: tuple[int, ...] = (1, 10, 100, 1000)) -> dict[str, float | None]:
    """Load GT and a results list with pycocotools, run COCOeval(segm, useCats=0) over all GT images,
    and read every metric off the ``recall`` / ``precision`` arrays."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(results if isinstance(results, list) else str(results))
        E = COCOeval(gt, dt, iouType="segm")
        E.params.useCats = 0
        E.params.maxDets = list(max_dets)
        E.params.imgIds = sorted(gt.getImgIds())
        E.evaluate()
        E.accumulate()
    recall, precision = E.eval["recall"], E.eval["precision"]

    def mean(x: np.ndarray) -> float | None:
        v = x[x > -1]
        return float(v.mean()) if v.size else None

    out: dict[str, float | None] = {f"AR@{k}": mean(recall[:, :, 0, m]) for m, k in enumerate(max_dets)}
    out["AP"] = mean(precision[:, :, :, 0, -1])
    out["AP50"] = mean(precision[0, :, :, 0, -1])
    out["AP75"] = mean(precision[5, :, :, 0, -1])
    for a, label in ((1, "s"), (2, "m"), (3, "l")):
        out[f"AR{label}@{max_dets[-1]}"] = mean(recall[:, :, a, -1])
    return out
