"""``unsam eval-points --gt GT.json --images DIR --model M [--json OUT]``: 1-click interactive mIoU.

The promptable model's interactive evaluation (PROMPTABLE.md §5): one click per non-crowd GT mask
at its deepest point (kornia's distance transform), Point(Max) and Point(Oracle) mIoU, per-size
mIoU and NoC@{0.5, 0.8, 0.85, 0.9}. ``--gt`` is a COCO instances JSON or a COCO panoptic JSON
(detected from its ``segments_info``; the PNGs come from ``--panoptic-dir``, default: the JSON
path without ``.json``). ``--model`` is a ``train-promptable`` run folder, a ``save_pretrained``
folder or an official promptable ``.pth``. A ``train-promptable`` run is evaluated at the size it
was trained at (its images fitted into that square) unless ``--short-side`` / ``--max-size`` say
otherwise; other models at the original protocol's 800 / 1333.

Ground truth without a usable mask (every mask crowd, or empty at the evaluation size) is an error
(exit code 2) rather than a table of empty metrics; masks that are empty at the evaluation size
while others are scored are counted in a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from unsam.cli.args import add_config_arguments, config_from_args
from unsam.evaluation.points import PointEvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data and model")
    g.add_argument(
        "--gt",
        required=True,
        metavar="GT.json|PANOPTIC.json",
        help="COCO instances or panoptic JSON",
    )
    g.add_argument(
        "--panoptic-dir",
        metavar="DIR",
        help="folder of the panoptic PNGs (default: the JSON path without .json)",
    )
    g.add_argument(
        "--images",
        required=True,
        metavar="DIR",
        help="folder the GT's file_name values are relative to",
    )
    g.add_argument(
        "--model",
        required=True,
        metavar="M",
        help="train-promptable run folder, save_pretrained folder or official promptable .pth",
    )
    g.add_argument(
        "--json", metavar="OUT.json", help="also write the metrics as JSON (fractions in [0, 1])"
    )
    g.add_argument(
        "--max-images", type=int, metavar="N", help="evaluate only the first N GT images"
    )
    from unsam.runtime import add_device_arguments

    add_device_arguments(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser.add_argument_group("protocol settings"), PointEvalConfig)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from unsam.evaluation.points import (
        evaluate_points,
        format_point_metrics,
        is_panoptic_json,
        load_instances_gt,
        load_panoptic_gt,
        predictor_predict_fn,
    )
    from unsam.io.files import atomic_write_json
    from unsam.io.images import load_image
    from unsam.models.promptable.predictor import (
        PromptablePredictor,
        auto_input_size,
        load_promptable_model,
    )
    from unsam.runtime import resolve_device

    device = resolve_device(args.device)  # a CUDA request without CUDA fails before any work
    config = config_from_args(PointEvalConfig, args)
    if config.max_clicks != 1:
        raise ValueError(
            "--max-clicks must be 1: the promptable model takes one positive click per object"
        )
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    images = Path(args.images)
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: image folder not found")
    panoptic = is_panoptic_json(args.gt)
    if panoptic:
        records = load_panoptic_gt(args.gt, args.panoptic_dir, max_images=args.max_images)
    else:
        if args.panoptic_dir:
            raise ValueError(
                f"{args.gt} is an instances JSON; --panoptic-dir is only for panoptic JSONs"
            )
        records = load_instances_gt(args.gt)[: args.max_images]
    usable = sum(len(r.masks) for r in records)
    if usable == 0:  # before loading the model: nothing could be scored
        raise ValueError(
            f"{args.gt}: no usable ground-truth mask in its {len(records)} image(s) (crowd masks "
            "are left out, as in the original protocol); nothing to evaluate"
        )
    model = load_promptable_model(args.model, device=device, dtype=args.dtype)
    trained = model.config.train_image_size
    if trained and not hasattr(args, "short_side") and not hasattr(args, "max_size"):
        # a train-promptable run: evaluate at the size it was trained at
        short, longest = auto_input_size(model.config)
        config = dataclasses.replace(config, short_side=short, max_size=longest)
        print(
            f"evaluating at the size {args.model} was trained at: images fitted into "
            f"{trained}x{trained} (--short-side / --max-size to change)",
            file=sys.stderr,
        )
    predictor = PromptablePredictor(model, device=device, short_side=None)
    predict = predictor_predict_fn(predictor)
    bar = tqdm(
        total=len(records),
        desc="eval-points",
        unit="img",
        disable=True if args.no_progress else None,
        dynamic_ncols=True,
    )

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    def load(rec):
        return load_image(images / str(rec.file_name))

    try:
        metrics, _ = evaluate_points(predict, records, load, config=config, progress=progress)
    finally:
        bar.close()
    scored = int(metrics["num_segments"])
    size = "the original size" if config.short_side is None else f"--short-side {config.short_side}"
    if scored == 0:
        raise ValueError(
            f"{args.gt}: none of its {usable} ground-truth masks could be clicked: all are empty "
            f"at the evaluation size ({size}); try a larger --short-side or --short-side none"
        )
    if scored < usable:
        print(
            f"unsam eval-points: warning: {usable - scored} of {usable} ground-truth masks are "
            f"empty at the evaluation size ({size}) and were not scored",
            file=sys.stderr,
        )
    kind = "panoptic" if panoptic else "instances"
    print(
        format_point_metrics(
            metrics, title=f"1-click interactive mIoU ({kind} GT {args.gt}, model {args.model})"
        ),
        file=sys.stdout,
    )
    if args.json:
        atomic_write_json(args.json, metrics, indent=2)
        print(f"wrote {args.json}")
    return 0
