"""The promptable model: Swin backbone, deformable pixel decoder, interactive decoder, heads.

Semantic-SAM's interactive model as UnSAM uses it (spec PROMPTABLE.md §2). Module names under
``sem_seg_head`` are the official ones, so the official checkpoint loads by identity there; the
backbone is transformers' ``SwinBackbone`` (mapping in :mod:`unsam.models.promptable.convert`).

The forward pass is split in two:

- :meth:`PromptableModel.encode_image` runs everything that depends only on the image (backbone,
  pixel decoder, mask features, and each decoder layer's value projection of the memory) and
  returns an :class:`ImageState`.
- :meth:`PromptableModel.decode_clicks` turns N clicks into ``6 N`` queries, runs the decoder and
  the heads, and returns mask logits ``(N, 6, h, w)`` and predicted IoU ``(N, 6)``. It is cheap and
  differentiable, so training and interactive use share it.

Two documented quirks of the original are kept for parity (spec §8.5): the decoder output is
normalised twice before the heads, and the output box uses the doubly normalised state while the
next layer's reference uses the raw state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unsam.models.promptable.config import CONFIG_FILE, PromptableConfig
from unsam.models.promptable.msda import MSDeformAttn

__all__ = [
    "MLP",
    "ClickDecoderOutput",
    "ImageState",
    "PromptableModel",
    "box_sine_embedding",
    "build_model",
    "click_boxes",
    "inverse_sigmoid",
    "jitter_click_boxes",
    "sine_position_encoding",
]

#: Weights file inside a ``save_pretrained`` folder.
WEIGHTS_FILE = "model.safetensors"
#: Box side of a click as a fraction of the image side (demo, predictor API and AMG; spec §2.4).
DEMO_BOX_FRACTION = 0.005


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) after clamping x to [0, 1] and both terms to >= eps (spec §2.4)."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def sine_position_encoding(
    hw: tuple[int, int],
    num_feats: int,
    device: torch.device | None = None,
    temperature: float = 10000.0,
) -> torch.Tensor:
    """Normalised 2-d sine position encoding of an h×w grid (DETR style, spec §2.2 step 3).

    Row r and column c become y = (r+1)/(h+1e-6)·2π, x = (c+1)/(w+1e-6)·2π; feature i of each
    axis is sin(v / f_i) for even i and cos(v / f_i) for odd i, f_i = T^(2⌊i/2⌋/num_feats).

    Returns:
        ``(1, 2 * num_feats, h, w)`` float32: channels [0, num_feats) encode y, the rest x.
    """
    h, w = int(hw[0]), int(hw[1])
    scale = 2.0 * math.pi
    eps = 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    py = _interleave_sin_cos(y[:, None] / dim_t)  # (h, F)
    px = _interleave_sin_cos(x[:, None] / dim_t)  # (w, F)
    pos_y = py[:, None, :].expand(h, w, num_feats)
    pos_x = px[None, :, :].expand(h, w, num_feats)
    return torch.cat([pos_y, pos_x], -1).permute(2, 0, 1)[None].contiguous()


def _interleave_sin_cos(v: torch.Tensor) -> torch.Tensor:
    """(…, F) angles -> (…, F): sin at even feature indices, cos at odd ones."""
    return torch.stack([v[..., 0::2].sin(), v[..., 1::2].cos()], -1).flatten(-2)


def box_sine_embedding(boxes: torch.Tensor, num_feats: int) -> torch.Tensor:
    """Sine embedding of (cx, cy, w, h) boxes (``gen_sineembed_for_position``, spec §2.5 step 1).

    Args:
        boxes: ``(…, 4)`` float, normalised (cx, cy, w, h).
        num_feats: features per coordinate (128 in the original).

    Returns:
        ``(…, 4 * num_feats)`` float, blocks in the order (cy, cx, w, h).
    """
    scale = 2.0 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = 10000.0 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    parts = [_interleave_sin_cos(boxes[..., i, None] * scale / dim_t) for i in range(4)]
    return torch.cat([parts[1], parts[0], parts[2], parts[3]], -1)


def click_boxes(
    points: torch.Tensor,
    padded_hw: tuple[int, int],
    box_wh: tuple[float, float],
) -> torch.Tensor:
    """Click points -> reference boxes normalised to the padded input (spec §2.4).

    The centre is the pixel coordinate divided by the padded size (the original's x/W followed by
    the padding correction W/Wp; pixel *index* convention, no +0.5).

    Args:
        points: ``(N, 2)`` float, (x, y) in pixels of the (unpadded) model input.
        padded_hw: (Hp, Wp) of the padded model input.
        box_wh: box (width, height) in pixels of the model input (training and evaluation: 6 px;
            demo / AMG: 0.005 of the image side).

    Returns:
        ``(N, 4)`` float32 (cx, cy, w, h) in [0, 1].
    """
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2) (x, y) pixels, got shape {tuple(points.shape)}")
    hp, wp = padded_hw
    pts = points.to(torch.float32)
    wh = torch.tensor([box_wh[0] / wp, box_wh[1] / hp], dtype=torch.float32, device=pts.device)
    centre = pts / torch.tensor([wp, hp], dtype=torch.float32, device=pts.device)
    return torch.cat([centre, wh.expand_as(centre)], 1)


def jitter_click_boxes(
    boxes: torch.Tensor, generator: torch.Generator | None = None, scale: float = 0.4 * 0.01
) -> torch.Tensor:
    """Training-time click-box noise (spec §2.4): box += U(-1, 1) · (w/2, h/2, w, h) · scale, then
    clamped to [0, 1]. The original's scale is DN_NOISE_SCALE 0.4 × 0.01.

    Args:
        boxes: ``(N, 4)`` float (cx, cy, w, h), normalised.
        generator: torch RNG for reproducible noise.

    Returns:
        ``(N, 4)`` float, a new tensor.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) (cx, cy, w, h), got shape {tuple(boxes.shape)}")
    diff = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:]], 1)
    noise = torch.rand(boxes.shape, generator=generator, dtype=boxes.dtype) * 2.0 - 1.0
    return (boxes + noise.to(boxes.device) * diff * scale).clamp(0.0, 1.0)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (official ``MLP``: ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Conv2dNorm(nn.Conv2d):
    """detectron2-style ``Conv2d`` with its norm stored as ``.norm`` and an optional ReLU."""

    def __init__(
        self, *args: int, norm: nn.Module, relu: bool = False, bias: bool = False, padding: int = 0
    ) -> None:
        super().__init__(*args, bias=bias, padding=padding)
        self.norm = norm
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


# --------------------------------------------------------------------------------------------------
# pixel decoder (MaskDINOEncoder, spec §1.3, §2.2)
# --------------------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN (``transformer.encoder.layers.{i}``)."""

    def __init__(
        self, d_model: int, ffn_dim: int, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """x, pos: ``(B, S, C)``; reference_points: ``(B, S, 2)``. Returns ``(B, S, C)``."""
        values = self.self_attn.project_value(x, spatial_shapes)
        x = self.norm1(x + self.self_attn(x + pos, reference_points, values))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class _Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _DeformableTransformer(nn.Module):
    """Holds ``level_embed`` (L, C) and ``encoder.layers`` under the official names."""

    def __init__(self, config: PromptableConfig, n_levels: int) -> None:
        super().__init__()
        c = config.hidden_dim
        self.level_embed = nn.Parameter(torch.randn(n_levels, c) * 0.02)
        self.encoder = _Encoder(
            [
                EncoderLayer(
                    c, config.encoder_ffn_dim, n_levels, config.encoder_heads, config.encoder_points
                )
                for _ in range(config.encoder_layers)
            ]
        )


def _level_reference_points(
    shapes: Sequence[tuple[int, int]], device: torch.device
) -> torch.Tensor:
    """Pixel centres ((c+0.5)/w, (r+0.5)/h) of every level, concatenated: ``(S, 2)`` float32."""
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    return torch.cat(refs, 0)


class PixelDecoder(nn.Module):
    """Deformable multi-scale encoder + one FPN level + mask features (spec §2.2).

    Input levels (encoder order): [res3, res4, res5, conv3x3/2(res5)] = strides [8, 16, 32, 64].
    """

    n_levels = 4

    def __init__(self, config: PromptableConfig) -> None:
        super().__init__()
        c = config.hidden_dim
        _, c3, c4, c5 = config.stage_channels
        g = config.norm_groups
        self.input_proj = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(c3, c, 1), nn.GroupNorm(g, c)),
                nn.Sequential(nn.Conv2d(c4, c, 1), nn.GroupNorm(g, c)),
                nn.Sequential(nn.Conv2d(c5, c, 1), nn.GroupNorm(g, c)),
                nn.Sequential(nn.Conv2d(c5, c, 3, stride=2, padding=1), nn.GroupNorm(g, c)),
            ]
        )
        self.transformer = _DeformableTransformer(config, self.n_levels)
        self.adapter_1 = Conv2dNorm(config.stage_channels[0], c, 1, norm=nn.GroupNorm(g, c))
        self.layer_1 = Conv2dNorm(c, c, 3, padding=1, norm=nn.GroupNorm(g, c), relu=True)
        self.mask_features = nn.Conv2d(c, c, 1)
        self.num_pos_feats = c // 2

    def forward(self, res: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the encoder and the FPN.

        Args:
            res: (res2, res3, res4, res5), ``(B, C_s, Hp/4·2^-s, Wp/4·2^-s)`` float.

        Returns:
            mask_features ``(B, C, Hp/4, Wp/4)`` and the encoder outputs [o8, o16, o32, o64], each
            ``(B, C, H_l, W_l)``.
        """
        res2, res3, res4, res5 = res
        srcs = [
            self.input_proj[0](res3),
            self.input_proj[1](res4),
            self.input_proj[2](res5),
            self.input_proj[3](res5),
        ]
        shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        b = res2.shape[0]
        device = res2.device
        x = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (B, S, C)
        pos = torch.cat(
            [
                (
                    sine_position_encoding(hw, self.num_pos_feats, device)
                    .flatten(2)
                    .transpose(1, 2)
                    + self.transformer.level_embed[lvl][None, None]
                )
                for lvl, hw in enumerate(shapes)
            ],
            1,
        ).to(x.dtype)
        ref = _level_reference_points(shapes, device)[None].expand(b, -1, -1).to(x.dtype)
        for layer in self.transformer.encoder.layers:
            x = layer(x, pos, ref, shapes)
        outs = []
        start = 0
        for h, w in shapes:
            outs.append(x[:, start : start + h * w].transpose(1, 2).reshape(b, -1, h, w))
            start += h * w
        lateral = self.adapter_1(res2)
        y = lateral + F.interpolate(
            outs[0], size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        y = self.layer_1(y)
        return self.mask_features(y), outs


# --------------------------------------------------------------------------------------------------
# interactive decoder (IMaskDINODecoder + DINO TransformerDecoder, spec §1.4, §2.4-§2.6)
# --------------------------------------------------------------------------------------------------


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
        sa = self.self_attn(q, q, v, need_weights=False)[0].reshape(n, t, c)
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
            content ``(N, T, C)`` = label_enc[0] + pb_embedding[pb] + mask_tokens[k], and reference
            boxes ``(N, T, 4)`` = sigmoid(inverse_sigmoid(box)).
        """
        n = boxes.shape[0]
        t = self.mask_tokens.num_embeddings
        content = (
            self.label_enc.weight[0][None, None]
            + self.pb_embedding(pb)[:, None]
            + self.mask_tokens.weight[None]
        )
        ref = inverse_sigmoid(boxes)[:, None].expand(n, t, 4).sigmoid()
        return content, ref

    def heads(
        self, hs: torch.Tensor, ref: torch.Tensor, mask_features: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heads of one layer (§2.6): mask logits ``(N, T, h, w)`` (empty ``(N, T, 0, 0)`` when
        ``mask_features`` is None), IoU ``(N, T)``, boxes ``(N, T, 4)``, mask embeddings
        ``(N, T, C)``."""
        z = self.decoder_norm(hs)  # second application, as the original (spec §8.5)
        embed = self.mask_embed(z)
        if mask_features is None:
            masks = embed.new_zeros((*embed.shape[:2], 0, 0))
        else:
            masks = mask_product(embed, mask_features)
        iou = self.iou_prediction_head(z).squeeze(-1)
        boxes = (self._bbox_embed(z) + inverse_sigmoid(ref)).sigmoid()
        return masks, iou, boxes, embed


def mask_product(embed: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
    """Mask logits of mask embeddings: ``einsum("...c,chw->...hw", embed, mask_features[0])``.

    Args:
        embed: ``(..., C)`` mask embeddings.
        mask_features: ``(1, C, H, W)`` per-pixel embeddings.

    Returns:
        ``(..., H, W)`` logits. When ``mask_features`` is channels_last (as
        :meth:`PromptableModel.encode_image` stores it outside autograd), one ``(H*W, C) @ (C, Q)``
        product on a view of it, reading each pixel's C values contiguously: about 2x faster than
        the einsum for the 6 queries of a click (tests: equal up to float summation order).
    """
    c = int(embed.shape[-1])
    h, w = int(mask_features.shape[-2]), int(mask_features.shape[-1])
    if c > 1 and mask_features.stride(1) == 1:
        pixels = mask_features[0].permute(1, 2, 0).reshape(h * w, c)  # a view
        return (pixels @ embed.reshape(-1, c).T).T.reshape(*embed.shape[:-1], h, w)
    return torch.einsum("...c,chw->...hw", embed, mask_features[0])


@dataclass
class ImageState:
    """Everything of the forward pass that depends only on the image (spec §2.2).

    Attributes:
        mask_features: ``(B, C, Hp/4, Wp/4)`` float32, the 1/4-resolution per-pixel embeddings.
        values: one entry per decoder layer; each is 4 tensors ``(B * M, C / M, H_l, W_l)`` (the
            layer's ``cross_attn.value_proj`` of the memory, split per head; levels in decoder order
            s64, s32, s16, s8).
        image_hw: (H, W) of the unpadded model input, pixels.
        padded_hw: (Hp, Wp) of the padded model input (multiples of 32).
    """

    mask_features: torch.Tensor
    values: tuple[tuple[torch.Tensor, ...], ...]
    image_hw: tuple[int, int]
    padded_hw: tuple[int, int]

    @property
    def batch_size(self) -> int:
        return int(self.mask_features.shape[0])

    def select(self, index: int) -> ImageState:
        """The state of image ``index`` of the batch (batch size 1)."""
        b = self.batch_size
        if not 0 <= index < b:
            raise IndexError(f"image index {index} is outside the batch of {b}")
        m = self.values[0][0].shape[0] // b if self.values else 1
        values = tuple(
            tuple(v[index * m : (index + 1) * m] for v in layer) for layer in self.values
        )
        return ImageState(
            self.mask_features[index : index + 1], values, self.image_hw, self.padded_hw
        )


@dataclass
class ClickDecoderOutput:
    """Decoder outputs for N clicks (T = 6 granularity tokens each).

    Attributes:
        mask_logits: ``(N, T, Hp/4, Wp/4)`` float, last layer, at 1/4 of the padded input.
        iou: ``(N, T)`` float, last layer's raw predicted IoU (no sigmoid).
        boxes: ``(N, T, 4)`` float, last layer's (cx, cy, w, h) normalised to the padded input.
        mask_embeddings: ``(N, T, C)`` float, last layer's per-query mask embedding; mask logits
            = ``mask_product(mask_embeddings, state.mask_features)``.
        aux: ``(mask_logits, iou, boxes)`` of layers 0 .. L-2 (deep supervision), shapes as above;
            empty unless requested.
    """

    mask_logits: torch.Tensor
    iou: torch.Tensor
    boxes: torch.Tensor
    mask_embeddings: torch.Tensor
    aux: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...] = ()


class _SemSegHead(nn.Module):
    def __init__(self, config: PromptableConfig) -> None:
        super().__init__()
        self.pixel_decoder = PixelDecoder(config)
        self.predictor = InteractiveDecoder(config, PixelDecoder.n_levels)


def _swin_backbone(config: PromptableConfig) -> nn.Module:
    from transformers import SwinBackbone, SwinConfig

    swin_config = SwinConfig(
        image_size=224,
        patch_size=config.patch_size,
        num_channels=3,
        embed_dim=config.embed_dim,
        depths=list(config.depths),
        num_heads=list(config.num_heads),
        window_size=config.window_size,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=True,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=config.drop_path_rate,
        use_absolute_embeddings=False,
        layer_norm_eps=1e-5,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    backbone = SwinBackbone(swin_config)
    # SwinBackbone never uses the final LayerNorm of its SwinModel (its own per-stage norms replace
    # it); the official checkpoint has no such tensor, so it is removed rather than left at init.
    backbone.swin.layernorm = nn.Identity()
    return backbone


class PromptableModel(nn.Module):
    """UnSAM's promptable model: one click -> 6 masks of increasing granularity + predicted IoU.

    Submodules: ``backbone`` (transformers ``SwinBackbone``), ``sem_seg_head.pixel_decoder``
    (:class:`PixelDecoder`), ``sem_seg_head.predictor`` (:class:`InteractiveDecoder`).
    ``pixel_mean`` / ``pixel_std`` are non-persistent buffers (0-255 RGB units).
    """

    def __init__(self, config: PromptableConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _swin_backbone(config)
        self.sem_seg_head = _SemSegHead(config)
        self.register_buffer(
            "pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False
        )

    # ---------------------------------------------------------------------------- per image
    def normalize_and_pad(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in 0-255 (any float/uint8) -> normalised, zero-padded bottom/right
        to multiples of ``size_divisibility``: ``(B, 3, Hp, Wp)`` float32 (spec §1.1)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        d = self.config.size_divisibility
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % d, 0, (-h) % d))

    def encode_image(
        self, pixel_values: torch.Tensor, image_hw: tuple[int, int] | None = None
    ) -> ImageState:
        """Backbone + pixel decoder + per-layer value projections (spec §2.2).

        Args:
            pixel_values: ``(B, 3, Hp, Wp)`` float32, normalised and padded
                (:meth:`normalize_and_pad`); Hp and Wp multiples of ``config.size_divisibility``.
            image_hw: (H, W) of the unpadded image inside ``pixel_values``; default (Hp, Wp).

        Returns:
            An :class:`ImageState` (differentiable w.r.t. the parameters when grad is enabled).
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (B, 3, Hp, Wp), got {tuple(pixel_values.shape)}"
            )
        hp, wp = (int(v) for v in pixel_values.shape[-2:])
        d = self.config.size_divisibility
        if hp % d or wp % d:
            raise ValueError(
                f"pixel_values is {hp}x{wp}; both sides must be multiples of {d} "
                "(pad with PromptableModel.normalize_and_pad)"
            )
        feats = self.backbone(pixel_values).feature_maps
        mask_features, outs = self.sem_seg_head.pixel_decoder(feats)
        memory_levels = outs[::-1]  # decoder order: s64, s32, s16, s8 (spec §2.2)
        shapes = [(int(o.shape[-2]), int(o.shape[-1])) for o in memory_levels]
        memory = torch.cat([o.flatten(2).transpose(1, 2) for o in memory_levels], 1)
        values = tuple(
            tuple(layer.cross_attn.project_value(memory, shapes))
            for layer in self.sem_seg_head.predictor.decoder.layers
        )
        hw = (hp, wp) if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
        if not torch.is_grad_enabled():  # clicks read it pixel by pixel (mask_product)
            mask_features = mask_features.contiguous(memory_format=torch.channels_last)
        return ImageState(mask_features, values, hw, (hp, wp))

    # ---------------------------------------------------------------------------- per click
    def decode_boxes(
        self,
        state: ImageState,
        boxes: torch.Tensor,
        *,
        pb: int | torch.Tensor = 0,
        independent: bool = True,
        return_aux: bool = False,
        compute_masks: bool = True,
    ) -> ClickDecoderOutput:
        """Decoder + heads for N click boxes (spec §2.4-§2.6).

        Args:
            state: :meth:`encode_image` output of one image (batch size 1; see
                :meth:`ImageState.select`).
            boxes: ``(N, 4)`` float click boxes (cx, cy, w, h) normalised to the padded input
                (:func:`click_boxes`); training may add its box noise here.
            pb: row of ``pb_embedding``: an int for all clicks or ``(N,)`` int64. The original uses
                0 at inference and 1 in training (spec §2.4).
            independent: True (training / evaluation): clicks do not see each other. False
                (original demo and AMG): all 6N queries attend to each other.
            return_aux: also return the predictions of layers 0 .. L-2.
            compute_masks: False skips the mask einsum (``mask_logits`` is then ``(N, 6, 0, 0)``);
                callers that need masks of a few queries use ``mask_embeddings``.

        Returns:
            :class:`ClickDecoderOutput` with mask logits ``(N, 6, Hp/4, Wp/4)``, IoU ``(N, 6)``,
            boxes ``(N, 6, 4)``.
        """
        if state.batch_size != 1:
            raise ValueError(
                f"decode needs the state of one image, got a batch of {state.batch_size}; "
                "use state.select(i)"
            )
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) (cx, cy, w, h), got shape {tuple(boxes.shape)}")
        n = boxes.shape[0]
        pred = self.sem_seg_head.predictor
        device = state.mask_features.device
        boxes = boxes.to(device=device, dtype=state.mask_features.dtype)
        pb_t = torch.as_tensor(pb, dtype=torch.long, device=device)
        pb_t = pb_t.expand(n) if pb_t.ndim == 0 else pb_t
        if pb_t.shape != (n,):
            raise ValueError(f"pb must be an int or ({n},), got shape {tuple(pb_t.shape)}")
        x, ref = pred.initial_queries(boxes, pb_t)
        ref_for_head = ref
        num_feats = self.config.hidden_dim // 2
        layers = pred.decoder.layers
        outputs = []
        for lid, layer in enumerate(layers):
            query_pos = pred.decoder.ref_point_head(box_sine_embedding(ref, num_feats))
            x = layer(x, query_pos, ref, state.values[lid], independent)
            new_ref = (pred._bbox_embed(x) + inverse_sigmoid(ref)).sigmoid()
            hs = pred.decoder_norm(x)
            if return_aux or lid == len(layers) - 1:
                features = state.mask_features if compute_masks else None
                outputs.append(pred.heads(hs, ref_for_head, features))
            ref_for_head = new_ref
            ref = new_ref.detach()
        masks, iou, out_boxes, embed = outputs[-1]
        return ClickDecoderOutput(masks, iou, out_boxes, embed, tuple(o[:3] for o in outputs[:-1]))

    def decode_clicks(
        self,
        state: ImageState,
        points: torch.Tensor,
        *,
        box_wh: tuple[float, float] | None = None,
        pb: int | torch.Tensor = 0,
        independent: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """N clicks -> 6 mask logits and 6 predicted IoUs each (differentiable).

        Args:
            state: :meth:`encode_image` output of one image (batch size 1).
            points: ``(N, 2)`` float, click (x, y) in pixels of the unpadded model input (pixel
                index convention: the centre of pixel (col, row) is (col, row)).
            box_wh: click box (w, h) in pixels; default 0.005 × (W, H) (demo / predictor / AMG);
                training and the interactive evaluation use (6, 6).
            pb: ``pb_embedding`` row, int or ``(N,)`` (0 at inference, 1 in training).
            independent: block-diagonal attention between clicks (True) or the demo's joint mode.

        Returns:
            mask_logits ``(N, 6, Hp/4, Wp/4)`` float32 (1/4 of the padded input; upsample with
            :meth:`upsample_masks`), iou ``(N, 6)`` float32 (raw, unbounded).
        """
        h, w = state.image_hw
        if box_wh is None:
            box_wh = (DEMO_BOX_FRACTION * w, DEMO_BOX_FRACTION * h)
        boxes = click_boxes(points, state.padded_hw, box_wh)
        out = self.decode_boxes(state, boxes, pb=pb, independent=independent)
        return out.mask_logits, out.iou

    @staticmethod
    def upsample_masks(mask_logits: torch.Tensor, state: ImageState) -> torch.Tensor:
        """``(…, Hp/4, Wp/4)`` logits -> ``(…, H, W)``: bilinear to the padded size, then cropped to
        the unpadded image (spec §2.7). Binarise with ``> 0``."""
        lead = mask_logits.shape[:-2]
        x = mask_logits.reshape(-1, 1, *mask_logits.shape[-2:])
        x = F.interpolate(x, size=state.padded_hw, mode="bilinear", align_corners=False)
        h, w = state.image_hw
        return x[:, 0, :h, :w].reshape(*lead, h, w)

    def forward(
        self,
        pixel_values: torch.Tensor,
        boxes: torch.Tensor,
        *,
        pb: int | torch.Tensor = 0,
        independent: bool = True,
    ) -> ClickDecoderOutput:
        """The original's recompute-everything path: encode one image, decode its click boxes.

        Args:
            pixel_values: ``(1, 3, Hp, Wp)`` normalised, padded.
            boxes: ``(N, 4)`` click boxes normalised to the padded input.
        """
        return self.decode_boxes(
            self.encode_image(pixel_values), boxes, pb=pb, independent=independent
        )

    # ---------------------------------------------------------------------------- persistence
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``; returns the folder."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = out / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt", "model_type": "unsam-promptable"})
        os.replace(tmp, out / WEIGHTS_FILE)
        self.config.save(out)
        return out

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> PromptableModel:
        """Load a :meth:`save_pretrained` folder strictly (missing or unexpected keys are errors).

        Raises:
            MissingWeightsError: the folder or its ``model.safetensors`` does not exist.
            ValueError: the weights do not match ``config.json``.
        """
        from safetensors.torch import load_file

        from unsam.features.base import MissingWeightsError

        path = Path(folder)
        weights = path / WEIGHTS_FILE
        if not (path / CONFIG_FILE).is_file() or not weights.is_file():
            raise MissingWeightsError(
                f"{path} has no {CONFIG_FILE} + {WEIGHTS_FILE}: download an official UnSAM "
                "promptable checkpoint (.pth, linked from github.com/frank-xwang/UnSAM) and "
                "convert it with "
                f"`unsam convert-checkpoint FILE.pth --kind promptable -o {path}`"
            )
        model = cls(PromptableConfig.load(path))
        state = load_file(str(weights))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{weights}: {len(result.missing_keys)} missing keys "
                f"(e.g. {result.missing_keys[:3]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
            )
        return model.to(device).eval()


def build_model(config: PromptableConfig | str = "swin_t") -> PromptableModel:
    """A randomly initialised :class:`PromptableModel` of a config or a named size."""
    if isinstance(config, str):
        config = PromptableConfig.named(config)  # type: ignore[arg-type]
    return PromptableModel(config)
