"""The tiny promptable model's CPU recipe, trained from scratch and scored on its training images.

Runs, in one process: ``train_promptable(PromptableTrainConfig.for_model("tiny"))`` (what
``unsam train-promptable --config tiny`` runs) on the bundled examples/coco images with their
official masks (``--annotations`` / ``--images`` to change), then the 1-click evaluation
(``unsam eval-points``: every non-crowd mask, one click at its deepest point, images resized to the
size the model was trained at) of the trained model and of the untrained one (the same random
init: same seed, same config), on the images it trained on. Prints one JSON line with
Point(Oracle) / Point(Max) mIoU before and after, the training wall time, the median seconds per
step, the training process's CPU seconds (with the recipe's one thread, about the wall time on a
quiet machine), the steps and the final loss; writes benchmarks/results/promptable_recipe.json
(with the commit, time and machine load).

Usage: .venv/bin/python benchmarks/promptable_recipe.py [--max-steps N] [--threads N]
       [--annotations GT.json --images DIR] [--keep RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import write_result  # noqa: E402

from unsam.evaluation.points import (  # noqa: E402
    PointEvalConfig,
    evaluate_points,
    load_instances_gt,
    predictor_predict_fn,
)
from unsam.io.images import load_image  # noqa: E402
from unsam.models.promptable.predictor import PromptablePredictor, auto_input_size  # noqa: E402
from unsam.training.promptable.config import PromptableTrainConfig  # noqa: E402
from unsam.training.promptable.trainer import initial_model, train_promptable  # noqa: E402

EXAMPLES = REPO / "examples" / "coco"


def point_metrics(model: torch.nn.Module, annotations: Path, images: Path) -> dict[str, float]:
    """Point(Oracle) / Point(Max) mIoU of ``model`` at the size it was trained at."""
    short, longest = auto_input_size(model.config)
    metrics, _ = evaluate_points(
        predictor_predict_fn(PromptablePredictor(model, short_side=None)),
        load_instances_gt(annotations),
        lambda r: load_image(images / str(r.file_name)),
        config=PointEvalConfig(short_side=short, max_size=longest or 1333),
    )
    return {
        "point_oracle_miou": round(metrics["point_oracle_miou"], 4),
        "point_max_miou": round(metrics["point_max_miou"], 4),
        "num_segments": metrics["num_segments"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", type=Path, default=EXAMPLES / "instances.json")
    ap.add_argument("--images", type=Path, default=EXAMPLES / "images")
    ap.add_argument("--max-steps", type=int, help="override the recipe's steps (quick checks)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--keep", type=Path, help="train into this run folder and keep it")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {} if args.max_steps is None else {"max_steps": args.max_steps}
    config = PromptableTrainConfig.for_model("tiny", **overrides)

    untrained = point_metrics(initial_model(config).eval(), args.annotations, args.images)
    tmp = Path(tempfile.mkdtemp(prefix="promptable_recipe_"))
    run_dir = args.keep if args.keep is not None else tmp / "run"
    step_seconds: list[float] = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        result = train_promptable(
            config,
            args.annotations,
            args.images,
            run_dir,
            on_step=lambda log: step_seconds.append(log.seconds),
        )
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        model = PromptablePredictor.from_pretrained(run_dir).model
        trained = point_metrics(model, args.annotations, args.images)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = {
        "recipe": "train-promptable --config tiny",
        "annotations": str(args.annotations.relative_to(REPO))
        if args.annotations.is_relative_to(REPO)
        else str(args.annotations),
        "image_size": config.resolved_image_size,
        "steps": result.steps,
        "train_wall_s": round(train_s, 1),
        "train_wall_min": round(train_s / 60, 2),
        # CPU seconds of the training process: on one thread, about the wall time of a quiet
        # machine (the wall time above grows with the machine's load)
        "train_cpu_s": round(train_cpu_s, 1),
        "threads": config.num_threads or torch.get_num_threads(),
        "s_per_step_median": round(statistics.median(step_seconds), 4),
        "final_loss": round(float(result.final_loss or 0.0), 4),
        "untrained": untrained,
        "trained": trained,
        "goal_met": int(
            trained["point_oracle_miou"] >= 0.5
            and trained["point_max_miou"] >= 0.4
            and train_s <= 600
        ),
    }
    print(json.dumps(data))
    print(f"wrote {write_result('promptable_recipe', data)}", file=sys.stderr)


if __name__ == "__main__":
    main()
