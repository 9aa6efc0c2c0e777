"""unsam eval (faster-coco-eval) vs plain pycocotools on the same predictions, in one run.

Usage:
    python benchmarks/eval_speed.py [--gt GT.json] [--pred PRED.json] [--repeats 3]

Without --pred the felzenszwalb baseline is run on the shared COCO images first (a few minutes,
cached in benchmarks/results/). Prints both timings, the ratio (target >= 5x) and both AR@1000
(must be identical).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import REPO, RESULTS, time_it, write_result  # noqa: E402

import unsam  # noqa: E402
from tests.reference.coco_reference import pycocotools_metrics  # noqa: E402
from unsam.evaluation.ar import prepare_ground_truth, prepare_predictions  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--gt", default=str(REPO.parent / "shared/data/coco/instances.json"))
    p.add_argument("--pred", help="predictions (COCO results list or dataset JSON)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="unsam.evaluate(workers=...): processes for the IoU matrices (default 1)",
    )
    args = p.parse_args()
    gt = Path(args.gt)
    pred = Path(args.pred) if args.pred else RESULTS / "felzenszwalb_coco.json"
    if not pred.exists():
        print(f"running the felzenszwalb baseline to make {pred} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "unsam.cli.main",
                "baseline",
                "felzenszwalb",
                str(gt.parent / "images"),
                "-o",
                str(pred),
                "--no-progress",
            ],
            check=True,
        )
    # the results-list form both tools accept, with the ground truth's image ids (not timed)
    gt_dict = prepare_ground_truth(gt)
    results, _ = prepare_predictions(pred, gt_dict)
    results_path = RESULTS / "eval_speed_results.json"
    results_path.write_text(json.dumps(results))
    print(
        f"{len(gt_dict['images'])} images, {len(results)} predicted masks, "
        f"{sum(1 for a in gt_dict['annotations'] if not a['iscrowd'])} GT masks"
    )

    kwargs = {} if args.workers is None else {"workers": args.workers}
    t_unsam, m_unsam = time_it(
        lambda: unsam.evaluate(gt, results_path, **kwargs), repeats=args.repeats
    )
    t_pyc, m_pyc = time_it(
        lambda: pycocotools_metrics(gt, results_path), repeats=args.repeats, warmup=0
    )
    ratio = t_pyc / t_unsam
    same = abs(m_unsam["AR@1000"] - m_pyc["AR@1000"]) < 1e-9
    print(f"unsam eval (faster-coco-eval): {t_unsam:.2f} s   AR@1000 = {m_unsam['AR@1000']:.6f}")
    print(f"pycocotools                  : {t_pyc:.2f} s   AR@1000 = {m_pyc['AR@1000']:.6f}")
    print(f"speed-up: {ratio:.1f}x (target >= 5x); AR@1000 identical: {same}")
    path = write_result(
        "eval_speed",
        {
            "unsam_s": t_unsam,
            "pycocotools_s": t_pyc,
            "ratio": ratio,
            "ar1000_unsam": m_unsam["AR@1000"],
            "ar1000_pycocotools": m_pyc["AR@1000"],
            "predictions": len(results),
            "images": len(gt_dict["images"]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
