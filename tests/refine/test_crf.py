"""DenseCRF refinement (spec §2.2 step 9, §4.2): snapping, accept rules, crop geometry, extras."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from unsam.refine import (
    CRF_INSTALL_HINT,
    CRFConfig,
    RefineConfig,
    context_crop_box,
    crf_available,
    crf_refine_mask,
    refine_masks,
    require_crf,
)

needs_crf = pytest.mark.skipif(
    not crf_available(), reason="needs the optional extra unsam[crf] (pydensecrf2)"
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _two_colour() -> tuple[np.ndarray, np.ndarray]:
    """80x80 dark image with a bright 40x30 rectangle (the true region)."""
    rng = np.random.default_rng(0)
    img = np.full((80, 80, 3), 40, np.int64)
    truth = np.zeros((80, 80), bool)
    truth[20:60, 25:55] = True
    img[truth] = (200, 180, 60)
    return np.clip(img + rng.integers(-5, 5, img.shape), 0, 255).astype(np.uint8), truth


def _shifted(truth: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.roll(np.roll(truth, dy, axis=0), dx, axis=1)


@needs_crf
def test_crf_snaps_mask_to_colour_boundary() -> None:
    img, truth = _two_colour()
    off = _shifted(truth, 4, 4)
    refined = crf_refine_mask(img, off)
    assert refined.shape == truth.shape and refined.dtype == bool
    assert (refined != off).sum() > 200
    assert _iou(off, truth) < 0.7
    assert _iou(refined, truth) > 0.95


@needs_crf
def test_unaries_alone_keep_the_mask_and_holes_are_filled() -> None:
    """Without pairwise terms the soft unaries (0.731 vs 0.269) give back the mask; holes get
    filled."""
    img, truth = _two_colour()
    ring = truth.copy()
    ring[35:45, 35:45] = False
    no_pairwise = CRFConfig(gaussian_compat=0.0, bilateral_compat=0.0)
    np.testing.assert_array_equal(crf_refine_mask(img, ring, no_pairwise), truth)


@needs_crf
def test_refine_masks_accepts_and_pastes_back() -> None:
    img, truth = _two_colour()
    off = _shifted(truth, 4, 4)
    ((refined, iou),) = refine_masks(img, [off], RefineConfig(method="crf"))
    assert refined is not None and refined.shape == (80, 80)
    assert (
        refined != off
    ).sum() > 200  # the CRF really ran: the shifted mask moved (4 px x 70 edge px)
    assert _iou(refined, truth) > 0.95
    assert iou == pytest.approx(_iou(off, refined))


@needs_crf
def test_refine_masks_rejects_large_and_too_different() -> None:
    img, _ = _two_colour()
    big = np.zeros((80, 80), bool)
    big[2:78, 2:78] = True  # refines to the whole image: area 100% > 90%
    flat = np.full((80, 80, 3), 100, np.uint8)
    speck = np.zeros((80, 80), bool)
    speck[30:34, 30:34] = True  # on a flat image the CRF smooths it away: IoU 0 < 0.5
    ((big_out, big_iou),) = refine_masks(img, [big], RefineConfig(method="crf"))
    assert big_out is None and big_iou > 0.5  # rejected by area, not by IoU
    (speck_out, speck_iou), (empty_out, empty_iou) = refine_masks(
        flat, [speck, np.zeros((80, 80), bool)], RefineConfig(method="crf")
    )
    assert speck_out is None and speck_iou < 0.5
    assert empty_out is None and empty_iou == 0.0
    ((loose_out, _),) = refine_masks(img, [big], RefineConfig(method="crf", max_area_frac=1.0))
    assert loose_out is not None and loose_out.all()


@needs_crf
def test_refine_masks_downscales_large_crops() -> None:
    img, truth = _two_colour()
    off = _shifted(truth, 4, 4)
    ((refined, _),) = refine_masks(img, [off], RefineConfig(method="crf", max_side=40))
    assert refined is not None and refined.shape == (80, 80)
    assert (refined != off).sum() > 200
    assert _iou(refined, truth) > 0.85


def test_method_none_returns_masks_unchanged() -> None:
    img, truth = _two_colour()
    big = np.ones((80, 80), bool)
    out = refine_masks(img, [truth, big], RefineConfig())
    assert [iou for _, iou in out] == [1.0, 1.0]
    np.testing.assert_array_equal(out[0][0], truth)
    np.testing.assert_array_equal(out[1][0], big)


def test_context_crop_box_hand_computed() -> None:
    mask = np.zeros((100, 200), bool)
    mask[40:50, 100:130] = True  # COCO box x=100, y=40, w=30, h=10 → centre (115, 45), half-side 30
    assert context_crop_box(mask) == (85, 15, 145, 75)
    mask2 = np.zeros((100, 200), bool)
    mask2[0:10, 190:200] = True  # clipped at the top and right edges
    assert context_crop_box(mask2) == (185, 0, 200, 15)
    assert context_crop_box(np.zeros((5, 5), bool)) is None


def test_missing_pydensecrf_message(monkeypatch: pytest.MonkeyPatch) -> None:
    img, truth = _two_colour()
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError) as info:
        refine_masks(img, [], RefineConfig(method="crf"))  # fails before any work
    assert (
        str(info.value)
        == 'refine="crf" needs pydensecrf2: pip install "unsam[crf]"'
        == CRF_INSTALL_HINT
    )
    with pytest.raises(ImportError, match="pip install"):
        crf_refine_mask(img, truth)
    with pytest.raises(ImportError, match="pip install"):
        require_crf()
    assert refine_masks(img, [truth], RefineConfig())[0][1] == 1.0  # "none" needs no extra


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (CRFConfig, {"iterations": 0}, "iterations=0"),
        (CRFConfig, {"bilateral_srgb": 0.0}, "bilateral_srgb=0.0"),
        (RefineConfig, {"method": "dense"}, "method='dense'"),
        (RefineConfig, {"max_area_frac": 0.0}, "max_area_frac=0.0"),
        (RefineConfig, {"crf": "strong"}, "RefineConfig.crf must be a CRFConfig"),
    ],
)
def test_config_validation(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@needs_crf
def test_shape_checks() -> None:
    img, truth = _two_colour()
    with pytest.raises(ValueError, match="does not match"):
        crf_refine_mask(img, truth[:-1])
    with pytest.raises(ValueError, match="mask 0 has shape"):
        refine_masks(img, [truth[:, :-1]], RefineConfig(method="crf"))


def test_config_defaults_and_cli_flags() -> None:
    """Spec §2.2 step 9 / §4 defaults; every field becomes a CLI flag with help text."""
    import argparse

    from unsam.cli.args import add_config_arguments, config_from_args

    cfg = RefineConfig()
    assert (cfg.method, cfg.context_ratio, cfg.max_side, cfg.max_area_frac, cfg.min_iou) == (
        "none",
        2.0,
        900,
        0.9,
        0.5,
    )
    assert cfg.crf == CRFConfig() == CRFConfig(3.0, 7.0, 50.0, 5.0, 10.0, 10)
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RefineConfig, prefix="refine_", recurse=True)
    args = parser.parse_args(["--refine-method", "crf", "--refine-crf-iterations", "5"])
    got = config_from_args(RefineConfig, args, prefix="refine_")
    assert got.method == "crf" and got.crf.iterations == 5 and got.crf.gaussian_sxy == 3.0


def test_one_crf_config_nested_in_both_stages_and_tunable_from_the_cli() -> None:
    """Issue 8: MaskCut's CRF and the refinement CRF share unsam.crf.CRFConfig, both from flags."""
    import argparse
    import importlib

    from unsam.cli.pseudo_label import add_pipeline_arguments, pipeline_config_from_args

    parser = argparse.ArgumentParser()
    add_pipeline_arguments(parser)
    args = parser.parse_args(
        ["--maskcut-crf-params-bilateral-srgb", "9", "--refine-crf-iterations", "4"]
    )
    cfg = pipeline_config_from_args(args)
    assert cfg.maskcut.crf_params == CRFConfig(bilateral_srgb=9.0)
    assert cfg.refine.crf == CRFConfig(iterations=4)
    maskcut_module = importlib.import_module(
        "unsam.divide.maskcut"
    )  # the package exports a function
    assert maskcut_module.crf_refine_mask is crf_refine_mask  # one primitive, from unsam.crf
    source = open(maskcut_module.__file__, encoding="utf-8").read()
    assert "unsam.refine" not in source  # the divide stage does not import the refine stage
