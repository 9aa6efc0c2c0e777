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

from unsam.training.whole_image.config import CONFIG_DEFAULTS, TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unsam.cli.common import add_training_arguments

    add_training_arguments(parser, TrainConfig, CONFIG_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from unsam.cli.common import run_training
    from unsam.training.whole_image.trainer import load_train_config, new_train_config, train

    return run_training(
        train, "train", args, TrainConfig, load=load_train_config, new=new_train_config
    )
