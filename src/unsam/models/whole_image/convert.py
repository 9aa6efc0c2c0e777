"""Official UnSAM whole-image checkpoint (detectron2 Mask2Former, R50) -> transformers Mask2Former.

The whole mapping is the table :data:`RULES` below (spec Appendix C). Each row is
``(official name pattern, transformers name template, transform)``. Patterns are regular
expressions with named groups; templates are ``str.format`` strings over those groups plus two
derived indices: ``stage = res - 2`` (official ``res2..res5`` = transformers stages 0..3) and
``layer = conv - 1`` (official ``conv1..3`` = transformers ``layer.0..2``). Transforms:

- ``copy``: the tensor is copied unchanged.
- ``split_qkv``: a packed ``nn.MultiheadAttention`` ``in_proj_weight`` (3d x d) / ``in_proj_bias``
  (3d) is split by rows into q (rows 0..d-1), k (d..2d-1) and v (2d..3d-1); the template's
  ``{proj}`` becomes ``q_proj``, ``k_proj``, ``v_proj`` (transformers' decoder self-attention
  has separate projections; its cross-attention is a plain ``nn.MultiheadAttention`` and stays
  packed).

Traps the table gets right (spec Appendix C notes 3-5): ``query_feat`` (content queries) maps
to ``queries_features`` and ``query_embed`` (positional queries) to ``queries_embedder`` — a swap
loads without error and silently ruins the output; the pixel decoder's ``transformer.level_embed``
(bare Parameter) and the predictor's ``level_embed.weight`` (nn.Embedding) are different tensors;
detectron2 ``Conv2d`` keeps its norm at ``X.norm.*`` where transformers uses ``X.0`` / ``X.1``.

The converted folder is an ordinary transformers ``save_pretrained`` folder (safetensors) plus
``preprocessor_config.json`` holding the original's test-time preprocessing (pixel mean/std in
0-255 RGB units, shorter side 1024 / longer side <= 2048, size divisibility 32), which
:class:`unsam.models.whole_image.segmenter.WholeImageSegmenter` reads back.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import torch

from unsam.io.files import atomic_write_json
from unsam.models.whole_image.config import IMAGE_MEAN, IMAGE_STD, build_model

__all__ = [
    "RULES",
    "PREPROCESSOR_FILE",
    "convert_official_state_dict",
    "official_target_names",
    "convert_checkpoint",
    "load_official_state_dict",
    "write_preprocessor_config",
    "read_preprocessor_config",
]

logger = logging.getLogger(__name__)

Transform = Literal["copy", "split_qkv"]

_B = r"backbone\."
_PD = r"sem_seg_head\.pixel_decoder\."
_P = r"sem_seg_head\.predictor\."
_HB = "model.pixel_level_module.encoder."
_HPD = "model.pixel_level_module.decoder."
_HT = "model.transformer_module."
_HD = "model.transformer_module.decoder."
# FrozenBN (+ SyncBN counter)
_BN = r"(?P<n>weight|bias|running_mean|running_var|num_batches_tracked)"
_WB = r"(?P<wb>weight|bias)"

#: official detectron2 name (regex) -> transformers name (template), transform. One row per
#: module kind.
RULES: tuple[tuple[str, str, Transform], ...] = (
    # --- backbone: ResNet-50, res2..res5 -> stages 0..3 ------------------------------------------
    (_B + r"stem\.conv1\.weight", _HB + "embedder.embedder.convolution.weight", "copy"),
    (_B + r"stem\.conv1\.norm\." + _BN, _HB + "embedder.embedder.normalization.{n}", "copy"),
    (
        _B + r"res(?P<res>[2-5])\.(?P<j>\d+)\.conv(?P<conv>[1-3])\.weight",
        _HB + "encoder.stages.{stage}.layers.{j}.layer.{layer}.convolution.weight",
        "copy",
    ),
    (
        _B + r"res(?P<res>[2-5])\.(?P<j>\d+)\.conv(?P<conv>[1-3])\.norm\." + _BN,
        _HB + "encoder.stages.{stage}.layers.{j}.layer.{layer}.normalization.{n}",
        "copy",
    ),
    (
        _B + r"res(?P<res>[2-5])\.(?P<j>\d+)\.shortcut\.weight",
        _HB + "encoder.stages.{stage}.layers.{j}.shortcut.convolution.weight",
        "copy",
    ),
    (
        _B + r"res(?P<res>[2-5])\.(?P<j>\d+)\.shortcut\.norm\." + _BN,
        _HB + "encoder.stages.{stage}.layers.{j}.shortcut.normalization.{n}",
        "copy",
    ),
    # --- pixel decoder: MSDeformAttn encoder + FPN ---------------------------------------------
    (
        _PD + r"input_proj\.(?P<k>\d+)\.(?P<m>[01])\." + _WB,
        _HPD + "input_projections.{k}.{m}.{wb}",
        "copy",
    ),
    (_PD + r"transformer\.level_embed", _HPD + "level_embed", "copy"),
    (
        _PD + r"transformer\.encoder\.layers\.(?P<l>\d+)\.self_attn\."
        r"(?P<sub>sampling_offsets|attention_weights|value_proj|output_proj)\." + _WB,
        _HPD + "encoder.layers.{l}.self_attn.{sub}.{wb}",
        "copy",
    ),
    (
        _PD + r"transformer\.encoder\.layers\.(?P<l>\d+)\.norm1\." + _WB,
        _HPD + "encoder.layers.{l}.self_attn_layer_norm.{wb}",
        "copy",
    ),
    (
        _PD + r"transformer\.encoder\.layers\.(?P<l>\d+)\.linear1\." + _WB,
        _HPD + "encoder.layers.{l}.fc1.{wb}",
        "copy",
    ),
    (
        _PD + r"transformer\.encoder\.layers\.(?P<l>\d+)\.linear2\." + _WB,
        _HPD + "encoder.layers.{l}.fc2.{wb}",
        "copy",
    ),
    (
        _PD + r"transformer\.encoder\.layers\.(?P<l>\d+)\.norm2\." + _WB,
        _HPD + "encoder.layers.{l}.final_layer_norm.{wb}",
        "copy",
    ),
    (_PD + r"mask_features\." + _WB, _HPD + "mask_projection.{wb}", "copy"),
    (_PD + r"(?P<fpn>adapter|layer)_(?P<i>\d+)\.weight", _HPD + "{fpn}_{i}.0.weight", "copy"),
    (_PD + r"(?P<fpn>adapter|layer)_(?P<i>\d+)\.norm\." + _WB, _HPD + "{fpn}_{i}.1.{wb}", "copy"),
    # --- transformer decoder (predictor) --------------------------------------------------------
    (
        _P + r"(query_feat|static_query)\.weight",
        _HT + "queries_features.weight",
        "copy",
    ),  # content queries
    (_P + r"query_embed\.weight", _HT + "queries_embedder.weight", "copy"),  # positional queries
    (_P + r"level_embed\.weight", _HT + "level_embed.weight", "copy"),
    (
        _P
        + r"transformer_self_attention_layers\.(?P<i>\d+)\.self_attn\.in_proj_(?P<wb>weight|bias)",
        _HD + "layers.{i}.self_attn.{proj}.{wb}",
        "split_qkv",
    ),
    (
        _P + r"transformer_self_attention_layers\.(?P<i>\d+)\.self_attn\.out_proj\." + _WB,
        _HD + "layers.{i}.self_attn.out_proj.{wb}",
        "copy",
    ),
    (
        _P + r"transformer_self_attention_layers\.(?P<i>\d+)\.norm\." + _WB,
        _HD + "layers.{i}.self_attn_layer_norm.{wb}",
        "copy",
    ),
    (
        _P
        + (
            r"transformer_cross_attention_layers\.(?P<i>\d+)\.multihead_attn\."
            r"in_proj_(?P<wb>weight|bias)"
        ),
        _HD + "layers.{i}.cross_attn.in_proj_{wb}",
        "copy",
    ),
    (
        _P + r"transformer_cross_attention_layers\.(?P<i>\d+)\.multihead_attn\.out_proj\." + _WB,
        _HD + "layers.{i}.cross_attn.out_proj.{wb}",
        "copy",
    ),
    (
        _P + r"transformer_cross_attention_layers\.(?P<i>\d+)\.norm\." + _WB,
        _HD + "layers.{i}.cross_attn_layer_norm.{wb}",
        "copy",
    ),
    (
        _P + r"transformer_ffn_layers\.(?P<i>\d+)\.linear1\." + _WB,
        _HD + "layers.{i}.fc1.{wb}",
        "copy",
    ),
    (
        _P + r"transformer_ffn_layers\.(?P<i>\d+)\.linear2\." + _WB,
        _HD + "layers.{i}.fc2.{wb}",
        "copy",
    ),
    (
        _P + r"transformer_ffn_layers\.(?P<i>\d+)\.norm\." + _WB,
        _HD + "layers.{i}.final_layer_norm.{wb}",
        "copy",
    ),
    (_P + r"decoder_norm\." + _WB, _HD + "layernorm.{wb}", "copy"),
    (
        _P + r"mask_embed\.layers\.(?P<k>\d+)\." + _WB,
        _HD + "mask_predictor.mask_embedder.{k}.0.{wb}",
        "copy",
    ),
    (
        _P + r"class_embed\." + _WB,
        "class_predictor.{wb}",
        "copy",
    ),  # index 0 = object, 1 = no-object
    (r"criterion\.empty_weight", "criterion.empty_weight", "copy"),
)

_COMPILED = tuple((re.compile(p), t, f) for p, t, f in RULES)

#: Non-persistent buffers some checkpoints carry; they become the preprocessing, not weights.
_PREPROCESSING_KEYS = ("pixel_mean", "pixel_std")

PREPROCESSOR_FILE = "preprocessor_config.json"


def _target_names(key: str) -> tuple[list[str], Transform] | None:
    for pattern, template, transform in _COMPILED:
        m = pattern.fullmatch(key)
        if m is None:
            continue
        fields: dict[str, Any] = dict(m.groupdict())
        if "res" in fields:
            fields["stage"] = int(fields["res"]) - 2
        if "conv" in fields:
            fields["layer"] = int(fields["conv"]) - 1
        if transform == "split_qkv":
            return [
                template.format(proj=p, **fields) for p in ("q_proj", "k_proj", "v_proj")
            ], transform
        return [template.format(**fields)], transform
    return None


def official_target_names(key: str) -> list[str] | None:
    """The transformers name(s) of one official name (no ``module.`` prefix) by :data:`RULES`,
    or None.

    E.g. ``backbone.res2.0.conv1.norm.weight`` ->
    ``["model.pixel_level_module.encoder.encoder.stages.0.layers.0.layer.0.normalization.weight"]``
    (used by :mod:`unsam.training.whole_image.backbone_init` for detectron2 ResNet checkpoints).
    """
    match = _target_names(key)
    return None if match is None else match[0]


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and q/k/v-split) an official detectron2 Mask2Former state dict for transformers.

    Args:
        state_dict: the official ``model`` dict (``module.`` prefixes are stripped;
            ``pixel_mean`` / ``pixel_std`` buffers, if present, are skipped: they are
            preprocessing).

    Returns:
        A new dict keyed by ``Mask2FormerForUniversalSegmentation.state_dict()`` names. Tensors
        are shared with the input except the split q/k/v projections (contiguous copies).

    Raises:
        ValueError: any key matching no row of :data:`RULES` (all such keys are named), two keys
            landing on the same target, or a packed projection whose rows are not divisible by 3.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for raw_key, tensor in state_dict.items():
        key = raw_key[len("module.") :] if raw_key.startswith("module.") else raw_key
        if key in _PREPROCESSING_KEYS:
            continue
        match = _target_names(key)
        if match is None:
            unknown.append(key)
            continue
        targets, transform = match
        if transform == "split_qkv":
            if tensor.shape[0] % 3:
                raise ValueError(
                    f"{key}: packed q/k/v projection has {tensor.shape[0]} rows, "
                    "not a multiple of 3"
                )
            values = [t.contiguous() for t in torch.chunk(tensor, 3, dim=0)]
        else:
            values = [tensor]
        for target, value in zip(targets, values):
            if target in out:
                raise ValueError(f"{key} and {origin[target]} both map to {target}")
            out[target] = value
            origin[target] = key
    if unknown:
        raise ValueError(
            f"{len(unknown)} checkpoint keys match no official Mask2Former name: "
            f"{', '.join(sorted(unknown)[:8])}"
            + (" ..." if len(unknown) > 8 else "")
            + "; is this an UnSAM whole-image (detectron2 Mask2Former R50) checkpoint?"
        )
    return out


def load_official_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the ``model`` tensor dict of an official ``.pth`` with
    ``torch.load(weights_only=True)``.

    Optimizer, scheduler and trainer entries of the file are ignored.

    Raises:
        MissingWeightsError: no such file (says what to download).
        ValueError: the file cannot be read safely, or holds no ``model`` tensor dict.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path}: is a folder; give the official UnSAM whole-image .pth file itself "
            "(a folder written by save_pretrained needs no conversion)"
        )
    from unsam.io.checkpoints import load_torch_file

    obj = load_torch_file(path, "UnSAM whole-image checkpoint", kind="whole-image")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise ValueError(
            f"{path}: no 'model' dict of tensors found; "
            "expected the official UnSAM whole-image .pth"
        )
    return {str(k): v for k, v in obj.items()}


def write_preprocessor_config(
    out_dir: str | os.PathLike[str],
    *,
    mean: tuple[float, ...] = IMAGE_MEAN,
    std: tuple[float, ...] = IMAGE_STD,
    min_size: int = 1024,
    max_size: int = 2048,
    size_divisibility: int = 32,
) -> Path:
    """Write ``preprocessor_config.json``: the test-time preprocessing of the original
    (spec §6.1, §6.5).

    The file follows transformers' ``Mask2FormerImageProcessor`` fields (mean/std in 0-1 units
    with ``rescale_factor`` 1/255) and adds ``unsam_pixel_mean`` / ``unsam_pixel_std`` in 0-255
    units.
    """
    data = {
        "image_processor_type": "Mask2FormerImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": int(min_size), "longest_edge": int(max_size)},
        "resample": 2,  # PIL bilinear, as detectron2's ResizeShortestEdge
        "size_divisor": int(size_divisibility),
        "do_rescale": True,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": True,
        "image_mean": [float(v) / 255.0 for v in mean],
        "image_std": [float(v) / 255.0 for v in std],
        "ignore_index": 255,
        "num_labels": 1,
        "unsam_pixel_mean": [float(v) for v in mean],
        "unsam_pixel_std": [float(v) for v in std],
    }
    return atomic_write_json(Path(out_dir) / PREPROCESSOR_FILE, data, indent=2)


def read_preprocessor_config(folder: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Preprocessing of a model folder:
    ``{"mean", "std", "min_size", "max_size", "size_divisibility"}``.

    A missing file or field (or ``folder=None``) falls back to the original's values
    (ImageNet x 255, 1024 / 2048, 32).
    """
    out: dict[str, Any] = {
        "mean": IMAGE_MEAN,
        "std": IMAGE_STD,
        "min_size": 1024,
        "max_size": 2048,
        "size_divisibility": 32,
    }
    if folder is None:
        return out
    path = Path(folder) / PREPROCESSOR_FILE
    if not path.is_file():
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path}: not valid JSON ({exc}); delete it to use the default preprocessing"
        ) from None
    if "unsam_pixel_mean" in data:
        out["mean"] = tuple(float(v) for v in data["unsam_pixel_mean"])
        out["std"] = tuple(float(v) for v in data["unsam_pixel_std"])
    elif "image_mean" in data:
        scale = 1.0 / float(data.get("rescale_factor", 1.0 / 255.0))
        out["mean"] = tuple(float(v) * scale for v in data["image_mean"])
        out["std"] = tuple(float(v) * scale for v in data["image_std"])
    size = data.get("size") or {}
    if "shortest_edge" in size:
        out["min_size"] = int(size["shortest_edge"])
    if "longest_edge" in size:
        out["max_size"] = int(size["longest_edge"])
    if "size_divisor" in data:
        out["size_divisibility"] = int(data["size_divisor"])
    return out


def convert_to_model(
    state_dict: dict[str, torch.Tensor],
    *,
    num_queries: int | None = None,
    where: str = "checkpoint",
) -> Any:
    """Build the r50 model and load a converted official state dict into it (checked strictly).

    Args:
        state_dict: the official ``model`` dict.
        num_queries: expected number of queries; None reads it from the checkpoint (2000 for UnSAM).
        where: name of the source, used in error messages.

    Returns:
        A ``Mask2FormerForUniversalSegmentation`` in eval mode holding the checkpoint's weights.

    Raises:
        ValueError: unknown keys, shape mismatches, keys missing besides ``num_batches_tracked``,
            or a ``num_queries`` different from the checkpoint's.
    """
    converted = convert_official_state_dict(state_dict)
    queries = converted.get(_HT + "queries_features.weight")
    if queries is None:
        raise ValueError(
            f"{where}: no sem_seg_head.predictor.query_feat.weight; not a Mask2Former checkpoint"
        )
    found = int(queries.shape[0])
    if num_queries is not None and int(num_queries) != found:
        raise ValueError(
            f"{where}: the checkpoint has {found} queries but num_queries={num_queries} "
            "was asked for"
        )
    model = build_model("r50", num_queries=found)
    target = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in converted.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if wrong:
        raise ValueError(
            f"{where}: {len(wrong)} tensors have the wrong shape for the r50 model, e.g. {wrong[0]}"
        )
    result = model.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} model tensors have no source (e.g. {', '.join(missing[:3])})"
            )
        if result.unexpected_keys:
            extra = ", ".join(result.unexpected_keys[:3])
            parts.append(f"{len(result.unexpected_keys)} converted tensors have no place ({extra})")
        raise ValueError(f"{where}: incomplete conversion: {'; '.join(parts)}")
    model.eval()
    return model


def convert_checkpoint(
    pth_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    num_queries: int | None = None,
) -> Path:
    """Convert an official UnSAM whole-image ``.pth`` into a transformers folder.

    Reads ``["model"]`` with ``torch.load(weights_only=True)``, converts it with :data:`RULES`,
    loads it into the r50 model (strict except the 53 ``num_batches_tracked`` counters FrozenBN
    does not store), checks that every tensor arrived unchanged and that a forward pass gives
    finite outputs, then writes ``save_pretrained`` (safetensors + config.json) and
    ``preprocessor_config.json`` (the original's mean/std and test resize).

    Args:
        pth_path: the official checkpoint (e.g. ``unsam_sa1b_4perc_ckpt_200k.pth``).
        out_dir: output folder (created).
        num_queries: expected number of queries; None takes it from the checkpoint (UnSAM: 2000).

    Returns:
        ``out_dir`` as a Path.
    """
    pth_path = Path(pth_path)
    out_dir = Path(out_dir)
    state_dict = load_official_state_dict(pth_path)
    mean, std = IMAGE_MEAN, IMAGE_STD
    if "pixel_mean" in state_dict and "pixel_std" in state_dict:
        mean = tuple(float(v) for v in state_dict["pixel_mean"].flatten())  # type: ignore[assignment]
        std = tuple(float(v) for v in state_dict["pixel_std"].flatten())  # type: ignore[assignment]
    model = convert_to_model(state_dict, num_queries=num_queries, where=str(pth_path))
    _verify(model, convert_official_state_dict(state_dict), where=str(pth_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    write_preprocessor_config(out_dir, mean=mean, std=std)
    logger.info("converted %s -> %s (%d queries)", pth_path, out_dir, model.config.num_queries)
    return out_dir


def _verify(model: Any, converted: dict[str, torch.Tensor], *, where: str) -> None:
    """Every converted tensor is in the model unchanged, and a small forward pass is finite."""
    state = model.state_dict()
    for key, value in converted.items():
        if not torch.equal(state[key], value.to(state[key].dtype)):
            raise ValueError(f"{where}: {key} changed while loading into the model")
    with torch.inference_mode():
        out = model(pixel_values=torch.zeros(1, 3, 64, 64))
    if not (
        torch.isfinite(out.class_queries_logits).all()
        and torch.isfinite(out.masks_queries_logits).all()
    ):
        raise ValueError(f"{where}: the converted model produces non-finite outputs")
