"""The weight-free "classic" extractor: shapes, per-image centring, DINO-like cosine behaviour."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from unsam.features import ClassicFeatureExtractor, load_feature_extractor


def _disc_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A striped blue disc on a noisy red background, 128x128; returns (image, 16x16 patch
    truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    disc = (yy - 64) ** 2 + (xx - 72) ** 2 < 35**2
    stripes = (xx // 4) % 2 == 1
    img = np.empty((128, 128, 3), np.int64)
    img[:] = (200, 60, 50)
    img[disc & stripes] = (30, 60, 200)
    img[disc & ~stripes] = (80, 120, 230)
    img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    truth = disc.reshape(16, 8, 16, 8).mean(axis=(1, 3)) > 0.5
    return img, truth


def test_shapes_dtype_and_centring() -> None:
    ext = load_feature_extractor("classic")
    assert isinstance(ext, ClassicFeatureExtractor) and ext.name == "classic"
    img, _ = _disc_image()
    feats = ext(np.stack([img, img[::-1]]))
    assert feats.shape == (2, 16, 16, ext.feature_dim) and feats.dtype == torch.float32
    means = feats.reshape(2, 256, -1).mean(dim=1)
    torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-5, rtol=0)
    torch.testing.assert_close(ext(img), ext(img))  # deterministic


def test_cosine_high_within_surface_low_across() -> None:
    img, truth = _disc_image()
    feats = ClassicFeatureExtractor()(img)[0].reshape(256, -1)
    f = torch.nn.functional.normalize(feats, dim=1)
    sim = f @ f.T
    inside = torch.from_numpy(truth.reshape(-1))
    assert sim[inside][:, inside].mean() > 0.7
    assert sim[~inside][:, ~inside].mean() > 0.4
    assert sim[inside][:, ~inside].mean() < 0.0  # unrelated surfaces: negative, below MaskCut's tau


def test_flat_image_is_not_amplified() -> None:
    """A constant image has no structure: the spread floors keep its features at ~0."""
    feats = ClassicFeatureExtractor()(np.full((64, 64, 3), 120, np.uint8))
    pos_dims = 2  # only the position group varies on a flat image
    assert feats[..., :-pos_dims].abs().max() < 1e-4
    assert feats[..., -pos_dims:].abs().max() > 0.01


def test_notes_lower_quality_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11.6: asked for by name, classic is noted at INFO, not warned about."""
    with caplog.at_level(logging.INFO, logger="unsam.features.classic"):
        ClassicFeatureExtractor()
    assert "lower quality" in caplog.text
    assert all(r.levelno == logging.INFO for r in caplog.records if "lower quality" in r.message)


def test_patch_size_validation() -> None:
    with pytest.raises(ValueError, match="patch_size=1"):
        ClassicFeatureExtractor(patch_size=1)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        ClassicFeatureExtractor(patch_size=16)(np.zeros((40, 48, 3), np.uint8))
