"""PIL's bicubic resize of a uint8 image written out as the formula, in float64 (no PIL, no unsam).

Separable: a horizontal pass, rounded and clipped to 0..255, then a vertical pass, rounded and
clipped. Output pixel i of an n_in -> n_out axis has its centre at c = (i + 0.5) * s in input
coordinates, s = n_in / n_out; input pixel j (only those inside the image, within the support
2f around c) gets the weight k((j + 0.5 - c) / f), f = max(s, 1), normalised to sum 1, with the
Keys cubic kernel (a = -0.5). PIL computes the same in fixed point; the results agree exactly on
the cases the tests use (checked there).
"""

from __future__ import annotations

import numpy as np


def keys_cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return (a + 2.0) * x**3 - (a + 3.0) * x**2 + 1.0
    if x < 2.0:
        return a * x**3 - 5.0 * a * x**2 + 8.0 * a * x - 4.0 * a
    return 0.0


def bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: row i holds the normalised weights of output pixel i."""
    s = n_in / n_out
    f = max(s, 1.0)
    support = 2.0 * f
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        c = (i + 0.5) * s
        lo = max(int(c - support + 0.5), 0)
        hi = min(int(c + support + 0.5), n_in)
        row = [keys_cubic((j + 0.5 - c) / f) for j in range(lo, hi)]
        w[i, lo:hi] = np.array(row) / sum(row)
    return w


def _round_clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255)  # round half up, as PIL's fixed point does


def bicubic_resize_gray(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W) uint8 -> (h, w) uint8."""
    x = np.asarray(image, dtype=np.float64)
    if x.shape[1] != w:
        x = _round_clip(x @ bicubic_weights(x.shape[1], w).T)
    if x.shape[0] != h:
        x = _round_clip(bicubic_weights(x.shape[0], h) @ x)
    return x.astype(np.uint8)


def resize_mask_naive(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """The original's mask resize: 0/255 image, bicubic, keep > half of the maximum (none if 0)."""
    values = bicubic_resize_gray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, h, w)
    top = int(values.max()) if values.size else 0
    return values > top / 2.0 if top else np.zeros((h, w), bool)
