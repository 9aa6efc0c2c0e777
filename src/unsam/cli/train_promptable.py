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

from unsam.training.promptable.config import CONFIG_DEFAULTS, PromptableTrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unsam.cli.common import add_training_arguments

    add_training_arguments(parser, PromptableTrainConfig, CONFIG_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from unsam.cli.common import run_training
    from unsam.training.promptable.trainer import (
        load_promptable_train_config,
        new_promptable_train_config,
        train_promptable,
    )

    return run_training(
        train_promptable,
        "train-promptable",
        args,
        PromptableTrainConfig,
        load=load_promptable_train_config,
        new=new_promptable_train_config,
    )
