"""Training loop of the promptable model (PROMPTABLE.md §1.7, §3): resumable, DDP-ready.

Run directory (``unsam train-promptable --output RUN_DIR``)::

    RUN_DIR/config.json, RUN_DIR/model.safetensors   the final model (save_pretrained layout), so
                                                     PromptablePredictor.from_pretrained(RUN_DIR)
                                                     works
    RUN_DIR/train_config.json                        PromptableTrainConfig + data paths + versions
    RUN_DIR/loss.csv, RUN_DIR/loss.png               step, loss, lr, seconds_per_step; the curve
    RUN_DIR/checkpoints/step_0005000/model/          save_pretrained folder of that step
    RUN_DIR/checkpoints/step_0005000/training_state.pt   optimizer, scheduler, step, RNG states

The run itself (run files, RNG capture, checkpoints, loss CSV / plot, LR schedule, resume) is
:class:`unsam.training.engine.Trainer`'s; the data stream is
:class:`unsam.training.data.TrainDataset` (every sample is a pure function of
``(seed, position)``).
Clicks, box noise and point sampling use the global torch RNG, which checkpoints store, so a run
resumed from step k reproduces the uninterrupted run's weights bit for bit (same machine, thread
count and process count). ``training_state.pt`` loads with ``torch.load(weights_only=True)``.

One step, per image (spec §3): 60 clicks in random masks, their target sets (every mask containing
the click, at most 6), click boxes of 6 px with the tiny training noise, pb = 1, block-diagonal
attention; many-to-many Hungarian matching on the last layer; mask BCE + dice + IoU-head MSE +
box L1 + GIoU on the last and every auxiliary layer. The loss normaliser is the number of targets,
summed over processes and divided by the world size.

Several processes: ``torchrun --nproc_per_node N -m unsam.cli.main train-promptable ...``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unsam.training.data import TrainSample
from unsam.training.engine import (
    DistInfo,
    StepLog,
    Trainer,
    TrainResult,
    read_train_config,
    reduce_param_groups,
)
from unsam.training.engine import build_param_groups as _build_param_groups
from unsam.training.promptable.config import PromptableTrainConfig
from unsam.training.promptable.losses import layer_losses, weighted_total
from unsam.training.promptable.matching import match_clicks
from unsam.training.promptable.targets import (
    click_targets,
    jitter_click_boxes,
    mask_boxes_cxcywh,
    sample_clicks,
)

__all__ = [
    "PromptableTrainStep",
    "PromptableTrainer",
    "build_param_groups",
    "collate_promptable",
    "initial_model",
    "load_promptable_train_config",
    "new_promptable_train_config",
    "train_promptable",
]

_EXACT_FIELDS = (
    "batch_size",
    "seed",
    "image_size",
    "max_masks_per_image",
    "hflip",
    "min_scale",
    "max_scale",
    "num_clicks",
    "num_points",
    "dtype",
)
_NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")
_BACKBONE_PREFIXES = ("backbone.",)


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------
def build_param_groups(model: nn.Module, config: PromptableTrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups as the original's ``build_optimizer`` (spec §1.7).

    ``backbone.*`` gets ``lr * backbone_lr_mult``. Parameters of normalisation layers get
    ``weight_decay_norm``; of ``nn.Embedding`` layers and Swin's ``relative_position_bias_table`` /
    ``absolute_pos_embed``, ``weight_decay_embed``; all others (biases included) ``weight_decay``.

    Returns:
        One group per trainable parameter, each with ``lr``, ``weight_decay`` and ``name``.
    """
    return _build_param_groups(model, config, _BACKBONE_PREFIXES, _NO_DECAY_NAMES)


# ---------------------------------------------------------------------------------------------
# One training step
# ---------------------------------------------------------------------------------------------
def collate_promptable(samples: Sequence[TrainSample]) -> dict[str, Any]:
    """Stack augmented crops: ``images`` (B, 3, S, S) uint8, ``masks`` list of (n_i, S, S) bool,
    ``image_ids`` and ``positions`` lists (masks stay bool: hundreds of 1024² masks per image)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    return {
        "images": images,
        "masks": [torch.from_numpy(np.ascontiguousarray(s.masks)) for s in samples],
        "image_ids": [s.image_id for s in samples],
        "positions": [s.position for s in samples],
    }


class PromptableTrainStep(nn.Module):
    """The model plus its training forward (so DistributedDataParallel can wrap one module).

    Args:
        model: a :class:`unsam.models.promptable.PromptableModel`.
        config: training settings.
    """

    def __init__(self, model: nn.Module, config: PromptableTrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.loss_config = config.loss_config()
        self.matcher_config = config.matcher_config()

    def forward(
        self,
        images: torch.Tensor,
        masks: Sequence[torch.Tensor],
        points: Sequence[torch.Tensor | None],
        targets: Sequence[list[torch.Tensor] | None],
        num_masks: float,
    ) -> torch.Tensor:
        """Total weighted loss of a batch.

        Args:
            images: (B, 3, S, S) uint8 RGB (S a multiple of 32).
            masks: B tensors (M_i, S, S) bool.
            points: B tensors (C, 2) int64 click (x, y), or None for an image without masks.
            targets: B lists of C target-index tensors, or None.
            num_masks: loss normaliser (>= 1).

        Returns:
            Scalar loss: Σ images Σ layers of the weighted losses.
        """
        model = self.model
        pixel_values = model.normalize_and_pad(images)
        state = model.encode_image(pixel_values)
        per_layer: list[dict[str, torch.Tensor]] = []
        dummy = pixel_values.sum() * 0.0
        deep = self.loss_config.deep_supervision
        for i in range(images.shape[0]):
            st = state.select(i)
            pts = points[i]
            if pts is None or targets[i] is None:
                # no mask in this crop: decode one click with zero weight, so every parameter is
                # still part of the graph (DistributedDataParallel needs that)
                centre = torch.tensor([[st.image_hw[1] / 2, st.image_hw[0] / 2]])
                out = model.decode_boxes(
                    st, _click_boxes(centre, st, self.config), pb=1, return_aux=deep
                )
                dummy = dummy + 0.0 * sum(t.sum() for layer in _layers(out, deep) for t in layer)
                continue
            boxes = jitter_click_boxes(
                _click_boxes(pts, st, self.config), self.config.box_noise_scale
            )
            out = model.decode_boxes(st, boxes, pb=1, independent=True, return_aux=deep)
            img_masks = masks[i].to(pixel_values.device)
            target_boxes = mask_boxes_cxcywh(img_masks).to(pixel_values.device)
            match = match_clicks(
                out.mask_logits,
                out.boxes,
                img_masks,
                target_boxes,
                targets[i],
                config=self.matcher_config,
            )
            for logits, iou, pred_boxes in _layers(out, deep):
                per_layer.append(
                    layer_losses(
                        logits.float(),
                        iou.float(),
                        pred_boxes.float(),
                        img_masks,
                        target_boxes,
                        match,
                        num_masks,
                        config=self.loss_config,
                    )
                )
        if not per_layer:
            return dummy
        return weighted_total(per_layer, self.loss_config) + dummy


def _layers(out: Any, deep: bool) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    last = (out.mask_logits, out.iou, out.boxes)
    return [*out.aux, last] if deep else [last]


def _click_boxes(points: torch.Tensor, state: Any, config: PromptableTrainConfig) -> torch.Tensor:
    from unsam.models.promptable.layers import click_boxes

    side = float(config.click_box_px)
    return click_boxes(points.float(), state.padded_hw, (side, side))


def _prompts(
    masks: Sequence[torch.Tensor], num_clicks: int, max_targets: int
) -> tuple[list[torch.Tensor | None], list[list[torch.Tensor] | None], int]:
    points: list[torch.Tensor | None] = []
    targets: list[list[torch.Tensor] | None] = []
    count = 0
    for m in masks:
        if m.shape[0] == 0:
            points.append(None)
            targets.append(None)
            continue
        _, pts = sample_clicks(m, num_clicks)
        tg = click_targets(m, pts, max_targets)
        points.append(pts)
        targets.append(tg)
        count += sum(len(t) for t in tg)
    return points, targets, count


# ---------------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------------
class _Saver:
    """Adapter: the engine's checkpoints call
    ``save_pretrained(folder, safe_serialization=)``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def save_pretrained(
        self, folder: str | os.PathLike[str], safe_serialization: bool = True
    ) -> Path:
        return self.model.save_pretrained(folder)  # type: ignore[operator,no-any-return]


def _save_final(model: nn.Module, run_dir: Path) -> None:
    """Write config.json + model.safetensors into RUN_DIR itself (each file replaced atomically)."""
    from unsam.models.promptable.config import CONFIG_FILE
    from unsam.models.promptable.modeling import WEIGHTS_FILE

    tmp = run_dir / f".tmp-final-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)  # type: ignore[operator]
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        os.replace(tmp / name, run_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)


def load_promptable_train_config(
    run_dir: str | os.PathLike[str],
) -> tuple[PromptableTrainConfig, dict[str, Any]]:
    """The PromptableTrainConfig and the whole record of ``RUN_DIR/train_config.json``.

    Raises:
        FileNotFoundError / ValueError: missing or malformed file, naming it.
    """
    path = Path(run_dir) / "train_config.json"
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        model = "promptable"  # load_train_config names what is wrong with the file
    if model != "promptable":
        raise ValueError(
            f"{path}: written by `unsam train` (whole-image model), not `unsam train-promptable`"
        )
    return read_train_config(run_dir, PromptableTrainConfig, "unsam train-promptable")  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class PromptableTrainer(Trainer):
    """What the promptable model adds to :class:`unsam.training.engine.Trainer`: the model
    (Swin-initialised for a new run), its parameter groups, the clicks and the loss of a step
    (:class:`PromptableTrainStep`) and the final model in ``RUN_DIR`` itself."""

    fixed_fields = ("config",)
    exact_fields = _EXACT_FIELDS
    run_record = {"model": "promptable"}
    fused_optimizer = True

    @property
    def name(self) -> str:
        return f"promptable {self.config.config}"

    def crop(self) -> tuple[int, tuple[float, float] | None]:
        config = self.config
        return config.resolved_image_size, (config.min_scale, config.max_scale)

    def fit(self, *args: Any, **kwargs: Any) -> TrainResult:
        """:meth:`unsam.training.engine.Trainer.fit` with ``config.num_threads`` intra-op torch
        threads (0: torch's default), restored afterwards."""
        from unsam.models.promptable.predictor import torch_threads

        with torch_threads(self.config.num_threads or None):
            return super().fit(*args, **kwargs)

    def build_model(self, new_run: bool) -> nn.Module:
        """The ``config.config`` model recording its training image size (``train_image_size``:
        the predictor, the AMG and ``eval-points`` then resize images the way training did),
        Swin-initialised for a new run with ``backbone_init``."""
        import dataclasses

        from unsam.models.promptable.config import PromptableConfig
        from unsam.models.promptable.modeling import build_model

        model = build_model(
            dataclasses.replace(
                PromptableConfig.named(self.config.config),  # type: ignore[arg-type]
                train_image_size=self.config.resolved_image_size,
            )
        )
        if new_run and self.config.backbone_init is not None:
            from unsam.training.promptable.backbone_init import load_backbone_init

            load_backbone_init(model, self.config.backbone_init)
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        # the per-tensor groups merged by (lr, weight decay), as the original's build_optimizer
        return reduce_param_groups(build_param_groups(model, self.config))

    def collate_fn(self) -> Callable[[Sequence[TrainSample]], dict[str, Any]]:
        return collate_promptable

    def loss_function(
        self, model: nn.Module, info: DistInfo, device: torch.device
    ) -> Callable[[dict[str, Any]], torch.Tensor]:
        config = self.config
        max_targets = int(model.config.num_mask_tokens)
        step_module = PromptableTrainStep(model, config)
        net: nn.Module = step_module
        if info.distributed:
            net = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None
            )

        def compute_loss(batch: dict[str, Any]) -> torch.Tensor:
            points, targets, count = _prompts(batch["masks"], config.num_clicks, max_targets)
            num_masks = torch.tensor(float(count))
            if info.distributed:
                import torch.distributed as dist

                num_masks = num_masks.to(device)
                dist.all_reduce(num_masks)
            num_masks_value = max(float(num_masks) / info.world_size, 1.0)
            return net(batch["images"].to(device), batch["masks"], points, targets, num_masks_value)

        return compute_loss

    def checkpoint_saver(self, model: nn.Module) -> Any:
        return _Saver(model)

    def model_dir(self, run_dir: Path) -> Path:
        return run_dir

    def save_final(self, model: nn.Module, model_dir: Path) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        _save_final(model, model_dir)


def initial_model(config: PromptableTrainConfig) -> nn.Module:
    """The randomly initialised model a new run of ``config`` starts from (every RNG seeded with
    ``config.seed``, as :meth:`PromptableTrainer.build_model` is called): the untrained baseline of
    a recipe (``benchmarks/promptable_recipe.py``)."""
    from unsam.training.engine.rng import _seed_all

    _seed_all(config.seed)
    return PromptableTrainer(config).build_model(new_run=True)


def new_promptable_train_config(values: dict[str, Any]) -> PromptableTrainConfig:
    """A new run's settings: :meth:`PromptableTrainConfig.for_model`, the model config's own
    defaults under the user's flags ``values``."""
    values = dict(values)
    return PromptableTrainConfig.for_model(str(values.pop("config", "swin_t")), **values)


def train_promptable(
    config: PromptableTrainConfig,
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    skip_bad_images: bool = False,
    on_step: Callable[[StepLog], None] | None = None,
) -> TrainResult:
    """Train the promptable model on a COCO dataset JSON of (pseudo-)masks
    (:class:`PromptableTrainer`; the model is saved in ``run_dir`` itself, so ``model_dir`` is
    ``run_dir``).

    Args, Returns and Raises: :meth:`unsam.training.engine.Trainer.fit`; ``config`` is the
    training settings.
    """
    return PromptableTrainer(config).fit(
        annotations,
        images,
        run_dir,
        resume=resume,
        skip_bad_images=skip_bad_images,
        on_step=on_step,
    )
