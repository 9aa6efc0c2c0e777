"""Whole-image segmentation model (UnSAM stage B1): a class-agnostic Mask2Former.

Public API:
    build_model, model_config, freeze_batchnorm, load_backbone_checkpoint, preprocess, resized_hw,
    IMAGE_MEAN, IMAGE_STD                       (unsam.models.whole_image.config)
    WholeImageSegmenter                          (unsam.models.whole_image.segmenter)
    SegmentConfig                                (unsam.models.whole_image.segment_config)
    SegmenterProducer                            (unsam.models.whole_image.producer)
    HUB_ID, resolve_model_folder                 (unsam.models.whole_image.loading)
    postprocess_masks, postprocess_top_masks, TopMasks, memory_bound_bytes
                                                 (unsam.models.whole_image.postprocessing)
    convert_official_state_dict, convert_checkpoint   (unsam.models.whole_image.convert)

The segmenter and converter are imported lazily so that importing the model builder stays cheap.
"""

from __future__ import annotations

from typing import Any

from unsam.models.whole_image.config import (
    IMAGE_MEAN,
    IMAGE_STD,
    FrozenBatchNorm2d,
    build_model,
    freeze_batchnorm,
    load_backbone_checkpoint,
    model_config,
    preprocess,
    resized_hw,
)

_LAZY = {
    "WholeImageSegmenter": "unsam.models.whole_image.segmenter",
    "SegmentConfig": "unsam.models.whole_image.segment_config",
    "SegmenterProducer": "unsam.models.whole_image.producer",
    "HUB_ID": "unsam.models.whole_image.loading",
    "resolve_model_folder": "unsam.models.whole_image.loading",
    "TopMasks": "unsam.models.whole_image.postprocessing",
    "memory_bound_bytes": "unsam.models.whole_image.postprocessing",
    "postprocess_masks": "unsam.models.whole_image.postprocessing",
    "postprocess_top_masks": "unsam.models.whole_image.postprocessing",
    "convert_official_state_dict": "unsam.models.whole_image.convert",
    "convert_checkpoint": "unsam.models.whole_image.convert",
}

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "FrozenBatchNorm2d",
    "build_model",
    "freeze_batchnorm",
    "load_backbone_checkpoint",
    "model_config",
    "preprocess",
    "resized_hw",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unsam.models.whole_image' has no attribute {name!r}")
