"""Official DINO ViT checkpoints (``dino_vitbase8_pretrain.pth`` …) → transformers ``ViTModel``.

The official state dict (facebookresearch/dino ``vision_transformer.py``) uses the keys
``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}.*`` and ``norm.*``. transformers 5.x names the same tensors
``embeddings.*``, ``layers.N.{layernorm_before, attention.{q,k,v,o}_proj, layernorm_after,
mlp.fc1, mlp.fc2}.*`` and ``layernorm.*``. The fused ``qkv`` Linear stacks q, k, v along its
output dimension in that order, heads concatenated inside each, so splitting its rows in three
equal parts gives exactly the HF ``q_proj`` / ``k_proj`` / ``v_proj`` (same head order as the
original's ``reshape(B, N, 3, heads, C // heads)``).

Shapes give every size but the head count: DINO's ViT-S and ViT-B use 64 channels per head, so
``heads = hidden / 64`` unless told otherwise.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers is imported lazily: `import unsam.features` stays light
    from transformers import ViTConfig, ViTModel

__all__ = [
    "DINO_LAYER_NORM_EPS",
    "load_dino_state_dict",
    "dino_config_from_state_dict",
    "dino_vit_config",
    "DINO_ARCHS",
    "convert_dino_state_dict",
    "vit_from_dino_checkpoint",
]

logger = logging.getLogger(__name__)

#: DINO's ViTs use ``partial(nn.LayerNorm, eps=1e-6)`` (the HF ViT default is 1e-12).
DINO_LAYER_NORM_EPS = 1e-6

_WRAPPER_KEYS = ("teacher", "student", "model", "state_dict")
_PREFIXES = ("module.", "backbone.")
# Per-block tensors: official suffix -> HF suffix (qkv is split separately).
_BLOCK_MAP = {
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_TOP_MAP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a checkpoint and strip ``module.`` / ``backbone.`` prefixes."""
    for _ in range(3):  # e.g. {"teacher": {"state_dict": ...}} at most a couple of levels deep
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next(
                (obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None
            )
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{source}: no state dict found (expected a dict of tensors, optionally inside "
            f"{'/'.join(_WRAPPER_KEYS)}); is this an official DINO ViT checkpoint?"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        out[name] = value
    if not out:
        raise ValueError(
            f"{source}: the checkpoint holds no tensors; is this an official DINO ViT checkpoint?"
        )
    return out


def load_dino_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an official DINO ViT checkpoint into a flat ``{official key: tensor}`` dict.

    Accepts a bare state dict or one wrapped in ``{"teacher"|"student"|"model"|"state_dict": ...}``
    (the full training checkpoints), strips ``module.`` and ``backbone.`` prefixes, and reads
    ``.safetensors`` files as well as ``.pth``. Loading uses ``weights_only=True``.

    Raises:
        MissingWeightsError: the file does not exist (says what to download).
        ValueError: the file holds no tensor dict, or cannot be read (one line, naming it).
    """
    from unsam.io.checkpoints import load_safetensors, load_torch_file

    p = Path(path)
    obj: object = (
        load_safetensors(p, kind="dino")
        if p.suffix == ".safetensors"
        else load_torch_file(p, "DINO checkpoint", kind="dino")
    )
    return _unwrap(obj, str(p))


def _drop_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DINO's projection head / linear classifier (``head.*``): not part of the ViT
    backbone."""
    dropped = [k for k in state if k.startswith("head.")]
    if dropped:
        logger.debug("ignoring %d non-backbone keys (head.*)", len(dropped))
    return {k: v for k, v in state.items() if not k.startswith("head.")}


#: DINO's released ViTs (facebook/dino-*): name -> (hidden size, attention heads, patch size).
DINO_ARCHS: dict[str, tuple[int, int, int]] = {
    "vits8": (384, 6, 8),
    "vits16": (384, 6, 16),
    "vitb8": (768, 12, 8),
    "vitb16": (768, 12, 16),
}


def dino_vit_config(arch: str) -> ViTConfig:
    """The ``ViTConfig`` of a released DINO ViT (:data:`DINO_ARCHS`): 12 blocks, MLP 4x,
    LayerNorm eps 1e-6, exact GELU, no dropout, q/k/v bias, the 224-px pretraining grid. What
    :func:`dino_config_from_state_dict` infers from an official checkpoint of that model; used to
    build random-initialised stand-ins with the real shapes (tests, benchmarks)."""
    if arch not in DINO_ARCHS:
        raise ValueError(
            f"unknown DINO architecture {arch!r}; expected one of {sorted(DINO_ARCHS)}"
        )
    from transformers import ViTConfig

    hidden, heads, patch = DINO_ARCHS[arch]
    return ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=12,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=DINO_LAYER_NORM_EPS,
        image_size=224,
        patch_size=patch,
        qkv_bias=True,
    )


def dino_config_from_state_dict(
    state: Mapping[str, torch.Tensor], *, num_heads: int | None = None
) -> ViTConfig:
    """Infer the ``ViTConfig`` of an official DINO state dict from its tensor shapes.

    Args:
        state: official keys (see :func:`load_dino_state_dict`).
        num_heads: attention heads; default ``hidden / 64`` (DINO ViT-S: 6, ViT-B: 12).

    Returns:
        A ViTConfig with DINO's LayerNorm eps (1e-6), exact GELU, no dropout and
        ``image_size`` = the pretraining grid × patch (224 for the released models).

    Raises:
        ValueError: a required key is missing or the shapes are inconsistent.
    """
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(
            f"not an official DINO ViT state dict: missing {missing} (found e.g. "
            f"{sorted(state)[:5]})"
        )
    hidden = int(state["cls_token"].shape[-1])
    patch_w = state["patch_embed.proj.weight"]
    if patch_w.ndim != 4 or patch_w.shape[2] != patch_w.shape[3]:
        raise ValueError(
            f"patch_embed.proj.weight has shape {tuple(patch_w.shape)}; expected (C, 3, p, p)"
        )
    patch = int(patch_w.shape[-1])
    num_pos = int(state["pos_embed"].shape[1]) - 1
    grid = int(round(num_pos**0.5))
    if grid * grid != num_pos:
        raise ValueError(f"pos_embed has {num_pos} patch positions, not a square grid")
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k))}
    if not blocks:
        raise ValueError("not an official DINO ViT state dict: no blocks.N.* keys")
    depth = max(blocks) + 1
    if sorted(blocks) != list(range(depth)):
        raise ValueError(f"blocks are not numbered 0..{depth - 1}: found {sorted(blocks)}")
    heads = num_heads if num_heads is not None else max(1, hidden // 64)
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not divisible by num_heads={heads}")
    from transformers import ViTConfig

    fc1 = state.get("blocks.0.mlp.fc1.weight")
    intermediate = int(fc1.shape[0]) if fc1 is not None else 4 * hidden
    return ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=DINO_LAYER_NORM_EPS,
        image_size=grid * patch,
        patch_size=patch,
        num_channels=int(patch_w.shape[1]),
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )


def convert_dino_state_dict(
    state: Mapping[str, torch.Tensor], num_layers: int
) -> dict[str, torch.Tensor]:
    """Rename official DINO keys to transformers 5.x ``ViTModel`` keys (fused qkv split in q/k/v).

    Args:
        state: official keys, prefixes already stripped, ``head.*`` allowed (dropped).
        num_layers: number of transformer blocks.

    Returns:
        ``{hf key: tensor}`` (tensors are views/slices of the inputs, not copies).

    Raises:
        ValueError: keys that map to nothing (named), or a qkv tensor whose first dim is not 3·C.
    """
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in _drop_head(dict(state)).items():
        if key in _TOP_MAP:
            out[_TOP_MAP[key]] = value
            continue
        m = _BLOCK_RE.match(key)
        if m is None or int(m.group(1)) >= num_layers:
            unexpected.append(key)
            continue
        i, rest = int(m.group(1)), m.group(2)
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            if value.shape[0] % 3:
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)}; the first dim must be 3 x hidden"
                )
            q, k, v = value.chunk(3, dim=0)
            for proj, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"layers.{i}.attention.{proj}.{kind}"] = part
        elif rest in _BLOCK_MAP:
            out[f"layers.{i}.{_BLOCK_MAP[rest]}"] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(
            f"unexpected keys in the DINO checkpoint (not part of a DINO ViT): {sorted(unexpected)}"
        )
    return out


def _official_name(hf_key: str) -> str:
    """The official DINO key that feeds a transformers key (for error messages)."""
    inverse = {v: k for k, v in _TOP_MAP.items()}
    if hf_key in inverse:
        return inverse[hf_key]
    m = re.match(r"^layers\.(\d+)\.(.+)$", hf_key)
    if m is None:
        return hf_key
    i, rest = m.group(1), m.group(2)
    qkv = re.match(r"^attention\.[qkv]_proj\.(weight|bias)$", rest)
    if qkv:
        return f"blocks.{i}.attn.qkv.{qkv.group(1)}"
    block_inverse = {v: k for k, v in _BLOCK_MAP.items()}
    return f"blocks.{i}.{block_inverse.get(rest, rest)}"


def vit_from_dino_checkpoint(
    path: str | os.PathLike[str], *, num_heads: int | None = None
) -> ViTModel:
    """Build a ``ViTModel`` (no pooler) from an official DINO ViT ``.pth`` checkpoint, strictly.

    Args:
        path: e.g. ``dino_vitbase8_pretrain.pth`` (download from
            https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth).
        num_heads: attention heads; default ``hidden / 64``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, unexpected or missing keys (named), wrong shapes.
    """
    from transformers import ViTModel

    state = _drop_head(load_dino_state_dict(path))
    config = dino_config_from_state_dict(state, num_heads=num_heads)
    hf_state = convert_dino_state_dict(state, config.num_hidden_layers)
    model = ViTModel(config, add_pooling_layer=False)
    expected = set(model.state_dict())
    missing = sorted(expected - set(hf_state))
    extra = sorted(set(hf_state) - expected)
    if missing or extra:
        named = sorted({_official_name(k) for k in missing})
        raise ValueError(
            f"{path}: checkpoint does not match a DINO ViT: missing {named}"
            + (f", unexpected {extra}" if extra else "")
        )
    try:
        model.load_state_dict(hf_state, strict=True)
    except RuntimeError as err:  # size mismatches
        raise ValueError(f"{path}: {str(err).strip().splitlines()[-1].strip()}") from None
    model.eval()
    logger.info(
        "converted DINO checkpoint %s: hidden %d, %d layers, %d heads, patch %d",
        path,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.patch_size,
    )
    return model
