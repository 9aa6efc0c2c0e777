"""``unsam train --annotations PSEUDO.json --images DIR --output RUN_DIR [--config r50|tiny]
[--resume]``.

Trains the whole-image Mask2Former on a COCO dataset JSON of pseudo-masks (or ground truth).
Every TrainConfig field is a flag (``--max-steps``, ``--batch-size``, ``--lr``, ...).
``--resume`` continues the run in RUN_DIR from its newest checkpoint with its stored settings
(flags given now override them; ``--annotations``/``--images`` default to the stored ones).

Several processes: ``torchrun --nproc_per_node N -m unsam.cli.main train ...`` (gloo on CPU,
nccl with ``--device cuda``); ``--batch-size`` is the global batch.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from unsam.cli.args import add_config_arguments
from unsam.training.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data and run")
    g.add_argument(
        "--annotations", metavar="PSEUDO.json", help="COCO dataset JSON with the training masks"
    )
    g.add_argument(
        "--images", metavar="DIR", help="folder the JSON's file_name values are relative to"
    )
    g.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="RUN_DIR",
        help="run folder (checkpoints, loss curve, model)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its newest checkpoint",
    )
    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        help=(
            "skip missing or mis-sized images (listed in RUN_DIR/skipped_images.txt) instead of "
            "stopping"
        ),
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser.add_argument_group("training settings"), TrainConfig)


def _user_values(args: argparse.Namespace) -> dict[str, Any]:
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if hasattr(args, f.name)
    }


def run(args: argparse.Namespace) -> int:
    from unsam.training.loop import resolve_training_run, train

    run_dir = Path(args.output)
    config, annotations, images = resolve_training_run(
        run_dir, _user_values(args), args.annotations, args.images, resume=args.resume
    )

    from unsam.cli.common import run_training

    return run_training(train, "train", args, config, annotations, images, run_dir)
