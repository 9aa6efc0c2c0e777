"""The training engine both trainers run on (spec §6.4, PROMPTABLE.md §1.7): parameter groups,
LR schedule, checkpoints, exact resume, RNG state, distributed helpers, run files, and
:class:`Trainer`, the one training run (set up the run folder -> build model and optimiser ->
resume -> steps with checkpoints and the loss log -> final save).

A model's trainer (:mod:`unsam.training.whole_image.trainer`,
:mod:`unsam.training.promptable.trainer`) subclasses :class:`Trainer` with what is its own: the
model, its parameter groups, batch collation, loss and final save.

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

import abc
import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unsam.config import config_hash, config_to_dict
from unsam.io.coco import load_coco_dataset
from unsam.io.files import append_line_durable, atomic_write, atomic_write_json, atomic_write_text
from unsam.training.data import StepBatchSampler, TrainDataset, TrainSample, check_images

__all__ = [
    "NonFiniteLossError",
    "StepLog",
    "TrainResult",
    "DistInfo",
    "Trainer",
    "lr_factor",
    "build_param_groups",
    "build_optimizer",
    "build_scheduler",
    "latest_checkpoint",
    "list_checkpoints",
    "checkpoint_dir",
    "read_loss_csv",
    "write_loss_plot",
    "read_train_config",
    "resolve_training_run",
    "distributed_session",
    "LOSS_CSV_HEADER",
]

logger = logging.getLogger(__name__)

LOSS_CSV_HEADER = ("step", "loss", "lr", "seconds_per_step")
_STEP_PREFIX = "step_"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the images."""

    user_error = True


@dataclass(frozen=True)
class StepLog:
    """One finished optimizer step (reported to the progress callback on rank 0).

    Attributes:
        step: number of optimizer steps done (1 for the first step).
        max_steps: steps the run will do in total.
        loss: total weighted loss of the step (all decoder layers), averaged over processes.
        lr: learning rate of the non-backbone parameters at this step.
        seconds: wall time of the step (data wait + forward + backward + update).
    """

    step: int
    max_steps: int
    loss: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        run_dir: the run directory.
        model_dir: the final ``save_pretrained`` folder (``run_dir / "model"``).
        steps: optimizer steps done in total (== max_steps).
        start_step: step the run (re)started from (0 for a fresh run).
        final_loss: loss of the last step run by this call, or None when no step was run.
    """

    run_dir: Path
    model_dir: Path
    steps: int
    start_step: int
    final_loss: float | None


@dataclass(frozen=True)
class DistInfo:
    """Process group facts: ``rank`` of ``world_size`` processes, ``local_rank`` on this host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------
_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def lr_factor(step: int, config: Any) -> float:
    """LR multiplier at ``step`` (0-based): detectron2's WarmupMultiStepLR (linear warmup).

    factor = warmup(step) * gamma ** (number of milestones <= step), with
    warmup(step) = warmup_factor * (1 - a) + a, a = step / warmup_steps, for step < warmup_steps.
    """
    factor = 1.0
    if step < config.warmup_steps:
        alpha = step / config.warmup_steps
        factor = config.warmup_factor * (1.0 - alpha) + alpha
    drops = sum(1 for m in config.lr_milestones() if m <= step)
    return factor * config.lr_gamma**drops


def build_param_groups(
    model: nn.Module,
    config: Any,
    backbone_prefixes: tuple[str, ...],
    no_decay_names: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """AdamW parameter groups as the originals' ``build_optimizer`` (spec §6.4, PROMPTABLE.md §1.7).

    Parameters whose name starts with one of ``backbone_prefixes`` get ``lr * backbone_lr_mult``;
    parameters of normalisation layers get ``weight_decay_norm``; of ``nn.Embedding`` layers, and
    those whose name contains one of ``no_decay_names``, ``weight_decay_embed``; everything else
    ``weight_decay``. Frozen parameters are left out.

    Returns:
        One group per trainable parameter (detectron2 style), each with ``lr``,
        ``weight_decay`` and ``name``.
    """
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{param_name}" if module_name else param_name
            lr = config.lr
            if full.startswith(backbone_prefixes):
                lr = config.lr * config.backbone_lr_mult
            wd = config.weight_decay
            if isinstance(module, _NORM_TYPES):
                wd = config.weight_decay_norm
            elif isinstance(module, nn.Embedding) or any(n in full for n in no_decay_names):
                wd = config.weight_decay_embed
            groups.append({"params": [p], "lr": lr, "weight_decay": wd, "name": full})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_optimizer(param_groups: list[dict[str, Any]], config: Any) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (:func:`build_param_groups`; betas 0.9/0.999, eps 1e-8, as
    detectron2's)."""
    return torch.optim.AdamW(param_groups, lr=config.lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: Any
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying :func:`lr_factor` to every group's base LR."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, config=config))


# ---------------------------------------------------------------------------------------------
# Run directory helpers
# ---------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | os.PathLike[str], step: int) -> Path:
    """``RUN_DIR/checkpoints/step_0000500`` for step 500."""
    return Path(run_dir) / "checkpoints" / f"{_STEP_PREFIX}{step:07d}"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, ``[(step, path), ...]`` by ascending step."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if not p.name.startswith(_STEP_PREFIX) or not p.is_dir():
            continue
        try:
            step = int(p.name[len(_STEP_PREFIX) :])
        except ValueError:
            continue
        if (p / "training_state.pt").is_file() and (p / "model" / "config.json").is_file():
            out.append((step, p))
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Newest complete checkpoint folder of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_train_config(
    run_dir: str | os.PathLike[str], config_cls: type, command: str
) -> tuple[Any, dict[str, Any]]:
    """The training config (``config_cls``) and the whole record stored in
    ``RUN_DIR/train_config.json`` by ``command``.

    Raises:
        FileNotFoundError / ValueError: missing or malformed file, naming it.
    """
    path = Path(run_dir) / "train_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; is {run_dir} an `{command}` run directory?")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        values = dict(record["train"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid train_config.json ({exc})") from None
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"{path}: unknown {config_cls.__name__} fields {unknown}; written by a newer unsam?"
        )
    if isinstance(values.get("lr_steps"), list):
        values["lr_steps"] = tuple(values["lr_steps"])
    return config_cls(**values), record


def read_loss_csv(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Rows of a ``loss.csv`` as dicts of floats (``step`` as an integer-valued float)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        try:
            out.append({k: float(row[k]) for k in LOSS_CSV_HEADER})
        except (KeyError, TypeError, ValueError):
            break  # a partial last line of an interrupted run
    return out


def write_loss_plot(
    csv_path: str | os.PathLike[str], png_path: str | os.PathLike[str]
) -> Path | None:
    """Plot loss (and a moving average) against step into a PNG; None when there is no row yet."""
    rows = read_loss_csv(csv_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    window = max(1, min(len(loss) // 20, 200))
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (all decoder layers)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    return atomic_write(png_path, lambda fh: fh.write(data))


def _truncate_loss_csv(path: Path, last_step: int) -> None:
    """Keep the header and the complete rows with step <= last_step (later rows are redone)."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    kept = [",".join(LOSS_CSV_HEADER)]
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) != len(LOSS_CSV_HEADER):
            break  # an empty or partial last line
        try:
            if int(fields[0]) > last_step:
                break
            [float(v) for v in fields]
        except ValueError:
            break
        kept.append(line)
    atomic_write_text(path, "\n".join(kept) + "\n")


# ---------------------------------------------------------------------------------------------
# RNG state (weights_only-loadable)
# ---------------------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------
def _dist_info_from_env() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def _resolve_device(config: Any, info: DistInfo) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f'device "{config.device}" requested but CUDA is not available; use --device cpu'
            )
        if info.distributed:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device


def _gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
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
    and say which of them (``exact_fields``) make the run differ from an uninterrupted one."""
    for key in fixed:
        if saved.get(key) != getattr(config, key):
            raise ValueError(
                f"{where}: the checkpoint was trained with {key}={saved.get(key)!r} "
                "but this run asks for "
                f"{getattr(config, key)!r}; resume with the same value or start a new --output"
            )
    now = config_to_dict(config)
    changed = [k for k in now if k in saved and saved[k] != now[k]]
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


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir}: exists and is not a folder; choose another --output")
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise ValueError(
            f"{run_dir}: run folder exists and is not empty; pass --resume to continue that run, "
            "or choose a new --output"
        )


def _versions() -> dict[str, str]:
    import transformers

    import unsam

    return {
        "unsam": unsam.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


@contextmanager
def distributed_session(device: str) -> Iterator[DistInfo]:
    """The process group of a training run: read from the ``torchrun`` environment, created here
    when needed (nccl on CUDA, else gloo) and destroyed at the end; a single process gets a
    one-process :class:`DistInfo` and no group."""
    info = _dist_info_from_env()
    created_group = False
    if info.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if torch.device(device).type == "cuda" else "gloo"
            )
            created_group = True
    try:
        yield info
    finally:
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _build_dataset(
    config: Any,
    annotations: Path,
    images: Path,
    skip_bad_images: bool,
    crop_size: int,
    scale_range: tuple[float, float] | None,
) -> tuple[TrainDataset, list[tuple[str, str]]]:
    """The training dataset and the images left out (path, reason)."""
    records = load_coco_dataset(annotations)
    usable, bad = check_images(records, images, skip_bad=skip_bad_images)
    if not usable:
        raise ValueError(f"{annotations}: no image with at least one mask; nothing to train on")
    dataset = TrainDataset(
        usable,
        images,
        crop_size=crop_size,
        seed=config.seed,
        max_masks=config.max_masks_per_image,
        hflip=config.hflip,
        scale_range=scale_range,
    )
    return dataset, bad


def _write_run_files(
    run_dir: Path,
    config: Any,
    annotations: Path,
    images: Path,
    info: DistInfo,
    num_images: int,
    bad: list[tuple[str, str]],
    start_step: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """train_config.json (plus ``extra`` fields), skipped_images.txt and the loss CSV (cut back
    to ``start_step``); rank 0."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        run_dir / "train_config.json",
        {
            **(extra or {}),
            "train": config_to_dict(config),
            "config_hash": config_hash(config),
            "annotations": str(annotations.resolve()),
            "images": str(images.resolve()),
            "world_size": info.world_size,
            "num_images": num_images,
            "versions": _versions(),
        },
        indent=2,
    )
    if bad:
        atomic_write_text(run_dir / "skipped_images.txt", "".join(f"{p}\t{r}\n" for p, r in bad))
    csv_path = run_dir / "loss.csv"
    if csv_path.exists():
        _truncate_loss_csv(csv_path, start_step)
    else:
        atomic_write_text(csv_path, ",".join(LOSS_CSV_HEADER) + "\n")


def _build_loader(
    dataset: TrainDataset,
    config: Any,
    start_step: int,
    info: DistInfo,
    collate_fn: Callable[[Sequence[TrainSample]], dict[str, Any]],
    pin_memory: bool,
) -> torch.utils.data.DataLoader:
    """Batches for steps ``start_step..max_steps`` of this rank (deterministic, resumable)."""
    sampler = StepBatchSampler(
        start_step=start_step,
        max_steps=config.max_steps,
        batch_size=config.batch_size,
        rank=info.rank,
        world_size=info.world_size,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=config.num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
    )


def _restore_rng(
    state: dict[str, Any] | None, config: Any, start_step: int, info: DistInfo
) -> None:
    """The checkpoint's RNG states (bit-identical resume), else a seed derived from the step."""
    if state is not None and len(state["rng"]) == info.world_size:
        _set_rng_state(state["rng"][info.rank])
        return
    if state is not None:
        logger.warning(
            "checkpoint was written by %d process(es), this run has %d: RNG states are re-seeded, "
            "so the resumed run is not bit-identical to an uninterrupted one",
            len(state["rng"]),
            info.world_size,
        )
    _seed_all(config.seed * 1_000_003 + start_step * 7919 + info.rank)


def _run_steps(
    compute_loss: Callable[[dict[str, Any]], torch.Tensor],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    batches: Iterator[dict[str, Any]],
    config: Any,
    start_step: int,
    device: torch.device,
    info: DistInfo,
    run_dir: Path,
    csv_path: Path,
    on_step: Callable[[StepLog], None] | None,
    saver: Any = None,
) -> tuple[int, float | None]:
    """Optimiser steps up to ``max_steps`` (``compute_loss(batch)`` gives each step's loss),
    logging each and checkpointing every ``checkpoint_every`` (``saver``: what
    ``save_pretrained`` is called on, default the model); returns (last step, last loss)."""
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16)
    params = [p for p in model.parameters() if p.requires_grad]
    step = start_step
    last_loss: float | None = None
    t_step = time.perf_counter()
    while step < config.max_steps:
        batch = next(batches)
        lr = max(float(g["lr"]) for g in optimizer.param_groups)  # the non-backbone LR
        with autocast:
            loss = compute_loss(batch)
        loss_value = _optimizer_step(loss, optimizer, scheduler, params, config, info, step, batch)
        step += 1
        last_loss = loss_value
        now = time.perf_counter()
        seconds = now - t_step
        t_step = now
        if info.is_main:
            append_line_durable(csv_path, f"{step},{last_loss!r},{lr!r},{seconds:.4f}")
            if on_step is not None:
                on_step(
                    StepLog(
                        step=step,
                        max_steps=config.max_steps,
                        loss=last_loss,
                        lr=lr,
                        seconds=seconds,
                    )
                )
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            rng_states = _gather_objects(_rng_state(), info)
            if info.is_main:
                path = _save_checkpoint(
                    run_dir,
                    step,
                    model if saver is None else saver,
                    optimizer,
                    scheduler,
                    config,
                    rng_states,
                )
                write_loss_plot(csv_path, run_dir / "loss.png")
                logger.info("step %d: loss %.4f, checkpoint %s", step, last_loss, path)
            _barrier(info)
            t_step = time.perf_counter()  # checkpoint time is not a step's time
    return step, last_loss


def _optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    params: list[nn.Parameter],
    config: Any,
    info: DistInfo,
    step: int,
    batch: dict[str, Any],
) -> float:
    """Loss check (all ranks agree), backward, clip, optimiser and schedule step; the loss value."""
    loss_value = loss.detach().float()
    if info.distributed:
        import torch.distributed as dist

        dist.all_reduce(loss_value)  # every rank sees the same value, so all stop together
        loss_value /= info.world_size
    if not math.isfinite(float(loss_value)):
        raise NonFiniteLossError(
            f"loss became {float(loss_value)} at step {step + 1}; the weights were not updated. "
            f"Lower --lr or check the masks of images {batch['image_ids']}, then --resume from "
            "the last checkpoint"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    scheduler.step()
    return float(loss_value)


def resolve_training_run(
    run_dir: str | os.PathLike[str],
    overrides: dict[str, Any],
    annotations: str | None,
    images: str | None,
    *,
    resume: bool,
    load: Callable[[Path], tuple[Any, dict[str, Any]]],
    new: Callable[[dict[str, Any]], Any],
) -> tuple[Any, str, str]:
    """The settings and data of a run: on ``resume`` of an existing run, its stored settings
    (``load(run_dir)``) with ``overrides`` applied and its stored data paths unless given; else
    ``new(overrides)``. Shared by both trainers' CLIs.

    Raises:
        ValueError: no annotations / images for a new run.
    """
    run_dir = Path(run_dir)
    if resume and (run_dir / "train_config.json").is_file():
        saved, record = load(run_dir)
        config = dataclasses.replace(saved, **overrides)
        annotations = annotations or record.get("annotations")
        images = images or record.get("images")
    else:
        config = new(dict(overrides))
    if not annotations or not images:
        raise ValueError(
            "--annotations PSEUDO.json and --images DIR are required "
            "(except with --resume of a run)"
        )
    return config, annotations, images


# ---------------------------------------------------------------------------------------------
# The training skeleton
# ---------------------------------------------------------------------------------------------
class Trainer(abc.ABC):
    """One training run, shared by both models; a subclass gives what is its model's own.

    :meth:`fit` checks the run folder, loads the data, builds the model and the optimiser
    (restored from the newest checkpoint on resume), writes the run files, restores the RNG, runs
    the optimiser steps with the loss log and checkpoints (:func:`_run_steps`) and saves the final
    model. A subclass gives the crop, the model, its parameter groups, the batch collation, the
    loss and the final save.

    Args:
        config: the trainer's frozen settings dataclass; the engine reads ``seed``, ``device``,
            ``max_steps``, ``batch_size``, ``lr`` (and the other schedule and optimiser fields),
            ``max_masks_per_image``, ``hflip``, ``bf16``, ``grad_clip``, ``checkpoint_every``,
            ``keep_checkpoints`` and ``num_workers``.
    """

    #: Settings a resume may not change (the run stops, naming the setting).
    fixed_fields: tuple[str, ...] = ("config",)
    #: Settings whose change makes a resumed run differ from an uninterrupted one (warned about).
    exact_fields: tuple[str, ...] = ()
    #: Extra fields of ``train_config.json``.
    run_record: dict[str, Any] | None = None
    #: Batches in pinned host memory when training on CUDA.
    pin_memory: bool = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """What the start log line says is trained (e.g. the model config)."""

    @abc.abstractmethod
    def crop(self) -> tuple[int, tuple[float, float] | None]:
        """Side of the square training crop in pixels, and the scale-jitter range (None: none)."""

    def prepare(self, dataset: TrainDataset) -> None:
        """Called with the training dataset before the model is built (default: nothing)."""

    @abc.abstractmethod
    def build_model(self, new_run: bool) -> nn.Module:
        """A fresh model (after the run's seed is set); ``new_run``: no checkpoint will be loaded
        into it, so a backbone initialisation applies."""

    @abc.abstractmethod
    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """AdamW parameter groups (:func:`build_param_groups`)."""

    @abc.abstractmethod
    def collate_fn(self) -> Callable[[Sequence[TrainSample]], dict[str, Any]]:
        """The data loader's ``collate_fn``."""

    @abc.abstractmethod
    def loss_function(
        self, model: nn.Module, info: DistInfo, device: torch.device
    ) -> Callable[[dict[str, Any]], torch.Tensor]:
        """``compute_loss(batch)`` of a step (wrapping the model in DistributedDataParallel when
        ``info.distributed``)."""

    def checkpoint_saver(self, model: nn.Module) -> Any:
        """What a checkpoint calls ``save_pretrained(folder, safe_serialization=True)`` on."""
        return model

    @abc.abstractmethod
    def model_dir(self, run_dir: Path) -> Path:
        """Folder of the final model."""

    @abc.abstractmethod
    def save_final(self, model: nn.Module, model_dir: Path) -> None:
        """Write the final model into ``model_dir`` (rank 0)."""

    def fit(
        self,
        annotations: str | os.PathLike[str],
        images: str | os.PathLike[str],
        run_dir: str | os.PathLike[str],
        *,
        resume: bool = False,
        skip_bad_images: bool = False,
        on_step: Callable[[StepLog], None] | None = None,
    ) -> TrainResult:
        """Train on a COCO dataset JSON of (pseudo-)masks.

        Works in one process or under ``torchrun`` (read from the ``WORLD_SIZE``/``RANK``
        environment; the process group is created here when needed and destroyed at the end).

        Args:
            annotations: COCO dataset JSON (unsam pseudo-labels or ground truth; polygons are
                fine).
            images: folder the JSON's ``file_name`` values are relative to.
            run_dir: output folder (layout: module docstring).
            resume: continue from the newest checkpoint in ``run_dir`` (a fresh start when it has
                none). Without it an existing non-empty ``run_dir`` is an error.
            skip_bad_images: drop images that are missing or whose size differs from the JSON
                (listed in ``run_dir/skipped_images.txt``) instead of stopping.
            on_step: called on rank 0 after every step (the CLI drives its progress bar with it).

        Returns:
            A :class:`TrainResult`; ``model_dir`` is :meth:`model_dir` of ``run_dir``.

        Raises:
            ValueError: existing run folder without ``resume``, bad data, incompatible checkpoint.
            NonFiniteLossError: the loss became NaN or infinite (the step is not applied).
        """
        with distributed_session(self.config.device) as info:
            return self._fit(
                Path(annotations),
                Path(images),
                Path(run_dir),
                resume,
                skip_bad_images,
                on_step,
                info,
            )

    def _fit(
        self,
        annotations: Path,
        images: Path,
        run_dir: Path,
        resume: bool,
        skip_bad_images: bool,
        on_step: Callable[[StepLog], None] | None,
        info: DistInfo,
    ) -> TrainResult:
        """The steps of a run: data, model and optimiser (restored on resume), run files, loader,
        RNG, then the optimiser steps with checkpoints, then the final save."""
        config = self.config
        t_start = time.perf_counter()
        device = _resolve_device(config, info)
        _prepare_run_dir(run_dir, resume)  # read-only, on every rank so that all stop together
        _barrier(info)
        crop_size, scale_range = self.crop()
        dataset, bad = _build_dataset(
            config, annotations, images, skip_bad_images, crop_size, scale_range
        )
        self.prepare(dataset)
        model, optimizer, scheduler, state, start_step = self._build_training_state(
            run_dir, resume, device
        )
        csv_path = run_dir / "loss.csv"
        if info.is_main:
            _write_run_files(
                run_dir,
                config,
                annotations,
                images,
                info,
                dataset.num_images,
                bad,
                start_step,
                extra=self.run_record,
            )
        compute_loss = self.loss_function(model, info, device)
        loader = _build_loader(
            dataset,
            config,
            start_step,
            info,
            self.collate_fn(),
            pin_memory=self.pin_memory and device.type == "cuda",
        )
        batches = iter(loader)
        _restore_rng(state, config, start_step, info)  # last, right before the first step
        logger.info(
            "training %s on %d image(s) from step %d to %d, batch %d over %d process(es), "
            "device %s",
            self.name,
            dataset.num_images,
            start_step,
            config.max_steps,
            config.batch_size,
            info.world_size,
            device,
        )
        step, last_loss = _run_steps(
            compute_loss,
            model,
            optimizer,
            scheduler,
            batches,
            config,
            start_step,
            device,
            info,
            run_dir,
            csv_path,
            on_step,
            saver=self.checkpoint_saver(model),
        )
        model_dir = self.model_dir(run_dir)
        if info.is_main:
            self.save_final(model, model_dir)
            write_loss_plot(csv_path, run_dir / "loss.png")
            logger.info(
                "trained to step %d in %.1f s; model in %s",
                step,
                time.perf_counter() - t_start,
                model_dir,
            )
        _barrier(info)
        return TrainResult(
            run_dir=run_dir,
            model_dir=model_dir,
            steps=step,
            start_step=start_step,
            final_loss=last_loss,
        )

    def _build_training_state(
        self, run_dir: Path, resume: bool, device: torch.device
    ) -> tuple[
        nn.Module, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, dict[str, Any] | None, int
    ]:
        """Model (backbone-initialised for a new run, restored from the newest checkpoint on
        resume), optimiser, schedule, the checkpoint's training state and its step."""
        config = self.config
        ckpt = latest_checkpoint(run_dir) if resume else None
        _seed_all(config.seed)
        model = self.build_model(new_run=ckpt is None)
        state: dict[str, Any] | None = None
        start_step = 0
        if ckpt is not None:
            from unsam.io.checkpoints import load_torch_file

            state = load_torch_file(ckpt / "training_state.pt", "training state")
            _check_resume_config(
                state.get("config", {}), config, ckpt, self.fixed_fields, self.exact_fields
            )
            _load_model_weights(model, ckpt / "model")
            start_step = int(state["step"])
            logger.info("resuming from %s (step %d)", ckpt, start_step)
        elif resume:
            logger.info("%s has no checkpoint yet; starting from step 0", run_dir)
        model.to(device)
        model.train()
        optimizer = build_optimizer(self.param_groups(model), config)
        scheduler = build_scheduler(optimizer, config)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            # the stored LR came from the old schedule: recompute it with this config's (a resume
            # may change max_steps, which moves the decay steps)
            for group, base, fn in zip(
                optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas
            ):
                group["lr"] = base * fn(scheduler.last_epoch)
        if start_step >= config.max_steps:
            logger.info(
                "run already has %d >= max_steps=%d steps; nothing to train",
                start_step,
                config.max_steps,
            )
        return model, optimizer, scheduler, state, start_step
