"""Superpixel units for conquer: merge Felzenszwalb superpixels instead of grid patches.

An option of the conquer stage (``ConquerConfig.units = "superpixels"``), not part of the original
method (spec §3.2 merges the 8×8-pixel patches of a 256² crop). Patch masks can only follow object
boundaries to within a patch (about 10 image pixels for a 640-pixel image on a 64-patch grid);
superpixels follow the image's own edges to the pixel. The hierarchy is built exactly as on the
patch grid (:func:`unsam.conquer.merge.merge_graph`: centroid linkage of the units' features,
thresholds ``thetas`` in order), only the units and their adjacency differ:

1. the crop (at native resolution, downscaled so its longer side is at most ``max_side``) is
   over-segmented by Felzenszwalb-Huttenlocher at each ``scale`` (one hierarchy per scale, as in
   selective search's diversification);
2. each superpixel's feature is the mean of the patch features under its pixels (the extractor's
   grid for the crop, mapped to the pixels by nearest patch), optionally followed by the
   superpixel's own mean colour (``colour_weight``, see :func:`colour_features`): patch features
   blur the colour of thin or small superpixels with their neighbours';
3. superpixels touching by a pixel edge (4-neighbourhood) are adjacent; the merge emits, per
   level, every cluster that still has a neighbour and covers at least ``min_area`` pixels;
4. all clusters of all scales are expressed on the common refinement of the scales' superpixel
   maps (cells), so their areas, overlaps with the divide mask and pairwise IoUs are exact sums
   over cells, computed with sparse products instead of full-size masks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import scipy.sparse

from unsam.conquer.merge import merge_graph
from unsam.masks import greedy_nms

__all__ = [
    "SuperpixelClusters",
    "felzenszwalb_superpixels",
    "region_adjacency",
    "pool_patch_features",
    "colour_features",
    "superpixel_clusters",
    "cluster_nms",
]

logger = logging.getLogger(__name__)


def felzenszwalb_superpixels(
    image: npt.NDArray[np.uint8], scale: float, sigma: float = 0.8, min_size: int = 20
) -> npt.NDArray[np.int64]:
    """Felzenszwalb-Huttenlocher over-segmentation (scikit-image), labels renumbered 0..N-1.

    Args:
        image: (h, w, 3) uint8 RGB.
        scale: larger gives larger superpixels (scikit-image's ``scale``).
        sigma: Gaussian pre-smoothing, pixels.
        min_size: smallest superpixel, pixels (smaller components are merged into a neighbour).

    Returns:
        (h, w) int64 labels in [0, N), every label used.
    """
    from skimage.segmentation import felzenszwalb

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (h, w, 3) uint8 RGB, got {image.shape} {image.dtype}")
    labels = felzenszwalb(image, scale=float(scale), sigma=float(sigma), min_size=int(min_size))
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def region_adjacency(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """(E, 2) int64 pairs ``(a, b)``, ``a < b``, of labels that touch along a pixel edge
    (4-neighbourhood), each pair once, sorted."""
    lab = np.asarray(labels, dtype=np.int64)
    if lab.ndim != 2:
        raise ValueError(f"labels must be an (h, w) label map, got shape {lab.shape}")
    a = np.concatenate([lab[:, :-1].ravel(), lab[:-1, :].ravel()])
    b = np.concatenate([lab[:, 1:].ravel(), lab[1:, :].ravel()])
    differ = a != b
    lo = np.minimum(a[differ], b[differ])
    hi = np.maximum(a[differ], b[differ])
    n = int(lab.max()) + 1 if lab.size else 0
    keys = np.unique(lo * n + hi)
    return np.stack([keys // max(n, 1), keys % max(n, 1)], axis=1).astype(np.int64)


def _patch_index(hw: tuple[int, int], grid_hw: tuple[int, int]) -> npt.NDArray[np.int64]:
    """(h, w) row-major index of the patch each pixel falls in, the grid stretched over the
    image."""
    h, w = hw
    gh, gw = grid_hw
    rows = (np.arange(h, dtype=np.int64) * gh) // h
    cols = (np.arange(w, dtype=np.int64) * gw) // w
    return rows[:, None] * gw + cols[None, :]


def pool_patch_features(
    feats: npt.NDArray[np.floating], labels: npt.NDArray[np.integer], num_labels: int | None = None
) -> npt.NDArray[np.float64]:
    """Mean patch feature under each superpixel's pixels.

    Args:
        feats: (gh, gw, C) patch features of the image the labels live on (the grid is stretched
            over the image: pixel (y, x) reads patch (y·gh // h, x·gw // w)).
        labels: (h, w) int superpixel labels in [0, N).
        num_labels: N (default: ``labels.max() + 1``).

    Returns:
        (N, C) float64; a label with no pixel gets zeros.
    """
    f = np.asarray(feats, dtype=np.float64)
    lab = np.asarray(labels, dtype=np.int64)
    if f.ndim != 3 or lab.ndim != 2:
        raise ValueError(
            f"feats must be (gh, gw, C) and labels (h, w); got {f.shape} and {lab.shape}"
        )
    n = int(lab.max()) + 1 if num_labels is None else int(num_labels)
    gh, gw, c = f.shape
    patch = _patch_index(lab.shape, (gh, gw)).ravel()
    counts = scipy.sparse.coo_matrix(
        (np.ones(lab.size), (lab.ravel(), patch)), shape=(n, gh * gw)
    ).tocsr()  # duplicates are summed: pixels of label i in patch j
    sums = counts @ f.reshape(gh * gw, c)
    area = np.asarray(counts.sum(axis=1)).ravel()
    return sums / np.maximum(area, 1.0)[:, None]


#: Floor of the per-channel colour spread (CIE Lab units) in :func:`colour_features`, so a nearly
#: flat crop is not amplified into noise (the classic extractor's floor for its colour group).
_LAB_FLOOR = 4.0


def colour_features(
    image: npt.NDArray[np.uint8], labels: npt.NDArray[np.integer], num_labels: int, scale: float
) -> npt.NDArray[np.float64]:
    """Whitened mean CIE Lab colour of each superpixel, scaled to ``scale`` (RMS norm over labels
    of a unit-spread colour).

    Each Lab channel is centred on the crop's mean and divided by its spread over the crop's
    pixels (at least 4 Lab units), then the 3 channels by sqrt(3), so a superpixel one spread away
    from the mean colour on every channel has norm 1 before ``scale``.

    Args:
        image: (h, w, 3) uint8 RGB.
        labels: (h, w) int superpixel labels in [0, num_labels).
        num_labels: N.
        scale: multiplier (e.g. ``weight × RMS norm`` of the other node features).

    Returns:
        (N, 3) float64.
    """
    lab = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    pixels = lab.reshape(-1, 3).astype(np.float64)
    flat = np.asarray(labels, dtype=np.int64).ravel()
    count = np.maximum(np.bincount(flat, minlength=num_labels), 1)
    means = np.stack(
        [np.bincount(flat, weights=pixels[:, c], minlength=num_labels) for c in range(3)], axis=1
    )
    means /= count[:, None]
    spread = np.maximum(pixels.std(axis=0), _LAB_FLOOR)
    return (means - pixels.mean(axis=0)) / spread / np.sqrt(3.0) * float(scale)


@dataclass(frozen=True, eq=False)
class SuperpixelClusters:
    """Candidate masks of one region, as unions of cells (the common refinement of all scales).

    Attributes:
        cells: (h, w) int64 cell id of every pixel of the working image, in [0, K).
        cell_area: (K,) int64 pixels per cell.
        membership: (M, K) sparse CSR bool, row m = the cells of candidate m.
        level: (M,) int64 1-based merge level (index in ``thetas``) first emitting the candidate.
        theta: (M,) float64 its threshold.
        persistence: (M,) int64 number of consecutive levels the cluster stayed unchanged.
        scale: (M,) int64 index of the superpixel scale it came from.
        units: (M,) int64 number of superpixels in the cluster.
    """

    cells: npt.NDArray[np.int64]
    cell_area: npt.NDArray[np.int64]
    membership: scipy.sparse.csr_matrix
    level: npt.NDArray[np.int64]
    theta: npt.NDArray[np.float64]
    persistence: npt.NDArray[np.int64]
    scale: npt.NDArray[np.int64]
    units: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.membership.shape[0])

    @property
    def areas(self) -> npt.NDArray[np.int64]:
        """(M,) pixel areas."""
        return np.asarray(self.membership @ self.cell_area).ravel().astype(np.int64)

    def mask(self, index: int) -> npt.NDArray[np.bool_]:
        """(h, w) bool mask of candidate ``index`` on the working image."""
        row = self.membership.getrow(index)
        inside = np.zeros(self.cell_area.shape[0], dtype=bool)
        inside[row.indices] = True
        return inside[self.cells]

    def overlap(self, region: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
        """(M,) pixels of each candidate inside ``region`` ((h, w) bool)."""
        cells_inside = self.cells[np.asarray(region, dtype=bool)]
        inside = np.bincount(cells_inside, minlength=self.cell_area.shape[0])
        return np.asarray(self.membership @ inside).ravel().astype(np.int64)

    def iou(self) -> scipy.sparse.csr_matrix:
        """(M, M) sparse IoU of every overlapping candidate pair (zero entries: disjoint)."""
        m = self.membership.astype(np.float64)
        inter = (m.multiply(self.cell_area[None, :].astype(np.float64)) @ m.T).tocoo()
        areas = self.areas.astype(np.float64)
        union = areas[inter.row] + areas[inter.col] - inter.data
        iou = np.where(union > 0, inter.data / np.maximum(union, 1.0), 0.0)
        return scipy.sparse.csr_matrix((iou, (inter.row, inter.col)), shape=inter.shape)


def superpixel_clusters(
    image: npt.NDArray[np.uint8],
    feats: npt.NDArray[np.floating],
    *,
    scales: Sequence[float],
    thetas: Sequence[float],
    sigma: float = 0.8,
    superpixel_min_size: int = 20,
    min_area: int = 1,
    colour_weight: float = 0.0,
) -> SuperpixelClusters:
    """Multi-scale superpixel hierarchies of one image crop, as candidate masks.

    Args:
        image: (h, w, 3) uint8 RGB working image (the crop).
        feats: (gh, gw, C) patch features of that crop (any grid; stretched over the crop).
        scales: Felzenszwalb scales, one hierarchy each.
        thetas: merge thresholds, one level each (see :func:`unsam.conquer.merge.merge_graph`).
        sigma: Felzenszwalb pre-smoothing, pixels.
        superpixel_min_size: smallest superpixel, pixels.
        min_area: smallest emitted cluster, pixels.
        colour_weight: when > 0, each superpixel's feature is followed by its whitened mean colour
            (:func:`colour_features`) scaled to ``colour_weight`` × the RMS norm of the pooled
            patch features, so the weight means the same for any extractor.

    Returns:
        Every distinct emitted cluster of every scale (a cluster unchanged over several levels
        appears once, at its first level, with its ``persistence``), scale by scale, level by level.
    """
    if not scales:
        raise ValueError("scales is empty; give at least one Felzenszwalb scale, e.g. (100, 300)")
    maps = [felzenszwalb_superpixels(image, s, sigma, superpixel_min_size) for s in scales]
    h, w = image.shape[:2]
    # common refinement of all scales' superpixels
    cells = np.zeros(h * w, dtype=np.int64)
    for lab in maps:  # renumbered after each scale, so the pair code cannot overflow
        pair = cells * (int(lab.max()) + 1) + lab.ravel()
        cells = np.unique(pair, return_inverse=True)[1].reshape(-1).astype(np.int64)
    cells = cells.reshape(h, w)
    num_cells = int(cells.max()) + 1
    cell_area = np.bincount(cells.ravel(), minlength=num_cells).astype(np.int64)
    first_pixel = np.zeros(num_cells, dtype=np.int64)
    first_pixel[cells.ravel()[::-1]] = np.arange(h * w - 1, -1, -1)  # any pixel of each cell

    rows: list[npt.NDArray[np.int64]] = []  # per candidate: the cells it covers
    level_l: list[int] = []
    theta_l: list[float] = []
    persist_l: list[int] = []
    scale_l: list[int] = []
    units_l: list[int] = []
    for s_idx, lab in enumerate(maps):
        n = int(lab.max()) + 1
        node_feats = pool_patch_features(feats, lab, n)
        if colour_weight > 0:
            rms = float(np.sqrt((node_feats * node_feats).sum(1).mean()))
            colour = colour_features(image, lab, n, colour_weight * rms)
            node_feats = np.concatenate([node_feats, colour], axis=1)
        area = np.bincount(lab.ravel(), minlength=n).astype(np.int64)
        levels = merge_graph(
            node_feats, region_adjacency(lab), thetas, min_size=max(1, int(min_area)), weights=area
        )
        cell_sp = lab.ravel()[first_pixel]  # superpixel of every cell
        index: dict[int, int] = {}  # cluster id -> candidate position
        for lvl in levels:
            for cid in lvl.emitted:
                if cid in index:
                    persist_l[index[cid]] += 1
                    continue
                index[cid] = len(rows)
                rows.append(np.flatnonzero(lvl.labels[cell_sp] == cid))
                level_l.append(lvl.level)
                theta_l.append(lvl.theta)
                persist_l.append(1)
                scale_l.append(s_idx)
                units_l.append(int(np.count_nonzero(lvl.labels == cid)))
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    membership = scipy.sparse.csr_matrix(
        (np.ones(len(indices), dtype=bool), indices, indptr), shape=(len(rows), num_cells)
    )
    sizes = [int(m.max()) + 1 for m in maps]
    logger.debug("superpixels %s: %d cells, %d candidate clusters", sizes, num_cells, len(rows))
    return SuperpixelClusters(
        cells=cells,
        cell_area=cell_area,
        membership=membership,
        level=np.asarray(level_l, dtype=np.int64),
        theta=np.asarray(theta_l, dtype=np.float64),
        persistence=np.asarray(persist_l, dtype=np.int64),
        scale=np.asarray(scale_l, dtype=np.int64),
        units=np.asarray(units_l, dtype=np.int64),
    )


def cluster_nms(
    iou: scipy.sparse.csr_matrix,
    scores: npt.NDArray[np.floating],
    iou_thresh: float,
    window: int | None = None,
) -> list[int]:
    """Greedy NMS from a precomputed sparse IoU matrix: :func:`unsam.masks.greedy_nms` (the rule
    of :func:`unsam.conquer.filter.windowed_nms`, with ``window`` as there).

    Returns:
        Kept indices in ranking order.
    """
    return greedy_nms(scores, iou.tocsr(), iou_thresh, window=window)
