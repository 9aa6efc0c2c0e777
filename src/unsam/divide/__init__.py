"""Divide stage (spec §2): split an image into object-level masks.

    MaskCutConfig, maskcut        training-free MaskCut on patch features (spec §2.2)
    maskcut_patches               steps 2-7 on a (h, w, C) feature grid
    ncut_second_eigenvector       the Normalized-Cut eigenvector (fast ARPACK path)
"""

from __future__ import annotations

from unsam.divide.maskcut import (
    MaskCutConfig,
    maskcut,
    maskcut_patches,
    ncut_affinity,
    ncut_second_eigenvector,
)

__all__ = ["MaskCutConfig", "maskcut", "maskcut_patches", "ncut_affinity", "ncut_second_eigenvector"]
