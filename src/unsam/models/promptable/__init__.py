"""Promptable model (UnSAM's Semantic-SAM interactive model): one click -> 6 granularity masks.

Public API:
    PromptableConfig                      model sizes ``swin_t`` / ``tiny`` (config.py)
    PromptableModel, build_model          modules, ``encode_image`` / ``decode_clicks``
                                          (modeling.py)
    ImageState, ClickDecoderOutput        per-image cache, decoder outputs (modeling.py)
    PromptablePredictor                   set_image / predict -> MaskRecords (predictor.py)
    PromptableMaskGenerator, AMGConfig    point-grid automatic masks (amg.py)
    convert_checkpoint, model_from_official   official .pth -> our model (convert.py)

The predictor, the generator and the converter are imported lazily.
"""

from __future__ import annotations

from typing import Any

from unsam.models.promptable.config import PromptableConfig
from unsam.models.promptable.modeling import (
    ClickDecoderOutput,
    ImageState,
    PromptableModel,
    build_model,
)

_LAZY = {
    "PromptablePredictor": "unsam.models.promptable.predictor",
    "load_promptable_model": "unsam.models.promptable.predictor",
    "PromptableMaskGenerator": "unsam.models.promptable.amg",
    "AMGConfig": "unsam.models.promptable.amg",
    "convert_checkpoint": "unsam.models.promptable.convert",
    "model_from_official": "unsam.models.promptable.convert",
}

__all__ = [
    "AMGConfig",
    "ClickDecoderOutput",
    "ImageState",
    "PromptableConfig",
    "PromptableMaskGenerator",
    "PromptableModel",
    "PromptablePredictor",
    "build_model",
    "convert_checkpoint",
    "load_promptable_model",
    "model_from_official",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unsam.models.promptable' has no attribute {name!r}")
