"""Golden test: unsam's CutLER Cascade Mask R-CNN against the official detectron2/CutLER outputs.

Fixture: tests/data/fidelity/cutler/ (README there): official CutLER @ cca0a27 + detectron2 @
02b5c4e, rule-generated weights, COCO 000000000139.jpg, CPU float32. The checks follow the
README's order, so the first failing test says where the port diverges: input, FPN, RPN, box
heads (matched detections), mask head, pasted masks. The bf16 cases run the detector with
``dtype="bfloat16"`` and compare proposals and detections as sets (see TOLERANCES).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.golden.common import (
    IMAGE_139,
    Case,
    assert_weight_checks,
    box_iou,
    case_param,
    check_weights,
    decode_rles,
    float32_without_tf32,
    hungarian,
    load_golden,
    make_weights,
    mask_iou_matrix,
)

CASES = [
    case_param("cpu", "float32", pytest.mark.slow),
    case_param("cpu", "bfloat16", pytest.mark.slow),
    case_param("cuda", "float32", pytest.mark.slow),
    case_param("cuda", "bfloat16", pytest.mark.slow),
]

# cpu-float32: the README's tolerances (5-10x the differences it observed, which are the size of
# the official code's own 1-vs-4-thread variation). Measured on this project's CPU (AMD EPYC,
# AVX-512): FPN 5.5e-7 of the level std, RPN boxes 4.3e-4 px and logits 2.2e-5, scores 2.3e-6, box
# IoU >= 0.99998, mask logits 1.7e-5, mask IoU >= 0.9992 (tests/data/fidelity/README.md).
# cuda-float32 (TF32 off): not measured yet (no GPU was lent when these were written); 10x the CPU
# limits, and a few detections may be exchanged at the NMS / top-100 boundary. Tighten from the
# first GPU run's printed figures.
# bfloat16 (CutlerDetector(dtype="bfloat16")): backbone, FPN, RPN conv, box and mask heads in bf16
# (8-bit mantissa, weights and activations; frozen BN folded in float32 first); the prediction
# layers, anchors, box decoding, ROIAlign sampling, softmax and pasting stay float32. With the
# fixture's random weights the bf16 rounding moves the FPN channel statistics by 1.6 % of a level's
# std, and rounding the weights alone (float32 activations) does about as much (1.6 %, and so
# does autocast of the backbone + FPN): the fixture's detections are near ties (100 scores in
# [0.516, 0.656], median gap 4.6e-4) and its RPN top-50 logits 0.02 apart, so which proposals
# and detections survive NMS and the top-100 cut, and in which order, is not comparable. Compared
# instead, as sets: each official top-50 proposal's best match among all 1000 of the port's
# (rpn_found_*: share at IoU >= 0.9, median IoU, max logit difference), detections matched one to
# one at box IoU >= 0.5 (matched_frac, box_iou_median, score max / median), and, for the matched
# pairs whose boxes agree at IoU >= 0.9 (close_frac), the 28x28 mask logits and the pasted masks'
# mean IoU. Measured here (1 and 2 threads alike): input mean 2.0e-4 rel, FPN level 5.8e-4 /
# channels 0.016 of the std; RPN 50/50 found, median IoU 0.983, logits 0.079; 82 % matched,
# median box IoU 0.971, scores 0.044 max / 0.0017 median; 88 % of the pairs close, their mask
# logits 0.10 apart (official |logit| <= 1.24, std 0.35: masks are thin margins around 0), mean
# mask IoU 0.888 (0 masks identical). Limits about 2-3x those (for the shares and IoUs, 2-3x the
# shortfall from 1). The rank-order keys (rpn_box_px, rpn_logit, box_iou_min, box_px, rank_shift,
# mask_box_px, mask_logit, mask_iou_min) are left out of the bf16 rows: not compared there.
# What these limits cannot see: one float32 step run in bf16 (the ROI boxes, the RPN prediction
# layers, the BN left unfolded) stays inside the fixture's bf16 spread. Anchors in bf16 are seen
# (rpn_anchor_px: each proposal is one float32 anchor's box decoded with the port's own deltas).
# cuda-bfloat16: the CPU bf16 limits; tighten from the first GPU run's printed figures.
BF16: dict[str, float] = {
    "input_mean_rel": 5e-4,
    "fpn_level_rel": 2e-3,
    "fpn_channel_rel": 0.05,
    "rpn_found_frac": 0.9,
    "rpn_found_iou_median": 0.95,
    "rpn_found_logit": 0.25,
    "matched_frac": 0.6,
    "box_iou_median": 0.92,
    "score": 0.1,
    "score_median": 0.005,
    "close_frac": 0.7,
    "mask_logit_close": 0.3,
    "mask_iou_mean_close": 0.75,
}
TOLERANCES: dict[str, dict[str, float]] = {
    "cpu-float32": {
        "input_mean_rel": 1e-9,
        "fpn_level_rel": 1e-5,  # level mean / std, relative to the level's std
        "fpn_channel_rel": 1e-5,  # channel means / stds, relative to the level's std
        "rpn_box_px": 5e-3,
        "rpn_logit": 2e-4,
        "matched_frac": 1.0,
        "box_iou_min": 0.9999,
        "box_px": 5e-3,
        "rank_shift": 2,  # scores 1.1e-6 apart may swap ranks under rounding
        "score": 1e-5,
        "mask_box_px": 1e-2,
        "mask_logit": 1e-4,
        "mask_iou_min": 0.99,
    },
    "cuda-float32": {
        "input_mean_rel": 1e-8,
        "fpn_level_rel": 1e-4,
        "fpn_channel_rel": 1e-4,
        "rpn_box_px": 5e-2,
        "rpn_logit": 2e-3,
        "matched_frac": 0.98,
        "box_iou_min": 0.999,
        "box_px": 5e-2,
        "rank_shift": 5,
        "score": 1e-4,
        "mask_box_px": 0.1,
        "mask_logit": 1e-3,
        "mask_iou_min": 0.98,
    },
    "cpu-bfloat16": BF16,
    "cuda-bfloat16": dict(BF16),
}

RPN_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
RPN_STRIDES = (4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_golden("cutler")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The rule's weights, checked, saved as the official ``{"model": state_dict}`` .pth."""
    sd = make_weights("cutler")
    checks = check_weights("cutler", sd)
    path = tmp_path_factory.mktemp("cutler") / "cutler_cascade_fixture.pth"
    torch.save({"model": sd}, path)
    return path, checks


def run_cutler(checkpoint: Path, device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    """Load the fixture checkpoint with ``CutlerDetector.from_checkpoint(..., dtype=dtype)`` and
    run ``detect`` on the fixture image; the intermediates are read through wrappers and forward
    hooks."""
    import unsam
    from unsam.divide.cutler import CutlerConfig, CutlerDetector

    detector = CutlerDetector.from_checkpoint(
        checkpoint, config=CutlerConfig(score_thresh=0.1), device=device, dtype=dtype
    )
    model = detector.model
    seen: dict[str, Any] = {}

    def spy(name: str) -> None:
        method = getattr(model, name)

        def wrapper(*args: Any) -> Any:
            out = method(*args)
            seen[name] = (args, out)
            return out

        setattr(model, name, wrapper)  # instance attribute: shadows the method for this model

    for name in ("features", "propose", "predict_masks"):
        spy(name)
    rpn_out: list[tuple[torch.Tensor, torch.Tensor]] = []
    mask_out: list[torch.Tensor] = []
    hooks = [
        model.rpn.register_forward_hook(lambda m, i, o: rpn_out.append(o)),
        model.mask_head.register_forward_hook(lambda m, i, o: mask_out.append(o)),
    ]
    image = unsam.load_image(IMAGE_139)
    try:
        dets = detector.detect(image)
    finally:
        for h in hooks:
            h.remove()
    (x,), feats = seen["features"]
    proposals = seen["propose"][1].float().cpu().numpy()
    return {
        "image": image,
        "input": x.float().cpu(),
        "resized_hw": seen["propose"][0][1],
        "fpn": [f.float().cpu() for f in feats],
        "fpn_dtype": str(feats[0].dtype),
        "rpn": [(lo.float().cpu(), de.float().cpu()) for lo, de in rpn_out],
        "proposals": proposals,
        "boxes": dets.boxes_xyxy,
        "scores": dets.scores,
        "masks": dets.masks,
        "mask_boxes": seen["predict_masks"][0][1].float().cpu().numpy(),
        "mask_logits": mask_out[0][:, 0].float().cpu().numpy(),
    }


def proposal_logits(out: dict[str, Any], rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """Objectness logit of the proposals ``rows`` (an int: the first ``rows``; else indices): each
    proposal is matched to the anchor whose decoded, clipped box (detectron2's box coder, written
    out here) is nearest to it.

    Returns (logits, distance in px from each proposal to its anchor's decoded box).
    """
    h, w = out["resized_hw"]
    cands, logits = [], []
    for (lo, de), size, stride, feat in zip(out["rpn"], RPN_SIZES, RPN_STRIDES, out["fpn"]):
        gh, gw = feat.shape[-2:]
        cells = []
        for ratio in (0.5, 1.0, 2.0):  # anchors (w, h) with h / w = ratio, area size^2
            aw = math.sqrt(size * size / ratio)
            cells.append([-aw / 2, -ratio * aw / 2, aw / 2, ratio * aw / 2])
        ys, xs = torch.meshgrid(torch.arange(gh) * stride, torch.arange(gw) * stride, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float()
        anchors = (shifts + torch.tensor(cells)[None]).reshape(-1, 4)  # (y*W + x)*A + a
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        cx, cy = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
        dx, dy = de[:, 0], de[:, 1]
        dw, dh = de[:, 2].clamp(max=math.log(1000 / 16)), de[:, 3].clamp(max=math.log(1000 / 16))
        px, py, pw, ph = dx * aw + cx, dy * ah + cy, dw.exp() * aw, dh.exp() * ah
        box = torch.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], 1)
        box[:, 0::2] = box[:, 0::2].clamp(0, w)
        box[:, 1::2] = box[:, 1::2].clamp(0, h)
        cands.append(box)
        logits.append(lo)
    cand, logit = torch.cat(cands), torch.cat(logits)
    idx = np.arange(rows) if isinstance(rows, int) else np.asarray(rows)
    props = torch.from_numpy(out["proposals"][idx])
    dist = torch.stack([(cand - p).abs().amax(1) for p in props])  # (rows, anchors)
    best = dist.argmin(1)
    return logit[best].numpy(), dist.min(1).values.numpy()


def compare_cutler(out: dict[str, Any], golden: dict[str, np.ndarray]) -> dict[str, Any]:
    """Differences between the port's outputs and the official ones, stage by stage."""
    s: dict[str, Any] = {}
    x = out["input"].double()
    s["input_shape"] = tuple(x.shape)
    s["resized_hw"] = tuple(int(v) for v in out["resized_hw"])
    s["input_mean_rel"] = abs(float(x.mean()) - float(golden["input_mean"])) / abs(
        float(golden["input_mean"])
    )
    s["fpn_shapes"] = [tuple(f.shape[-2:]) for f in out["fpn"]]
    s["fpn_dtype"] = out["fpn_dtype"]
    lvl, chan = 0.0, 0.0
    for k, f in enumerate(out["fpn"]):
        f = f.double()[0]
        std = float(golden["fpn_std"][k])
        lvl = max(lvl, abs(float(f.mean()) - golden["fpn_mean"][k]) / std)
        lvl = max(lvl, abs(float(f.std()) - std) / std)
        cm, cs = f.flatten(1).mean(1).numpy(), f.flatten(1).std(1).numpy()
        chan = max(chan, np.abs(cm - golden["fpn_channel_mean"][k]).max() / std)
        chan = max(chan, np.abs(cs - golden["fpn_channel_std"][k]).max() / std)
    s["fpn_level_rel"], s["fpn_channel_rel"] = lvl, chan
    s["num_proposals"] = len(out["proposals"])
    n = len(golden["rpn_boxes"])
    s["rpn_box_px"] = float(np.abs(out["proposals"][:n] - golden["rpn_boxes"]).max())
    logits, dist = proposal_logits(out, n)
    s["rpn_anchor_px"] = float(dist.max())
    s["rpn_logit"] = float(np.abs(logits - golden["rpn_logits"]).max())
    # as sets (bf16): each official top-n proposal's best-IoU proposal among all of the port's
    # (wherever NMS put it), the share found at IoU >= 0.9, and the logits of those pairs
    piou = box_iou(golden["rpn_boxes"], out["proposals"])
    found = piou.max(1) >= 0.9
    s["rpn_found_frac"] = float(found.mean())
    s["rpn_found_iou_median"] = float(np.median(piou.max(1)))
    logits, dist = proposal_logits(out, piou.argmax(1)[found])
    s["rpn_found_anchor_px"] = float(dist.max(initial=0.0))
    s["rpn_found_logit"] = float(np.abs(logits - golden["rpn_logits"][found]).max(initial=0.0))
    # detections: Hungarian matching on box IoU (near-equal scores may swap ranks)
    iou = box_iou(out["boxes"], golden["boxes"])
    rows, cols = hungarian(iou)
    s["num_detections"] = len(out["boxes"])
    s["matched_frac"] = len(rows) / max(len(golden["boxes"]), len(out["boxes"]))
    s["box_iou_min"] = float(iou[rows, cols].min())
    s["box_px"] = float(np.abs(out["boxes"][rows] - golden["boxes"][cols]).max())
    s["rank_shift"] = int(np.abs(rows - cols).max())
    s["box_iou_median"] = float(np.median(iou[rows, cols]))
    score = np.abs(out["scores"][rows] - golden["scores"][cols])
    s["score"], s["score_median"] = float(score.max()), float(np.median(score))
    s["mask_box_px"] = float(np.abs(out["mask_boxes"][rows] - golden["mask_boxes"][cols]).max())
    logit = np.abs(out["mask_logits"][rows] - golden["mask_logits"][cols]).reshape(len(rows), -1)
    s["mask_logit"] = float(logit.max())
    # bf16: the pairs whose boxes agree (IoU >= 0.9), so that the mask head sees about the same ROI
    close = iou[rows, cols] >= 0.9
    s["close_frac"] = float(close.mean())
    s["mask_logit_close"] = float(logit[close].max(initial=0.0))
    gm = decode_rles(golden["mask_rle_counts"], tuple(golden["image_hw"]))
    pm = out["masks"][rows]
    miou = np.diag(mask_iou_matrix(pm, gm[cols]))
    s["mask_iou_min"], s["mask_iou_mean"] = float(miou.min()), float(miou.mean())
    s["mask_iou_mean_close"] = float(miou[close].mean()) if close.any() else 0.0
    s["mask_area_diff_px"] = int(np.abs(pm.sum((1, 2)) - golden["mask_areas"][cols]).max())
    s["masks_identical"] = int(sum(np.array_equal(a, b) for a, b in zip(pm, gm[cols])))
    return s


@pytest.fixture(scope="module", params=CASES)
def result(request: pytest.FixtureRequest, weights: tuple[Path, Any], golden: dict) -> dict:
    case: Case = request.param
    with float32_without_tf32(case):
        out = run_cutler(weights[0], case.device, case.dtype)
    stats = compare_cutler(out, golden)
    print(f"cutler {case.id}: {stats}")  # shown with a failure
    return {"case": case, "stats": stats, "tol": TOLERANCES[case.id]}


def test_weights_are_the_fixture_weights(weights: tuple[Path, Any]) -> None:
    assert_weight_checks(weights[1])


def test_network_input(result: dict, golden: dict, record_property: Any) -> None:
    record_property("golden_figures", repr(result["stats"]))  # for junit reports
    s, tol = result["stats"], result["tol"]
    assert s["input_shape"] == (1, 3, *golden["padded_hw"])
    assert s["resized_hw"] == tuple(golden["resized_hw"])
    assert s["input_mean_rel"] <= tol["input_mean_rel"]


def test_backbone_and_fpn(result: dict, golden: dict) -> None:
    s, tol = result["stats"], result["tol"]
    assert s["fpn_shapes"] == [tuple(v) for v in golden["fpn_shapes"]]
    assert s["fpn_dtype"] == str(result["case"].torch_dtype)  # the case's dtype really ran
    assert s["fpn_level_rel"] <= tol["fpn_level_rel"]
    assert s["fpn_channel_rel"] <= tol["fpn_channel_rel"]


def test_rpn_proposals(result: dict, golden: dict) -> None:
    s, tol = result["stats"], result["tol"]
    assert s["num_proposals"] == int(golden["num_rpn_proposals"])
    assert s["rpn_anchor_px"] <= 1e-3  # each proposal is one anchor's decoded box
    if "rpn_box_px" in tol:  # float32: the official top-50, in rank order
        assert s["rpn_box_px"] <= tol["rpn_box_px"]
        assert s["rpn_logit"] <= tol["rpn_logit"]
    else:  # bf16: as a set (near-tied logits, see TOLERANCES)
        assert s["rpn_found_anchor_px"] <= 1e-3
        assert s["rpn_found_frac"] >= tol["rpn_found_frac"]
        assert s["rpn_found_iou_median"] >= tol["rpn_found_iou_median"]
        assert s["rpn_found_logit"] <= tol["rpn_found_logit"]


def test_detections_boxes_and_scores(result: dict, golden: dict) -> None:
    s, tol = result["stats"], result["tol"]
    assert s["num_detections"] == len(golden["scores"])
    assert s["matched_frac"] >= tol["matched_frac"]
    assert s["score"] <= tol["score"]
    if "rank_shift" in tol:  # float32: every detection, about its official rank
        assert s["box_iou_min"] >= tol["box_iou_min"]
        assert s["box_px"] <= tol["box_px"]
        assert s["rank_shift"] <= tol["rank_shift"]
    else:  # bf16: the matched ones (near-tied scores, see TOLERANCES)
        assert s["box_iou_median"] >= tol["box_iou_median"]
        assert s["score_median"] <= tol["score_median"]


def test_mask_head(result: dict) -> None:
    s, tol = result["stats"], result["tol"]
    if "mask_logit" in tol:  # float32: every matched detection
        assert s["mask_box_px"] <= tol["mask_box_px"]
        assert s["mask_logit"] <= tol["mask_logit"]
    else:  # bf16: the pairs whose boxes agree at IoU >= 0.9
        assert s["close_frac"] >= tol["close_frac"]
        assert s["mask_logit_close"] <= tol["mask_logit_close"]


def test_pasted_masks(result: dict) -> None:
    s, tol = result["stats"], result["tol"]
    if "mask_iou_min" in tol:  # float32: every matched detection
        assert s["mask_iou_min"] >= tol["mask_iou_min"]
    else:  # bf16: the pairs whose boxes agree at IoU >= 0.9
        assert s["mask_iou_mean_close"] >= tol["mask_iou_mean_close"]
