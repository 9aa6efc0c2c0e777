"""Naive reference of the promptable decoder (spec PROMPTABLE.md §2.3-§2.5). Does not import unsam.

Written from the spec, slowly and literally: deformable attention loops over queries, heads,
levels and points and interpolates bilinearly by hand (zero outside the map, align_corners=False
pixel centres); self-attention is written out with an explicit boolean block mask; LayerNorm is
written out. Parameters come in as a plain dict of tensors named as in the official checkpoint.
"""

from __future__ import annotations

import math

import torch


def bilinear_zero_pad(value: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample (C, H, W) at normalised (x, y) in [0, 1]; pixel centres at (i + 0.5) / size."""
    c, h, w = value.shape
    px = x * w - 0.5
    py = y * h - 0.5
    x0 = math.floor(px)
    y0 = math.floor(py)
    out = torch.zeros(c, dtype=value.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            wgt = (1 - abs(px - xx)) * (1 - abs(py - yy))
            if 0 <= xx < w and 0 <= yy < h:
                out += wgt * value[:, yy, xx]
    return out


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def linear(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def msda_naive(
    query: torch.Tensor,
    reference: torch.Tensor,
    memory_levels: list[torch.Tensor],
    p: dict[str, torch.Tensor],
    prefix: str,
    n_heads: int,
    n_points: int,
) -> torch.Tensor:
    """Deformable attention of Q queries over memory levels (C, H_l, W_l); reference (Q, 2 | 4)."""
    q_count, c = query.shape
    n_levels = len(memory_levels)
    d = c // n_heads
    values = []
    for mem in memory_levels:
        _, h, w = mem.shape
        flat = mem.reshape(c, h * w).T  # (HW, C)
        values.append(linear(flat, p, prefix + "value_proj").T.reshape(c, h, w))
    offsets = linear(query, p, prefix + "sampling_offsets")
    logits = linear(query, p, prefix + "attention_weights")
    out = torch.zeros(q_count, c, dtype=query.dtype)
    for qi in range(q_count):
        for m in range(n_heads):
            row = logits[qi, m * n_levels * n_points : (m + 1) * n_levels * n_points]
            weights = torch.exp(row - row.max())
            weights = weights / weights.sum()
            acc = torch.zeros(d, dtype=query.dtype)
            for lvl in range(n_levels):
                _, h, w = memory_levels[lvl].shape
                for pt in range(n_points):
                    base = ((m * n_levels + lvl) * n_points + pt) * 2
                    ox, oy = float(offsets[qi, base]), float(offsets[qi, base + 1])
                    ref = reference[qi]
                    if ref.shape[0] == 2:
                        x = float(ref[0]) + ox / w
                        y = float(ref[1]) + oy / h
                    else:
                        x = float(ref[0]) + ox / n_points * float(ref[2]) * 0.5
                        y = float(ref[1]) + oy / n_points * float(ref[3]) * 0.5
                    sample = bilinear_zero_pad(values[lvl][m * d : (m + 1) * d], x, y)
                    acc += weights[lvl * n_points + pt] * sample
            out[qi, m * d : (m + 1) * d] = acc
    return linear(out, p, prefix + "output_proj")


def self_attention_naive(
    x: torch.Tensor,
    pos: torch.Tensor,
    p: dict[str, torch.Tensor],
    prefix: str,
    n_heads: int,
    blocked: torch.Tensor | None,
) -> torch.Tensor:
    """nn.MultiheadAttention(q = k = x + pos, v = x) with ``blocked[i, j]`` = True masking j for
    i."""
    q_count, c = x.shape
    d = c // n_heads
    w = p[prefix + "in_proj_weight"]
    b = p[prefix + "in_proj_bias"]
    qk_in = x + pos
    q = qk_in @ w[:c].T + b[:c]
    k = qk_in @ w[c : 2 * c].T + b[c : 2 * c]
    v = x @ w[2 * c :].T + b[2 * c :]
    out = torch.zeros(q_count, c, dtype=x.dtype)
    for m in range(n_heads):
        sl = slice(m * d, (m + 1) * d)
        for i in range(q_count):
            scores = torch.stack(
                [(q[i, sl] * k[j, sl]).sum() / math.sqrt(d) for j in range(q_count)]
            )
            if blocked is not None:
                scores = torch.where(blocked[i], torch.tensor(float("-inf")), scores)
            att = torch.exp(scores - scores.max())
            att = att / att.sum()
            out[i, sl] = (att[:, None] * v[:, sl]).sum(0)
    return out @ p[prefix + "out_proj.weight"].T + p[prefix + "out_proj.bias"]


def decoder_layer_naive(
    x: torch.Tensor,
    query_pos: torch.Tensor,
    boxes: torch.Tensor,
    memory_levels: list[torch.Tensor],
    p: dict[str, torch.Tensor],
    prefix: str,
    n_heads: int,
    n_points: int,
    blocked: torch.Tensor | None,
) -> torch.Tensor:
    """One decoder layer (spec §2.5 steps 3-5): SA + norm2, deformable CA + norm1, FFN + norm3.

    x, query_pos: (Q, C); boxes: (Q, 4) (cx, cy, w, h); memory_levels: (C, H_l, W_l) in decoder
    level order; blocked: (Q, Q) bool or None.
    """
    sa = self_attention_naive(x, query_pos, p, prefix + "self_attn.", n_heads, blocked)
    x = layer_norm(x + sa, p[prefix + "norm2.weight"], p[prefix + "norm2.bias"])
    ca = msda_naive(
        x + query_pos, boxes, memory_levels, p, prefix + "cross_attn.", n_heads, n_points
    )
    x = layer_norm(x + ca, p[prefix + "norm1.weight"], p[prefix + "norm1.bias"])
    hidden = torch.clamp(linear(x, p, prefix + "linear1"), min=0)
    return layer_norm(
        x + linear(hidden, p, prefix + "linear2"),
        p[prefix + "norm3.weight"],
        p[prefix + "norm3.bias"],
    )


def click_queries_naive(
    points_xy: list[tuple[float, float]],
    padded_hw: tuple[int, int],
    box_wh: tuple[float, float],
    label_enc: torch.Tensor,
    pb_embedding: torch.Tensor,
    mask_tokens: torch.Tensor,
    pb: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Click n, token k -> query 6n + k (spec §2.4): content and reference box (cx, cy, w, h).

    The box is (x / Wp, y / Hp, bw / Wp, bh / Hp); the reference is sigmoid(inverse_sigmoid(box))
    with inverse_sigmoid clamped at 1e-5.
    """
    hp, wp = padded_hw
    contents, refs = [], []
    for x, y in points_xy:
        box = [x / wp, y / hp, box_wh[0] / wp, box_wh[1] / hp]
        ref = []
        for v in box:
            v = min(max(v, 0.0), 1.0)
            logit = math.log(max(v, 1e-5) / max(1 - v, 1e-5))
            ref.append(1.0 / (1.0 + math.exp(-logit)))
        for k in range(mask_tokens.shape[0]):
            contents.append(label_enc[0] + pb_embedding[pb] + mask_tokens[k])
            refs.append(torch.tensor(ref))
    return torch.stack(contents), torch.stack(refs)


def block_diagonal_blocked(num_clicks: int, tokens: int) -> torch.Tensor:
    """(N·T, N·T) bool: True where query i (click i // T) may not see query j of another click."""
    owner = torch.arange(num_clicks * tokens) // tokens
    return owner[:, None] != owner[None, :]


def swin_relative_position_index(window: int) -> torch.Tensor:
    """The official Swin ``relative_position_index`` buffer, (window², window²) int64."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def official_state_dict_from_ours(
    ours: dict[str, torch.Tensor], decoder_layers: int, window: int = 7
) -> dict[str, torch.Tensor]:
    """Write a port's state dict back in the official layout (spec §6.2, §6.4), ``model.`` prefixed.

    Inverse of the conversion, written independently: Swin names restored and q/k/v re-packed into
    ``qkv``; the 110 aliases (``decoder.norm``, ``bbox_embed.{i}``, ``decoder.bbox_embed.{i}``) and
    the 12 ``relative_position_index`` buffers added; the unused class heads and the criterion
    buffer added with random values.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    hf = "backbone.swin."
    for k, v in ours.items():
        if k.startswith(hf + "embeddings.patch_embeddings.projection."):
            out["backbone.patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith(hf + "embeddings.norm."):
            out["backbone.patch_embed.norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith(hf + "encoder.layers."):
            rest = k[len(hf + "encoder.layers.") :]
            s, kind, tail = rest.split(".", 2)
            if kind == "downsample":
                out[f"backbone.layers.{s}.downsample.{tail}"] = v
                continue
            b, sub = tail.split(".", 1)
            blk = f"backbone.layers.{s}.blocks.{b}."
            if sub.startswith("attention.") and sub.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, wb = sub.split(".")
                qkv.setdefault(blk + "attn.qkv." + wb, {})[proj] = v
            elif sub.startswith("attention.o_proj."):
                out[blk + "attn.proj." + sub.rsplit(".", 1)[1]] = v
            elif sub == "attention.relative_position_bias.relative_position_bias_table":
                out[blk + "attn.relative_position_bias_table"] = v
                out[blk + "attn.relative_position_index"] = swin_relative_position_index(window)
            elif sub.startswith("layernorm_before."):
                out[blk + "norm1." + sub.rsplit(".", 1)[1]] = v
            elif sub.startswith("layernorm_after."):
                out[blk + "norm2." + sub.rsplit(".", 1)[1]] = v
            elif sub.startswith("mlp."):
                out[blk + sub] = v
            else:
                raise KeyError(k)
        elif k.startswith("backbone.hidden_states_norms.stage"):
            stage, wb = k[len("backbone.hidden_states_norms.stage") :].split(".")
            out[f"backbone.norm{int(stage) - 1}.{wb}"] = v
        elif k.startswith("sem_seg_head."):
            out[k] = v
        else:
            raise KeyError(k)
    for name, parts in qkv.items():
        out[name] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], 0)
    pred = "sem_seg_head.predictor."
    for wb in ("weight", "bias"):
        out[pred + "decoder.norm." + wb] = ours[pred + "decoder_norm." + wb].clone()
        for i in range(decoder_layers):
            for j in range(3):
                src = ours[f"{pred}_bbox_embed.layers.{j}.{wb}"]
                out[f"{pred}bbox_embed.{i}.layers.{j}.{wb}"] = src.clone()
                out[f"{pred}decoder.bbox_embed.{i}.layers.{j}.{wb}"] = src.clone()
    c = ours[pred + "decoder_norm.weight"].shape[0]
    g = torch.Generator().manual_seed(0)
    out[pred + "class_embed"] = torch.randn(c, 2 * c, generator=g)
    out[pred + "class_embed_part"] = torch.randn(c, 2 * c, generator=g)
    out[pred + "lang_mapper"] = torch.randn(2 * c, c, generator=g)
    out["criterion.empty_weight"] = torch.tensor([1.0, 0.1])
    return {"model." + k: v for k, v in out.items()}


def mlp(x: torch.Tensor, p: dict[str, torch.Tensor], prefix: str, num_layers: int) -> torch.Tensor:
    for i in range(num_layers):
        x = linear(x, p, f"{prefix}layers.{i}")
        if i < num_layers - 1:
            x = torch.clamp(x, min=0)
    return x


def box_sine_naive(box: torch.Tensor, num_feats: int) -> torch.Tensor:
    """``gen_sineembed_for_position`` of (Q, 4) boxes: blocks (cy, cx, w, h), sin/cos
    interleaved."""
    out = []
    for coord in (1, 0, 2, 3):
        cols = []
        for i in range(num_feats):
            f = 10000.0 ** (2 * (i // 2) / num_feats)
            v = box[:, coord] * 2 * math.pi / f
            cols.append(torch.sin(v) if i % 2 == 0 else torch.cos(v))
        out.append(torch.stack(cols, 1))
    return torch.cat(out, 1)


def inverse_sigmoid_naive(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=1e-5) / (1 - x).clamp(min=1e-5))


def decode_naive(
    content: torch.Tensor,
    ref: torch.Tensor,
    memory_levels: list[torch.Tensor],
    mask_features: torch.Tensor,
    p: dict[str, torch.Tensor],
    num_layers: int,
    n_heads: int,
    n_points: int,
    blocked: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder loop and heads of spec §2.5-§2.6 for Q = N·T queries (last layer only).

    content: (Q, C); ref: (Q, 4); memory_levels: (C, H_l, W_l) in decoder order; mask_features
    (C, h, w); p: predictor parameters without the ``sem_seg_head.predictor.`` prefix.
    Returns mask logits (Q, h, w), iou (Q,), boxes (Q, 4).
    """
    c = content.shape[1]
    x = content
    out = None
    for lid in range(num_layers):
        pos = mlp(box_sine_naive(ref, c // 2), p, "decoder.ref_point_head.", 2)
        x = decoder_layer_naive(
            x, pos, ref, memory_levels, p, f"decoder.layers.{lid}.", n_heads, n_points, blocked
        )
        new_ref = torch.sigmoid(mlp(x, p, "_bbox_embed.", 3) + inverse_sigmoid_naive(ref))
        hs = layer_norm(x, p["decoder_norm.weight"], p["decoder_norm.bias"])
        z = layer_norm(hs, p["decoder_norm.weight"], p["decoder_norm.bias"])  # applied twice
        masks = torch.einsum("qc,chw->qhw", mlp(z, p, "mask_embed.", 3), mask_features)
        iou = mlp(z, p, "iou_prediction_head.", 3)[:, 0]
        boxes = torch.sigmoid(mlp(z, p, "_bbox_embed.", 3) + inverse_sigmoid_naive(ref))
        out = (masks, iou, boxes)
        ref = new_ref
    assert out is not None
    return out
