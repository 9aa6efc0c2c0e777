"""Mask refinement settings and the DenseCRF refinement of many masks (spec §4.2).

The CRF on one mask (:func:`unsam.crf.crf_refine_mask`, :class:`unsam.crf.CRFConfig`) lives
below both stages in :mod:`unsam.crf`; it is re-exported here. :func:`refine_masks` applies it to
arbitrary masks the way UnSAM's post-processing applies CascadePSP (§4.1): square context crop of
side ``2·max(w, h)`` around each mask's box, clipped to the image, downscaled so its longer side is
≤ 900 px, refined, pasted back into an empty canvas, then rejected when it covers > 90% of the image
or its IoU with the raw mask is < 0.5.

``pydensecrf`` (PyPI package ``pydensecrf2``) is an optional extra, imported only when CRF is used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from unsam.config import param
from unsam.crf import CRF_INSTALL_HINT, CRFConfig, crf_available, crf_refine_mask, require_crf
from unsam.masks import mask_iou, resize_mask

__all__ = [
    "CRFConfig",
    "RefineConfig",
    "crf_refine_mask",
    "refine_masks",
    "context_crop_box",
    "crf_available",
    "require_crf",
    "CRF_INSTALL_HINT",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineConfig:
    """Mask refinement after divide-and-conquer (spec §4; CRF variant §4.2)."""

    method: Literal["none", "crf", "cascadepsp"] = param(
        "none",
        "refinement method: none (keep raw masks, the CPU default), crf (spec §4.2) or cascadepsp "
        "(the original's CascadePSP, spec §4.1; needs the official weights file, slow on CPU)",
    )
    cascadepsp_weights: str | None = param(
        None,
        "CascadePSP weights file 'model' (github.com/hkchengrex/CascadePSP releases v1.0); "
        "None reads the environment variable UNSAM_CASCADEPSP_WEIGHTS",
    )
    cascadepsp_channel_order: Literal["rgb", "bgr"] = param(
        "rgb",
        "CascadePSP input channel order: rgb (what it was trained on) or bgr (what UnSAM fed it, "
        "for parity with the released pseudo-labels; CASCADEPSP.md §2.2)",
    )
    min_side: int = param(
        100,
        "CascadePSP: crops whose longer side is below this are upsampled to it, pixels (spec §4.1 "
        "step 3)",
    )
    context_ratio: float = param(
        2.0, "side of the square context crop as a multiple of max(box w, box h) (spec §4.1 step 2)"
    )
    max_side: int = param(
        900, "crops whose longer side exceeds this are downscaled to it, pixels (spec §4.1 step 3)"
    )
    max_area_frac: float = param(
        0.9,
        "reject a refined mask covering more than this fraction of the image (spec §4.1 step 6)",
    )
    min_iou: float = param(
        0.5, "reject a refined mask whose IoU with the raw mask is below this (spec §4.1 step 7)"
    )
    crf: CRFConfig = field(
        default_factory=CRFConfig, metadata={"help": "DenseCRF parameters (method crf)"}
    )

    def __post_init__(self) -> None:
        if self.method not in ("none", "crf", "cascadepsp"):
            raise ValueError(
                f"RefineConfig.method={self.method!r}; expected 'none', 'crf' or 'cascadepsp'"
            )
        if self.cascadepsp_channel_order not in ("rgb", "bgr"):
            raise ValueError(
                f"RefineConfig.cascadepsp_channel_order={self.cascadepsp_channel_order!r}; "
                "expected 'rgb' or 'bgr'"
            )
        if self.min_side < 1 or (self.method == "cascadepsp" and self.min_side > self.max_side):
            raise ValueError(
                f"RefineConfig.min_side={self.min_side} must be in [1, max_side={self.max_side}] "
                "(the original uses 100)"
            )
        if not self.context_ratio > 0:
            raise ValueError(
                f"RefineConfig.context_ratio={self.context_ratio} must be > 0 (the original uses "
                "2.0)"
            )
        if self.max_side < 1:
            raise ValueError(
                f"RefineConfig.max_side={self.max_side} must be >= 1 pixel (the original uses 900)"
            )
        if not 0.0 < self.max_area_frac <= 1.0:
            raise ValueError(f"RefineConfig.max_area_frac={self.max_area_frac} must be in (0, 1]")
        if not 0.0 <= self.min_iou <= 1.0:
            raise ValueError(f"RefineConfig.min_iou={self.min_iou} must be in [0, 1]")
        if not isinstance(self.crf, CRFConfig):
            raise ValueError(f"RefineConfig.crf must be a CRFConfig, got {type(self.crf).__name__}")


def context_crop_box(
    mask: npt.NDArray[np.bool_], context_ratio: float = 2.0
) -> tuple[int, int, int, int] | None:
    """Square context crop around a mask's box, clipped to the image (spec §4.1 step 2).

    The box is the COCO bbox (x, y, w, h) of the mask; the crop is centred on (x + w/2, y + h/2)
    with half-side ``context_ratio / 2 · max(w, h)``, clipped and truncated to integers.

    Returns:
        (x0, y0, x1, y1) with exclusive x1/y1, or None for an empty mask.
    """
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    x, y = int(xs[0]), int(ys[0])
    w, h = int(xs[-1]) + 1 - x, int(ys[-1]) + 1 - y
    cx, cy = x + w / 2.0, y + h / 2.0
    half = context_ratio / 2.0 * max(w, h)
    height, width = mask.shape
    x0, y0 = int(max(0.0, cx - half)), int(max(0.0, cy - half))
    x1, y1 = int(min(float(width), cx + half)), int(min(float(height), cy + half))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def refine_masks(
    image: npt.NDArray[np.uint8], masks: Sequence[npt.NDArray[np.bool_]], config: RefineConfig
) -> list[tuple[npt.NDArray[np.bool_] | None, float]]:
    """Refine full-resolution masks of one image (spec §4.2) and apply the accept rules.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (H, W) bool masks of this image.
        config: method and parameters; ``method="none"`` returns the masks unchanged (IoU 1.0)
            without any accept rule.

    Returns:
        One ``(refined (H, W) bool mask or None, IoU(raw, refined))`` per input mask, in order.
        None means rejected: empty input, refined area > ``max_area_frac`` of the image, or IoU
        < ``min_iou``.

    Raises:
        ImportError: ``method="crf"`` without pydensecrf2 (raised before any work).
        ValueError: shape mismatch.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    hw = image.shape[:2]
    for i, m in enumerate(masks):
        if np.shape(m) != hw:
            raise ValueError(f"mask {i} has shape {np.shape(m)}; expected the image's {hw}")
    if config.method == "none":
        return [(np.asarray(m, dtype=bool), 1.0) for m in masks]
    if config.method == "cascadepsp":
        raise ValueError(
            "refine_masks runs DenseCRF; for method='cascadepsp' use "
            "unsam.refine.CascadePSPRefiner.from_config(config).refine_masks(image, masks)"
        )
    require_crf()  # fail before any work when the optional dependency is missing
    crf_config = config.crf
    total = float(hw[0] * hw[1])
    out: list[tuple[npt.NDArray[np.bool_] | None, float]] = []
    for m in masks:
        raw = np.asarray(m, dtype=bool)
        box = context_crop_box(raw, config.context_ratio)
        if box is None:
            out.append((None, 0.0))
            continue
        x0, y0, x1, y1 = box
        crop_img = np.ascontiguousarray(image[y0:y1, x0:x1])
        crop_mask = raw[y0:y1, x0:x1]
        ch, cw = crop_mask.shape
        side = max(ch, cw)
        if side > config.max_side:
            scale = config.max_side / side
            sh, sw = max(1, round(ch * scale)), max(1, round(cw * scale))
            small_img = cv2.resize(crop_img, (sw, sh), interpolation=cv2.INTER_AREA)
            small = crf_refine_mask(small_img, resize_mask(crop_mask, (sh, sw)), crf_config)
            refined_crop = resize_mask(small, (ch, cw))
        else:
            refined_crop = crf_refine_mask(crop_img, crop_mask, crf_config)
        refined = np.zeros(hw, dtype=bool)
        refined[y0:y1, x0:x1] = refined_crop
        iou = mask_iou(raw, refined)
        if np.count_nonzero(refined) / total > config.max_area_frac or iou < config.min_iou:
            out.append((None, iou))
        else:
            out.append((refined, iou))
    kept = sum(r is not None for r, _ in out)
    logger.debug("CRF refinement: %d of %d masks kept", kept, len(out))
    return out
