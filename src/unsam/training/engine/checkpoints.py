"""Checkpoints of a training run: atomic ``save_pretrained`` folders, the resumable
``training_state.pt`` (optimizer, scheduler, step, RNG states; ``torch.load(weights_only=True)``),
strict weight loading and the resume check of changed settings.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unsam.config import config_to_dict
from unsam.training.engine.run_files import (
    checkpoint_dir,
    list_checkpoints,
    upgrade_train_values,
)

logger = logging.getLogger(__name__)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own shard-writing progress bar while saving."""
    from transformers.utils import logging as tf_logging

    enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            tf_logging.enable_progress_bar()


def _save_pretrained_atomic(model: Any, target: Path) -> None:
    """``model.save_pretrained`` into a temporary folder, then moved to ``target``."""
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    with _quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
    _replace_dir(tmp, target)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; an older folder at ``target`` is removed after the
    move."""
    old = None
    if target.exists():
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: Any,
    rng_states: list[dict[str, Any]],
) -> Path:
    """A resumable checkpoint: ``model.save_pretrained`` (a module or a trainer's saver) and the
    training state; older checkpoints beyond ``config.keep_checkpoints`` are removed."""
    target = checkpoint_dir(run_dir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with _quiet_transformers():
        model.save_pretrained(tmp / "model", safe_serialization=True)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states,
        "world_size": len(rng_states),
        "config": config_to_dict(config),
        "format": 1,
    }
    with open(tmp / "training_state.pt", "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _replace_dir(tmp, target)
    if config.keep_checkpoints > 0:
        for _, old in list_checkpoints(run_dir)[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _load_model_weights(model: nn.Module, folder: Path) -> None:
    from unsam.io.checkpoints import load_safetensors

    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: checkpoint weights missing; delete the broken checkpoint folder "
            f"{folder.parent}"
        )
    state = load_safetensors(path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: does not match the model ({len(result.missing_keys)} missing, e.g. "
            f"{result.missing_keys[:3]}; {len(result.unexpected_keys)} unexpected, e.g. "
            f"{result.unexpected_keys[:3]}); was the run trained with another --config / "
            "--num-queries?"
        )


def _check_resume_config(
    saved: dict[str, Any],
    config: Any,
    where: Path,
    fixed: tuple[str, ...],
    exact_fields: tuple[str, ...],
) -> None:
    """Refuse a resume that changes a ``fixed`` setting; warn (naming them) about other changes,
    and say which of them (``exact_fields``) make the run differ from an uninterrupted one. A
    checkpoint written before ``dtype`` existed is read with :func:`upgrade_train_values`."""
    saved = upgrade_train_values(saved)
    for key in fixed:
        if saved.get(key) != getattr(config, key):
            raise ValueError(
                f"{where}: the checkpoint was trained with {key}={saved.get(key)!r} "
                "but this run asks for "
                f"{getattr(config, key)!r}; resume with the same value or start a new --output"
            )
    now = config_to_dict(config)
    # where a run trains is not one of its settings: a run may move between machines
    changed = [k for k in now if k in saved and saved[k] != now[k] and k != "device"]
    if changed:
        inexact = [k for k in changed if k in exact_fields]
        logger.warning(
            "resuming with changed settings %s%s",
            ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed),
            (
                " (the resumed run will not reproduce an uninterrupted one because of "
                f"{', '.join(inexact)})"
            )
            if inexact
            else "",
        )
