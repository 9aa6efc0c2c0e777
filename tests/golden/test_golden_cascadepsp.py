"""Golden test: unsam's CascadePSP network and UnSAM's refinement post-process against the
official ``segmentation-refinement`` 0.6 (= CascadePSP @ 481847c) and UnSAM @ de201b8 outputs.

Fixture: tests/data/fidelity/cascadepsp/ (README there). (a) one network forward at 224x224 with
every pass's head; (b) UnSAM's ``postprocess`` of 5 masks on a 300x200 image: crop boxes, L,
per-mask probabilities, uint8 maps, accept decisions and the kept full mask. Images are BGR, as
UnSAM feeds them, so the refiner is built with ``channel_order="bgr"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.golden.common import (
    Case,
    assert_weight_checks,
    case_param,
    check_weights,
    float32_without_tf32,
    load_golden,
    make_weights,
)

CASES = [
    case_param("cpu", "float32"),
    case_param("cpu", "bfloat16"),
    case_param("cuda", "float32"),
    case_param("cuda", "bfloat16"),
]

# prob: max |probability difference| (network heads and per-mask probabilities at crop size).
# u8_max / u8_diff_frac: largest difference and fraction of differing pixels of the uint8 maps
# (prob * 255, what Refiner.refine returns). mask_pixels: pixels of the thresholded (> 128) crops
# that differ, over the 5 masks (148,368 px), and the largest refined-area difference in pixels.
# accept_iou: the largest difference of IoU(raw, refined), the accept rule's input. kept_iou: IoU
# of the kept full mask with the official one. The accept decisions must always be the official.
#
# cpu-float32: the README expects equality on its CPU and <= 1e-5 with other kernels (> 1e-4 is a
# real difference); this project's CPU (AMD EPYC, AVX-512) measured 1.8e-6 and 14 uint8 pixels
# off by one, none across the threshold.
# bfloat16: an 8-bit mantissa through three ResNet-50 passes. Measured on CPU: prob 0.024, uint8
# maps up to 6 apart, 722 thresholded pixels (0.5 %), refined areas up to 143 px and IoUs up to
# 0.0014 apart, kept-mask IoU 0.996, same decisions (the closest decision is mask 3: IoU 0.521
# against the 0.5 cutoff, area 0.881 against 0.9). Limits: about 2-3x those figures.
# cuda-*: not measured yet (no GPU was lent when these were written). float32 runs with TF32 off:
# 10x the CPU limits; bfloat16: the CPU bf16 limits. Tighten from the first GPU run's figures.
TOLERANCES: dict[str, dict[str, float]] = {
    "cpu-float32": {"prob": 1e-5, "u8_max": 1, "u8_diff_frac": 1e-3, "mask_pixels": 5,
                    "kept_iou": 0.999, "accept_iou": 2e-3},
    "cuda-float32": {"prob": 1e-4, "u8_max": 1, "u8_diff_frac": 1e-2, "mask_pixels": 50,
                     "kept_iou": 0.999, "accept_iou": 2e-3},
    "cpu-bfloat16": {"prob": 0.05, "u8_max": 13, "u8_diff_frac": 1.0, "mask_pixels": 1500,
                     "kept_iou": 0.98, "accept_iou": 5e-3},
    "cuda-bfloat16": {"prob": 0.05, "u8_max": 13, "u8_diff_frac": 1.0, "mask_pixels": 1500,
                      "kept_iou": 0.98, "accept_iou": 5e-3},
}  # fmt: skip


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_golden("cascadepsp")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The rule's weights, checked, saved as the release file ``model``: a flat state dict with
    the ``module.`` (DataParallel) prefix."""
    sd = make_weights("cascadepsp")
    checks = check_weights("cascadepsp", sd)
    path = tmp_path_factory.mktemp("cascadepsp") / "model"
    torch.save(sd, path)
    return path, checks


def run_cascadepsp(
    checkpoint: Path, golden: dict[str, np.ndarray], device: str = "cpu", dtype: str = "float32"
) -> dict[str, Any]:
    """Load the release-layout file with ``CascadePSPRefiner.from_checkpoint(...,
    channel_order="bgr")`` and run (a) the network and (b) the post-processing.

    The heads of passes 1 and 2 are read with forward hooks on ``final_28`` / ``final_56`` and
    turned into the fixture's probabilities as the official forward does (bilinear x8 / x4,
    sigmoid). In (b) ``batch_pixels=1`` makes every mask its own forward, as the official
    ``refine()`` per mask; a hook reads each network output, from which the probability at crop
    size follows by the official ``process_im_single_pass`` resize-back.
    """
    from unsam.refine import CascadePSPRefiner
    from unsam.refine.cascadepsp import (
        clamp_side,
        image_to_tensor,
        mask_to_tensor,
        refine_crop_global,
    )

    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    refiner = CascadePSPRefiner.from_checkpoint(
        checkpoint, device=device, channel_order="bgr", dtype=tdtype, batch_pixels=1
    )
    model = refiner.model
    out: dict[str, Any] = {}
    heads: dict[str, list[torch.Tensor]] = {"final_28": [], "final_56": []}
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: heads[name].append(o))
        for name in heads
    ]
    # (a) one forward at 224x224 (no padding); the stored crop is already BGR
    x = image_to_tensor(golden["a_image_bgr_u8"]).to(device, tdtype)
    seg = mask_to_tensor(golden["a_mask_u8"].astype(bool)).to(device, tdtype)
    try:
        with torch.inference_mode():
            out["pred_224"] = model(x, seg)[0, 0].float().cpu()
    finally:
        for h in hooks:
            h.remove()

    def prob(t: torch.Tensor, factor: int) -> torch.Tensor:
        t = F.interpolate(t.float(), scale_factor=factor, mode="bilinear", align_corners=False)
        return t.sigmoid()[0, 0].cpu()

    out["pred_28"] = prob(heads["final_28"][0], 8)  # pass 1
    out["pred_28_2"] = prob(heads["final_28"][1], 8)  # pass 2
    out["pred_56"] = prob(heads["final_56"][0], 4)  # pass 2
    # (b) the post-process. The refiner takes RGB and flips it to BGR (channel_order="bgr").
    image_bgr, masks = golden["b_image_bgr_u8"], golden["b_masks_u8"].astype(bool)
    nets: list[tuple[tuple[int, int], torch.Tensor]] = []
    hook = model.register_forward_hook(
        lambda m, i, o: nets.append((tuple(i[0].shape[-2:]), o.float().cpu()))
    )
    try:
        out["refined"] = list(
            refiner.iter_refined(np.ascontiguousarray(image_bgr[:, :, ::-1]), masks)
        )
    finally:
        hook.remove()
    out["kept_full"] = [r.full_mask(image_bgr.shape[:2]) for r in out["refined"]]
    out["nets"] = nets
    # the port's own resize-back, where the crop is resized to L (mask 4: 40 px -> L = 100)
    out["resized_prob"] = {}
    for k, r in enumerate(out["refined"]):
        x0, y0, x1, y1 = r.box_xyxy
        side = clamp_side((y1 - y0, x1 - x0), refiner.min_side, refiner.max_side)
        if side != max(y1 - y0, x1 - x0):
            im = image_to_tensor(image_bgr[y0:y1, x0:x1]).to(device, tdtype)
            sg = mask_to_tensor(masks[k][y0:y1, x0:x1]).to(device, tdtype)
            with torch.inference_mode():
                prob = refine_crop_global(model, im, sg, side)
            out["resized_prob"][k] = prob[0, 0].float().cpu().numpy()
    return out


def crop_probabilities(
    nets: list[tuple[tuple[int, int], torch.Tensor]], golden: dict[str, np.ndarray]
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[np.ndarray]]:
    """Expected network input sizes (from the fixture's crop boxes and L, padded to x8 as
    ``safe_forward``), observed ones, and each network output taken back to crop size as the
    official ``process_im_single_pass`` does (crop the padding; area down from an upscaled
    input, bilinear align_corners up from a downscaled one)."""
    expected, observed, probs = [], [], []
    for (x0, y0, x1, y1), side, (in_hw, net) in zip(
        golden["b_crop_boxes_xyxy"].tolist(), golden["b_L"].tolist(), nets, strict=True
    ):
        h, w = y1 - y0, x1 - x0
        r = side / max(h, w)
        hs, ws = (h, w) if r == 1 else (int(h * r), int(w * r))  # F.interpolate's floor
        hp, wp = (hs, ws) if hs % 8 == 0 and ws % 8 == 0 else (hs // 8 * 8 + 8, ws // 8 * 8 + 8)
        expected.append((hp, wp))
        observed.append(tuple(in_hw))
        p = net[:, :, :hs, :ws]
        if r > 1:
            p = F.interpolate(p, size=(h, w), mode="area")
        elif r < 1:
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=True)
        probs.append(p[0, 0].numpy())
    return expected, observed, probs


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|; inf when the shapes differ (a wrong crop or L), so that the stage's test
    fails rather than the comparison raising."""
    return float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")


def compare_cascadepsp(out: dict[str, Any], golden: dict[str, np.ndarray]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for k in ("pred_28", "pred_28_2", "pred_56", "pred_224"):
        s[f"{k}_prob"] = _max_abs(out[k].numpy(), golden[f"a_{k}"])
    s["net_input_hw_expected"], s["net_input_hw"], probs = crop_probabilities(out["nets"], golden)
    s["crop_prob"] = max(_max_abs(p, golden[f"b_prob_{k}"]) for k, p in enumerate(probs))
    u8 = [(p * 255).astype(np.uint8) for p in probs]
    diffs = [
        np.abs(a.astype(int) - ref) if a.shape == ref.shape else np.full(ref.shape, 255)
        for a, ref in ((a, golden[f"b_refined_u8_{k}"]) for k, a in enumerate(u8))
    ]
    s["u8_max"] = int(max(d.max() for d in diffs))
    s["u8_diff_frac"] = sum(int((d > 0).sum()) for d in diffs) / sum(d.size for d in diffs)
    s["resized_masks"] = sorted(out["resized_prob"])
    s["resized_crop_prob"] = max(
        [_max_abs(p, golden[f"b_prob_{k}"]) for k, p in out["resized_prob"].items()] or [0.0]
    )
    # the accept rule's inputs, kept or not: IoU(raw, refined) and refined area, against the
    # official refined maps (uint8 > 128) and input masks
    total = golden["b_image_bgr_u8"].shape[0] * golden["b_image_bgr_u8"].shape[1]
    iou_diff, area_px = 0.0, 0
    for k, r in enumerate(out["refined"]):
        x0, y0, x1, y1 = golden["b_crop_boxes_xyxy"][k]
        ref = golden[f"b_refined_u8_{k}"] > 128
        raw = golden["b_masks_u8"][k][y0:y1, x0:x1].astype(bool)
        iou_diff = max(iou_diff, abs(r.iou - (ref & raw).sum() / (ref | raw).sum()))
        area_px = max(area_px, round(abs(r.area_frac * total - ref.sum())))
    s["accept_iou_diff"], s["accept_area_px"] = float(iou_diff), int(area_px)
    s["kept"] = [r.mask is not None for r in out["refined"]]
    s["iou_area"] = [(round(r.iou, 4), round(r.area_frac, 4)) for r in out["refined"]]
    s["refined_boxes"] = [r.box_xyxy for r in out["refined"]]
    pixels = 0
    for k, r in enumerate(out["refined"]):
        ref = golden[f"b_refined_u8_{k}"] > 128
        mine = u8[k] > 128 if r.mask is None else r.mask
        pixels += int((mine != ref).sum()) if mine.shape == ref.shape else ref.size
    s["mask_pixels"] = pixels
    k3 = out["kept_full"][3]  # None when the port rejects the one mask the official keeps
    gold3 = np.unpackbits(golden["b_kept_mask_3"])[: 200 * 300].reshape(200, 300).astype(bool)
    s["kept_iou"] = 0.0 if k3 is None else float((k3 & gold3).sum() / (k3 | gold3).sum())
    return s


@pytest.fixture(scope="module", params=CASES)
def result(request: pytest.FixtureRequest, weights: tuple[Path, Any], golden: dict) -> dict:
    case: Case = request.param
    with float32_without_tf32(case):
        out = run_cascadepsp(weights[0], golden, case.device, case.dtype)
    stats = compare_cascadepsp(out, golden)
    print(f"cascadepsp {case.id}: {stats}")  # shown with a failure
    return {"case": case, "stats": stats, "tol": TOLERANCES[case.id]}


def test_weights_are_the_fixture_weights(weights: tuple[Path, Any]) -> None:
    assert_weight_checks(weights[1])


@pytest.mark.parametrize("head", ["pred_28", "pred_28_2", "pred_56"])
def test_network_heads_pass_by_pass(result: dict, head: str) -> None:
    """Pass 1 (pred_28), pass 2 (pred_28_2, pred_56). Pass 3's final_28 / final_56 heads do not
    feed the output and the port does not compute them (fast mode)."""
    assert result["stats"][f"{head}_prob"] <= result["tol"]["prob"]


def test_network_output(result: dict, record_property: Any) -> None:
    """The port's own forward (three passes, fast mode) against ``pred_224``."""
    record_property("golden_figures", repr(result["stats"]))  # for junit reports
    s, tol = result["stats"], result["tol"]
    assert s["pred_224_prob"] <= tol["prob"]


def test_crop_boxes_and_side(result: dict, golden: dict) -> None:
    """UnSAM's context crop of each mask, and the network input size it implies (L)."""
    s = result["stats"]
    assert s["refined_boxes"] == [tuple(b) for b in golden["b_crop_boxes_xyxy"].tolist()]
    assert s["net_input_hw"] == s["net_input_hw_expected"]  # L and the x8 padding


def test_refined_probabilities(result: dict) -> None:
    s, tol = result["stats"], result["tol"]
    assert s["crop_prob"] <= tol["prob"]
    assert s["u8_max"] <= tol["u8_max"]
    assert s["u8_diff_frac"] <= tol["u8_diff_frac"]
    assert s["mask_pixels"] <= tol["mask_pixels"]


def test_resize_back_of_resized_crops(result: dict) -> None:
    """The crop smaller than L = 100 is upscaled for the network and its output area-downscaled
    back (official ``process_im_single_pass``): the port's ``refine_crop_global`` on it."""
    s, tol = result["stats"], result["tol"]
    assert s["resized_masks"] == [4]
    assert s["resized_crop_prob"] <= tol["prob"]


def test_accept_decisions_and_kept_mask(result: dict, golden: dict) -> None:
    """Every mask's IoU(raw, refined) and refined area (what the accept rule reads), the decisions
    and the kept full-image mask."""
    s, tol = result["stats"], result["tol"]
    assert s["accept_area_px"] <= tol["mask_pixels"]
    assert s["accept_iou_diff"] <= tol["accept_iou"]
    assert s["kept"] == golden["b_kept"].tolist()
    assert s["kept_iou"] >= tol["kept_iou"]
