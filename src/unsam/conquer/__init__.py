"""Conquer stage (spec §3): split each divide mask into multi-granular parts.

:func:`merge_regions` merges patch features bottom-up into one partition per threshold;
:mod:`unsam.conquer.filter` holds the coverage filter, the per-region NMS and mask pasting;
:func:`conquer` runs the whole stage on one image's divide masks.
"""

from __future__ import annotations

from unsam.conquer.filter import coverage, paste_mask, windowed_nms
from unsam.conquer.merge import DEFAULT_THETAS, MergeLevel, merge_regions
from unsam.conquer.region import ConquerConfig, ConquerMask, conquer, region_box

__all__ = [
    "DEFAULT_THETAS",
    "ConquerConfig",
    "ConquerMask",
    "MergeLevel",
    "conquer",
    "coverage",
    "merge_regions",
    "paste_mask",
    "region_box",
    "windowed_nms",
]
