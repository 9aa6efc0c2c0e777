"""Training loop of the promptable model (PROMPTABLE.md §1.7, §3): resumable, DDP-ready.

Run directory (``unsam train-promptable --output RUN_DIR``)::

    RUN_DIR/config.json, RUN_DIR/model.safetensors   the final model (save_pretrained layout), so
                                                     PromptablePredictor.from_pretrained(RUN_DIR)
                                                     works
    RUN_DIR/train_config.json                        PromptableTrainConfig + data paths + versions
    RUN_DIR/loss.csv, RUN_DIR/loss.png               step, loss, lr, seconds_per_step; the curve
    RUN_DIR/checkpoints/step_0005000/model/          save_pretrained folder of that step
    RUN_DIR/checkpoints/step_0005000/training_state.pt   optimizer, scheduler, step, RNG states

The run-directory helpers, RNG capture, checkpoint writing, loss CSV / plot and the LR schedule
are the whole-image trainer's (:mod:`unsam.training.engine`); so is the data stream
(:class:`unsam.training.data.TrainDataset`: every sample is a pure function of
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
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unsam.io.checkpoints import load_torch_file
from unsam.io.coco import load_coco_dataset
from unsam.training.data import StepBatchSampler, TrainDataset, TrainSample, check_images
from unsam.training.engine import (
    _NORM_TYPES,
    DistInfo,
    StepLog,
    TrainResult,
    _barrier,
    _load_model_weights,
    _prepare_run_dir,
    _resolve_device,
    _restore_rng,
    _run_steps,
    _seed_all,
    _write_run_files,
    distributed_session,
    latest_checkpoint,
    load_train_config,
    lr_factor,
    write_loss_plot,
)
from unsam.training.engine import (
    _check_resume_config as _check_resume_shared,
)
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
    "build_param_groups",
    "collate_promptable",
    "load_backbone_init",
    "load_promptable_train_config",
    "train_promptable",
]

logger = logging.getLogger(__name__)

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
    "bf16",
)
_NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


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
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{param_name}" if module_name else param_name
            lr = config.lr * (config.backbone_lr_mult if full.startswith("backbone.") else 1.0)
            wd = config.weight_decay
            if isinstance(module, _NORM_TYPES):
                wd = config.weight_decay_norm
            elif isinstance(module, nn.Embedding) or any(n in full for n in _NO_DECAY_NAMES):
                wd = config.weight_decay_embed
            groups.append({"params": [p], "lr": lr, "weight_decay": wd, "name": full})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


# ---------------------------------------------------------------------------------------------
# Backbone initialisation from an official Swin / MoBY checkpoint
# ---------------------------------------------------------------------------------------------
def load_backbone_init(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Load an official Swin-T (or MoBY) checkpoint into ``model.backbone`` (spec §1.2, §6.4).

    The checkpoint's ``model`` / ``state_dict`` entry (or the dict itself) is read with
    ``weights_only=True``. MoBY files keep the online encoder under ``encoder.`` (stripped, as the
    original does; ``encoder_k.`` and the projector / predictor are ignored). Keys are mapped onto
    transformers' ``SwinBackbone`` with the promptable checkpoint converter's Swin rules
    (:data:`unsam.models.promptable.convert.RULES`); the classification head, the final ``norm`` and
    ``attn_mask`` buffers have no counterpart and are skipped. The per-stage output norms are not in
    such files and keep their initialisation.

    Returns:
        Number of backbone tensors loaded.

    Raises:
        FileNotFoundError / ValueError: missing file, no Swin tensor found, or a shape mismatch
            (e.g. a Swin-T file for the tiny model).
    """
    from unsam.models.promptable.convert import _match

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: backbone checkpoint not found (pass a Swin-T / MoBY .pth to --backbone-init)"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors of many types
        raise ValueError(f"{p}: cannot be read with torch.load(weights_only=True) ({exc})") from exc
    sd = ckpt
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                sd = ckpt[key]
                break
    if not isinstance(sd, dict):
        raise TypeError(f"{p}: expected a dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("encoder.") for k in sd):
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    skipped = []
    for key, tensor in sd.items():
        hit = _match("backbone." + key)
        if hit is None or hit[1] not in ("copy", "split_qkv") or not hit[0].startswith("backbone."):
            skipped.append(key)
            continue
        template, action, groups = hit
        if action == "split_qkv":
            c = tensor.shape[0] // 3
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[template.format(proj=proj, **groups)] = tensor[i * c : (i + 1) * c]
        else:
            out[template.format(**groups)] = tensor
    if not out:
        raise ValueError(
            f"{p}: no Swin backbone tensor found (keys like layers.0.blocks.0.attn.qkv.weight)"
        )
    for name, tensor in out.items():
        if name not in target or target[name].shape != tensor.shape:
            shape = tuple(target[name].shape) if name in target else "absent"
            raise ValueError(
                f"{p}: {name} has shape {tuple(tensor.shape)} but the model's is {shape}; "
                "is this a Swin-T checkpoint and the model config swin_t?"
            )
    model.load_state_dict(out, strict=False)
    total = sum(1 for k in target if k.startswith("backbone."))
    logger.info(
        "backbone init from %s: %d of %d backbone tensors loaded; %d checkpoint keys skipped (%s)",
        p,
        len(out),
        total,
        len(skipped),
        ", ".join(sorted(skipped)[:4]),
    )
    return len(out)


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
    from unsam.models.promptable.modeling import click_boxes

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
    """Adapter: :func:`unsam.training.engine._save_checkpoint` calls
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
    return load_train_config(run_dir, PromptableTrainConfig, "unsam train-promptable")


def _check_resume_config(saved: dict[str, Any], config: PromptableTrainConfig, where: Path) -> None:
    """The whole-image trainer's resume check with this trainer's fixed and exact fields."""
    _check_resume_shared(saved, config, where, fixed=("config",), exact_fields=_EXACT_FIELDS)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
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
    """Train the promptable model on a COCO dataset JSON of (pseudo-)masks.

    Works in one process or under ``torchrun`` (``WORLD_SIZE`` / ``RANK`` from the environment).

    Args:
        config: training settings.
        annotations: COCO dataset JSON (pseudo-labels or ground truth).
        images: folder the JSON's ``file_name`` values are relative to.
        run_dir: output folder (layout: module docstring).
        resume: continue from the newest checkpoint of ``run_dir`` (a fresh start when it has none).
        skip_bad_images: skip missing / mis-sized images instead of stopping.
        on_step: called on rank 0 after every step.

    Returns:
        A :class:`unsam.training.engine.TrainResult`; ``model_dir`` is ``run_dir`` itself.

    Raises:
        ValueError: existing run folder without ``resume``, bad data, incompatible checkpoint.
        NonFiniteLossError: the loss became NaN or infinite (the step is not applied).
    """
    with distributed_session(config.device) as info:
        return _train(
            config,
            Path(annotations),
            Path(images),
            Path(run_dir),
            resume,
            skip_bad_images,
            on_step,
            info,
        )


def _train(
    config: PromptableTrainConfig,
    annotations: Path,
    images: Path,
    run_dir: Path,
    resume: bool,
    skip_bad_images: bool,
    on_step: Callable[[StepLog], None] | None,
    info: DistInfo,
) -> TrainResult:
    from unsam.models.promptable.modeling import build_model

    t_start = time.perf_counter()
    device = _resolve_device(config, info)  # type: ignore[arg-type]
    _prepare_run_dir(run_dir, resume)
    _barrier(info)

    records = load_coco_dataset(annotations)
    usable, bad = check_images(records, images, skip_bad=skip_bad_images)
    if not usable:
        raise ValueError(f"{annotations}: no image with at least one mask; nothing to train on")
    dataset = TrainDataset(
        usable,
        images,
        crop_size=config.resolved_image_size,
        seed=config.seed,
        max_masks=config.max_masks_per_image,
        hflip=config.hflip,
        scale_range=(config.min_scale, config.max_scale),
    )

    ckpt = latest_checkpoint(run_dir) if resume else None
    _seed_all(config.seed)
    model = build_model(config.config)
    state: dict[str, Any] | None = None
    start_step = 0
    if ckpt is not None:
        state = load_torch_file(ckpt / "training_state.pt", "training state")
        _check_resume_config(state.get("config", {}), config, ckpt)
        _load_model_weights(model, ckpt / "model")
        start_step = int(state["step"])
        logger.info("resuming from %s (step %d)", ckpt, start_step)
    elif config.backbone_init is not None:
        load_backbone_init(model, config.backbone_init)
    model.to(device)
    model.train()
    max_targets = int(model.config.num_mask_tokens)
    optimizer = torch.optim.AdamW(build_param_groups(model, config), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, config=config))  # type: ignore[arg-type]
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # the stored LRs were computed with the stored max_steps; a resume that changes max_steps
        # (e.g. 2 steps, then --max-steps 4) must continue on the new schedule
        factor = lr_factor(start_step, config)  # type: ignore[arg-type]
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * factor

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
            start_step,  # type: ignore[arg-type]
            extra={"model": "promptable"},
        )

    step_module = PromptableTrainStep(model, config)
    net: nn.Module = step_module
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = StepBatchSampler(
        start_step=start_step,
        max_steps=config.max_steps,
        batch_size=config.batch_size,
        rank=info.rank,
        world_size=info.world_size,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_promptable,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    batches = iter(loader)

    _restore_rng(state, config, start_step, info)  # type: ignore[arg-type]
    logger.info(
        "training promptable %s on %d image(s) from step %d to %d, batch %d over %d "
        "process(es), %s",
        config.config,
        dataset.num_images,
        start_step,
        config.max_steps,
        config.batch_size,
        info.world_size,
        device,
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
        saver=_Saver(model),
    )
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _save_final(model, run_dir)
        write_loss_plot(csv_path, run_dir / "loss.png")
        logger.info(
            "trained to step %d in %.1f s; model in %s",
            step,
            time.perf_counter() - t_start,
            run_dir,
        )
    _barrier(info)
    return TrainResult(
        run_dir=run_dir, model_dir=run_dir, steps=step, start_step=start_step, final_loss=last_loss
    )
