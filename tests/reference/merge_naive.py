"""Naive bottom-up merging (spec §3.2): short, obviously correct, slow.

Keeps a dict of clusters (feature sum, member patches, neighbour ids). Every step recomputes the
similarity of ALL adjacent pairs from the current sums, takes the maximum (ties: the smallest
``(a, b)`` id pair) and merges it into a fresh id, until the maximum is below theta.

The arithmetic is written exactly like ``unsam.conquer.merge`` (float64,
``d = s / max(sqrt((s*s).sum(-1)), 1e-12)``, ``sim = (d_a * d_b).sum(-1)``), so both see
bit-identical similarities and must produce identical partitions.

Also provides :func:`planted_features`, the synthetic "realistic" feature generator shared by the
tests and ``benchmarks/conquer_speed.py``.
"""

from __future__ import annotations

import numpy as np


def _similarities(sums: dict[int, np.ndarray], pairs: list[tuple[int, int]]) -> np.ndarray:
    sa = np.stack([sums[a] for a, _ in pairs])
    sb = np.stack([sums[b] for _, b in pairs])
    da = sa / np.maximum(np.sqrt((sa * sa).sum(-1, keepdims=True)), 1e-12)
    db = sb / np.maximum(np.sqrt((sb * sb).sum(-1, keepdims=True)), 1e-12)
    return (da * db).sum(-1)


def merge_naive(
    feats: np.ndarray, thetas: tuple[float, ...] = (0.6, 0.5, 0.4, 0.3, 0.2, 0.1), min_size: int = 4
) -> list[tuple[float, int, np.ndarray, tuple[int, ...]]]:
    """Returns one ``(theta, level, labels (h, w) int64, emitted ids)`` per theta."""
    x = np.asarray(feats, dtype=np.float64)
    h, w, _ = x.shape
    sums = {r * w + q: x[r, q] for r in range(h) for q in range(w)}
    members = {i: {i} for i in sums}
    nbrs: dict[int, set[int]] = {i: set() for i in sums}
    for r in range(h):
        for q in range(w):
            i = r * w + q
            if q + 1 < w:
                nbrs[i].add(i + 1)
                nbrs[i + 1].add(i)
            if r + 1 < h:
                nbrs[i].add(i + w)
                nbrs[i + w].add(i)
    next_id = h * w
    out = []
    for level, theta in enumerate(thetas, start=1):
        while True:
            pairs = sorted((a, b) for a in nbrs for b in nbrs[a] if a < b)
            if not pairs:
                break
            sims = _similarities(sums, pairs)
            best = int(np.flatnonzero(sims == sims.max())[0])  # pairs are sorted: smallest (a, b)
            if sims[best] < theta:
                break
            a, b = pairs[best]
            k = next_id
            next_id += 1
            sums[k] = sums.pop(a) + sums.pop(b)
            members[k] = members.pop(a) | members.pop(b)
            nbrs[k] = (nbrs.pop(a) | nbrs.pop(b)) - {a, b}
            for q in nbrs[k]:
                nbrs[q] -= {a, b}
                nbrs[q].add(k)
        labels = np.empty(h * w, dtype=np.int64)
        for cid, mem in members.items():
            labels[sorted(mem)] = cid
        emitted = tuple(sorted(c for c in members if nbrs[c] and len(members[c]) >= min_size))
        out.append((float(theta), level, labels.reshape(h, w), emitted))
    return out


def planted_features(
    h: int, w: int, c: int, *, objects: int = 6, parts: int = 4, seed: int = 0
) -> np.ndarray:
    """(h, w, c) float32 features with a planted object/part hierarchy, roughly like DINO keys.

    Patches belong to the nearest of ``objects * parts`` random seed points (Voronoi cells, so
    parts are 4-connected). Part vector = shared component + its object's vector (object weight
    varies per object) + a part offset; every patch = its part vector + noise whose strength
    varies per part (smooth vs textured). Parts merge internally at the first thresholds, parts of
    one object around 0.3-0.2, objects around 0.2-0.1, so every level 0.6 ... 0.1 does work.
    """
    rng = np.random.default_rng(seed)
    n = objects * parts
    seeds = rng.uniform(0, 1, size=(n, 2)) * (h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    part_of = ((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    shared = rng.standard_normal(c) * np.sqrt(0.06)
    obj = rng.standard_normal((objects, c)) * np.sqrt(rng.uniform(0.1, 0.5, size=(objects, 1)))
    part = shared + obj[np.arange(n) // parts] + np.sqrt(0.6) * rng.standard_normal((n, c))
    noise_sd = rng.uniform(0.5, 1.6, size=n)
    feats = part[part_of] + noise_sd[part_of][..., None] * rng.standard_normal((h, w, c))
    return feats.astype(np.float32)
