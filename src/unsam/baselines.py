"""Classical, weight-free producers of class-agnostic masks: multi-scale Felzenszwalb and SLIC.

These are the quality reference point on machines where no pretrained weights can be had. Each
scale's segmentation contributes one mask per region; regions that repeat across scales
(IoU > ``dedup_iou_thresh``) are kept once. Scores rank coarser scales first and, within a scale,
larger regions first — objects are more often whole at coarse scales — so AR@k for small k is
meaningful; the score has no other meaning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from unsam.config import config_to_dict, param
from unsam.masks import resize_image
from unsam.records import MaskRecord, encode_masks

__all__ = ["BaselineConfig", "baseline_masks", "BaselineProducer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the classical baselines (defaults tuned on nothing: textbook values)."""

    method: Literal["felzenszwalb", "slic"] = param("felzenszwalb", "segmentation algorithm")
    felzenszwalb_scales: tuple[float, ...] = param(
        (50.0, 150.0, 400.0, 1000.0, 3000.0),
        "Felzenszwalb 'scale' values, one segmentation each (larger = coarser)",
    )
    felzenszwalb_sigma: float = param(0.8, "Felzenszwalb Gaussian pre-smoothing, pixels")
    slic_segments: tuple[int, ...] = param(
        (8, 16, 32, 64, 128, 256, 512), "SLIC 'n_segments' values, one segmentation each"
    )
    slic_compactness: float = param(10.0, "SLIC compactness (colour vs space balance)")
    max_side: int = param(
        640,
        "images are downscaled so the longer side is at most this many pixels, masks scaled back",
    )
    min_area_frac: float = param(0.0002, "drop regions smaller than this fraction of the image")
    max_area_frac: float = param(0.95, "drop regions larger than this fraction of the image")
    dedup_iou_thresh: float = param(
        0.9, "a region whose IoU with a higher-ranked one is above this is dropped"
    )
    max_masks: int = param(1000, "keep at most this many masks per image (highest scores)")

    def __post_init__(self) -> None:
        if self.method not in ("felzenszwalb", "slic"):
            raise ValueError(
                f'BaselineConfig.method must be "felzenszwalb" or "slic", got {self.method!r}'
            )
        if not 0.0 <= self.min_area_frac < self.max_area_frac <= 1.0:
            raise ValueError("BaselineConfig needs 0 <= min_area_frac < max_area_frac <= 1")
        if self.max_masks < 1 or self.max_side < 16:
            raise ValueError("BaselineConfig.max_masks must be >= 1 and max_side >= 16")


def _segmentations(
    image: npt.NDArray[np.uint8], config: BaselineConfig
) -> list[npt.NDArray[np.int64]]:
    from skimage.segmentation import felzenszwalb, slic

    if config.method == "felzenszwalb":
        return [
            felzenszwalb(
                image, scale=s, sigma=config.felzenszwalb_sigma, min_size=int(max(20, s / 4))
            )
            for s in sorted(config.felzenszwalb_scales, reverse=True)
        ]
    return [
        slic(
            image, n_segments=n, compactness=config.slic_compactness, start_label=0, channel_axis=-1
        )
        for n in sorted(config.slic_segments)
    ]


def baseline_masks(
    image: npt.NDArray[np.uint8], config: BaselineConfig = BaselineConfig()
) -> list[MaskRecord]:
    """Multi-scale classical segmentation of one image into ranked, de-duplicated mask records.

    Args:
        image: (H, W, 3) uint8 RGB.
        config: see :class:`BaselineConfig`.

    Returns:
        Records (source = the method, level = 1 + scale index from the coarsest, so level 0 stays
        "object-level" as everywhere else) sorted by score, at most
        ``config.max_masks``.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    h, w = image.shape[:2]
    scale = min(1.0, config.max_side / max(h, w))
    small = (
        resize_image(image, (max(1, round(h * scale)), max(1, round(w * scale))))
        if scale < 1
        else image
    )
    sh, sw = small.shape[:2]
    segmentations = [
        np.unique(lab, return_inverse=True)[1].reshape(sh, sw)
        for lab in _segmentations(small, config)
    ]
    n_levels = len(segmentations)
    areas = [np.bincount(lab.ravel()) for lab in segmentations]
    # candidates: (score, level, region) for regions within the area limits
    candidates: list[tuple[float, int, int]] = []
    for level, area in enumerate(areas):
        frac = area / float(sh * sw)
        for region in np.flatnonzero(
            (frac >= config.min_area_frac) & (frac <= config.max_area_frac)
        ):
            candidates.append(
                (
                    (n_levels - level + float(np.sqrt(frac[region]))) / (n_levels + 1),
                    level,
                    int(region),
                )
            )
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    # exact IoU between regions of two label maps from their contingency table (no mask pairs)
    iou: dict[tuple[int, int], npt.NDArray[np.float64]] = {}
    for a in range(n_levels):
        for b in range(a + 1, n_levels):
            na, nb = len(areas[a]), len(areas[b])
            inter = np.bincount(
                (segmentations[a] * nb + segmentations[b]).ravel(), minlength=na * nb
            )
            inter = inter.reshape(na, nb).astype(np.float64)
            iou[a, b] = inter / (areas[a][:, None] + areas[b][None, :] - inter)
    kept: list[tuple[float, int, int]] = []
    kept_by_level: list[list[int]] = [[] for _ in range(n_levels)]
    for score, level, region in candidates:
        duplicate = False
        for other in range(n_levels):
            if other == level or not kept_by_level[other]:
                continue
            row = (
                iou[level, other][region, kept_by_level[other]]
                if level < other
                else iou[other, level][kept_by_level[other], region]
            )
            if float(row.max()) > config.dedup_iou_thresh:
                duplicate = True
                break
        if duplicate:
            continue
        kept.append((score, level, region))
        kept_by_level[level].append(region)
        if len(kept) >= config.max_masks:
            break
    if not kept:
        return []
    masks = np.stack([segmentations[level] == region for _, level, region in kept])
    if scale < 1:
        from unsam.masks import resize_mask

        masks = np.stack([resize_mask(m, (h, w)) for m in masks])
    rles = encode_masks(masks)
    return [
        MaskRecord(rle=rle, score=score, level=level + 1, source=config.method)
        for rle, (score, level, _) in zip(rles, kept)
    ]


class BaselineProducer:
    """Picklable mask producer for :func:`unsam.runner.run_images`."""

    def __init__(self, config: BaselineConfig) -> None:
        self.config = config

    def settings(self) -> dict[str, Any]:
        return {"producer": "baseline", **config_to_dict(self.config)}

    def setup(self) -> None:
        return None

    def __call__(self, image: npt.NDArray[np.uint8], *, image_id: int) -> list[MaskRecord]:
        return [m.replace(image_id=image_id) for m in baseline_masks(image, self.config)]
