"""MaskCut (spec §2.2): NCut eigen-solver vs dense reference, planted objects, corner rule,
later-mask rejection, and the end-to-end image → full-resolution masks path."""

from __future__ import annotations

import importlib
import logging
import sys

import numpy as np
import numpy.typing as npt
import pytest
import torch

from tests.reference.ncut_dense import maskcut_patches_dense, ncut_dense
from unsam.divide import (
    MaskCutConfig,
    maskcut,
    maskcut_patches,
    ncut_affinity,
    ncut_second_eigenvector,
)
from unsam.features import FeatureExtractor
from unsam.refine import crf_available

needs_crf = pytest.mark.skipif(
    not crf_available(), reason="needs the optional extra unsam[crf] (pydensecrf2)"
)

# unsam.divide re-exports the function ``maskcut``, which shadows the submodule as an attribute.
maskcut_module = importlib.import_module("unsam.divide.maskcut")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _planted(
    rects: list[tuple[int, int, int, int]],
    *,
    seed: int = 0,
    hw: tuple[int, int] = (30, 30),
    noise: float = 0.3,
) -> tuple[npt.NDArray[np.float32], list[npt.NDArray[np.bool_]]]:
    """(h, w, 32) features: one background vector, one orthogonal vector per (y0, y1, x0, x1)
    box."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    h, w = hw
    feats = np.tile(basis[:, 0], (h, w, 1))
    truths = []
    for k, (y0, y1, x0, x1) in enumerate(rects, start=1):
        feats[y0:y1, x0:x1] = basis[:, k]
        truth = np.zeros(hw, dtype=bool)
        truth[y0:y1, x0:x1] = True
        truths.append(truth)
    feats = feats + noise / np.sqrt(32) * rng.standard_normal(feats.shape)
    return feats.astype(np.float32), truths


# ---------------------------------------------------------------- eigen-solver


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("seed", [0, 1])
def test_eigsh_matches_dense_reference(kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "random":
        feats = rng.standard_normal((300, 16))
    else:
        centres = rng.standard_normal((3, 16))
        feats = centres[rng.integers(0, 3, 300)] + 0.5 * rng.standard_normal((300, 16))
    ref = ncut_dense(feats, 0.15, 1e-5)
    for solver in ("eigsh", "dense"):
        v = ncut_second_eigenvector(torch.from_numpy(feats), 0.15, 1e-5, solver=solver)
        assert v.shape == (300,) and v.dtype == np.float64
        assert abs(np.corrcoef(v, ref)[0, 1]) > 0.999
        aligned = ref if np.dot(ref, v) > 0 else -ref
        np.testing.assert_array_equal(v > v.mean(), aligned > aligned.mean())


def test_eigenvector_normalisation_and_sign() -> None:
    feats, _ = _planted([(5, 15, 5, 15)])
    flat = feats.reshape(900, -1)
    v = ncut_second_eigenvector(flat, 0.15, 1e-5)
    a, d = ncut_affinity(flat, 0.15, 1e-5)
    assert float(np.sum(d * v * v)) == pytest.approx(1.0, rel=1e-9)
    assert v[np.argmax(np.abs(v))] > 0
    np.testing.assert_allclose(v @ d, 0.0, atol=1e-8)  # D-orthogonal to the constant vector
    lam = float(v @ (np.diag(d) - a) @ v)  # Rayleigh quotient = second eigenvalue
    assert 0 < lam < 0.5


def test_affinity_hand_computed() -> None:
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.0, 0.0]])
    a, d = ncut_affinity(feats, 0.15, 1e-5)
    expected = np.array(
        [[1, 1, 1e-5, 1e-5], [1, 1, 1e-5, 1e-5], [1e-5, 1e-5, 1, 1e-5], [1e-5, 1e-5, 1e-5, 1e-5]]
    )
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_allclose(d, expected.sum(axis=1))


def test_eigsh_falls_back_to_dense(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import scipy.sparse.linalg

    def fail(*args: object, **kwargs: object) -> None:
        raise scipy.sparse.linalg.ArpackNoConvergence(
            "no convergence", np.zeros(0), np.zeros((0, 0))
        )

    feats = np.random.default_rng(3).standard_normal((200, 8))
    expected = ncut_second_eigenvector(feats, 0.15, 1e-5)
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", fail)
    with caplog.at_level(logging.WARNING, logger="unsam.divide.maskcut"):
        got = ncut_second_eigenvector(feats, 0.15, 1e-5)
    assert "did not converge" in caplog.text
    np.testing.assert_allclose(got, expected, atol=1e-8)


# ---------------------------------------------------------------- maskcut_patches


@pytest.mark.parametrize("seed", range(3))
def test_recovers_planted_objects(seed: int) -> None:
    feats, truths = _planted([(3, 12, 4, 14), (16, 27, 15, 26)], seed=seed)
    masks = maskcut_patches(torch.from_numpy(feats), MaskCutConfig())
    assert all(m.shape == (30, 30) and m.dtype == bool for m in masks)
    for truth in truths:
        assert max(_iou(m, truth) for m in masks) > 0.9


@pytest.mark.parametrize("seed", range(4))
def test_matches_literal_reference_loop(seed: int) -> None:
    """Same masks as a line-by-line port of CutLER's maskcut_forward with dense eigh."""
    rng = np.random.default_rng(100 + seed)
    rects = []
    for _ in range(int(rng.integers(1, 4))):
        y0, x0 = (int(v) for v in rng.integers(0, 14, 2))
        rects.append((y0, y0 + int(rng.integers(2, 7)), x0, x0 + int(rng.integers(2, 7))))
    feats, _ = _planted(rects, seed=seed, hw=(20, 20), noise=0.8)
    ours = maskcut_patches(feats, MaskCutConfig())
    ref = maskcut_patches_dense(feats)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_corner_rule_flips_background_like_side() -> None:
    """A Γ-shaped region touching 3 corners holds the eigenvector's peak; the rule flips to the
    rest."""
    feats, (top, left) = _planted([(0, 6, 0, 30), (6, 30, 0, 6)], seed=5)
    feats[6:, :6] = feats[0, 0]  # one surface: the Γ
    gamma = top | left
    v = ncut_second_eigenvector(feats.reshape(900, -1), 0.15, 1e-5)
    seed_patch = int(np.argmax(np.abs(v)))
    fg = (v > v.mean()).reshape(30, 30)
    assert gamma.reshape(-1)[seed_patch] and fg[0, 0] and fg[0, -1] and fg[-1, 0]  # rule must fire
    (mask,) = maskcut_patches(feats, MaskCutConfig(num_masks=1))
    assert _iou(mask, ~gamma) > 0.95


def test_later_mask_rejected_when_overlapping_previous() -> None:
    """One object: iteration 2 re-finds the (zeroed) object, IoU 1 > 0.5 → rejected; iteration 3
    compares with that empty mask, so the object comes back (literal original behaviour; the
    duplicate is removed by de-overlapping in ``maskcut``)."""
    feats, (truth,) = _planted([(8, 20, 8, 20)], seed=2)
    masks = maskcut_patches(feats, MaskCutConfig())
    assert len(masks) == 2 and all(_iou(m, truth) == 1.0 for m in masks)
    no_reject = maskcut_patches(feats, MaskCutConfig(reject_iou_thresh=1.0))
    assert len(no_reject) == 3


def test_later_mask_rejected_when_small() -> None:
    feats, (big, small) = _planted([(2, 20, 2, 20), (25, 28, 25, 28)], seed=4)  # small: 9/900 = 1%
    masks = maskcut_patches(feats, MaskCutConfig(num_masks=2))
    assert _iou(masks[0], big) == 1.0
    assert not any(_iou(m, small) > 0.5 for m in masks)
    kept = maskcut_patches(feats, MaskCutConfig(num_masks=2, min_area_frac=0.005))
    assert any(_iou(m, small) == 1.0 for m in kept)


def test_component_is_four_connected() -> None:
    """Two diagonal-touching squares of one surface: only the seed's 4-connected square is kept."""
    feats, (a, b) = _planted([(5, 12, 5, 12), (12, 19, 12, 19)], seed=6)
    feats[12:19, 12:19] = feats[5, 5]
    (mask,) = maskcut_patches(feats, MaskCutConfig(num_masks=1))
    assert (_iou(mask, a), _iou(mask, b)) in ((1.0, 0.0), (0.0, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 1.5}, "tau=1.5"),
        ({"eps": 0.0}, "eps=0.0"),
        ({"num_masks": 0}, "num_masks=0"),
        ({"min_area_frac": 2.0}, "min_area_frac=2.0"),
        ({"solver": "lobpcg"}, "solver='lobpcg'"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MaskCutConfig(**kwargs)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\(h, w, C\)"):
        maskcut_patches(torch.zeros(900, 8), MaskCutConfig())
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        ncut_second_eigenvector(torch.zeros(3, 3, 3), 0.15, 1e-5)


# ---------------------------------------------------------------- end to end


class ColourExtractor(FeatureExtractor):
    """Fake extractor: per 8x8 patch, closeness of its mean colour to grey, red and blue (3-d)."""

    PALETTE = np.array([(128, 128, 128), (220, 30, 30), (30, 30, 220)], dtype=np.float64)

    def __init__(self) -> None:
        self.name, self.patch_size, self.feature_dim, self.batch_size = "colour", 8, 3, 4
        self.calls: list[tuple[int, ...]] = []

    def _extract(self, batch: npt.NDArray[np.uint8]) -> torch.Tensor:
        self.calls.append(batch.shape)
        b, s, s2, _ = batch.shape
        x = batch.reshape(b, s // 8, 8, s2 // 8, 8, 3).mean(axis=(2, 4))
        dist = np.linalg.norm(x[..., None, :] - self.PALETTE, axis=-1)  # (b, h, w, 3)
        return torch.from_numpy(np.exp(-dist / 20.0).astype(np.float32))


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """160x240 image (one 8-px patch of the 128² working image = 10x15 px): grey background,
    a red and a blue box on patch boundaries."""
    rng = np.random.default_rng(0)
    img = np.full((160, 240, 3), 128, np.int64)
    red = np.zeros((160, 240), bool)
    red[30:110, 45:150] = True
    blue = np.zeros((160, 240), bool)
    blue[120:150, 165:225] = True
    img[red] = (220, 30, 30)
    img[blue] = (30, 30, 220)
    img = np.clip(img + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)
    return img, red, blue


@pytest.mark.parametrize("crf", [False, pytest.param(True, marks=needs_crf)])
def test_maskcut_end_to_end(crf: bool) -> None:
    img, red, blue = _scene()
    ext = ColourExtractor()
    out = maskcut(img, ext, MaskCutConfig(image_size=128, crf=crf))
    assert ext.calls == [(1, 128, 128, 3)]  # one LANCZOS-resized square input
    assert len(out) == 2  # the red and the blue box (the third cut finds nothing: rejected)
    for mask, score in out:
        assert mask.shape == (160, 240) and mask.dtype == bool and mask.any() and score == 1.0
    stack = np.stack([m for m, _ in out]).astype(int)
    assert stack.sum(axis=0).max() <= 1  # de-overlapped
    for truth in (red, blue):
        assert max(_iou(m, truth) for m, _ in out) > 0.9


@needs_crf
def test_maskcut_crf_snaps_to_the_colour_edge() -> None:
    """A red ellipse off the patch grid: the NCut mask is blocky (IoU 0.90 with the ellipse at
    this size); the CRF moves ~700 pixels onto the colour edge (IoU 0.97). With CRF silently
    skipped both runs would give the same mask."""
    rng = np.random.default_rng(0)
    img = np.full((160, 240, 3), 128, np.int64)
    yy, xx = np.mgrid[:160, :240]
    red = ((yy - 70) / 42.0) ** 2 + ((xx - 95) / 55.0) ** 2 < 1
    img[red] = (220, 30, 30)
    img = np.clip(img + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)
    ((plain, _),) = maskcut(img, ColourExtractor(), MaskCutConfig(image_size=128, crf=False))
    ((refined, _),) = maskcut(img, ColourExtractor(), MaskCutConfig(image_size=128, crf=True))
    assert (plain != refined).sum() > 300
    assert _iou(plain, red) < 0.92 and _iou(refined, red) > 0.96


def test_maskcut_without_pydensecrf_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    img, _, _ = _scene()
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    monkeypatch.setattr(maskcut_module, "_warned_no_crf", False)
    with caplog.at_level(logging.WARNING, logger="unsam.divide.maskcut"):
        first = maskcut(img, ColourExtractor(), MaskCutConfig(image_size=128, crf=True))
        second = maskcut(img, ColourExtractor(), MaskCutConfig(image_size=128, crf=True))
    warnings = [r for r in caplog.records if "CRF skipped" in r.getMessage()]
    assert len(warnings) == 1 and "pip install" in warnings[0].getMessage()
    plain = maskcut(img, ColourExtractor(), MaskCutConfig(image_size=128, crf=False))
    for (a, _), (b, _), (c, _) in zip(first, second, plain, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


def test_maskcut_rejects_bad_image() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        maskcut(np.zeros((10, 10), np.uint8), ColourExtractor(), MaskCutConfig())


def test_config_defaults_and_cli_flags() -> None:
    """Spec §2.2 defaults; every field becomes a CLI flag with help text."""
    import argparse

    from unsam.cli.args import add_config_arguments, config_from_args

    cfg = MaskCutConfig()
    assert (cfg.image_size, cfg.tau, cfg.eps, cfg.num_masks) == (480, 0.15, 1e-5, 3)
    assert (cfg.reject_iou_thresh, cfg.min_area_frac, cfg.crf_iou_thresh) == (0.5, 0.01, 0.5)
    assert cfg.crf is True and cfg.solver == "eigsh"
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, MaskCutConfig, prefix="maskcut_")
    args = parser.parse_args(
        ["--maskcut-tau", "0.2", "--no-maskcut-crf", "--maskcut-solver", "dense"]
    )
    got = config_from_args(MaskCutConfig, args, prefix="maskcut_")
    assert got == MaskCutConfig(tau=0.2, crf=False, solver="dense")
