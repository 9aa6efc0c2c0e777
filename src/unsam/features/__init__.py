"""Per-patch image features for the divide (MaskCut) and conquer stages.

FeatureExtractor          the interface: (B, S, S', 3) uint8 RGB -> (B, S/p, S'/p, C) float32
DinoFeatureExtractor      last-layer attention keys of a DINO ViT (transformers ViTModel)
ClassicFeatureExtractor   weight-free colour/texture/position features (lower quality)
load_feature_extractor    hub id / local folder / official DINO .pth / "classic"
MissingWeightsError       weights absent offline (one-sentence message with the fix)
"""

from __future__ import annotations

from unsam.features.base import FeatureConfig, FeatureExtractor, MissingWeightsError
from unsam.features.classic import ClassicFeatureExtractor, classic_patch_features
from unsam.features.convert import (
    convert_dino_state_dict,
    dino_config_from_state_dict,
    load_dino_state_dict,
    vit_from_dino_checkpoint,
)
from unsam.features.dino import DINO_HUB_IDS, DinoFeatureExtractor, load_feature_extractor

__all__ = [
    "FeatureConfig",
    "FeatureExtractor",
    "MissingWeightsError",
    "DinoFeatureExtractor",
    "ClassicFeatureExtractor",
    "classic_patch_features",
    "load_feature_extractor",
    "DINO_HUB_IDS",
    "load_dino_state_dict",
    "dino_config_from_state_dict",
    "convert_dino_state_dict",
    "vit_from_dino_checkpoint",
]
