"""Divide stage (spec §2): split an image into object-level masks.

MaskCutConfig, maskcut        training-free MaskCut on patch features (spec §2.2)
maskcut_patches               steps 2-7 on a (h, w, C) feature grid
ncut_second_eigenvector       the Normalized-Cut eigenvector (fast ARPACK path)
CutlerConfig, CutlerDetector, divide_cutler   CutLER Cascade Mask R-CNN divide (spec §2.1)
"""

from __future__ import annotations

from unsam.divide.cutler import CutlerConfig, CutlerDetector, divide_cutler
from unsam.divide.maskcut import (
    MaskCutConfig,
    maskcut,
    maskcut_patches,
    ncut_affinity,
    ncut_second_eigenvector,
)

__all__ = [
    "CutlerConfig",
    "CutlerDetector",
    "MaskCutConfig",
    "divide_cutler",
    "maskcut",
    "maskcut_patches",
    "ncut_affinity",
    "ncut_second_eigenvector",
]
