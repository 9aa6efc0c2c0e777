"""The pixel decoder of the promptable model: MaskDINOEncoder, a deformable-attention transformer
over the backbone's multi-scale features plus the 1/4-resolution mask features (spec
PROMPTABLE.md §1.3, §2.2). Module names are the official ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unsam.models.promptable.config import PromptableConfig
from unsam.models.promptable.layers import (
    Conv2dNorm,
    sine_position_encoding,
)
from unsam.models.promptable.msda import MSDeformAttn

__all__ = [
    "EncoderLayer",
    "PixelDecoder",
]


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
        # reference points stay float32 whatever the dtype: they are sampling locations
        ref = _level_reference_points(shapes, device)[None].expand(b, -1, -1)
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
