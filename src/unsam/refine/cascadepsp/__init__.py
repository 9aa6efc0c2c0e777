"""CascadePSP mask refinement as UnSAM's post-processing uses it (spec §4.1, spec/CASCADEPSP.md).

Pure PyTorch (no torchvision, no ``segmentation-refinement`` package), one module per job:
``modeling`` (the network), ``checkpoint`` (the official weights file), ``processing`` (the
original's ``refine(fast=True)``) and ``refiner`` (UnSAM's rules):

- :class:`RefinementModule`: the network (6-channel dilated ResNet-50 ``feats``, PSP module
  ``psp``, upsampling blocks ``up_1..3``, heads ``final_28/56/11/21``), module names equal to the
  official state-dict names (CASCADEPSP.md §3). Its ``forward`` is the three-pass cascade of
  ``fast=True`` and returns only ``pred_224`` (the other heads do not affect it, §3.6).
- :func:`safe_forward`: pad to multiples of 8 (image with 0, mask with −1), run, crop (§2.4).
- :func:`refine_crop_global`: ``Refiner.refine(fast=True, L)``: resize so the long side is L,
  ``safe_forward``, resize back (§2.3), with the exact ``F.interpolate`` arguments of the original.
- :func:`unsam_crop_box`, :func:`clamp_side`: UnSAM's context crop and L rule (§1.3-1.4).
- :class:`CascadePSPRefiner`: loads the official weights file ``model`` through
  :func:`official_key_table` (strict, ``weights_only=True``) and refines full-image masks with
  UnSAM's threshold, paste-back and accept rules (§1.5-1.6).

Channel order: CascadePSP was trained on RGB, but UnSAM feeds ``cv2.imread`` BGR arrays (§2.2).
``channel_order="rgb"`` (default, UNSAM_SPEC §4.1) feeds the RGB image; ``"bgr"`` reproduces the
original pseudo-labels' input.

Cost (§5): about 4.3 MMAC per padded input pixel, i.e. ≈ 3.5 TMAC for a 904×904 crop, ≈ 3 min on
2 CPU cores. Every mask of at least 900 px context runs at 900². Use a GPU (``device="cuda"``).
"""

from __future__ import annotations

from unsam.refine.cascadepsp.checkpoint import (
    CASCADEPSP_WEIGHTS_ENV,
    CASCADEPSP_WEIGHTS_HINT,
    load_official_weights,
    official_key_table,
)
from unsam.refine.cascadepsp.modeling import RefinementModule
from unsam.refine.cascadepsp.processing import (
    image_to_tensor,
    mask_to_tensor,
    padded_hw,
    probabilities_to_mask,
    refine_crop_global,
    safe_forward,
)
from unsam.refine.cascadepsp.refiner import (
    CPU_SECONDS_PER_PIXEL,
    MAC_PER_PIXEL,
    CascadePSPRefiner,
    RefinedCrop,
    clamp_side,
    estimate_cpu_seconds,
    unsam_crop_box,
)

__all__ = [
    "CASCADEPSP_WEIGHTS_ENV",
    "CASCADEPSP_WEIGHTS_HINT",
    "CPU_SECONDS_PER_PIXEL",
    "MAC_PER_PIXEL",
    "CascadePSPRefiner",
    "RefinedCrop",
    "RefinementModule",
    "clamp_side",
    "estimate_cpu_seconds",
    "image_to_tensor",
    "load_official_weights",
    "mask_to_tensor",
    "official_key_table",
    "padded_hw",
    "probabilities_to_mask",
    "refine_crop_global",
    "safe_forward",
    "unsam_crop_box",
]
