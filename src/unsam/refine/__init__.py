"""Mask refinement (spec §4): DenseCRF (optional extra ``unsam[crf]``), CascadePSP, or none.

CRFConfig, crf_refine_mask   CutLER's DenseCRF + hole filling on one mask (spec §2.2 step 9)
RefineConfig, refine_masks   per-mask context crop, CRF, paste back, accept rules (spec §4.2)
CascadePSPRefiner            the original's CascadePSP (official weights file), UnSAM's rules (§4.1)
"""

from __future__ import annotations

from unsam.refine.cascadepsp import CascadePSPRefiner, RefinementModule
from unsam.refine.crf import (
    CRF_INSTALL_HINT,
    CRFConfig,
    RefineConfig,
    context_crop_box,
    crf_available,
    crf_refine_mask,
    refine_masks,
    require_crf,
)

__all__ = [
    "CascadePSPRefiner",
    "RefinementModule",
    "CRFConfig",
    "RefineConfig",
    "crf_refine_mask",
    "refine_masks",
    "context_crop_box",
    "crf_available",
    "require_crf",
    "CRF_INSTALL_HINT",
]
