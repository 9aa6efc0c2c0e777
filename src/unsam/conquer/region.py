"""Per-image conquer driver: divide masks → multi-granular sub-masks (spec §3.1, §3.3).

For every divide mask: crop the image to the mask's tight bounding box (last row and column
included, fixing spec §10 bug 13), resize the crop to ``crop_size``² with PIL bicubic, extract
patch features (all crops of the image batched through the extractor), merge patches bottom-up
(:func:`unsam.conquer.merge.merge_regions`), upsample every emitted cluster to the crop size with
the original's bicubic 0/255 rule, keep those lying > ``coverage_thresh`` inside the divide mask,
and run NMS among the survivors of that region. Everything stays in crop coordinates; no
full-image mask is built for a candidate (spec §10 bug 16).

Memory does not grow with the number of candidates: a :class:`ConquerMask` holds a compact source
(the patch-grid cluster, or the superpixel cluster of a shared cell map at the working resolution)
and builds its crop-grid mask only when ``.mask`` is read. Per region, at most ``nms_window + 1``
crop masks exist at once during NMS (``full_nms`` with patches: one mask per pair compared, built
again as needed). So conquer's peak is about ``R x S x 8 x w_work^2`` bytes for the superpixel
cell maps (R regions, S scales, w_work <= superpixel_max_side) plus ``(nms_window + 2) x h x w``
bytes for crop masks of the largest (h, w) crop, on top of the features.

``units="superpixels"`` (not in the original) merges Felzenszwalb superpixels of the crop at its
native resolution instead of the patches (:mod:`unsam.conquer.superpixels`); the patch features
are still extracted from the ``crop_size``² crop and pooled per superpixel, and the coverage
filter and NMS rules are the same.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import torch

from unsam.config import param
from unsam.conquer.filter import coverage, windowed_nms
from unsam.conquer.merge import DEFAULT_THETAS, merge_regions
from unsam.conquer.superpixels import SuperpixelClusters, cluster_nms, superpixel_clusters
from unsam.masks import boxes_xyxy_from_masks, resize_image, resize_mask

if TYPE_CHECKING:
    from unsam.features import FeatureExtractor

__all__ = ["ConquerConfig", "ConquerMask", "conquer", "region_box"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConquerConfig:
    """Conquer stage (spec §3); defaults are the original's."""

    crop_size: int = param(
        256,
        "side of the square each divide-mask crop is resized to for feature extraction, pixels "
        "(spec §3.1)",
    )
    thetas: tuple[float, ...] = param(
        DEFAULT_THETAS, "cosine merge thresholds, one mask level each, finest first (spec §3.2)"
    )
    min_size: int = param(4, "smallest emitted cluster, in patches (spec §3.2)")
    coverage_thresh: float = param(
        0.9,
        "keep a conquer mask only if more than this fraction of it lies inside its divide mask "
        "(spec §3.3)",
    )
    nms_iou_thresh: float = param(
        0.9,
        "per-region NMS: a mask whose IoU with a larger one is above this is removed (spec §3.3)",
    )
    nms_window: int = param(
        5,
        "per-region NMS compares each kept mask with the next nms_window - 1 masks by area (spec "
        "§3.3)",
    )
    full_nms: bool = param(
        False, "per-region NMS over all pairs instead of the original's window rule"
    )
    mask_resize: Literal["half_max", "unsam"] = param(
        "half_max",
        "binarisation of a patch-grid cluster resized (PIL bicubic, 0/255) to its crop: half_max "
        "keeps the pixels above half the resized maximum; unsam (the released code) keeps nothing "
        "when that maximum is below 128, which drops small clusters of crops narrower than the "
        "patch grid (unsam.masks.resize_mask)",
    )
    merge_workers: int | None = param(
        None,
        "processes merging regions in parallel (0: in this process); none: 0 when the features "
        "are computed on the CPU (the network already uses every core), up to 16 (the CPU count) "
        "when they come from a GPU, where the merge would otherwise dominate",
    )
    batch_size: int | None = param(
        None,
        "divide-mask crops resized and sent to the feature extractor at once; none: one "
        "extractor forward pass of crops (FeatureExtractor.batch_for: its batch size, or as many "
        "crops as fit in its memory budget)",
    )
    # --- superpixel units: not in the original; defaults measured with the classic features ---
    units: Literal["patches", "superpixels"] = param(
        "patches",
        "what conquer merges: 'patches' of the crop_size² crop (the original, spec §3.2) or "
        "'superpixels': Felzenszwalb superpixels of the crop at native resolution (pixel-accurate "
        "boundaries; see unsam.conquer.superpixels)",
    )
    superpixel_scales: tuple[float, ...] = param(
        (50.0, 100.0, 200.0, 400.0),
        "with units=superpixels: Felzenszwalb scales, one merge hierarchy each (larger = coarser)",
    )
    superpixel_sigma: float = param(
        0.8, "with units=superpixels: Felzenszwalb Gaussian pre-smoothing, pixels"
    )
    superpixel_min_size: int = param(
        20, "with units=superpixels: smallest superpixel, pixels of the working crop"
    )
    superpixel_min_area: int = param(
        64, "with units=superpixels: smallest emitted cluster, pixels of the crop"
    )
    superpixel_max_side: int = param(
        640,
        "with units=superpixels: crops are downscaled so the longer side is at most this many "
        "pixels",
    )
    superpixel_colour_weight: float = param(
        0.7,
        "with units=superpixels: append each superpixel's whitened mean Lab colour to its pooled "
        "feature, scaled to this fraction of the features' RMS norm (0: features only)",
    )

    def __post_init__(self) -> None:
        if self.crop_size < 1:
            raise ValueError(
                f"ConquerConfig.crop_size must be >= 1 pixel, got {self.crop_size}; the original "
                "uses 256"
            )
        if not self.thetas or not all(math.isfinite(t) and -1.0 <= t <= 1.0 for t in self.thetas):
            raise ValueError(
                f"ConquerConfig.thetas must be non-empty, with values in [-1, 1]; got {self.thetas}"
            )
        if self.min_size < 1:
            raise ValueError(f"ConquerConfig.min_size must be >= 1 patch, got {self.min_size}")
        if not 0.0 <= self.coverage_thresh < 1.0:
            raise ValueError(
                f"ConquerConfig.coverage_thresh must be in [0, 1), got {self.coverage_thresh}"
            )
        if not 0.0 <= self.nms_iou_thresh <= 1.0:
            raise ValueError(
                f"ConquerConfig.nms_iou_thresh must be in [0, 1], got {self.nms_iou_thresh}"
            )
        if self.nms_window < 2:
            raise ValueError(
                f"ConquerConfig.nms_window must be >= 2, got {self.nms_window}; the original uses 5"
            )
        if self.merge_workers is not None and self.merge_workers < 0:
            raise ValueError(
                f"ConquerConfig.merge_workers must be >= 0 or None, got {self.merge_workers}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(
                f"ConquerConfig.batch_size must be >= 1 or None, got {self.batch_size}"
            )
        if self.mask_resize not in ("half_max", "unsam"):
            raise ValueError(
                f"ConquerConfig.mask_resize must be 'half_max' or 'unsam', got {self.mask_resize!r}"
            )
        if self.units not in ("patches", "superpixels"):
            raise ValueError(
                f"ConquerConfig.units must be 'patches' or 'superpixels', got {self.units!r}"
            )
        scales = self.superpixel_scales
        if not scales or not all(math.isfinite(v) and v > 0 for v in scales):
            raise ValueError(
                f"ConquerConfig.superpixel_scales must be positive numbers, got {scales}"
            )
        if (
            not self.superpixel_sigma >= 0
            or self.superpixel_min_size < 1
            or self.superpixel_min_area < 1
        ):
            raise ValueError(
                "ConquerConfig needs superpixel_sigma >= 0, superpixel_min_size >= 1 and "
                f"superpixel_min_area >= 1; got {self.superpixel_sigma}, "
                f"{self.superpixel_min_size}, "
                f"{self.superpixel_min_area}"
            )
        weight = self.superpixel_colour_weight
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"ConquerConfig.superpixel_colour_weight must be >= 0, got {weight}")
        if self.superpixel_max_side < 16:
            raise ValueError(
                "ConquerConfig.superpixel_max_side must be >= 16 pixels, got "
                f"{self.superpixel_max_side}"
            )


@dataclass(frozen=True, eq=False)
class ConquerMask:
    """One conquer mask, in the crop of its divide mask.

    Attributes:
        parent: index of the divide mask (in the ``divide_masks`` passed to :func:`conquer`).
        level: 1-based merge level (index of ``theta`` in ``ConquerConfig.thetas``).
        theta: merge threshold of that level.
        box_xyxy: the crop box (x0, y0, x1, y1) in image pixels, x1/y1 exclusive: the tight
            bounding box of the divide mask.
        source: the (y1 - y0, x1 - x0) bool crop mask, or a function building it (compact:
            memory does not grow with the number of masks); read it through :attr:`mask`.
        scale: with ``units="superpixels"``, the rank of the mask's Felzenszwalb scale among
            ``superpixel_scales`` sorted ascending (0 = finest superpixels); 0 for patches.
    """

    parent: int
    level: int
    theta: float
    box_xyxy: tuple[int, int, int, int]
    source: npt.NDArray[np.bool_] | Callable[[], npt.NDArray[np.bool_]]
    scale: int = 0

    @property
    def mask(self) -> npt.NDArray[np.bool_]:
        """(y1 - y0, x1 - x0) bool mask on the crop grid (built on each access when lazy)."""
        return self.source() if callable(self.source) else self.source


def region_box(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1) of a mask, x1/y1 exclusive; None if it is empty or < 2 px
    wide/high.

    The original took inclusive maxima and sliced with them, dropping the last row and column
    (spec §10 bug 13); here x1 = last column + 1. A box of one row or column is degenerate and
    skipped, as the original did.
    """
    x0, y0, x1, y1 = (int(v) for v in boxes_xyxy_from_masks(np.asarray(mask, dtype=bool)[None])[0])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


@dataclass(frozen=True)
class _Region:
    parent: int
    box: tuple[int, int, int, int]


def _extract(extractor: FeatureExtractor, crops: list[npt.NDArray[np.uint8]]) -> torch.Tensor:
    batch = np.stack(crops)
    with torch.inference_mode():
        feats = extractor(batch)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4 or feats.shape[0] != len(crops):
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(
            f"the feature extractor returned {shape} for {len(crops)} crops; "
            f"expected a (B, h, w, C) tensor with B = {len(crops)}"
        )
    return feats.detach().cpu()


def _region_masks(
    feats: torch.Tensor | None,
    divide_crop: npt.NDArray[np.bool_],
    region: _Region,
    config: ConquerConfig,
    levels: list | None = None,
) -> list[ConquerMask]:
    """Merge one region's features (unless its ``levels`` are given) and filter its masks
    (coverage, then NMS), level by level."""
    x0, y0, x1, y1 = region.box
    crop_hw = (y1 - y0, x1 - x0)
    if levels is None:
        levels = merge_regions(feats, thetas=config.thetas, min_size=config.min_size)
    candidates: list[ConquerMask] = []
    areas: list[int] = []
    # cluster id -> (lazy crop mask, area), None when it failed coverage
    passed: dict[int, tuple[Callable[[], npt.NDArray[np.bool_]], int] | None] = {}
    for lvl in levels:
        for cid in lvl.emitted:
            if cid not in passed:  # an unchanged cluster keeps its id across levels: do it once
                make = (
                    functools.partial(  # the patch-grid mask is tiny; the crop mask is built on use
                        resize_mask, lvl.labels == cid, crop_hw, rule=config.mask_resize
                    )
                )
                mask = make()
                inside = coverage(mask[None], divide_crop)[0] > config.coverage_thresh
                passed[cid] = (make, int(np.count_nonzero(mask))) if inside else None
                del mask
            if passed[cid] is not None:
                make, area = passed[cid]  # type: ignore[misc]
                candidates.append(
                    ConquerMask(region.parent, lvl.level, lvl.theta, region.box, make)
                )
                areas.append(area)
    kept = windowed_nms(
        [c.source for c in candidates],  # built lazily, a few at a time
        areas,
        iou_thresh=config.nms_iou_thresh,
        window=config.nms_window,
        full_nms=config.full_nms,
        areas=areas,
    )
    logger.debug(
        "region %d box %s: %d emitted-cluster masks pass coverage, %d after NMS",
        region.parent,
        region.box,
        len(candidates),
        len(kept),
    )
    return [candidates[i] for i in sorted(kept)]  # back to level-by-level order


def _region_masks_superpixels(
    feats: torch.Tensor,
    crop: npt.NDArray[np.uint8],
    divide_crop: npt.NDArray[np.bool_],
    region: _Region,
    config: ConquerConfig,
) -> list[ConquerMask]:
    """``units="superpixels"``: merge superpixels of the crop, then the same coverage filter and
    NMS."""
    crop_hw = crop.shape[:2]
    factor = min(1.0, config.superpixel_max_side / max(crop_hw))
    work_hw = (max(1, round(crop_hw[0] * factor)), max(1, round(crop_hw[1] * factor)))
    scaled = work_hw != crop_hw
    work = resize_image(crop, work_hw) if scaled else crop
    work_divide = resize_mask(divide_crop, work_hw) if scaled else divide_crop
    scales = sorted(config.superpixel_scales)  # scale index = coarseness rank
    clusters = superpixel_clusters(
        work,
        feats.numpy(),
        scales=scales,
        thetas=config.thetas,
        sigma=config.superpixel_sigma,
        superpixel_min_size=config.superpixel_min_size,
        min_area=max(1, round(config.superpixel_min_area * factor * factor)),
        colour_weight=config.superpixel_colour_weight,
    )
    if not len(clusters):
        return []
    areas = clusters.areas
    inside = clusters.overlap(work_divide) / np.maximum(areas, 1)
    passed = np.flatnonzero((inside > config.coverage_thresh) & (areas > 0))
    iou = clusters.iou()[passed][:, passed].tocsr()
    window = None if config.full_nms else config.nms_window
    kept = passed[cluster_nms(iou, areas[passed], config.nms_iou_thresh, window)]
    kept = sorted(kept.tolist(), key=lambda i: (clusters.level[i], i))  # level by level
    logger.debug(
        "region %d box %s: %d superpixel clusters, %d pass coverage, %d after NMS",
        region.parent,
        region.box,
        len(clusters),
        len(passed),
        len(kept),
    )
    out = []
    for i in kept:
        # never empty: clusters have area > 0 and resize_mask keeps the pixels above half its
        # maximum, so an upsampled non-empty mask stays non-empty
        make = functools.partial(_cluster_mask, clusters, int(i), crop_hw if scaled else None)
        level, theta, scale = (
            int(clusters.level[i]),
            float(clusters.theta[i]),
            int(clusters.scale[i]),
        )
        out.append(ConquerMask(region.parent, level, theta, region.box, make, scale=scale))
    return out


def _cluster_mask(
    clusters: SuperpixelClusters, index: int, crop_hw: tuple[int, int] | None
) -> npt.NDArray[np.bool_]:
    """Crop-grid mask of one superpixel cluster (resized from the working grid when it differs)."""
    mask = clusters.mask(index)
    return resize_mask(mask, crop_hw) if crop_hw is not None else mask


_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _merge_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A persistent pool of ``workers`` spawned processes (no CUDA or thread state inherited from
    the parent), shut down at exit."""
    pool = _POOLS.get(workers)
    if pool is None:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")
        )
        _POOLS[workers] = pool
        if len(_POOLS) == 1:
            atexit.register(_shutdown_pools)
    return pool


def _shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def _merge_job(feats: npt.NDArray[np.float32], thetas: tuple[float, ...], min_size: int) -> list:
    return merge_regions(feats, thetas=thetas, min_size=min_size)


def _gather(future: concurrent.futures.Future) -> list:
    """The merge levels of one region from the pool (a separate function, so that benchmarks can
    time the wait)."""
    return future.result()


def merge_workers_for(config: ConquerConfig, extractor: object) -> int:
    """Processes for the merge: ``config.merge_workers``, or (None) 0 when the extractor runs on
    the CPU and ``min(16, cpu_count)`` when it runs on a GPU."""
    if config.merge_workers is not None:
        return int(config.merge_workers)
    device = getattr(extractor, "device", None)
    if getattr(device, "type", str(device)) != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(16, int(cpus or 1)))


def conquer(
    image: npt.NDArray[np.uint8],
    divide_masks: Sequence[npt.NDArray[np.bool_]],
    extractor: FeatureExtractor,
    config: ConquerConfig = ConquerConfig(),
) -> list[ConquerMask]:
    """Split every divide mask of one image into multi-granular conquer masks (spec §3).

    Args:
        image: (H, W, 3) uint8 RGB image.
        divide_masks: K (H, W) bool masks (or a (K, H, W) array, or a sequence building each mask
            on access), the divide stage's output; each is read twice (box, then crop).
        extractor: called on (B, crop_size, crop_size, 3) uint8 RGB crops, returns
            (B, h, w, C) float patch features (DINO keys; h = crop_size / patch size).
        config: conquer settings.

    Returns:
        The surviving conquer masks, region by region (in ``divide_masks`` order), within a region
        level by level and, within a level, by cluster id (older clusters first). Empty and
        degenerate (< 2 px wide or high) divide masks yield nothing.

    Raises:
        ValueError: on a malformed image or mask, or a feature extractor whose output does not fit.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}"
        )
    patch = getattr(extractor, "patch_size", None)
    if isinstance(patch, int) and patch > 0 and config.crop_size % patch:
        raise ValueError(
            f"ConquerConfig.crop_size={config.crop_size} is not a multiple of the extractor's "
            f"patch size {patch}"
        )
    hw = image.shape[:2]
    # indexed, never copied: a lazy sequence (the pipeline's RLE-backed masks) decodes one mask at
    # a time, so K divide masks never sit in memory at full resolution together
    divide_list = divide_masks if isinstance(divide_masks, Sequence) else list(divide_masks)
    regions: list[_Region] = []
    for k, divide_mask in enumerate(divide_list):
        divide_mask = np.asarray(divide_mask, dtype=bool)
        if divide_mask.shape != hw:
            raise ValueError(
                f"divide mask {k} has shape {divide_mask.shape}, but the image is {hw}"
            )
        box = region_box(divide_mask)
        if box is None:
            logger.debug("divide mask %d is empty or thinner than 2 px: skipped", k)
            continue
        regions.append(_Region(k, box))

    size = (config.crop_size, config.crop_size)
    batch = config.batch_size
    if batch is None:  # one forward pass of crops at a time (the extractor's memory budget)
        batch_for = getattr(extractor, "batch_for", None)
        batch = int(batch_for(size)) if callable(batch_for) else 8
    workers = merge_workers_for(config, extractor) if len(regions) > 1 else 0
    out: list[ConquerMask] = []
    for start in range(0, len(regions), batch):
        chunk = regions[start : start + batch]
        crops = [resize_image(image[r.box[1] : r.box[3], r.box[0] : r.box[2]], size) for r in chunk]
        feats = _extract(extractor, crops)
        pending: list[concurrent.futures.Future | None] = [None] * len(chunk)
        if workers and config.units != "superpixels":  # every merge of the chunk at once
            pool = _merge_pool(workers)
            pending = [
                pool.submit(_merge_job, f.numpy(), tuple(config.thetas), config.min_size)
                for f in feats
            ]
        for region, region_feats, job in zip(chunk, feats, pending):
            x0, y0, x1, y1 = region.box
            divide_crop = np.asarray(divide_list[region.parent], dtype=bool)[y0:y1, x0:x1]
            if config.units == "superpixels":
                crop = image[y0:y1, x0:x1]
                out.extend(
                    _region_masks_superpixels(region_feats, crop, divide_crop, region, config)
                )
            else:
                levels = _gather(job) if job is not None else None
                out.extend(_region_masks(region_feats, divide_crop, region, config, levels))
    logger.debug(
        "conquer: %d divide masks, %d regions, %d conquer masks",
        len(divide_list),
        len(regions),
        len(out),
    )
    return out
