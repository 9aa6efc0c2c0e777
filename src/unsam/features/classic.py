"""Weight-free patch features from colour, texture and position ("classic").

**Lower quality than DINO.** This extractor needs no weights and no network; it exists so the
whole pipeline runs (and can be tested end to end) where DINO weights are unavailable. Expect
masks that follow colour/texture boundaries rather than objects.

Per ``patch_size``×``patch_size`` patch it measures
    - CIE Lab mean and standard deviation (colour),
    - a magnitude-weighted histogram of unsigned gradient orientation (8 bins, soft binning),
      normalised by the patch's gradient energy, plus log mean gradient magnitude (texture),
    - the colour mean and orientation histogram averaged over the 3×3 neighbouring patches
      (context, which steadies single-patch noise),
    - the patch centre (y, x) in [-1, 1] (position).
Each dimension is centred and scaled per image (divided by its spread over the image's patches,
with a floor so flat images are not amplified into noise), then each group is weighted. After this
per-image whitening, patches of one surface are strongly positive under cosine similarity and
unrelated patches near 0 or negative, so MaskCut's ``tau`` keeps its meaning. Conquer's thresholds
do not: adjacent patches are far more alike than with DINO keys (median cosine about 0.9), so the
spec's thetas 0.6 … 0.1 merge everything at once. That is why ``classic`` features select the
classic preset (:data:`unsam.pipeline.CLASSIC_PRESET`: 16 thresholds from 0.97 down to -0.1, over
superpixels).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import numpy.typing as npt
import torch

from unsam.features.base import FeatureExtractor

__all__ = ["ClassicFeatureExtractor", "classic_patch_features"]

logger = logging.getLogger(__name__)

_BINS = 8
# (group, weight, floor of the per-dimension spread in the group's raw units)
_GROUPS = (
    ("lab_mean", 1.0, 4.0),
    ("lab_mean_ctx", 0.7, 4.0),
    ("lab_std", 0.4, 2.0),
    ("hist", 0.5, 0.05),
    ("hist_ctx", 0.5, 0.05),
    ("grad", 0.3, 0.25),
    ("position", 0.3, 0.1),
)
#: Gradient energy (Sobel on L in [0, 100], per pixel) below which a patch counts as flat.
_FLAT_GRAD = 4.0


def _patch_mean(x: npt.NDArray[np.float32], p: int) -> npt.NDArray[np.float32]:
    """(H, W, C) → (H/p, W/p, C) mean over each p×p patch."""
    h, w, c = x.shape
    return x.reshape(h // p, p, w // p, p, c).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _context(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """3×3 box average over the patch grid (edges replicate), (h, w, C) → (h, w, C)."""
    return cv2.blur(x, (3, 3), borderType=cv2.BORDER_REPLICATE).reshape(x.shape)


def classic_patch_features(
    image: npt.NDArray[np.uint8], patch_size: int = 8
) -> npt.NDArray[np.float32]:
    """Whitened colour/texture/position descriptors of one image (lower quality than DINO).

    Args:
        image: (S, S', 3) uint8 RGB; S, S' multiples of ``patch_size``.
        patch_size: patch side in pixels.

    Returns:
        (S/p, S'/p, 28) float32, centred per image (each dimension has zero mean over the patches).
    """
    p = int(patch_size)
    s, s2 = image.shape[:2]
    h, w = s // p, s2 // p
    lab = cv2.cvtColor(
        image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab
    )  # L [0,100], a/b ~[-127,127]
    lab_mean = _patch_mean(lab, p)
    lab_sq = _patch_mean(lab * lab, p)
    lab_std = np.sqrt(np.maximum(lab_sq - lab_mean.astype(np.float32) ** 2, 0.0))

    lum = np.ascontiguousarray(lab[..., 0])
    gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    mag = np.sqrt(gx * gx + gy * gy)
    theta = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation in [0, pi)
    pos = theta / np.pi * _BINS - 0.5
    b0 = np.floor(pos).astype(np.int64)
    frac = (pos - b0).astype(np.float32)
    lo, hi = b0 % _BINS, (b0 + 1) % _BINS
    w_lo, w_hi = mag * (1.0 - frac), mag * frac
    hist_px = np.stack(
        [np.where(lo == k, w_lo, 0.0) + np.where(hi == k, w_hi, 0.0) for k in range(_BINS)], axis=-1
    ).astype(np.float32)
    hist_sum = _patch_mean(hist_px, p)
    energy = hist_sum.sum(axis=2, keepdims=True)
    hist = hist_sum / (energy + _FLAT_GRAD)
    grad = np.log1p(_patch_mean(mag[..., None], p))

    ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2.0 - 1.0
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0
    position = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1)

    raw = {
        "lab_mean": lab_mean,
        "lab_mean_ctx": _context(lab_mean),
        "lab_std": lab_std,
        "hist": hist,
        "hist_ctx": _context(hist),
        "grad": grad,
        "position": position,
    }
    parts = []
    for group, weight, floor in _GROUPS:
        x = raw[group].reshape(h * w, -1).astype(np.float64)
        x = x - x.mean(axis=0, keepdims=True)
        spread = np.maximum(x.std(axis=0, keepdims=True), floor)
        parts.append(x / spread * (weight / np.sqrt(x.shape[1])))
    feats = np.concatenate(parts, axis=1)
    return feats.reshape(h, w, -1).astype(np.float32)


class ClassicFeatureExtractor(FeatureExtractor):
    """Weight-free colour/texture/position patch features (**lower quality than DINO**).

    Use when no DINO weights are available; see :func:`classic_patch_features`.

    Args:
        patch_size: patch side in pixels (8, like DINO ViT-B/8).
        batch_size: images processed per chunk (no effect on the result).
    """

    def __init__(self, patch_size: int = 8, batch_size: int = 8) -> None:
        if patch_size < 2:
            raise ValueError(f"patch_size={patch_size}; expected >= 2 pixels")
        self.name = "classic"
        self.patch_size = int(patch_size)
        self.batch_size = max(1, int(batch_size))
        self.feature_dim = classic_patch_features(
            np.zeros((self.patch_size, self.patch_size, 3), dtype=np.uint8), self.patch_size
        ).shape[-1]
        logger.info(  # asked for by name: a note, not a warning
            "using the weight-free 'classic' colour/texture features: masks will be of lower "
            "quality than with DINO (pass a DINO hub id, folder or .pth for the paper's features)"
        )

    def _extract(self, batch: npt.NDArray[np.uint8]) -> torch.Tensor:
        feats = [classic_patch_features(im, self.patch_size) for im in batch]
        return torch.from_numpy(np.stack(feats))
