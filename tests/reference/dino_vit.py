"""The original DINO VisionTransformer forward, written from facebookresearch/dino
``vision_transformer.py``, on an *official* state dict (fused qkv, ``blocks.N.*`` names).

Used to check the .pth → transformers conversion independently of transformers: the keys it
returns are those CutLER's ``ViTFeat`` hooks out of ``blocks[-1].attn.qkv``.
One difference from the original: position embeddings are resized with ``size=(h, w)`` bicubic
(transformers' rule) instead of DINO's ``scale_factor=(h + 0.1) / sqrt(N)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def hf_to_dino_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse mapping: transformers 5.x ViTModel keys → official DINO keys (q, k, v fused)."""
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    block = {
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "attention.o_proj": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    out: dict[str, torch.Tensor] = {}
    layers = sorted({int(k.split(".")[1]) for k in hf if k.startswith("layers.")})
    for k, v in hf.items():
        if k in top:
            out[top[k]] = v.clone()
    for i in layers:
        for kind in ("weight", "bias"):
            parts = [hf.get(f"layers.{i}.attention.{p}_proj.{kind}") for p in "qkv"]
            if all(p is not None for p in parts):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0).clone()
            for src, dst in block.items():
                key = f"layers.{i}.{src}.{kind}"
                if key in hf:
                    out[f"blocks.{i}.{dst}.{kind}"] = hf[key].clone()
    return out


def _layer_norm(
    x: torch.Tensor, sd: dict[str, torch.Tensor], name: str, eps: float
) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def dino_last_keys(
    sd: dict[str, torch.Tensor], images: torch.Tensor, num_heads: int, eps: float = 1e-6
) -> torch.Tensor:
    """Keys of the last block for uint8 images (B, S, S', 3) → (B, S/p, S'/p, C) float32."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    x = (x - MEAN) / STD
    b, _, hh, ww = x.shape
    p = sd["patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    h, w = tokens.shape[-2:]
    tokens = tokens.flatten(2).transpose(1, 2)
    dim = tokens.shape[-1]
    tokens = torch.cat([sd["cls_token"].expand(b, -1, -1), tokens], dim=1)
    pos = sd["pos_embed"]
    n = pos.shape[1] - 1
    if n != h * w or h != w:
        g = int(math.sqrt(n))
        grid = pos[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)
    x = tokens + pos
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    hd = dim // num_heads
    for i in range(depth):
        y = _layer_norm(x, sd, f"blocks.{i}.norm1", eps)
        qkv = F.linear(y, sd[f"blocks.{i}.attn.qkv.weight"], sd.get(f"blocks.{i}.attn.qkv.bias"))
        qkv = qkv.reshape(b, -1, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if i == depth - 1:
            keys = k.transpose(1, 2).reshape(b, -1, dim)
            return keys[:, 1:].reshape(b, h, w, dim)
        attn = (q @ k.transpose(-2, -1)) * hd**-0.5
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, -1, dim)
        x = x + F.linear(out, sd[f"blocks.{i}.attn.proj.weight"], sd[f"blocks.{i}.attn.proj.bias"])
        y = _layer_norm(x, sd, f"blocks.{i}.norm2", eps)
        y = F.linear(
            F.gelu(F.linear(y, sd[f"blocks.{i}.mlp.fc1.weight"], sd[f"blocks.{i}.mlp.fc1.bias"])),
            sd[f"blocks.{i}.mlp.fc2.weight"],
            sd[f"blocks.{i}.mlp.fc2.bias"],
        )
        x = x + y
    raise ValueError("state dict has no blocks")
