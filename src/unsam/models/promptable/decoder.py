"""The interactive decoder of the promptable model: IMaskDINODecoder with the DINO transformer
decoder (spec PROMPTABLE.md §1.4, §2.4-§2.6), and the mask product of queries and mask features.
Module names are the official ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unsam.models.promptable.config import PromptableConfig
from unsam.models.promptable.layers import (
    MLP,
    inverse_sigmoid,
    onednn_packing_supported,
    pack_weight,
    packed_linear,
)
from unsam.models.promptable.msda import MSDeformAttn

__all__ = [
    "DecoderLayer",
    "InteractiveDecoder",
    "mask_product",
]


class DecoderLayer(nn.Module):
    """Self-attention -> deformable cross-attention -> FFN, each post-norm (spec §2.5 steps 3-5)."""

    def __init__(
        self, d_model: int, ffn_dim: int, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self._packed_sa: tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple] | None = None

    def pack_self_attention(self, batch_hint: int = 8) -> bool:
        """Keep oneDNN-packed copies of the self-attention's projections (bfloat16 on the CPU;
        see :class:`~unsam.models.promptable.layers.PackedLinear`): ``nn.MultiheadAttention``
        runs three unpacked bf16 products per call, which re-pack their weights every time.
        Returns whether it packed."""
        mha = self.self_attn
        w = mha.in_proj_weight
        if w.device.type != "cpu" or w.dtype != torch.bfloat16 or not onednn_packing_supported(
            w.dtype
        ):
            self._packed_sa = None
            return False
        c = w.shape[1]
        self._packed_sa = (
            pack_weight(w[: 2 * c], batch_hint),
            pack_weight(w[2 * c :], batch_hint),
            pack_weight(mha.out_proj.weight, batch_hint),
            _weights_key(w, mha.out_proj.weight),
        )
        return True

    def _self_attention(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``self_attn(q, q, v)`` (query = key): with packed projections when they are current
        (same arithmetic as ``nn.MultiheadAttention`` in eval: q·k scaled by 1/sqrt(d), softmax,
        no dropout), else the module."""
        mha = self.self_attn
        packed = self._packed_sa
        w, wo = mha.in_proj_weight, mha.out_proj.weight
        if (
            packed is None
            or q.device.type != "cpu"
            or q.dtype != w.dtype
            or (torch.is_grad_enabled() and w.requires_grad)
            or packed[3] != _weights_key(w, wo)
        ):
            return mha(q, q, v, need_weights=False)[0]
        b, n, c = q.shape
        heads = mha.num_heads
        bias = mha.in_proj_bias
        qk = packed_linear(q, packed[0], bias[: 2 * c])
        val = packed_linear(v, packed[1], bias[2 * c :])

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, heads, c // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(qk[..., :c]), split(qk[..., c:]), split(val))
        return packed_linear(out.transpose(1, 2).reshape(b, n, c), packed[2], mha.out_proj.bias)

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        boxes: torch.Tensor,
        values: Sequence[torch.Tensor],
        independent: bool,
    ) -> torch.Tensor:
        """One layer for N clicks × T tokens.

        Args:
            x, query_pos: ``(N, T, C)`` content and positional queries.
            boxes: ``(N, T, 4)`` reference boxes (cx, cy, w, h), normalised to the padded input.
            values: this layer's cached value maps (:meth:`MSDeformAttn.project_value`, batch 1).
            independent: True = each click's T tokens attend only to each other (the training and
                evaluation block-diagonal mask); False = all N·T queries attend to each other
                (demo).

        Returns:
            ``(N, T, C)``.
        """
        n, t, c = x.shape
        q = x + query_pos
        if not independent:
            q, v = q.reshape(1, n * t, c), x.reshape(1, n * t, c)
        else:
            v = x
        sa = self._self_attention(q, v).reshape(n, t, c)
        x = self.norm2(x + sa)
        ca = self.cross_attn(
            (x + query_pos).reshape(1, n * t, c), boxes.reshape(1, n * t, 4), values
        )
        x = self.norm1(x + ca.reshape(n, t, c))
        return self.norm3(x + self.linear2(F.relu(self.linear1(x))))


class _Decoder(nn.Module):
    """``decoder.layers`` and ``decoder.ref_point_head`` under the official names."""

    def __init__(self, config: PromptableConfig, n_levels: int) -> None:
        super().__init__()
        c = config.hidden_dim
        self.layers = nn.ModuleList(
            DecoderLayer(
                c, config.decoder_ffn_dim, n_levels, config.decoder_heads, config.decoder_points
            )
            for _ in range(config.decoder_layers)
        )
        self.ref_point_head = MLP(2 * c, c, c, 2)


class InteractiveDecoder(nn.Module):
    """Click queries, 9 decoder layers and the mask / IoU / box heads
    (``sem_seg_head.predictor``)."""

    def __init__(self, config: PromptableConfig, n_levels: int = 4) -> None:
        super().__init__()
        c = config.hidden_dim
        self.config = config
        self.decoder = _Decoder(config, n_levels)
        self.decoder_norm = nn.LayerNorm(c)
        self.mask_embed = MLP(c, c, c, 3)
        self._bbox_embed = MLP(c, c, 4, 3)
        nn.init.zeros_(self._bbox_embed.layers[-1].weight)
        nn.init.zeros_(self._bbox_embed.layers[-1].bias)
        self.iou_prediction_head = MLP(c, c, 1, 3)
        self.mask_tokens = nn.Embedding(config.num_mask_tokens, c)
        self.pb_embedding = nn.Embedding(2, c)
        self.label_enc = nn.Embedding(2, c)

    def initial_queries(
        self, boxes: torch.Tensor, pb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Click -> T content queries and T (identical) reference boxes (spec §2.4).

        Args:
            boxes: ``(N, 4)`` click boxes (cx, cy, w, h), normalised to the padded input.
            pb: ``(N,)`` int64 in {0, 1}: row of ``pb_embedding`` (inference 0, training 1).

        Returns:
            content ``(N, T, C)`` = label_enc[0] + pb_embedding[pb] + mask_tokens[k] (the network's
            dtype), and reference boxes ``(N, T, 4)`` = sigmoid(inverse_sigmoid(box)) (float32:
            box decoding stays float32).
        """
        n = boxes.shape[0]
        t = self.mask_tokens.num_embeddings
        content = (
            self.label_enc.weight[0][None, None]
            + self.pb_embedding(pb)[:, None]
            + self.mask_tokens.weight[None]
        )
        ref = inverse_sigmoid(boxes.float())[:, None].expand(n, t, 4).sigmoid()
        return content, ref

    def heads(
        self,
        hs: torch.Tensor,
        ref: torch.Tensor,
        mask_features: torch.Tensor | None,
        packed_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heads of one layer (§2.6): mask logits ``(N, T, h, w)`` (empty ``(N, T, 0, 0)`` when
        ``mask_features`` is None), IoU ``(N, T)``, boxes ``(N, T, 4)`` (these three float32), mask
        embeddings ``(N, T, C)`` (the network's dtype). ``packed_features``: see
        :func:`mask_product`."""
        z = self.decoder_norm(hs)  # second application, as the original (spec §8.5)
        embed = self.mask_embed(z)
        # float32 outputs whatever the network's dtype: the mask logits (resized and thresholded
        # at 0 after this), the predicted IoU (a score compared with thresholds) and the boxes
        # (box decoding: inverse sigmoid of a float32 reference + offset, then sigmoid)
        if mask_features is None:
            masks = embed.new_zeros((*embed.shape[:2], 0, 0), dtype=torch.float32)
        else:
            masks = mask_product(embed, mask_features, packed_features).float()
        iou = self.iou_prediction_head(z).squeeze(-1).float()
        boxes = (self._bbox_embed(z).float() + inverse_sigmoid(ref.float())).sigmoid()
        return masks, iou, boxes, embed


def _weights_key(*weights: torch.Tensor) -> tuple[object, ...]:
    """Identity of weights' current values (storage, in-place version, dtype, device)."""
    return tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in weights)


def mask_product(
    embed: torch.Tensor, mask_features: torch.Tensor, packed: torch.Tensor | None = None
) -> torch.Tensor:
    """Mask logits of mask embeddings: ``einsum("...c,chw->...hw", embed, mask_features[0])``.

    Args:
        embed: ``(..., C)`` mask embeddings.
        mask_features: ``(1, C, H, W)`` per-pixel embeddings.
        packed: optional, ``mask_features`` as an ``(H·W, C)`` linear weight packed by oneDNN
            (:attr:`ImageState.packed_mask_features`, CPU bfloat16): the product is then one
            oneDNN linear of the few embeddings, reading the 32 MB of a 1024² image's features in
            their blocked layout (2.3 ms against 6.7 ms unpacked and 8.5 ms in float32 on an
            AVX-512 BF16 core, for one click's 6 masks).

    Returns:
        ``(..., H, W)`` logits. When ``mask_features`` is channels_last (as
        :meth:`PromptableModel.encode_image` stores it outside autograd), one ``(H*W, C) @ (C, Q)``
        product on a view of it, reading each pixel's C values contiguously: about 2x faster than
        the einsum for the 6 queries of a click (tests: equal up to float summation order).
    """
    c = int(embed.shape[-1])
    h, w = int(mask_features.shape[-2]), int(mask_features.shape[-1])
    if packed is not None and embed.device.type == "cpu" and embed.dtype == mask_features.dtype:
        logits = packed_linear(embed.reshape(-1, c), packed)  # (Q, H*W)
        return logits.reshape(*embed.shape[:-1], h, w)
    if c > 1 and mask_features.stride(1) == 1:
        pixels = mask_features[0].permute(1, 2, 0).reshape(h * w, c)  # a view
        return (pixels @ embed.reshape(-1, c).T).T.reshape(*embed.shape[:-1], h, w)
    return torch.einsum("...c,chw->...hw", embed, mask_features[0])
