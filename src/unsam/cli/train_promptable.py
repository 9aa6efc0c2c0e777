"""``unsam train-promptable --annotations PSEUDO.json --images DIR --output RUN_DIR [--config
swin_t|tiny]``.

Trains the promptable model (Semantic-SAM interactive decoder, Swin-T) on a COCO dataset JSON of
pseudo-masks or ground truth. Every PromptableTrainConfig field is a flag (``--max-steps``,
``--batch-size``, ``--lr``, ``--backbone-init PATH`` for a local Swin-T / MoBY checkpoint, ...).
``--resume`` continues RUN_DIR from its newest checkpoint with its stored settings (flags given now
override them). The finished RUN_DIR loads with ``PromptablePredictor.from_pretrained(RUN_DIR)``
and ``unsam eval-points --model RUN_DIR``.

Several processes: ``torchrun --nproc_per_node N -m unsam.cli.main train-promptable ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from unsam.cli.args import add_config_arguments
from unsam.training.promptable.config import PromptableTrainConfig


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
        help="run folder (checkpoints, loss, model)",
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
    add_config_arguments(parser.add_argument_group("training settings"), PromptableTrainConfig)


def run(args: argparse.Namespace) -> int:
    from unsam.training.promptable.loop import load_promptable_train_config, train_promptable

    run_dir = Path(args.output)
    overrides: dict[str, Any] = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(PromptableTrainConfig)
        if hasattr(args, f.name)
    }
    annotations, images = args.annotations, args.images
    if args.resume and (run_dir / "train_config.json").is_file():
        saved, record = load_promptable_train_config(run_dir)
        config = dataclasses.replace(saved, **overrides)
        annotations = annotations or record.get("annotations")
        images = images or record.get("images")
    else:
        config = PromptableTrainConfig(**overrides)
    if not annotations or not images:
        raise ValueError(
            "--annotations PSEUDO.json and --images DIR are required (except with --resume of a "
            "run)"
        )

    from unsam.cli.common import run_training

    return run_training(
        train_promptable, "train-promptable", args, config, annotations, images, run_dir
    )
