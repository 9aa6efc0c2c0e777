"""Trainer of the whole-image model: the Mask2Former loss, its parameter groups and the test size
remembered with the model (spec §6.4); the run itself is :class:`unsam.training.engine.Trainer`'s.

Run directory layout (``unsam train --output RUN_DIR``)::

    RUN_DIR/train_config.json                      TrainConfig + data paths + versions
    RUN_DIR/loss.csv                               step, loss, lr, seconds_per_step (one row a step)
    RUN_DIR/loss.png                               the loss curve (rewritten at every checkpoint)
    RUN_DIR/checkpoints/step_0000500/model/        save_pretrained folder
                                                   (config.json + model.safetensors)
    RUN_DIR/checkpoints/step_0000500/training_state.pt   optimizer, scheduler, step, RNG states
    RUN_DIR/model/                                 final save_pretrained folder

``WholeImageSegmenter.from_pretrained(RUN_DIR)`` reads ``RUN_DIR/model`` (or the newest checkpoint).

Multi-process data parallel: launch with
``torchrun --nproc_per_node N -m unsam.cli.main train ...``.
Each process takes ``batch_size / N`` images per step; gradients are averaged by
DistributedDataParallel (gloo on CPU, nccl on CUDA); the loss normaliser (number of target
masks) is summed over processes as in the original; only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unsam.training.data import TrainDataset, TrainSample, collate
from unsam.training.engine import (
    DistInfo,
    StepLog,
    Trainer,
    TrainResult,
    read_train_config,
)
from unsam.training.engine import build_param_groups as _build_param_groups
from unsam.training.engine.checkpoints import _save_pretrained_atomic
from unsam.training.whole_image.config import TrainConfig

__all__ = [
    "WholeImageTrainer",
    "build_param_groups",
    "load_train_config",
    "new_train_config",
    "train",
    "training_test_size",
]

#: Backbone parameters (``lr * backbone_lr_mult``), with and without the ``model.`` prefix.
_BACKBONE_PREFIXES = ("model.pixel_level_module.encoder.", "pixel_level_module.encoder.")

_EXACT_FIELDS = (
    "batch_size",
    "seed",
    "crop_size",
    "max_masks_per_image",
    "hflip",
    "scale_jitter",
    "dtype",
)


def build_param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups as the original's ``build_optimizer`` (spec §6.4): the backbone
    (``model.pixel_level_module.encoder``) gets ``lr * backbone_lr_mult``; the rest as
    :func:`unsam.training.engine.build_param_groups`."""
    return _build_param_groups(model, config, _BACKBONE_PREFIXES)


def load_train_config(run_dir: str | os.PathLike[str]) -> tuple[TrainConfig, dict[str, Any]]:
    """The TrainConfig and the whole record of ``RUN_DIR/train_config.json``.

    Raises:
        FileNotFoundError / ValueError: missing or malformed file, naming it.
    """
    return read_train_config(run_dir, TrainConfig, "unsam train")  # type: ignore[no-any-return]


def new_train_config(values: dict[str, Any]) -> TrainConfig:
    """A new run's TrainConfig: :meth:`TrainConfig.for_model`, the model config's own defaults under
    the user's flags ``values``."""
    values = dict(values)
    return TrainConfig.for_model(str(values.pop("config", "r50")), **values)


def training_test_size(config: TrainConfig, image_hws: list[tuple[int, int]]) -> tuple[int, int]:
    """The test resize (shortest edge, longest edge) that shows a model images at the scale it
    was trained at, remembered in the model folder's ``preprocessor_config.json``:

    * with scale jitter, images were resized to fit ``crop_size * s``, s ~ U(min_scale, max_scale):
      both edges ``crop_size * (min_scale + max_scale) / 2``;
    * without, training saw the images at their own size: the median shorter side and the
      largest longer side of the training images.
    """
    if config.scale_jitter:
        side = max(32, round(config.resolved_crop_size * (config.min_scale + config.max_scale) / 2))
        return side, side
    shorter = sorted(min(h, w) for h, w in image_hws)
    return int(shorter[len(shorter) // 2]), int(max(max(h, w) for h, w in image_hws))


def _write_test_resolution(model_dir: Path, test_size: tuple[int, int]) -> None:
    """``preprocessor_config.json`` with the test resize of :func:`training_test_size`, which
    ``unsam segment`` uses unless given ``--min-size`` / ``--max-size``."""
    from unsam.models.whole_image.convert import write_preprocessor_config

    write_preprocessor_config(model_dir, min_size=test_size[0], max_size=max(test_size))


def _sync_num_masks(criterion: nn.Module) -> None:
    """Make the Mask2Former loss normalise by the mean number of target masks over all processes.

    transformers only does that through ``accelerate``; here the instance's ``get_num_masks`` is
    replaced by one that all-reduces the count (the original Mask2Former criterion does the same).
    """
    import torch.distributed as dist

    def get_num_masks(class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        count = torch.as_tensor(
            float(sum(len(c) for c in class_labels)), dtype=torch.float, device=device
        )
        dist.all_reduce(count)
        return torch.clamp(count / dist.get_world_size(), min=1)

    criterion.get_num_masks = get_num_masks  # type: ignore[method-assign]


def _mask2former_loss(
    net: nn.Module, device: torch.device
) -> Callable[[dict[str, Any]], torch.Tensor]:
    """The whole-image model's loss on one batch of :func:`unsam.training.data.collate`."""

    def compute(batch: dict[str, Any]) -> torch.Tensor:
        out = net(
            pixel_values=batch["pixel_values"].to(device, non_blocking=True),
            pixel_mask=batch["pixel_mask"].to(device, non_blocking=True),
            # bool on the host, float32 on the device (a quarter of the bytes to copy)
            mask_labels=[m.to(device, non_blocking=True).float() for m in batch["mask_labels"]],
            class_labels=[c.to(device, non_blocking=True) for c in batch["class_labels"]],
        )
        return out.loss

    return compute


class _TestSizeSaver:
    """Adapter for the engine's checkpoints: ``save_pretrained`` plus the test resize of
    :func:`training_test_size` in the folder's ``preprocessor_config.json``."""

    def __init__(self, model: nn.Module, test_size: tuple[int, int]) -> None:
        self.model = model
        self.test_size = test_size

    def save_pretrained(
        self, folder: str | os.PathLike[str], safe_serialization: bool = True
    ) -> None:
        self.model.save_pretrained(folder, safe_serialization=safe_serialization)  # type: ignore[operator]
        _write_test_resolution(Path(folder), self.test_size)


class WholeImageTrainer(Trainer):
    """What the whole-image model adds to :class:`unsam.training.engine.Trainer`: the Mask2Former
    (backbone-initialised for a new run, BatchNorm frozen), its parameter groups and loss, and the
    final ``RUN_DIR/model`` folder with the training scale as its test resize."""

    fixed_fields = ("config", "num_queries")
    exact_fields = _EXACT_FIELDS
    pin_memory = True

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.test_size: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return str(self.config.config)

    def crop(self) -> tuple[int, tuple[float, float] | None]:
        config = self.config
        scale_range = (config.min_scale, config.max_scale) if config.scale_jitter else None
        return config.resolved_crop_size, scale_range

    def prepare(self, dataset: TrainDataset) -> None:
        self.test_size = training_test_size(
            self.config, [(r.height, r.width) for r in dataset.images]
        )

    def build_model(self, new_run: bool) -> nn.Module:
        from unsam.models.whole_image import build_model, freeze_batchnorm

        config = self.config
        model = build_model(config.config, num_queries=config.num_queries)
        if config.backbone_init is not None and new_run:  # a new run; resumed weights win
            from unsam.training.whole_image.backbone_init import load_backbone_init

            load_backbone_init(model, config.backbone_init)
        freeze_batchnorm(model)
        # position embeddings and deformable-attention sampling in float32 under --dtype
        # bfloat16 autocast, as the original's mixed precision (a no-op in float32)
        from unsam.models.whole_image.precision import install_float32_steps

        return install_float32_steps(model)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return build_param_groups(model, self.config)

    def collate_fn(self) -> Callable[[Sequence[TrainSample]], dict[str, Any]]:
        from unsam.models.whole_image import IMAGE_MEAN, IMAGE_STD

        return partial(collate, mean=IMAGE_MEAN, std=IMAGE_STD)

    def loss_function(
        self, model: nn.Module, info: DistInfo, device: torch.device
    ) -> Callable[[dict[str, Any]], torch.Tensor]:
        net: nn.Module = model
        if info.distributed:
            _sync_num_masks(model.criterion)
            net = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                forward_sync_buffers=False,  # BatchNorm is frozen: buffers never change
            )
        return _mask2former_loss(net, device)

    def checkpoint_saver(self, model: nn.Module) -> Any:
        if self.test_size is None:
            raise RuntimeError("WholeImageTrainer.prepare(dataset) sets the test size first")
        return _TestSizeSaver(model, self.test_size)

    def model_dir(self, run_dir: Path) -> Path:
        return run_dir / "model"

    def save_final(self, model: nn.Module, model_dir: Path) -> None:
        _save_pretrained_atomic(self.checkpoint_saver(model), model_dir)


def train(
    config: TrainConfig,
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    skip_bad_images: bool = False,
    on_step: Callable[[StepLog], None] | None = None,
) -> TrainResult:
    """Train the whole-image Mask2Former on a COCO dataset JSON of (pseudo-)masks
    (:class:`WholeImageTrainer`; the model is saved in ``run_dir / "model"``).

    Args, Returns and Raises: :meth:`unsam.training.engine.Trainer.fit`; ``config`` is the
    training settings.
    """
    return WholeImageTrainer(config).fit(
        annotations,
        images,
        run_dir,
        resume=resume,
        skip_bad_images=skip_bad_images,
        on_step=on_step,
    )
