"""Conquer stage (spec §3): split each divide mask into multi-granular parts.

:func:`merge_regions` merges patch features bottom-up into one partition per threshold
(:func:`merge_graph` does the same on any region graph, e.g. the superpixels of
:mod:`unsam.conquer.superpixels`, ``ConquerConfig.units="superpixels"``);
:mod:`unsam.conquer.filter` holds the coverage filter, the per-region NMS and mask pasting;
:func:`conquer` runs the whole stage on one image's divide masks.
"""

from __future__ import annotations

from unsam.conquer.filter import coverage, paste_mask, windowed_nms
from unsam.conquer.merge import (
    DEFAULT_THETAS,
    GraphMergeLevel,
    MergeLevel,
    merge_graph,
    merge_regions,
)
from unsam.conquer.region import ConquerConfig, ConquerMask, conquer, region_box
from unsam.conquer.superpixels import SuperpixelClusters, superpixel_clusters

__all__ = [
    "DEFAULT_THETAS",
    "ConquerConfig",
    "ConquerMask",
    "GraphMergeLevel",
    "MergeLevel",
    "SuperpixelClusters",
    "conquer",
    "coverage",
    "merge_graph",
    "merge_regions",
    "paste_mask",
    "region_box",
    "superpixel_clusters",
    "windowed_nms",
]
