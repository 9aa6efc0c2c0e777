"""CutLER's class-agnostic Cascade Mask R-CNN in pure PyTorch: UnSAM's released *divide* stage.

CutlerConfig, CutlerDetector   test-time settings; the loaded detector (image → scored masks)
divide_cutler                  UnSAM's divide rule: score > 0.1, at most 100 masks
resolve_cutler_weights         "cutler:PATH" / "cutler" (env UNSAM_CUTLER_WEIGHTS) → path
CascadeMaskRCNN                the modules (ResNet-50, FPN, RPN, 3 box stages, mask head)
load_cutler_state_dict, read_checkpoint, KEY_RULES   strict official-checkpoint loading
ops                            roi_align, nms, batched_nms, box coder, paste_masks_in_image
"""

from __future__ import annotations

from unsam.divide.cutler import ops
from unsam.divide.cutler.checkpoint import KEY_RULES, load_cutler_state_dict, read_checkpoint
from unsam.divide.cutler.detector import (
    CUTLER_WEIGHTS_ENV,
    CutlerConfig,
    CutlerDetections,
    CutlerDetector,
    divide_cutler,
    divide_cutler_rles,
    preprocess_image,
    resize_shape,
    resolve_cutler_weights,
)
from unsam.divide.cutler.model import CascadeMaskRCNN

__all__ = [
    "CUTLER_WEIGHTS_ENV",
    "KEY_RULES",
    "CascadeMaskRCNN",
    "CutlerConfig",
    "CutlerDetections",
    "CutlerDetector",
    "divide_cutler",
    "divide_cutler_rles",
    "load_cutler_state_dict",
    "ops",
    "preprocess_image",
    "read_checkpoint",
    "resize_shape",
    "resolve_cutler_weights",
]
