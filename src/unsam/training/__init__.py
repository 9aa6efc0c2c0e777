"""Training (spec §6.3-6.6, PROMPTABLE.md §3); the layout mirrors :mod:`unsam.models`:

    engine.py       parameter groups, LR schedule, checkpoints, RNG, distributed helpers, run
                    files, resume, and ``Trainer``, the one training run both models use
    data.py         the shared data stream (COCO JSON + images -> augmented crops)
    whole_image/    config, backbone init, trainer, self-training and the UnSAM+ merge
    promptable/     config, backbone init, clicks and targets, matching, losses, trainer

Public API (imported lazily, so ``unsam merge-gt`` does not pay for torch start-up):
    TrainConfig                                     (unsam.training.whole_image.config)
    TrainDataset, augment, collate, StepBatchSampler (unsam.training.data)
    train, load_train_config                         (unsam.training.whole_image.trainer)
    TrainResult, StepLog, latest_checkpoint, read_loss_csv   (unsam.training.engine)
    SelfTrainConfig, MergeGTConfig, select_new_masks, add_model_masks, merge_ground_truth
                                                    (unsam.training.whole_image.selftrain)
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "TrainConfig": "unsam.training.whole_image.config",
    "TrainDataset": "unsam.training.data",
    "TrainSample": "unsam.training.data",
    "augment": "unsam.training.data",
    "collate": "unsam.training.data",
    "StepBatchSampler": "unsam.training.data",
    "train": "unsam.training.whole_image.trainer",
    "TrainResult": "unsam.training.engine",
    "StepLog": "unsam.training.engine",
    "latest_checkpoint": "unsam.training.engine",
    "load_train_config": "unsam.training.whole_image.trainer",
    "read_loss_csv": "unsam.training.engine",
    "SelfTrainConfig": "unsam.training.whole_image.selftrain",
    "MergeGTConfig": "unsam.training.whole_image.selftrain",
    "MergeStats": "unsam.training.whole_image.selftrain",
    "select_new_masks": "unsam.training.whole_image.selftrain",
    "add_model_masks": "unsam.training.whole_image.selftrain",
    "merge_ground_truth": "unsam.training.whole_image.selftrain",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unsam.training' has no attribute {name!r}")
