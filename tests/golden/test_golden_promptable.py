"""Golden test: unsam's promptable model (UnSAM / Semantic-SAM interactive, Swin-T) against the
official UnSAM @ de201b8 + Semantic-SAM @ e11f8b5 outputs.

Fixture: tests/data/fidelity/promptable/ (README there): rule-generated weights, a 160x240 RGB
image (stored, already resized), three clicks, each decoded alone as the official
``evaluate_demo`` does. Checked in the README's order: backbone ``res5``, pixel-decoder
``mask_features``, the decoder's 6 mask logits and 6 IoU predictions per click, and the predictor
API's logits at image resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

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

# cpu-float32: the README's limits (observed 3e-5 on logits up to 15, 1e-6 on IoU; allow 1e-4 and
# 1e-5); res5 and mask_features about 5x their observed differences (3.9e-6 on values up to 5.2;
# 2.4e-7 channel means, 1.3e-6 samples). demo_logit: the fixture stores the upsampled logits in
# float16, so the difference beyond half the float16 spacing of the stored value (0.0039 at
# |logit| in [8, 16)) is held to the logit limit.
# cuda-float32 (TF32 off): not measured yet (no GPU was lent when these were written); 10x the
# CPU limits. Tighten from the first GPU run's printed figures.
# bfloat16 (from_pretrained(dtype="bfloat16"), PromptableModel.cast): weights and activations in
# bf16 (8-bit mantissa) through 12 Swin blocks, 6 encoder and 9 decoder layers; the pixel
# normalisation, the deformable-attention sampling, box decoding and the heads' outputs (mask
# logits, IoU) stay float32. Measured on this CPU (1 and 2 threads alike): res5 0.055 (values up
# to 5.2), mask_features stats 0.0099 and samples 0.020, mask logits 0.40 (values up to 15),
# predicted IoU 0.011, predictor logits 0.37 beyond the float16 rounding; 3179 of the 691,200
# predictor logits (0.46 %) change sign, so the masks (logit > 0) are compared by IoU per click
# and granularity: smallest 0.986. Rounding only the weights to bf16 (float32 activations) gives
# 0.035 / 0.28 / 0.0082 / IoU 0.987, and autocast 0.054 / 0.33 / 0.0094 / 0.981: the figures are
# the fixture weights' sensitivity to bf16 rounding. Limits about 2.5-3x the figures (masks: 3.5x
# the IoU shortfall; sign changes about 3x). What these limits cannot see: one float32 step run
# in bf16 (sampling locations, reference points, box decoding, the pixel mean / std) raises these
# figures by 1.1-1.5x only: those steps are for tests/models/promptable/test_promptable_bf16.py.
# cuda-bfloat16: the CPU bf16 limits; tighten from the first GPU run's printed figures.
BF16 = {"res5": 0.15, "mf_stat": 0.03, "mf_sample": 0.06, "logit": 1.0, "iou": 0.03,
        "demo_logit": 1.0, "demo_sign_flips": 10_000, "demo_mask_iou": 0.95}  # fmt: skip
TOLERANCES: dict[str, dict[str, float]] = {
    "cpu-float32": {"res5": 2e-5, "mf_stat": 2e-6, "mf_sample": 1e-5, "logit": 1e-4,
                    "iou": 1e-5, "demo_logit": 1e-4, "demo_sign_flips": 0},
    "cuda-float32": {"res5": 2e-4, "mf_stat": 2e-5, "mf_sample": 1e-4, "logit": 1e-3,
                     "iou": 1e-4, "demo_logit": 1e-3, "demo_sign_flips": 0},
    "cpu-bfloat16": BF16,
    "cuda-bfloat16": dict(BF16),
}  # fmt: skip


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_golden("promptable")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The rule's weights, checked, saved as the official ``{"model": state_dict}`` .pth (``model.``
    prefix, alias rows and Swin index buffers included)."""
    sd = make_weights("promptable")
    checks = check_weights("promptable", sd)
    path = tmp_path_factory.mktemp("promptable") / "unsam_promptable_fixture.pth"
    torch.save({"model": sd, "iteration": 0}, path)
    return path, checks


def run_promptable(
    checkpoint: Path, golden: dict[str, np.ndarray], device: str = "cpu", dtype: str = "float32"
) -> dict[str, Any]:
    """``PromptablePredictor.from_pretrained(pth, short_side=None, dtype=dtype)`` (the official
    .pth is converted on load); the model's own ``encode_image`` / ``decode_clicks`` for the
    stages, one click per call; the predictor's ``predict_logits`` for the API."""
    from unsam import PromptablePredictor

    predictor = PromptablePredictor.from_pretrained(
        checkpoint, device=device, short_side=None, dtype=dtype
    )
    model = predictor.model
    image = golden["image_rgb_u8"]
    hw = image.shape[:2]
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    out: dict[str, Any] = {"logits": [], "iou": []}
    with torch.inference_mode():
        x = model.normalize_and_pad(pixels)
        out["padded_hw"] = tuple(x.shape[-2:])
        # the backbone in the model's dtype, as encode_image feeds it
        res5 = model.backbone(x.to(model.compute_dtype)).feature_maps[-1][0]
        out["res5"] = res5.float().cpu()
        state = model.encode_image(x, image_hw=hw)
        out["mask_features"] = state.mask_features[0].float().cpu()
        out["mask_features_dtype"] = str(state.mask_features.dtype)
        for click in golden["clicks_xy"].tolist():  # the demo's box: 0.005 of the image side
            logits, iou = model.decode_clicks(state, torch.tensor([click], dtype=torch.float32))
            out["logits"].append(logits[0].float().cpu())
            out["iou"].append(iou[0].float().cpu())
    predictor.set_image(image)
    demo, demo_iou = predictor.predict_logits(golden["clicks_xy"].astype(np.float64))
    out["demo"], out["demo_iou"] = demo.float().cpu(), demo_iou.float().cpu()
    return out


def compare_promptable(out: dict[str, Any], golden: dict[str, np.ndarray]) -> dict[str, Any]:
    s: dict[str, Any] = {"padded_hw": out["padded_hw"], "dtype": out["mask_features_dtype"]}
    s["res5"] = float((out["res5"] - torch.from_numpy(golden["res5"])).abs().max())
    mf = out["mask_features"].double()
    flat = mf.flatten(1)
    stats = [
        (flat.mean(1), golden["mask_features_channel_mean"]),
        (flat.std(1), golden["mask_features_channel_std"]),
        (torch.stack([mf.mean(), mf.std()]), golden["mask_features_global_mean_std"]),
    ]
    s["mf_stat"] = max(float((a - torch.from_numpy(b).double()).abs().max()) for a, b in stats)
    c, y, x = torch.from_numpy(golden["mask_features_sample_idx_chw"].astype(np.int64)).T
    sample = mf[c, y, x] - torch.from_numpy(golden["mask_features_sample_values"]).double()
    s["mf_sample"] = float(sample.abs().max())
    logits, ref = torch.stack(out["logits"]), torch.from_numpy(golden["mask_logits"])
    s["logits_shape"] = tuple(logits.shape)
    s["logit_per_click"] = [float(v) for v in (logits - ref).abs().flatten(1).amax(1)]
    s["logit"] = max(s["logit_per_click"])
    s["iou"] = float((torch.stack(out["iou"]) - torch.from_numpy(golden["iou_pred"])).abs().max())
    demo_ref = torch.from_numpy(golden["demo_masks_f16"].astype(np.float32))
    s["demo_shape"] = tuple(out["demo"].shape)
    # beyond the float16 rounding of the stored value (half its float16 spacing)
    half_ulp = torch.from_numpy(np.spacing(np.abs(golden["demo_masks_f16"])).astype(np.float32)) / 2
    s["demo_logit"] = float(((out["demo"] - demo_ref).abs() - half_ulp).max())
    s["demo_sign_flips"] = int(((out["demo"] > 0) != (demo_ref > 0))[demo_ref.abs() > 0.01].sum())
    mine, ref = out["demo"] > 0, demo_ref > 0  # the masks, per click and granularity level
    inter, union = (mine & ref).flatten(2).sum(-1), (mine | ref).flatten(2).sum(-1)
    s["demo_mask_iou"] = float((inter / union.clamp(min=1)).min())
    s["demo_iou"] = float((out["demo_iou"] - torch.from_numpy(golden["demo_ious"])).abs().max())
    return s


@pytest.fixture(scope="module", params=CASES)
def result(request: pytest.FixtureRequest, weights: tuple[Path, Any], golden: dict) -> dict:
    case: Case = request.param
    with float32_without_tf32(case):
        out = run_promptable(weights[0], golden, case.device, case.dtype)
    stats = compare_promptable(out, golden)
    print(f"promptable {case.id}: {stats}")  # shown with a failure
    return {"case": case, "stats": stats, "tol": TOLERANCES[case.id]}


def test_weights_are_the_fixture_weights(weights: tuple[Path, Any]) -> None:
    assert_weight_checks(weights[1])


def test_backbone_res5(result: dict, record_property: Any) -> None:
    record_property("golden_figures", repr(result["stats"]))  # for junit reports
    s = result["stats"]
    assert s["padded_hw"] == (160, 256)
    assert s["dtype"] == str(result["case"].torch_dtype)  # the case's dtype really ran
    assert s["res5"] <= result["tol"]["res5"]


def test_pixel_decoder_mask_features(result: dict) -> None:
    s, tol = result["stats"], result["tol"]
    assert s["mf_stat"] <= tol["mf_stat"]
    assert s["mf_sample"] <= tol["mf_sample"]


def test_decoder_mask_logits_and_iou(result: dict, golden: dict) -> None:
    """Six masks per click at 1/4 of the padded input, in granularity order, and their IoUs."""
    s, tol = result["stats"], result["tol"]
    assert s["logits_shape"] == golden["mask_logits"].shape
    assert s["logit"] <= tol["logit"], s["logit_per_click"]
    assert s["iou"] <= tol["iou"]


def test_predictor_logits_at_image_resolution(result: dict, golden: dict) -> None:
    """``predict_logits`` with the three clicks at once (independent decoding) equals the official
    one-click-per-call demo output, upsampled and cropped to the image."""
    s, tol = result["stats"], result["tol"]
    assert s["demo_shape"] == golden["demo_masks_f16"].shape
    assert s["demo_logit"] <= tol["demo_logit"]
    assert s["demo_sign_flips"] <= tol["demo_sign_flips"]
    if "demo_mask_iou" in tol:  # bf16: some logits change sign (see TOLERANCES)
        assert s["demo_mask_iou"] >= tol["demo_mask_iou"]
    assert s["demo_iou"] <= tol["iou"]
