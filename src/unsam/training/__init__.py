"""Training of the whole-image model (spec §6.3-6.6): data, loop, self-training, UnSAM+ merge.

Public API (imported lazily, so ``unsam merge-gt`` does not pay for torch start-up):
    TrainConfig                                     (unsam.training.config)
    TrainDataset, augment, collate, StepBatchSampler (unsam.training.data)
    train, TrainResult, StepLog, latest_checkpoint   (unsam.training.loop)
    SelfTrainConfig, MergeGTConfig, select_new_masks, add_model_masks, merge_ground_truth
                                                    (unsam.training.selftrain)
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "TrainConfig": "unsam.training.config",
    "TrainDataset": "unsam.training.data",
    "TrainSample": "unsam.training.data",
    "augment": "unsam.training.data",
    "collate": "unsam.training.data",
    "StepBatchSampler": "unsam.training.data",
    "train": "unsam.training.loop",
    "TrainResult": "unsam.training.loop",
    "StepLog": "unsam.training.loop",
    "latest_checkpoint": "unsam.training.loop",
    "load_train_config": "unsam.training.loop",
    "read_loss_csv": "unsam.training.loop",
    "SelfTrainConfig": "unsam.training.selftrain",
    "MergeGTConfig": "unsam.training.selftrain",
    "MergeStats": "unsam.training.selftrain",
    "select_new_masks": "unsam.training.selftrain",
    "add_model_masks": "unsam.training.selftrain",
    "merge_ground_truth": "unsam.training.selftrain",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unsam.training' has no attribute {name!r}")
