"""CascadePSP refinement (spec §4.1, spec/CASCADEPSP.md): network, key table, refine(fast=True),
UnSAM rules."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.reference import cascadepsp_naive as naive
from unsam.features.base import MissingWeightsError
from unsam.refine import CascadePSPRefiner, RefineConfig, RefinementModule
from unsam.refine.cascadepsp import (
    CASCADEPSP_WEIGHTS_ENV,
    RefinedCrop,
    clamp_side,
    estimate_cpu_seconds,
    load_official_weights,
    official_key_table,
    padded_hw,
    refine_crop_global,
    safe_forward,
    unsam_crop_box,
)
from unsam.refine.cascadepsp.modeling import _PSPModule

REPO = Path(__file__).resolve().parents[2]
KEYS_TSV = REPO / "tests" / "data" / "cascadepsp_keys.tsv"


def _tsv_rows() -> list[tuple[str, str, tuple[int, ...], str]]:
    lines = [
        ln.rstrip("\n") for ln in KEYS_TSV.read_text().splitlines() if ln and not ln.startswith("#")
    ]
    assert lines[0].split("\t") == ["file_key", "key", "shape", "dtype", "kind"]
    rows = []
    for ln in lines[1:]:
        file_key, key, shape, dtype, _kind = ln.split("\t")
        rows.append((file_key, key, tuple(ast.literal_eval(shape)), dtype))
    return rows


def _random_model(seed: int = 0) -> RefinementModule:
    """A RefinementModule with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = RefinementModule()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """CASCADEPSP.md §5: this network runs faster with 1 thread than with 2 on these machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A synthetic official weights file: every TSV row with random values, 'module.' keys,
    torch.save."""
    g = torch.Generator().manual_seed(0)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for file_key, _key, shape, dtype in _tsv_rows():
        if dtype == "int64":
            sd[file_key] = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        else:
            sd[file_key] = torch.randn(shape, generator=g) * 0.02
    for file_key in sd:  # positive variances, as a trained file has
        if file_key.endswith("running_var"):
            sd[file_key] = sd[file_key].abs() + 0.5
    path = tmp_path_factory.mktemp("cascadepsp") / "model"
    torch.save(sd, path)
    return path, sd


# ---------------------------------------------------------------------------------------------
# Network and key table
# ---------------------------------------------------------------------------------------------


def test_key_table_equals_the_official_tsv() -> None:
    """All 426 rows (file key, module key, shape, dtype) and 67,745,648 values (CASCADEPSP.md §3.8,
    §6.1)."""
    rows = _tsv_rows()
    table = official_key_table()
    assert len(rows) == len(table) == 426
    assert [r[0] for r in rows] == list(table)
    for file_key, key, shape, _ in rows:
        assert table[file_key] == (key, shape)
    sd = RefinementModule().state_dict()
    assert list(sd) == [r[1] for r in rows]
    assert sum(v.numel() for v in sd.values()) == 67_745_648
    assert all(str(sd[k].dtype) == f"torch.{d}" for _, k, _, d in rows)


def test_synthetic_official_file_loads_every_tensor_unchanged(official_file) -> None:
    path, sd = official_file
    refiner = CascadePSPRefiner.from_checkpoint(path)
    loaded = refiner.model.state_dict()
    assert len(loaded) == len(sd) == 426
    for file_key, tensor in sd.items():
        got = loaded[file_key.removeprefix("module.")]
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), file_key


def test_num_batches_tracked_may_be_absent(tmp_path: Path, official_file) -> None:
    _, sd = official_file
    path = tmp_path / "model"
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, path)
    model = RefinementModule()
    load_official_weights(model, path)
    assert torch.equal(
        model.state_dict()["psp.bottleneck.weight"], sd["module.psp.bottleneck.weight"]
    )


def test_strict_loading_names_the_file_and_keys(tmp_path: Path, official_file) -> None:
    _, sd = official_file
    bad = dict(sd)
    del bad["module.up_2.conv.2.bias"]  # a missing parameter
    bad["module.head.weight"] = torch.zeros(2)  # a key the table does not know
    bad["module.final_21.weight"] = torch.zeros(1, 33, 1, 1)  # a wrong shape
    path = tmp_path / "bad_model"
    torch.save(bad, path)
    with pytest.raises(ValueError) as info:
        CascadePSPRefiner.from_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: does not match the CascadePSP key table")
    assert "1 missing (e.g. module.up_2.conv.2.bias)" in msg
    assert "1 unexpected (e.g. module.head.weight)" in msg
    assert "module.final_21.weight (1, 33, 1, 1) (expected (1, 32, 1, 1))" in msg


def test_missing_or_unsafe_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        MissingWeightsError, match=r"nope/model does not exist; download .*CascadePSP/releases"
    ):
        CascadePSPRefiner.from_checkpoint(tmp_path / "nope" / "model")
    monkeypatch.delenv(CASCADEPSP_WEIGHTS_ENV, raising=False)
    with pytest.raises(MissingWeightsError, match=CASCADEPSP_WEIGHTS_ENV):
        CascadePSPRefiner.from_checkpoint(None)
    monkeypatch.setenv(CASCADEPSP_WEIGHTS_ENV, str(tmp_path / "from_env"))
    with pytest.raises(MissingWeightsError, match="from_env does not exist"):
        CascadePSPRefiner.from_checkpoint(None)
    unsafe = tmp_path / "unsafe"
    torch.save(
        {"module.feats.conv1.weight": argparse.Namespace(a=1)}, unsafe
    )  # not weights_only-loadable
    with pytest.raises(
        ValueError, match=r"unsafe: refused to load it: .* asks for the Python object argparse"
    ):
        CascadePSPRefiner.from_checkpoint(unsafe)


def test_shape_trace_and_cascade_dataflow(one_thread: None) -> None:
    """CASCADEPSP.md §3.7 on 1x3x104x96, plus what each pass feeds the next (§3.6)."""
    model = _random_model()
    outs: dict[str, list[torch.Tensor]] = {}
    ins: dict[str, list[tuple[torch.Tensor, ...]]] = {}
    names = [
        "feats",
        "feats.conv1",
        "feats.maxpool",
        "feats.layer1",
        "feats.layer2",
        "feats.layer3",
        "feats.layer4",
        "psp",
        "final_28",
        "up_1",
        "final_56",
        "up_2",
        "up_3",
        "final_11",
        "final_21",
    ]
    modules = dict(model.named_modules())
    for name in names:

        def hook(_m, args, out, name=name):
            ins.setdefault(name, []).append(tuple(a.clone() for a in args))
            outs.setdefault(name, []).append(out[0] if isinstance(out, tuple) else out)

        modules[name].register_forward_hook(hook)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 104, 96, generator=g)
    seg = torch.where(torch.rand(1, 1, 104, 96, generator=g) > 0.5, 1.0, -1.0)
    with torch.no_grad():
        pred = model(x, seg)
    shapes = {n: [tuple(o.shape[1:]) for o in outs[n]] for n in names}
    assert shapes["feats.conv1"] == [(64, 52, 48)] * 3
    assert shapes["feats.maxpool"] == [(64, 26, 24)] * 3
    assert shapes["feats.layer1"] == [(256, 26, 24)] * 3
    assert shapes["feats.layer2"] == [(512, 13, 12)] * 3
    assert shapes["feats.layer3"] == [(1024, 13, 12)] * 3
    assert shapes["feats.layer4"] == [(2048, 13, 12)] * 3
    assert shapes["psp"] == [(1024, 13, 12)] * 3
    assert shapes["final_28"] == [(1, 13, 12)] * 2  # passes 1 and 2 only (pass 3's is discarded)
    assert shapes["up_1"] == [(512, 26, 24)] * 2
    assert shapes["final_56"] == [(1, 26, 24)]
    assert shapes["up_2"] == [(256, 52, 48)]
    assert shapes["up_3"] == [(32, 104, 96)]
    assert [tuple(a[0].shape[1:]) for a in ins["final_11"]] == [(35, 104, 96)]
    assert shapes["final_21"] == [(1, 104, 96)]
    assert tuple(pred.shape) == (1, 1, 104, 96)
    torch.testing.assert_close(pred, torch.sigmoid(outs["final_21"][0]), rtol=0, atol=0)
    # skip inputs: up_2 gets the raw conv1 output (pre-BN), up_3 the image
    assert torch.equal(ins["up_2"][0][1], outs["feats.conv1"][2])
    assert torch.equal(ins["up_3"][0][1], x)

    def up(t: torch.Tensor, f: int) -> torch.Tensor:
        return torch.tanh(F.interpolate(t, scale_factor=f, mode="bilinear", align_corners=False))

    t8 = up(outs["final_28"][0], 8)
    t8b, t4 = up(outs["final_28"][1], 8), up(outs["final_56"][0], 4)
    expected = [
        torch.cat([x, seg, seg, seg], 1),
        torch.cat([x, seg, t8, t8], 1),
        torch.cat([x, seg, t8b, t4], 1),
    ]
    for got, want in zip(ins["feats"], expected, strict=True):
        torch.testing.assert_close(got[0], want, rtol=0, atol=1e-6)


def test_psp_module_matches_naive() -> None:
    torch.manual_seed(0)
    psp = _PSPModule(features=8, out_features=4).eval()
    feats = torch.randn(1, 8, 13, 12)
    with torch.no_grad():
        got = psp(feats)[0].double().numpy()
    want = naive.psp_naive(
        feats[0].double().numpy(),
        [s[1].weight.detach().double().numpy() for s in psp.stages],
        psp.bottleneck.weight.detach().double().numpy(),
        psp.bottleneck.bias.detach().double().numpy(),
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# refine(fast=True) geometry with a cheap stand-in network
# ---------------------------------------------------------------------------------------------


class _Stub(nn.Module):
    """Cheap stand-in for RefinementModule: (im, seg) -> sigmoid(10·(erode(seg) - 0.4) +
    0.3·conv(im)).

    Records input shapes. The 7x7 mean "erodes" the mask so thin masks vanish (IoU rejection), and
    the image term makes the result depend on colours, padding and channel order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1, 1, 27).reshape(1, 3, 3, 3))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, im: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        self.seen.append((im.clone(), seg.clone()))
        eroded = F.avg_pool2d(seg, 7, stride=1, padding=3, count_include_pad=False)
        return torch.sigmoid(10 * (eroded - 0.4) + 0.3 * self.conv(im))


def test_safe_forward_pads_both_sides_image_with_0_mask_with_minus_1() -> None:
    stub = _Stub()
    im, seg = torch.randn(1, 3, 104, 97), torch.ones(1, 1, 104, 97)
    out = safe_forward(stub, im, seg)
    p_im, p_seg = stub.seen[-1]
    assert tuple(p_im.shape[-2:]) == (112, 104)  # 104 is a multiple of 8 but grows too (§2.4)
    assert (
        torch.equal(p_im[..., :104, :97], im)
        and (p_im[..., 104:, :] == 0).all()
        and (p_im[..., 97:] == 0).all()
    )
    assert (p_seg[..., 104:, :] == -1).all() and (p_seg[..., :, 97:] == -1).all()
    assert tuple(out.shape) == (1, 1, 104, 97)
    safe_forward(stub, torch.randn(1, 3, 104, 96), torch.ones(1, 1, 104, 96))
    assert tuple(stub.seen[-1][0].shape[-2:]) == (104, 96)  # both multiples of 8: no padding


@pytest.mark.parametrize(
    ("hw", "side", "net_hw"),
    [
        ((97, 31), 100, (104, 32)),  # S < L: upsampled to 99 x 31 (floor), padded
        ((120, 117), 120, (128, 120)),  # S == L: native size; both sides padded (120 too)
        ((1000, 700), 900, (904, 632)),  # S > L: area-downsampled to 900x630, padded
        ((45, 60), 100, (80, 104)),
    ],
)
def test_refine_crop_global_matches_naive(
    hw: tuple[int, int], side: int, net_hw: tuple[int, int]
) -> None:
    """Resize / pad / resize-back rules equal the original's (§2.3), probabilities to float
    rounding."""
    g = torch.Generator().manual_seed(sum(hw))
    im = torch.randn(1, 3, *hw, generator=g)
    seg = torch.where(torch.rand(1, 1, *hw, generator=g) > 0.3, 1.0, -1.0)
    stub = _Stub()
    got = refine_crop_global(stub, im, seg, side)
    assert tuple(stub.seen[-1][0].shape[-2:]) == net_hw == padded_hw(hw, side)
    want = naive.process_im_single_pass(stub, im, seg, side)
    assert got.shape == want.shape == (1, 1, *hw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_long_side_rounds_down_like_the_original() -> None:
    stub = _Stub()
    refine_crop_global(stub, torch.zeros(1, 3, 97, 50), torch.ones(1, 1, 97, 50), 100)
    assert (
        stub.seen[-1][1].shape[-2] == 104
    )  # network sees 99 rows (floor(97 · 100/97) = 99), padded to 104
    ph = F.interpolate(torch.zeros(1, 1, 97, 50), scale_factor=100 / 97, mode="bilinear").shape[-2]
    assert ph == 99


# ---------------------------------------------------------------------------------------------
# UnSAM's crop, L, threshold, paste-back and accept rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_crop_box_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = np.zeros((37, 53), bool)
    y0, x0 = rng.integers(0, 37), rng.integers(0, 53)
    mask[y0 : y0 + rng.integers(1, 20), x0 : x0 + rng.integers(1, 30)] = True
    assert unsam_crop_box(mask) == naive.crop_bounds(mask)


def test_crop_box_and_l_hand_computed() -> None:
    mask = np.zeros((100, 200), bool)
    mask[40:50, 100:131] = True  # box x=100 y=40 w=31 h=10: centre (115.5, 45), half-side 31
    assert unsam_crop_box(mask) == (84, 14, 146, 76)
    assert unsam_crop_box(np.zeros((5, 5), bool)) is None
    table = {
        (50, 30): 100,
        (97, 31): 100,
        (100, 7): 100,
        (150, 123): 150,
        (900, 10): 900,
        (1000, 700): 900,
    }
    for hw, want in table.items():
        assert clamp_side(hw) == want == naive.clamp_l(0, 0, hw[1], hw[0])


def test_cpu_time_estimate_from_crop_sizes(caplog: pytest.LogCaptureFixture) -> None:
    """One 904² crop ≈ 189 s on 2 cores (CASCADEPSP.md §5); crops of >= 900 run at 900 (padded
    904)."""
    assert estimate_cpu_seconds([(904, 904)]) == pytest.approx(189.0)
    assert estimate_cpu_seconds([(3000, 3000)]) == pytest.approx(189.0)
    assert estimate_cpu_seconds([(50, 50), (50, 50)]) == pytest.approx(
        2 * 189.0 * 104 * 104 / 904**2
    )
    refiner = CascadePSPRefiner(_Stub())
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    with caplog.at_level(logging.WARNING, logger="unsam.refine.cascadepsp"):
        seconds = refiner.warn_cpu_time((64, 64), [mask, mask])
        assert refiner.warn_cpu_time((64, 64), [mask]) is None  # once per refiner
    assert seconds == pytest.approx(2 * 189.0 * 104 * 104 / 904**2)
    assert len(caplog.records) == 1 and "expected 5 s" in caplog.records[0].getMessage()


def _scene() -> tuple[np.ndarray, list[np.ndarray]]:
    """A 130x170 image and masks hitting each rule: S < 100, S in [100, 900], thin (vanishes),
    > 90%, empty."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (130, 170, 3), dtype=np.uint8)
    image[30:90, 40:120] = (220, 60, 30)
    masks = []
    m = np.zeros((130, 170), bool)
    m[40:70, 50:90] = True  # crop 80 wide -> L = 100 (upsampled)
    masks.append(m)
    m = np.zeros((130, 170), bool)
    m[30:90, 40:120] = True  # crop clipped to the image, S = 160 -> native size
    masks.append(m)
    m = np.zeros((130, 170), bool)
    m[100:103, 10:160] = True  # 3 px thin: eroded away -> IoU 0 -> rejected
    masks.append(m)
    m = np.ones((130, 170), bool)
    m[:3, :3] = False  # > 90% of the image -> rejected
    masks.append(m)
    masks.append(np.zeros((130, 170), bool))  # empty
    m = np.zeros((130, 170), bool)
    m[42:72, 100:140] = True  # same crop size as mask 0 -> batched with it
    masks.append(m)
    return image, masks


@pytest.mark.parametrize("batch_pixels", [1, 904 * 904])
@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_refine_masks_matches_naive_postprocess(batch_pixels: int, order: str) -> None:
    image, masks = _scene()
    refiner = CascadePSPRefiner(_Stub(), batch_pixels=batch_pixels, channel_order=order)
    got = refiner.refine_masks(image, masks)
    src = image if order == "rgb" else np.ascontiguousarray(image[:, :, ::-1])
    want = naive.postprocess(_Stub(), src, masks)
    assert (
        [g is None for g, _ in got]
        == [w is None for w in want]
        == [False, False, True, True, True, False]
    )
    for (g, iou), w, m in zip(got, want, masks, strict=True):
        if w is not None:
            assert g.dtype == bool and np.array_equal(g, w)
            assert iou == pytest.approx(naive.iou(m, w))
    assert got[2][1] == 0.0 and got[4] == (None, 0.0)
    assert got[3][1] > 0.5  # rejected for its area, not its IoU
    batches = [tuple(s[0].shape) for s in refiner.model.seen]
    assert len(batches) == (
        5 if batch_pixels == 1 else 3
    )  # same-size crops (0 and 5, 2 and 3) batched
    if order == "bgr":  # the image channels really are flipped
        rgb = CascadePSPRefiner(_Stub()).refine_masks(image, masks)
        assert any(
            not np.array_equal(a, b)
            for (a, _), (b, _) in zip(rgb, got, strict=True)
            if a is not None
        )


def test_large_crop_downsampled_to_900_matches_naive() -> None:
    """A crop longer than 900 px runs at 900 (area) and comes back bilinear (align_corners=True)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (700, 960, 3), dtype=np.uint8)
    mask = np.zeros((700, 960), bool)
    mask[150:600, 200:700] = True  # box 500x450 -> crop x 0..950, y 0..700 (clipped) -> L = 900
    refiner = CascadePSPRefiner(_Stub())
    ((got, iou),) = refiner.refine_masks(image, [mask])
    assert tuple(refiner.model.seen[-1][0].shape[-2:]) == (664, 904)  # 700·900/950 -> 663, padded
    want = naive.postprocess(_Stub(), image, [mask])[0]
    assert (
        got is not None
        and np.array_equal(got, want)
        and iou == pytest.approx(naive.iou(mask, want))
    )


def test_iter_refined_keeps_crops_and_reads_masks_lazily() -> None:
    image, masks = _scene()
    refiner = CascadePSPRefiner(_Stub(), batch_pixels=1)
    consumed: list[int] = []

    def lazy():
        for i, m in enumerate(masks):
            consumed.append(i)
            yield m

    it = refiner.iter_refined(image, lazy())
    first = next(it)
    assert first.index == 0 and consumed == [
        0,
        1,
    ]  # one crop per batch: reads one mask ahead at most
    assert first.mask is not None and first.mask.shape == (
        first.box_xyxy[3] - first.box_xyxy[1],
        first.box_xyxy[2] - first.box_xyxy[0],
    )
    rest = list(it)
    assert [r.index for r in rest] == [1, 2, 3, 4, 5]
    assert np.array_equal(
        first.full_mask(image.shape[:2]), refiner.refine_masks(image, masks)[0][0]
    )


def test_refine_masks_rejects_bad_input() -> None:
    refiner = CascadePSPRefiner(_Stub())
    with pytest.raises(ValueError, match="uint8 RGB"):
        refiner.refine_masks(np.zeros((8, 8, 3), np.float32), [])
    with pytest.raises(
        ValueError, match=r"mask 0 has shape \(4, 4\); expected the image's \(8, 8\)"
    ):
        refiner.refine_masks(np.zeros((8, 8, 3), np.uint8), [np.zeros((4, 4), bool)])
    with pytest.raises(ValueError, match="channel_order"):
        CascadePSPRefiner(_Stub(), channel_order="rbg")  # type: ignore[arg-type]


def test_real_network_on_64px_image_matches_naive(one_thread: None) -> None:
    """The random-weight RefinementModule through refine_masks equals the naive transcription."""
    model = _random_model(2)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:44, 16:40] = True  # box 24x24 -> crop 48x48 at (4, 8) -> L = 100, network at 104x104
    assert unsam_crop_box(mask) == (4, 8, 52, 56)
    p_naive = naive.refine(model, image[8:56, 4:52], mask[8:56, 4:52].astype(np.uint8) * 255, 100)
    full = np.zeros((64, 64), bool)
    full[8:56, 4:52] = p_naive > 128
    assert 0 < np.count_nonzero(full) < full.size  # a mixed map, so the comparison means something
    want_iou = naive.iou(mask, full)
    refiner = CascadePSPRefiner(model, min_iou=0.0)  # keep it whatever its IoU, to compare pixels
    ((got, iou),) = refiner.refine_masks(image, [mask])
    assert iou == pytest.approx(want_iou)
    assert got is not None and np.array_equal(got, full)


# ---------------------------------------------------------------------------------------------
# Wiring: config, CLI shorthand, pipeline
# ---------------------------------------------------------------------------------------------


def test_cli_refine_shorthand() -> None:
    from unsam.cli.pseudo_label import add_pipeline_arguments, pipeline_config_from_args

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_pipeline_arguments(parser)
    cfg = pipeline_config_from_args(parser.parse_args(["--refine", "cascadepsp:/w/model"]))
    assert (cfg.refine.method, cfg.refine.cascadepsp_weights) == ("cascadepsp", "/w/model")
    cfg = pipeline_config_from_args(parser.parse_args(["--refine", "cascadepsp"]))
    assert (cfg.refine.method, cfg.refine.cascadepsp_weights) == ("cascadepsp", None)
    for value in ("none", "crf"):
        assert (
            pipeline_config_from_args(parser.parse_args(["--refine", value])).refine.method == value
        )
    cfg = pipeline_config_from_args(
        parser.parse_args(
            ["--refine-method", "cascadepsp", "--refine-cascadepsp-channel-order", "bgr"]
        )
    )
    assert cfg.refine.cascadepsp_channel_order == "bgr"
    for bad in ("crf:/x", "cascadepsp:", "bogus"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--refine", bad])
    with pytest.raises(ValueError, match="min_side=1000"):
        RefineConfig(method="cascadepsp", min_side=1000)


def test_pipeline_cascadepsp_missing_weights_fails_before_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unsam.features
    from unsam.pipeline import DivideAndConquer

    def no_features(*_a, **_k):
        raise AssertionError("features were loaded before the refiner's weights were checked")

    monkeypatch.setattr(unsam.features, "load_feature_extractor", no_features)
    with pytest.raises(MissingWeightsError, match="absent/model does not exist"):
        DivideAndConquer(features="classic", refine=f"cascadepsp:{tmp_path / 'absent' / 'model'}")


def test_pipeline_crf_without_pydensecrf_fails_before_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import unsam.features
    from unsam.pipeline import DivideAndConquer

    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    monkeypatch.setattr(
        unsam.features, "load_feature_extractor", lambda *a, **k: pytest.fail("work started")
    )
    with pytest.raises(ImportError, match=r'pip install "unsam\[crf\]"'):
        DivideAndConquer(features="classic", refine="crf")


class _Recording(CascadePSPRefiner):
    """The stub refiner, recording the masks the pipeline feeds it and what it returns."""

    def __init__(self) -> None:
        super().__init__(_Stub())
        self.inputs: list[np.ndarray] = []
        self.outputs: list[RefinedCrop] = []

    def iter_refined(self, image, masks):
        def tee():
            for m in masks:
                self.inputs.append(np.array(m, dtype=bool))
                yield m

        for r in super().iter_refined(image, tee()):
            self.outputs.append(r)
            yield r


def test_pipeline_refines_with_cascadepsp(monkeypatch: pytest.MonkeyPatch, test_data: Path) -> None:
    """Records hold the refiner's kept masks, in order; the whole-image region stays whole; no
    orphans."""
    from unsam.io.images import load_image
    from unsam.pipeline import DivideAndConquer

    refiner = _Recording()
    monkeypatch.setattr(
        CascadePSPRefiner,
        "from_config",
        classmethod(lambda cls, cfg, device="cpu", dtype=None: refiner),
    )
    image = load_image(test_data / "images" / "coffee.jpg")
    records = DivideAndConquer(features="classic", refine="cascadepsp", max_masks=12)(
        image, image_id=3
    )
    assert len(refiner.inputs) == len(refiner.outputs) == 11  # 12 kept, minus the whole image
    assert [r.index for r in refiner.outputs] == list(range(11))
    for raw, out in zip(refiner.inputs, refiner.outputs, strict=True):
        if out.mask is not None:
            assert out.iou == pytest.approx(naive.iou(raw, out.full_mask(raw.shape)))
    kept = [o.full_mask(image.shape[:2]) for o in refiner.outputs if o.mask is not None]
    assert 0 < len(kept) < 11  # some kept, some rejected (the stub erodes thin masks away)
    got = [r for r in records if r.source != "image"]
    assert got and {r.refined for r in got} == {"cascadepsp"}
    assert [r.refined for r in records if r.source == "image"] == ["none"]
    it = iter(kept)  # records are the kept masks in order (orphans of rejected parents are skipped)
    assert all(any(np.array_equal(r.decode(), k) for k in it) for r in got)
    ids = {r.id for r in records}
    assert all(r.parent_id in ids for r in records if r.level > 0)


@pytest.mark.slow
def test_cli_pseudo_label_with_synthetic_official_weights(
    tmp_path: Path, official_file, test_data: Path
) -> None:
    """``unsam pseudo-label DIR -o OUT.json --features classic --refine cascadepsp:CKPT`` (real
    network)."""
    path, _ = official_file
    images = tmp_path / "images"
    images.mkdir()
    (images / "coffee.jpg").write_bytes((test_data / "images" / "coffee.jpg").read_bytes())
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unsam.cli.main",
            "pseudo-label",
            str(images),
            "-o",
            str(out),
            "--features",
            "classic",
            "--refine",
            f"cascadepsp:{path}",
            "--max-masks",
            "2",
            "--no-progress",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "CascadePSP runs on the CPU" in proc.stderr and "expected" in proc.stderr
    data = json.loads(out.read_text())
    assert len(data["images"]) == 1
    refined = [a.get("refined") for a in data["annotations"]]
    assert set(refined) <= {"cascadepsp", "none"}
