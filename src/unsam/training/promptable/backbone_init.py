"""Backbone initialisation of the promptable model from an official Swin / MoBY checkpoint
(spec §1.2, §6.4)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_backbone_init"]

logger = logging.getLogger(__name__)


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
        MissingWeightsError / ValueError: missing file (says what to download), unreadable file,
            no Swin tensor found, or a shape mismatch
            (e.g. a Swin-T file for the tiny model).
    """
    from unsam.io.checkpoints import load_torch_file
    from unsam.models.promptable.convert import _match

    p = Path(path)
    ckpt = load_torch_file(p, "Swin-T / MoBY checkpoint", kind="swin-init")
    sd = ckpt
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                sd = ckpt[key]
                break
    if not isinstance(sd, dict):
        raise ValueError(f"{p}: expected a dict of tensors")
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
