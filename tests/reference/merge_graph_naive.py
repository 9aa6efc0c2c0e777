"""Naive bottom-up merging on an arbitrary adjacency graph: short, obviously correct, slow.

:func:`tests.reference.merge_naive.merge_naive` with the grid replaced by an explicit edge list and
the cluster size by a sum of node weights. Same arithmetic (float64 sums, ``d = s / max(|s|,
1e-12)``, ``sim = (d_a * d_b).sum(-1)``), same tie rule (smallest ``(a, b)`` id pair), so it must
agree exactly with ``unsam.conquer.merge.merge_graph``.
"""

from __future__ import annotations

import numpy as np

from tests.reference.merge_naive import _similarities


def merge_graph_naive(
    feats: np.ndarray,
    edges: np.ndarray,
    thetas: tuple[float, ...],
    min_size: int = 1,
    weights: np.ndarray | None = None,
) -> list[tuple[float, int, np.ndarray, tuple[int, ...]]]:
    """Returns one ``(theta, level, labels (N,) int64, emitted ids)`` per theta."""
    x = np.asarray(feats, dtype=np.float64)
    n = x.shape[0]
    w = np.ones(n, dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    sums = {i: x[i] for i in range(n)}
    members = {i: {i} for i in range(n)}
    nbrs: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in np.asarray(edges).tolist():
        nbrs[a].add(b)
        nbrs[b].add(a)
    next_id = n
    out = []
    for level, theta in enumerate(thetas, start=1):
        while True:
            pairs = sorted((a, b) for a in nbrs for b in nbrs[a] if a < b)
            if not pairs:
                break
            sims = _similarities(sums, pairs)
            best = int(np.flatnonzero(sims == sims.max())[0])
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
        labels = np.empty(n, dtype=np.int64)
        for cid, mem in members.items():
            labels[sorted(mem)] = cid
        emitted = tuple(
            sorted(c for c in members if nbrs[c] and int(w[sorted(members[c])].sum()) >= min_size)
        )
        out.append((float(theta), level, labels, emitted))
    return out
