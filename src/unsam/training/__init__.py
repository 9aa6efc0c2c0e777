"""Training of the whole-image model (spec §6.3-6.6): data, loop, self-training, UnSAM+ merge.

Public API (imported lazily, so ``unsam merge-gt`` does not pay for torch start-up):
    TrainConfig                                     (unsam.training.whole_image.config)
    TrainDataset, augment, collate, StepBatchSampler (unsam.training.data)
    train, TrainResult, StepLog, latest_checkpoint   (unsam.training.engine)
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
    "train": "unsam.training.engine",
    "TrainResult": "unsam.training.engine",
    "StepLog": "unsam.training.engine",
    "latest_checkpoint": "unsam.training.engine",
    "load_train_config": "unsam.training.engine",
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
