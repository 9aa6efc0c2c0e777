"""The training skeleton: :class:`Trainer` (one training run, subclassed by each model's trainer),
its optimiser steps with the loss log and checkpoints, and what a run reports
(:class:`StepLog`, :class:`TrainResult`, :class:`NonFiniteLossError`).
"""

from __future__ import annotations

import abc
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unsam.io.coco import load_coco_dataset
from unsam.io.files import append_line_durable
from unsam.training.data import StepBatchSampler, TrainDataset, TrainSample, check_images
from unsam.training.engine.checkpoints import (
    _check_resume_config,
    _load_model_weights,
    _save_checkpoint,
)
from unsam.training.engine.distributed import (
    DistInfo,
    _barrier,
    _gather_objects,
    _resolve_device,
    distributed_session,
)
from unsam.training.engine.optim import build_optimizer, build_scheduler
from unsam.training.engine.rng import _restore_rng, _rng_state, _seed_all
from unsam.training.engine.run_files import (
    _prepare_run_dir,
    _write_run_files,
    latest_checkpoint,
    write_loss_plot,
)

__all__ = ["NonFiniteLossError", "StepLog", "TrainResult", "Trainer", "mixed_precision"]

logger = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def mixed_precision(config: Any) -> bool:
    """Whether a training config asks for bfloat16 autocast (``dtype="bfloat16"``)."""
    from unsam.runtime import resolve_dtype

    return resolve_dtype(getattr(config, "dtype", "float32")) == torch.bfloat16


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
    # --dtype bfloat16 in training is autocast mixed precision: float32 master weights and AdamW
    # state, matrix products in bfloat16 (AdamW on bfloat16 weights loses small updates)
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=mixed_precision(config)
    )
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
            ``max_masks_per_image``, ``hflip``, ``dtype``, ``grad_clip``, ``checkpoint_every``,
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
    #: AdamW with torch's fused kernel (:func:`build_optimizer`).
    fused_optimizer: bool = False

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
            run_dir: output folder (layout: :mod:`unsam.training.engine`).
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
                extra={**(self.run_record or {}), "device": str(device), "backend": info.backend},
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
            "training %s on %d image(s) from step %d to %d, batch %d over %d process(es)%s, "
            "device %s, %s",
            self.name,
            dataset.num_images,
            start_step,
            config.max_steps,
            config.batch_size,
            info.world_size,
            f" ({info.backend})" if info.backend else "",
            device,
            "bfloat16 autocast" if mixed_precision(config) else "float32",
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
        optimizer = build_optimizer(self.param_groups(model), config, fused=self.fused_optimizer)
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
