"""``unsam self-train --model RUN_DIR --annotations PSEUDO.json --images DIR -o NEW.json``.

One self-training round (spec §6.6, a documented reconstruction): the model predicts on every
training image; predictions scoring >= ``--score-thresh`` whose IoU with every mask already in the
image's set is < ``--iou-thresh`` are added to the pseudo-masks (``source="model"``).
The predictions are written first to ``NEW.predictions.json`` through the resumable runner (an
interrupted run resumes where it stopped: rerun the same command), then merged into ``NEW.json``.
"""

from __future__ import annotations

import argparse

from unsam.cli.args import add_config_arguments, config_from_args
from unsam.training.whole_image.selftrain import SelfTrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--model",
        required=True,
        metavar="RUN_DIR",
        help="trained model: run folder, model folder or .pth",
    )
    g.add_argument(
        "--annotations",
        required=True,
        metavar="PSEUDO.json",
        help="current pseudo-labels (COCO dataset JSON)",
    )
    g.add_argument(
        "--images",
        required=True,
        metavar="DIR",
        help="folder the JSON's file_name values are relative to",
    )
    g.add_argument(
        "-o", "--output", required=True, metavar="NEW.json", help="COCO dataset JSON to write"
    )
    g.add_argument(
        "--workers", type=int, default=1, help="prediction worker processes (default: 1)"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser.add_argument_group("self-training settings"), SelfTrainConfig)
    from unsam.models.whole_image.segment_config import SegmentConfig
    from unsam.runtime import add_device_arguments

    g = parser.add_argument_group("segmenter settings")
    add_device_arguments(g)
    add_config_arguments(g, SegmentConfig, prefix="segment-", skip=("device", "dtype"))


def run(args: argparse.Namespace) -> int:
    from unsam.cli.common import tqdm_progress
    from unsam.io.files import check_output_file, check_outputs
    from unsam.models.whole_image.segment_config import SegmentConfig
    from unsam.training.whole_image.selftrain import self_train_round

    check_output_file(args.output, "-o")
    check_outputs([("-o", args.output)], input_files=[args.annotations], input_dirs=[args.images])
    progress, close = tqdm_progress("self-train", disable=args.no_progress)
    try:
        result = self_train_round(
            args.model,
            args.annotations,
            args.images,
            args.output,
            config_from_args(SelfTrainConfig, args),
            config_from_args(
                SegmentConfig, args, prefix="segment_", device=args.device, dtype=args.dtype
            ),
            workers=args.workers,
            progress=progress,
        )
    finally:
        close()
    stats = result.stats
    print(
        f"wrote {result.output}: {stats.images} images, {stats.base_masks} pseudo-masks + "
        f"{stats.added_masks} model masks ({stats.dropped_masks} confident model masks overlapped "
        f"existing ones; predictions in {result.predictions}; {result.unreadable} unreadable "
        "image(s))"
    )
    return 0
