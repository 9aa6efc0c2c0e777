"""The training engine both trainers run on (spec §6.4, PROMPTABLE.md §1.7): parameter groups,
LR schedule, checkpoints, exact resume, RNG state, distributed helpers, run files, and
:class:`Trainer`, the one training run (set up the run folder -> build model and optimiser ->
resume -> steps with checkpoints and the loss log -> final save).

A model's trainer (:mod:`unsam.training.whole_image.trainer`,
:mod:`unsam.training.promptable.trainer`) subclasses :class:`Trainer` with what is its own: the
model, its parameter groups, batch collation, loss and final save.

Modules: ``trainer`` (:class:`Trainer` and the optimiser steps), ``optim`` (parameter groups,
schedule), ``checkpoints`` (save, load, resume check), ``rng`` (RNG state), ``distributed``
(process group), ``run_files`` (run folder, train_config.json, loss CSV and plot).

Run directory (``--output RUN_DIR``; each trainer's module docstring gives its model folder)::

    RUN_DIR/train_config.json                      the training config + data paths + versions
    RUN_DIR/loss.csv                               step, loss, lr, seconds_per_step (one row a step)
    RUN_DIR/loss.png                               the loss curve (rewritten at every checkpoint)
    RUN_DIR/checkpoints/step_0000500/model/        save_pretrained folder
                                                   (config.json + model.safetensors)
    RUN_DIR/checkpoints/step_0000500/training_state.pt   optimizer, scheduler, step, RNG states

Exact resume: a checkpoint holds the weights, the AdamW state, the scheduler state, the step and
the python / numpy / torch (CPU and CUDA) RNG states of every process. The data stream is a pure
function of ``(seed, step)`` (see :mod:`unsam.training.data`), so a run resumed from step ``k``
reproduces the straight run's weights and loss rows bit for bit (same machine, same thread
count, same number of processes). ``training_state.pt`` loads with
``torch.load(weights_only=True)``.

Multi-process data parallel: under ``torchrun`` each process takes ``batch_size / N`` images per
step; gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on CUDA); only rank 0
writes files.
"""

from __future__ import annotations

from unsam.training.engine.distributed import DistInfo, distributed_session
from unsam.training.engine.optim import (
    build_optimizer,
    build_param_groups,
    build_scheduler,
    lr_factor,
    reduce_param_groups,
)
from unsam.training.engine.run_files import (
    LOSS_CSV_HEADER,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    read_loss_csv,
    read_train_config,
    resolve_training_run,
    upgrade_train_values,
    write_loss_plot,
)
from unsam.training.engine.trainer import (
    NonFiniteLossError,
    StepLog,
    Trainer,
    TrainResult,
    mixed_precision,
)

__all__ = [
    "LOSS_CSV_HEADER",
    "DistInfo",
    "NonFiniteLossError",
    "StepLog",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "checkpoint_dir",
    "distributed_session",
    "latest_checkpoint",
    "list_checkpoints",
    "lr_factor",
    "mixed_precision",
    "read_loss_csv",
    "read_train_config",
    "reduce_param_groups",
    "resolve_training_run",
    "upgrade_train_values",
    "write_loss_plot",
]
