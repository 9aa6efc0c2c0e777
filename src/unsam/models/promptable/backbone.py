"""The Swin-T backbone of the promptable model: transformers' ``SwinBackbone`` built from a
:class:`~unsam.models.promptable.config.PromptableConfig` (official key mapping in
:mod:`unsam.models.promptable.convert`).
"""

from __future__ import annotations

from torch import nn

from unsam.models.promptable.config import PromptableConfig


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
