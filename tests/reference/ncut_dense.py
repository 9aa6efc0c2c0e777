"""Plain, slow MaskCut references: the original's dense generalised eigh and its loop (spec §2.2).

Written straight from CutLER ``maskcut/maskcut.py`` (``get_affinity_matrix``,
``second_smallest_eigenvector``, ``get_salient_areas``, ``check_num_fg_corners``,
``maskcut_forward``) and TokenCut ``detect_box``, in numpy, with no speed tricks.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy import ndimage


def affinity_dense(feats: np.ndarray, tau: float, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """A = [cos > tau] with zeros replaced by eps, D = diag(row sums). feats: (N, C)."""
    f = np.asarray(feats, dtype=np.float32)
    norms = np.maximum(np.sqrt((f.astype(np.float64) ** 2).sum(axis=1, keepdims=True)), 1e-12)
    f = (f / norms).astype(np.float32)
    sim = f @ f.T
    a = (sim > tau).astype(np.float64)
    a = np.where(a == 0, eps, a)
    return a, np.diag(a.sum(axis=1))


def ncut_dense(feats: np.ndarray, tau: float, eps: float) -> np.ndarray:
    """Second-smallest eigenvector of (D - A) v = λ D v, full dense scipy eigh. Returns (N,)."""
    a, d = affinity_dense(feats, tau, eps)
    _, vecs = scipy.linalg.eigh(d - a, d)
    return vecs[:, 1]


def first_argmax(x: np.ndarray, rtol: float = 1e-6) -> int:
    top = float(np.max(x))
    return int(np.flatnonzero(x >= top - rtol * abs(top))[0])


def maskcut_patches_dense(
    feats: np.ndarray,
    tau: float = 0.15,
    eps: float = 1e-5,
    num_masks: int = 3,
    reject_iou: float = 0.5,
    min_area: float = 0.01,
) -> list[np.ndarray]:
    """The original maskcut_forward loop on an (h, w, C) grid; returns the non-empty patch masks.

    Two changes to the original, both in unsam.divide.maskcut too: the eigenvector sign is fixed
    so that its entry of largest magnitude is positive (the original inherits LAPACK's arbitrary
    sign), and argmax takes the first index among near-ties (relative 1e-6; zeroed patches tie).
    """
    h, w, c = feats.shape
    flat = np.asarray(feats, dtype=np.float32).reshape(h * w, c).copy()
    painting = np.zeros((h, w))
    current = None
    out = []
    for i in range(num_masks):
        if i > 0:
            painting = painting + current
            painting[painting > 0] = 1
            painting[painting <= 0] = 0
            flat = (
                (flat.reshape(h, w, c) * (1 - painting)[..., None])
                .reshape(h * w, c)
                .astype(np.float32)
            )
        v = ncut_dense(flat, tau, eps)
        if v[first_argmax(np.abs(v))] < 0:
            v = -v
        bip = v > np.sum(v) / len(v)
        seed = first_argmax(np.abs(v))
        b2 = bip.reshape(h, w)
        nc = int(b2[0][0]) + int(b2[0][-1]) + int(b2[-1][0]) + int(b2[-1][-1])
        reverse = True if nc >= 3 else bip[seed] != 1
        if reverse:
            v = v * -1
            bip = np.logical_not(bip)
        seed = first_argmax(v)
        objects, _ = ndimage.label(bip.reshape(h, w).astype(float))
        cc = objects[np.unravel_index(seed, (h, w))]
        mask = np.zeros((h, w))
        mask[np.where(objects == cc)] = 1
        if i >= 1:
            ratio = mask.sum() / h / w
            m1, m2 = current > 0.5, mask > 0.5
            union = (m1 | m2).sum()
            iou = (m1 & m2).sum() / union if union else float("nan")
            if iou > reject_iou or ratio <= min_area:
                mask = np.zeros((h, w))
        current = mask
        if mask.any():
            out.append(mask.astype(bool))
    return out
