"""Official UnSAM promptable checkpoint (Semantic-SAM Swin-T, detectron2 .pth) -> our model.

The whole mapping is the table :data:`RULES` (spec PROMPTABLE.md §6). The official key has its
``model.`` prefix stripped first; then the **first** row whose pattern matches the whole key
decides. Patterns are regular expressions with named groups, targets are ``str.format`` templates
over those groups plus ``stage`` (= official Swin ``norm{i}`` index + 1). Actions:

- ``copy``: the tensor is loaded unchanged under the target name.
- ``split_qkv``: a Swin ``qkv`` weight (3C, C) / bias (3C) is split by rows into q (0..C-1),
  k (C..2C-1), v (2C..3C-1); ``{proj}`` in the target becomes ``q_proj`` / ``k_proj`` / ``v_proj``.
- ``alias``: the official module registered the same tensor twice (``decoder.norm`` is
  ``decoder_norm``; ``bbox_embed.{i}`` and ``decoder.bbox_embed.{i}`` are ``_bbox_embed``). The
  key is dropped after checking it equals the tensor loaded under the target name.
- ``rebuilt``: a buffer the target rebuilds itself (Swin ``relative_position_index``); dropped after
  checking it equals the target model's buffer of that name.
- ``unused``: never read by the model (class heads, language mapper, the criterion's buffer):
  dropped (spec §1.5, §6.1).

Conversion is strict: a key no row matches, a shape that differs from the model's, an alias or
rebuilt buffer that differs, or a model parameter that nothing fills is an error naming the file.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import torch

from unsam.models.promptable.config import PromptableConfig
from unsam.models.promptable.modeling import PromptableModel, build_model

__all__ = [
    "RULES",
    "convert_checkpoint",
    "convert_official_state_dict",
    "load_official_state_dict",
    "model_from_official",
]

logger = logging.getLogger(__name__)

Action = Literal["copy", "split_qkv", "alias", "rebuilt", "unused"]

_WB = r"(?P<wb>weight|bias)"
_BLOCK = r"backbone\.layers\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\."
_HF = "backbone.swin."
_HF_BLOCK = _HF + "encoder.layers.{s}.blocks.{b}."
_PRED = r"sem_seg_head\.predictor\."

#: official name (``model.`` stripped; regex, whole match) -> our name (template), action.
RULES: tuple[tuple[str, str, Action], ...] = (
    # --- Swin-T -> transformers SwinBackbone (spec §6.4) ------------------------------------------
    (
        r"backbone\.patch_embed\.proj\." + _WB,
        _HF + "embeddings.patch_embeddings.projection.{wb}",
        "copy",
    ),
    (r"backbone\.patch_embed\.norm\." + _WB, _HF + "embeddings.norm.{wb}", "copy"),
    (_BLOCK + r"norm1\." + _WB, _HF_BLOCK + "layernorm_before.{wb}", "copy"),
    (_BLOCK + r"norm2\." + _WB, _HF_BLOCK + "layernorm_after.{wb}", "copy"),
    (_BLOCK + r"attn\.qkv\." + _WB, _HF_BLOCK + "attention.{proj}.{wb}", "split_qkv"),
    (_BLOCK + r"attn\.proj\." + _WB, _HF_BLOCK + "attention.o_proj.{wb}", "copy"),
    (
        _BLOCK + r"attn\.relative_position_bias_table",
        _HF_BLOCK + "attention.relative_position_bias.relative_position_bias_table",
        "copy",
    ),
    (
        _BLOCK + r"attn\.relative_position_index",
        _HF_BLOCK + "attention.relative_position_bias.relative_position_index",
        "rebuilt",
    ),
    (_BLOCK + r"mlp\.(?P<fc>fc[12])\." + _WB, _HF_BLOCK + "mlp.{fc}.{wb}", "copy"),
    (
        r"backbone\.layers\.(?P<s>\d+)\.downsample\.(?P<rest>reduction\.weight|norm\.weight|norm\.bias)",
        _HF + "encoder.layers.{s}.downsample.{rest}",
        "copy",
    ),
    (
        r"backbone\.norm(?P<norm>[0-3])\." + _WB,
        "backbone.hidden_states_norms.stage{stage}.{wb}",
        "copy",
    ),
    # --- pixel decoder: official names kept ------------------------------------------------------
    (r"(?P<name>sem_seg_head\.pixel_decoder\..+)", "{name}", "copy"),
    # --- predictor: aliases of shared modules, unused heads, then official names kept ------------
    (_PRED + r"decoder\.norm\." + _WB, "sem_seg_head.predictor.decoder_norm.{wb}", "alias"),
    (
        _PRED + r"(decoder\.)?bbox_embed\.\d+\.(?P<rest>layers\.\d+\.(weight|bias))",
        "sem_seg_head.predictor._bbox_embed.{rest}",
        "alias",
    ),
    (_PRED + r"(class_embed|class_embed_part|lang_mapper)", "", "unused"),
    (r"(?P<name>sem_seg_head\.predictor\..+)", "{name}", "copy"),
    # --- training-only state ---------------------------------------------------------------------
    (r"criterion\..+", "", "unused"),
)

_COMPILED = tuple((re.compile(p), t, a) for p, t, a in RULES)


def _match(key: str) -> tuple[str, Action, dict[str, str]] | None:
    for pattern, template, action in _COMPILED:
        m = pattern.fullmatch(key)
        if m:
            groups = {k: v for k, v in m.groupdict().items() if v is not None}
            if "norm" in groups:  # official norm{0..3} = SwinBackbone stage1..4
                groups["stage"] = str(int(groups.pop("norm")) + 1)
            return template, action, groups
    return None


def load_official_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an official promptable ``.pth`` (``weights_only=True``) and strip the ``model.`` prefix.

    Takes ``ckpt["model"]`` when present (detectron2 checkpointer files), else the dict itself.

    Raises:
        MissingWeightsError: no such file (says what to download).
        ValueError: unreadable, or not a checkpoint dict of tensors (one line, naming the file).
    """
    from unsam.io.checkpoints import load_torch_file

    p = Path(path)
    ckpt = load_torch_file(p, "UnSAM promptable checkpoint", kind="promptable")
    sd = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{p}: expected a dict of tensors (or a dict with a 'model' entry)")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{p}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k.removeprefix("model.")] = v
    return out


def convert_official_state_dict(
    state_dict: dict[str, torch.Tensor],
    model: PromptableModel,
    *,
    source: str = "the checkpoint",
) -> dict[str, torch.Tensor]:
    """Map an official state dict (``model.`` stripped) onto ``model``'s names through
    :data:`RULES`.

    Args:
        state_dict: official tensors by name.
        model: the target model (its state-dict names and shapes, and its rebuilt buffers, are
            checked; it is not modified).
        source: file name used in error messages.

    Returns:
        A state dict with exactly ``model.state_dict()``'s keys, tensors unchanged in value.

    Raises:
        ValueError: unmatched keys (unexpected), parameters left unfilled (missing), shape
            mismatches, or an alias / rebuilt buffer that differs from its source.
    """
    target = model.state_dict()
    buffers = dict(model.named_buffers())
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    deferred: list[tuple[str, str, Action]] = []
    for key, tensor in state_dict.items():
        hit = _match(key)
        if hit is None:
            unexpected.append(key)
            continue
        template, action, groups = hit
        if action == "unused":
            continue
        if action in ("alias", "rebuilt"):
            deferred.append((key, template.format(**groups), action))
            continue
        if action == "split_qkv":
            c = tensor.shape[0] // 3
            if tensor.shape[0] != 3 * c:
                raise ValueError(
                    f"{source}: {key} has shape {tuple(tensor.shape)}; expected 3C rows"
                )
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[template.format(proj=proj, **groups)] = tensor[i * c : (i + 1) * c]
        else:
            name = template.format(**groups)
            if name in out:
                raise ValueError(
                    f"{source}: {key} maps to {name}, which another key already filled"
                )
            out[name] = tensor
    if unexpected:
        raise ValueError(
            f"{source}: {len(unexpected)} unexpected keys that no conversion rule maps, e.g. "
            f"{unexpected[:5]}; is this an UnSAM promptable (Semantic-SAM Swin-T) checkpoint?"
        )
    for key, name, action in deferred:
        reference = out.get(name) if action == "alias" else buffers.get(name)
        if reference is None:
            raise ValueError(f"{source}: {key} duplicates {name}, which is missing")
        tensor = state_dict[key]
        if action == "rebuilt" and tensor.numel() == reference.numel():
            tensor = tensor.reshape(reference.shape)  # transformers stores the index flat
        if tensor.shape != reference.shape or not torch.equal(
            tensor.to(reference.dtype), reference
        ):
            kind = "shared module" if action == "alias" else "rebuilt buffer"
            raise ValueError(
                f"{source}: {key} should equal {name} ({kind}) but differs; the checkpoint is "
                "inconsistent"
            )
    missing = sorted(set(target) - set(out))
    extra = sorted(set(out) - set(target))
    if missing or extra:
        raise ValueError(
            f"{source}: after conversion {len(missing)} model keys are missing "
            f"(e.g. {missing[:5]}) and {len(extra)} are unknown to the model "
            f"(e.g. {extra[:5]}); the checkpoint does not match this model size"
        )
    for name, tensor in out.items():
        if tensor.shape != target[name].shape:
            raise ValueError(
                f"{source}: {name} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(target[name].shape)}; pass the matching PromptableConfig"
            )
    return out


def model_from_official(
    path: str | os.PathLike[str], config: PromptableConfig | None = None
) -> PromptableModel:
    """Build a model of ``config`` (default: the paper's Swin-T) and load an official ``.pth``
    strictly."""
    config = config or PromptableConfig.swin_t()
    state_dict = load_official_state_dict(path)
    model = build_model(config)
    converted = convert_official_state_dict(state_dict, model, source=str(path))
    model.load_state_dict(converted, strict=True)
    logger.info("loaded official promptable checkpoint %s (%d tensors)", path, len(state_dict))
    return model.eval()


def convert_checkpoint(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: PromptableConfig | None = None,
) -> Path:
    """Convert an official promptable ``.pth`` to a ``save_pretrained`` folder
    (config + safetensors).

    Returns:
        The output folder.
    """
    model = model_from_official(path, config)
    return model.save_pretrained(output)


def describe_rules() -> list[dict[str, Any]]:
    """The table as dicts (for documentation and tests)."""
    return [{"pattern": p, "target": t, "action": a} for p, t, a in RULES]
