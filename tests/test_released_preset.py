"""``preset="released"``: the released UnSAM pseudo-label code's settings (spec §2.1, §3, §4.1, §10;
CUTLER_DETECTOR.md §1.2; CASCADEPSP.md §1), the BGR input it fed DINO and CascadePSP, and its
tiny-crop mask-resize rule.

Every expected value below is written out from the spec, not read from ``RELEASED_PRESET``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unsam.conquer.region import ConquerConfig, conquer
from unsam.divide.cutler import CutlerConfig
from unsam.features.base import FeatureExtractor
from unsam.masks import resize_image, resize_mask
from unsam.pipeline import DivideAndConquer, PipelineConfig, resolve_preset
from unsam.records import encode_mask
from unsam.refine.crf import RefineConfig


class RecordingExtractor(FeatureExtractor):
    """Records every batch it is given; features = each patch's mean colour, channel by channel
    (so a channel swap changes them), plus a constant."""

    name = "recording"
    patch_size = 8
    feature_dim = 4
    batch_size = 8

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def _extract(self, batch: np.ndarray) -> torch.Tensor:
        self.batches.append(batch.copy())
        b, s, s2, _ = batch.shape
        p = self.patch_size
        cells = batch.reshape(b, s // p, p, s2 // p, p, 3).astype(np.float32).mean(axis=(2, 4))
        ones = np.ones(cells.shape[:3] + (1,), np.float32)
        return torch.from_numpy(np.concatenate([cells / 255.0, ones], axis=-1))


# ---------------------------------------------------------------- resolved settings


def test_released_preset_resolves_every_released_setting() -> None:
    cfg = resolve_preset(PipelineConfig(preset="released"))
    # divide: CutLER Cascade Mask R-CNN, --confidence-threshold 0.1, 100 detections (spec §2.1)
    assert cfg.divide == "cutler"
    assert cfg.divide_score_thresh == 0.1 and cfg.divide_max_masks == 100
    # features: DINO ViT-B/8 last-layer keys, fed BGR crops (spec §3.1, §10 bug 9); fp32 as the
    # original's CPU path
    assert cfg.features == "facebook/dino-vitb8" and cfg.channel_order == "bgr"
    assert cfg.dtype == "float32"
    # no whole-image region, no cap: every divide and conquer mask is written
    assert cfg.whole_image_region is False and cfg.max_masks is None
    assert cfg.keep_orphans is True  # every mask is refined and dropped on its own (spec §4.1)
    # conquer (spec §3 tables): 256² crops, 6 thetas, 4 patches, coverage > 0.9, NMS 0.9 / step 5
    c = cfg.conquer
    assert (c.crop_size, c.min_size, c.coverage_thresh) == (256, 4, 0.9)
    assert c.thetas == (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    assert (c.nms_iou_thresh, c.nms_window, c.full_nms, c.units) == (0.9, 5, False, "patches")
    assert c.mask_resize == "unsam"
    # CascadePSP (spec §4.1, CASCADEPSP.md §1): BGR input, L clamp 100..900, crop 2 x max(w, h),
    # reject area > 0.9 or IoU < 0.5; the refinement itself stays the user's choice
    r = cfg.refine
    assert r.cascadepsp_channel_order == "bgr"
    assert (r.min_side, r.max_side, r.context_ratio) == (100, 900, 2.0)
    assert (r.max_area_frac, r.min_iou) == (0.9, 0.5)
    assert r.method == "none"
    # the detector's own test-time settings are the released ones (CUTLER_DETECTOR.md §1.2)
    d = CutlerConfig()
    assert (d.min_size, d.max_size, d.rpn_pre_nms_topk, d.rpn_post_nms_topk) == (
        800,
        1333,
        1000,
        1000,
    )
    assert (d.rpn_nms_thresh, d.score_thresh, d.nms_thresh) == (0.65, 0.1, 0.5)
    assert (d.max_detections, d.mask_thresh) == (100, 0.5)
    assert d.pixel_mean == (123.675, 116.28, 103.53) and d.pixel_std == (58.395, 57.12, 57.375)


def test_released_preset_keeps_explicit_settings_and_other_presets_unchanged() -> None:
    mine = PipelineConfig(
        preset="released",
        divide="cutler:/weights/cutler_cascade_final.pth",
        conquer=ConquerConfig(crop_size=128),
        refine=RefineConfig(method="cascadepsp", cascadepsp_weights="/w/model"),
    )
    got = resolve_preset(mine)
    assert got.divide == "cutler:/weights/cutler_cascade_final.pth"
    assert got.conquer.crop_size == 128 and got.conquer.mask_resize == "unsam"
    assert got.refine.method == "cascadepsp" and got.refine.cascadepsp_weights == "/w/model"
    assert got.refine.cascadepsp_channel_order == "bgr"
    # classic features do not switch to the classic preset under "released"
    classic = resolve_preset(PipelineConfig(preset="released", features="classic"))
    assert classic.conquer.units == "patches" and not classic.whole_image_region
    # the other presets keep RGB and the half-max resize rule
    for preset in ("auto", "spec"):
        cfg = resolve_preset(PipelineConfig(preset=preset))
        assert cfg.channel_order == "rgb" and cfg.conquer.mask_resize == "half_max"
        assert cfg.refine.cascadepsp_channel_order == "rgb" and cfg.divide == "maskcut"
    with pytest.raises(ValueError, match="channel_order"):
        PipelineConfig(channel_order="gbr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask_resize"):
        ConquerConfig(mask_resize="nearest")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the BGR switch reaches the stages


@pytest.fixture
def fake_cutler(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The CutLER loader replaced by a recorder (the divide is then set per test)."""
    from unsam.divide import cutler

    loaded: list[str] = []
    monkeypatch.setattr(cutler, "resolve_cutler_weights", lambda spec: Path(spec))
    monkeypatch.setattr(
        cutler.CutlerDetector,
        "from_checkpoint",
        lambda path, device="cpu", dtype="float32": loaded.append(str(path)),
    )
    return loaded


def _scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    image[..., 0] = 250  # red channel high, blue channel random: a swap is visible
    mask = np.zeros((40, 48), bool)
    mask[5:25, 8:40] = True
    return image, mask


@pytest.mark.parametrize("preset", ["released", "spec"])
def test_channel_order_reaches_the_extractor(preset: str, fake_cutler: list[str]) -> None:
    image, mask = _scene()
    extractor = RecordingExtractor()
    dico = DivideAndConquer(extractor, preset=preset)
    assert fake_cutler == (["cutler"] if preset == "released" else [])
    dico.divide = lambda img: [(encode_mask(mask), 0.9)]
    records = dico(image, image_id=1)
    assert records and records[0].level == 0
    (batch,) = extractor.batches
    crop = resize_image(image[5:25, 8:40], (256, 256))  # the divide mask's tight box, bicubic
    expected = crop[..., ::-1] if preset == "released" else crop
    np.testing.assert_array_equal(batch[0], expected)
    assert batch[0][..., 2].min() >= 240 if preset == "released" else batch[0][..., 0].min() >= 240
    assert dico.feature_input().patch_size == 8  # the wrapper forwards the extractor's attributes


def test_refiner_is_built_with_the_resolved_channel_order(
    fake_cutler: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from unsam.refine import cascadepsp

    seen: list[RefineConfig] = []
    monkeypatch.setattr(
        cascadepsp.CascadePSPRefiner,
        "from_config",
        classmethod(lambda cls, config, device="cpu", dtype=None: seen.append(config)),
    )
    DivideAndConquer(RecordingExtractor(), preset="released", refine="cascadepsp:/w/model")
    DivideAndConquer(RecordingExtractor(), preset="spec", refine="cascadepsp:/w/model")
    assert [c.cascadepsp_channel_order for c in seen] == ["bgr", "rgb"]
    assert seen[0].cascadepsp_weights == "/w/model"


# ---------------------------------------------------------------- the tiny-crop resize rule


def test_unsam_resize_rule_hand_values() -> None:
    """PIL bicubic, 1x4 -> 1x2 (s = f = 2, support 4; output 0 centre c = 1): weights
    k((j + 0.5 - 1) / 2), j = 0..3 = [0.8672, 0.8672, 0.2266, -0.0703] / 1.8906
    = [0.4587, 0.4587, 0.1198, -0.0372]; output 1 mirrored. Only the horizontal pass runs.

    One pixel at j = 1: [255 * 0.4587, 255 * 0.1198] = [117, 31]. The maximum 117 < 128: the
    released rule (``resize_mask`` -> pixels > 58.5 set to 117, then ``> 127.5``) keeps nothing,
    half-max keeps output 0.
    Two pixels j = 1, 2: 255 * (0.4587 + 0.1198) = 147.5 -> 148 both; 148 >= 128: both rules keep
    both pixels.
    """
    one = np.array([[0, 1, 0, 0]], bool)
    values = np.asarray(Image.fromarray(one.astype(np.uint8) * 255).resize((2, 1), Image.BICUBIC))
    np.testing.assert_array_equal(values, [[117, 31]])
    np.testing.assert_array_equal(resize_mask(one, (1, 2)), [[True, False]])
    np.testing.assert_array_equal(resize_mask(one, (1, 2), rule="unsam"), [[False, False]])
    two = np.array([[0, 1, 1, 0]], bool)
    values = np.asarray(Image.fromarray(two.astype(np.uint8) * 255).resize((2, 1), Image.BICUBIC))
    np.testing.assert_array_equal(values, [[148, 148]])
    for rule in ("half_max", "unsam"):
        np.testing.assert_array_equal(resize_mask(two, (1, 2), rule=rule), [[True, True]])
    # 4x4 single pixel -> 2x2 (tests/test_masks.py): [[54, 14], [14, 4]], maximum 54
    px = np.zeros((4, 4), bool)
    px[1, 1] = True
    np.testing.assert_array_equal(resize_mask(px, (2, 2)), [[True, False], [False, False]])
    assert not resize_mask(px, (2, 2), rule="unsam").any()
    # 1x2 -> 4x1 (tests/test_masks.py): every value 127.5 -> 128, exactly the released cutoff
    half = np.array([[False, True]])
    np.testing.assert_array_equal(resize_mask(half, (4, 1), rule="unsam"), np.ones((4, 1), bool))
    # upsampling a non-empty mask reaches 255: the rules agree; empty stays empty; same size: copy
    big = np.zeros((6, 6), bool)
    big[2:4, 1:5] = True
    np.testing.assert_array_equal(
        resize_mask(big, (15, 13), rule="unsam"), resize_mask(big, (15, 13))
    )
    assert not resize_mask(np.zeros((3, 3), bool), (7, 7), rule="unsam").any()
    np.testing.assert_array_equal(resize_mask(big, (6, 6), rule="unsam"), big)
    with pytest.raises(ValueError, match="rule"):
        resize_mask(big, (3, 3), rule="nearest")


class BlockExtractor(FeatureExtractor):
    """Patch (r, c) gets feature e2 inside the 2x2 block rows/cols 10-11, e1 elsewhere."""

    name = "block"
    patch_size = 8
    feature_dim = 2
    batch_size = 8

    def _extract(self, batch: np.ndarray) -> torch.Tensor:
        f = torch.zeros(batch.shape[0], 32, 32, 2)
        f[..., 0] = 1.0
        f[:, 10:12, 10:12] = torch.tensor([0.0, 1.0])
        return f


def test_conquer_uses_the_configured_rule_on_a_tiny_crop() -> None:
    """A 4-patch cluster of the 32x32 grid in a 12x12 crop: the released rule drops it, half-max
    keeps a few pixels of it; the background cluster is the same under both."""
    image = np.zeros((20, 20, 3), np.uint8)
    divide = np.zeros((20, 20), bool)
    divide[4:16, 4:16] = True  # 12 x 12 box
    labels = np.zeros((32, 32), bool)
    labels[10:12, 10:12] = True
    block_half = resize_mask(labels, (12, 12))
    assert block_half.any() and not resize_mask(labels, (12, 12), rule="unsam").any()
    out = {}
    for rule in ("half_max", "unsam"):
        cfg = dataclasses.replace(ConquerConfig(), mask_resize=rule)
        out[rule] = {m.mask.tobytes() for m in conquer(image, [divide], BlockExtractor(), cfg)}
    assert block_half.tobytes() in out["half_max"]
    assert block_half.tobytes() not in out["unsam"]
    assert out["unsam"] == out["half_max"] - {block_half.tobytes()}
    assert len(out["unsam"]) == 1  # the background


@pytest.mark.parametrize(("preset", "kept"), [("released", True), ("spec", False)])
def test_conquer_masks_of_a_rejected_divide_mask(
    preset: str, kept: bool, fake_cutler: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The released code refines and drops every annotation on its own: a conquer mask stays when
    its divide mask is rejected (parent_id null). The default drops such orphans."""
    from unsam import pipeline
    from unsam.refine import crf

    image, mask = _scene()
    monkeypatch.setattr(crf, "require_crf", lambda: None)
    # refinement rejects the divide mask (the whole box) and keeps every other mask as it is
    monkeypatch.setattr(
        pipeline,
        "refine_masks",
        lambda img, masks, cfg: [
            (None, 0.0) if np.array_equal(m, mask) else (m, 1.0) for m in masks
        ],
    )
    dico = DivideAndConquer(BlockExtractor(), preset=preset, refine="crf")
    dico.divide = lambda img: [(encode_mask(mask), 0.9)]
    records = dico(image, image_id=1)
    assert all(r.level > 0 for r in records)  # the divide mask is gone
    assert dico.last_stats["refine_rejected"] == 1
    if kept:
        assert records and all(r.parent_id is None for r in records)
        assert dico.last_stats["orphans_dropped"] == 0
    else:
        assert records == [] and dico.last_stats["orphans_dropped"] > 0
