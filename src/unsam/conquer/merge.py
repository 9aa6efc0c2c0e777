"""Bottom-up merging of adjacent patches into a hierarchy of regions (spec §3.2, §11.2).

Every patch of a feature grid starts as its own cluster. For each threshold theta, in list order,
the globally most similar pair of 4-adjacent clusters is merged while its similarity is
``>= theta``; the cluster state carries over from one theta to the next. The similarity of two
clusters is the cosine of the sums of their raw (un-normalised) member features, i.e. centroid
linkage on the size-weighted mean. After each theta, every live cluster that still has a neighbour
and at least ``min_size`` patches is emitted.

The original recomputes ``max`` over a dict of all pair similarities for every merge and stores a
dense mask per cluster (spec §10 bug 15). Here a merge creates a fresh cluster id, a lazy-deletion
max-heap holds one entry per adjacent pair (an entry is stale once one of its clusters has been
merged, because ids are never reused), and a union-find parent array yields one label map per
level: O(E log E) for E adjacent pairs.

Exact ties are broken deterministically: the pair with the smaller first id, then the smaller
second id (new clusters get ids ``h*w, h*w+1, ...`` in merge order). The original took the first
maximal key in dict order; spec §3.2 accepts any deterministic rule.

:func:`merge_graph` runs the same merge on any region-adjacency graph (superpixels, see
:mod:`unsam.conquer.superpixels`); :func:`merge_regions` is it on the 4-connected patch grid.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "DEFAULT_THETAS",
    "GraphMergeLevel",
    "MergeLevel",
    "grid_edges",
    "merge_graph",
    "merge_regions",
    "row_similarities",
    "unit_rows",
]

#: Merge thresholds of the original, finest level first (spec §3.2, ``--thetas``).
DEFAULT_THETAS: tuple[float, ...] = (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)

#: Floor on a feature-sum norm, so an all-zero cluster has similarity 0 instead of NaN.
_NORM_EPS = 1e-12


def unit_rows(sums: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """L2-normalise the last axis: ``sums / max(||sums||, 1e-12)``, float64.

    This exact expression (and :func:`row_similarities`) is shared with the naive reference in
    ``tests/reference/merge_naive.py``: numpy reduces each contiguous row the same way whatever
    the number of rows, so both implementations see bit-identical similarities and hence the same
    merge order.
    """
    norms = np.sqrt((sums * sums).sum(-1, keepdims=True))
    return sums / np.maximum(norms, _NORM_EPS)


def row_similarities(
    dirs_a: npt.NDArray[np.float64], dirs_b: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Row-wise dot products ``(dirs_a * dirs_b).sum(-1)`` of unit vectors (cosine similarity)."""
    return (dirs_a * dirs_b).sum(-1)


@dataclass(frozen=True, eq=False)
class MergeLevel:
    """The clusters after one merge threshold.

    Attributes:
        theta: the similarity threshold of this level.
        level: 1-based index of ``theta`` in the threshold list (1 ↔ 0.6 ... 6 ↔ 0.1 by default).
        labels: (h, w) int64 cluster id of every patch at the end of this level. Ids below
            ``h*w`` are untouched single patches; merged clusters have ids ``>= h*w``.
        emitted: ascending ids (values of ``labels``) of the clusters emitted at this level: live
            clusters that still have at least one adjacent cluster and ``>= min_size`` patches.
            Empty when nothing qualifies (the level is still returned, so indices stay aligned).
    """

    theta: float
    level: int
    labels: npt.NDArray[np.int64]
    emitted: tuple[int, ...]

    def patch_masks(self) -> npt.NDArray[np.bool_]:
        """(K, h, w) bool patch-grid masks of the emitted clusters, in ``emitted`` order."""
        ids = np.asarray(self.emitted, dtype=np.int64)
        return self.labels[None, :, :] == ids[:, None, None]


def _as_float64(feats: torch.Tensor | npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    if isinstance(feats, torch.Tensor):
        tensor = feats.detach().cpu()
        if tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.float()  # float16 / bfloat16 have no (exact) numpy view
        return np.asarray(tensor.numpy(), dtype=np.float64)  # much faster than torch's .double()
    return np.asarray(feats, dtype=np.float64)


def _check_finite(array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if not np.isfinite(array).all():
        raise ValueError(
            "feats contains NaN or infinite values; check the feature extractor's output"
        )
    return np.ascontiguousarray(array)


def _features_float64(feats: torch.Tensor | npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    array = _as_float64(feats)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(
            f"feats must be an (h, w, C) patch-feature grid, got shape {tuple(array.shape)}"
        )
    return _check_finite(array)


def _check_thetas(thetas: Sequence[float], min_size: int) -> tuple[float, ...]:
    values = tuple(float(t) for t in thetas)
    if not values:
        raise ValueError(
            "thetas is empty; pass at least one merge threshold, e.g. (0.6, 0.5, 0.4, 0.3, 0.2, "
            "0.1)"
        )
    for t in values:
        if not (math.isfinite(t) and -1.0 <= t <= 1.0):
            raise ValueError(
                f"merge threshold {t} is outside [-1, 1] (thresholds are cosine similarities)"
            )
    if int(min_size) != min_size or min_size < 1:
        raise ValueError(f"min_size must be a positive number of patches, got {min_size}")
    return values


def _roots(parent: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Root of every node of a forest given as a parent array (roots point to themselves)."""
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def merge_regions(
    feats: torch.Tensor | npt.NDArray[np.floating],
    thetas: Sequence[float] = DEFAULT_THETAS,
    min_size: int = 4,
) -> list[MergeLevel]:
    """Merge adjacent patches bottom-up into one partition per threshold (spec §3.2).

    Args:
        feats: (h, w, C) float patch features on the patch grid (raw DINO keys, not normalised);
            converted to float64 on the CPU.
        thetas: cosine-similarity thresholds in [-1, 1], applied in order (usually decreasing).
        min_size: smallest emitted cluster, in patches.

    Returns:
        One :class:`MergeLevel` per threshold, in ``thetas`` order. Clusters are 4-connected and
        nested across levels (a later level's cluster is a union of an earlier level's clusters).

    Raises:
        ValueError: on a malformed grid, non-finite features or invalid thresholds.

    Example:
        >>> f = torch.tensor([[[1.0, 0.0], [1.0, 0.1]], [[1.0, 0.0], [0.9, 0.1]]])
        >>> merge_regions(f, thetas=(0.5,))[0].emitted  # all merged: no neighbour left
        ()
    """
    theta_values = _check_thetas(thetas, min_size)
    grid = _features_float64(feats)
    h, w, c = grid.shape
    dirs = unit_rows(grid)
    sims = np.concatenate(  # horizontal then vertical pairs, the order of grid_edges
        [
            row_similarities(dirs[:, :-1], dirs[:, 1:]).ravel(),
            row_similarities(dirs[:-1], dirs[1:]).ravel(),
        ]
    )
    levels = _merge(grid.reshape(h * w, c), grid_edges(h, w), theta_values, min_size, None, sims)
    return [
        MergeLevel(theta=theta, level=level, labels=labels.reshape(h, w), emitted=emitted)
        for theta, level, labels, emitted in levels
    ]


def grid_edges(h: int, w: int) -> npt.NDArray[np.int64]:
    """(E, 2) 4-adjacent patch pairs ``(a, b)``, ``a < b``, of an (h, w) grid in row-major ids:
    all horizontal pairs (row by row), then all vertical pairs."""
    ids = np.arange(h * w, dtype=np.int64).reshape(h, w)
    first = np.concatenate([ids[:, :-1].ravel(), ids[:-1, :].ravel()])
    second = np.concatenate([ids[:, 1:].ravel(), ids[1:, :].ravel()])
    return np.stack([first, second], axis=1)


@dataclass(frozen=True, eq=False)
class GraphMergeLevel:
    """The clusters of a region graph after one merge threshold (see :func:`merge_graph`).

    Attributes:
        theta: the similarity threshold of this level.
        level: 1-based index of ``theta`` in the threshold list.
        labels: (N,) int64 cluster id of every node. Ids below N are untouched single nodes;
            merged clusters have ids ``>= N``.
        emitted: ascending ids of the live clusters that still have an adjacent cluster and a
            total node weight ``>= min_size``.
    """

    theta: float
    level: int
    labels: npt.NDArray[np.int64]
    emitted: tuple[int, ...]


def merge_graph(
    feats: torch.Tensor | npt.NDArray[np.floating],
    edges: npt.NDArray[np.integer],
    thetas: Sequence[float] = DEFAULT_THETAS,
    min_size: int = 1,
    weights: npt.NDArray[np.integer] | None = None,
) -> list[GraphMergeLevel]:
    """:func:`merge_regions` on an arbitrary region-adjacency graph (e.g. superpixels).

    Same rule as on the patch grid: the globally most similar pair of adjacent clusters (cosine of
    their feature sums: centroid linkage, every node counting once) is merged while its similarity
    is ``>= theta``, state carried over between thresholds, ties to the smaller id pair. On a grid
    graph (:func:`grid_edges`) with unit weights it returns exactly what :func:`merge_regions` does.

    Args:
        feats: (N, C) float node features (e.g. the mean patch feature of each superpixel).
        edges: (E, 2) int node pairs; each adjacent pair once, in any order (a pair is stored
            with the smaller id first).
        thetas: cosine-similarity thresholds in [-1, 1], applied in order.
        min_size: smallest emitted cluster, as a total node weight.
        weights: (N,) positive int node weights counted by ``min_size`` (e.g. superpixel areas in
            pixels); default 1 per node. They do not enter the similarity.

    Returns:
        One :class:`GraphMergeLevel` per threshold, in ``thetas`` order.

    Raises:
        ValueError: on malformed features, edges or weights, or invalid thresholds.
    """
    theta_values = _check_thetas(thetas, min_size)
    nodes = _as_float64(feats)
    if nodes.ndim != 2 or min(nodes.shape) < 1:
        raise ValueError(
            f"feats must be an (N, C) node-feature matrix, got shape {tuple(nodes.shape)}"
        )
    nodes = _check_finite(nodes)
    n = nodes.shape[0]
    e = np.asarray(edges)
    if e.size == 0:
        e = np.zeros((0, 2), dtype=np.int64)
    if e.ndim != 2 or e.shape[1] != 2 or not np.issubdtype(e.dtype, np.integer):
        raise ValueError(
            f"edges must be an (E, 2) integer array of node pairs, got {e.shape} {e.dtype}"
        )
    if e.size and (e.min() < 0 or e.max() >= n or (e[:, 0] == e[:, 1]).any()):
        raise ValueError(
            f"edges must join two different nodes with ids in [0, {n}); "
            "found ids out of range or a self-loop"
        )
    lo = np.minimum(e[:, 0], e[:, 1]).astype(np.int64)
    hi = np.maximum(e[:, 0], e[:, 1]).astype(np.int64)
    if len(np.unique(lo * n + hi)) != len(lo):
        raise ValueError("edges lists a node pair twice; pass each adjacent pair once")
    w = None
    if weights is not None:
        w = np.asarray(weights)
        if w.shape != (n,) or not np.issubdtype(w.dtype, np.integer) or (w < 1).any():
            raise ValueError(
                f"weights must be ({n},) positive integers, got shape {w.shape} {w.dtype}"
            )
    levels = _merge(nodes, np.stack([lo, hi], axis=1), theta_values, min_size, w, None)
    return [GraphMergeLevel(theta=t, level=lv, labels=lab, emitted=em) for t, lv, lab, em in levels]


def _merge(
    nodes: npt.NDArray[np.float64],
    edges: npt.NDArray[np.int64],
    theta_values: tuple[float, ...],
    min_size: int,
    weights: npt.NDArray[np.integer] | None,
    sims: npt.NDArray[np.float64] | None,
) -> list[tuple[float, int, npt.NDArray[np.int64], tuple[int, ...]]]:
    """The heap/union-find merge shared by :func:`merge_regions` and :func:`merge_graph`.

    ``nodes`` (N, C) float64 C-contiguous, ``edges`` (E, 2) int64 with ``a < b``, ``sims`` the
    (E,) initial edge similarities when already known (else computed here). Returns
    ``(theta, level, labels (N,), emitted)`` per threshold.
    """
    num_nodes, c = nodes.shape
    capacity = max(1, 2 * num_nodes - 1)  # every merge creates one cluster

    sums = np.empty((capacity, c), dtype=np.float64)
    sums[:num_nodes] = nodes
    dirs = np.empty((capacity, c), dtype=np.float64)
    dirs[:num_nodes] = unit_rows(sums[:num_nodes])
    sizes = [1] * num_nodes if weights is None else [int(v) for v in weights]
    alive = [True] * num_nodes
    parent = np.arange(capacity, dtype=np.int64)
    neighbours: list[set[int] | None] = [set() for _ in range(num_nodes)]

    first, second = edges[:, 0], edges[:, 1]
    if sims is None:
        sims = row_similarities(dirs[first], dirs[second])
    heap: list[tuple[float, int, int]] = []
    for a, b, s in zip(first.tolist(), second.tolist(), sims.tolist()):
        neighbours[a].add(b)  # type: ignore[union-attr]
        neighbours[b].add(a)  # type: ignore[union-attr]
        heap.append((-s, a, b))  # a < b
    heapq.heapify(heap)
    live = set(range(num_nodes))
    next_id = num_nodes

    levels: list[tuple[float, int, npt.NDArray[np.int64], tuple[int, ...]]] = []
    for level, theta in enumerate(theta_values, start=1):
        while heap:
            neg_sim, i, j = heap[0]
            if not (alive[i] and alive[j]):
                heapq.heappop(heap)  # stale: one side was merged away
                continue
            if -neg_sim < theta:
                break
            heapq.heappop(heap)
            k = next_id
            next_id += 1
            sums[k] = sums[i] + sums[j]
            dirs[k] = unit_rows(sums[k])
            sizes.append(sizes[i] + sizes[j])
            alive[i] = alive[j] = False
            alive.append(True)
            live.discard(i)
            live.discard(j)
            live.add(k)
            parent[i] = parent[j] = k
            merged = neighbours[i] | neighbours[j]  # type: ignore[operator]
            merged.discard(i)
            merged.discard(j)
            neighbours[i] = neighbours[j] = None
            neighbours.append(merged)
            if merged:
                others = np.fromiter(merged, dtype=np.int64, count=len(merged))
                new_sims = row_similarities(dirs[others], dirs[k])
                for q, s in zip(others.tolist(), new_sims.tolist()):
                    nq = neighbours[q]
                    nq.discard(i)  # type: ignore[union-attr]
                    nq.discard(j)  # type: ignore[union-attr]
                    nq.add(k)  # type: ignore[union-attr]
                    heapq.heappush(heap, (-s, q, k))  # q < k: k is the newest id
        labels = _roots(parent[:next_id])[:num_nodes]
        emitted = tuple(sorted(k for k in live if neighbours[k] and sizes[k] >= min_size))
        levels.append((theta, level, labels, emitted))
    return levels
