"""CutLER in bfloat16 and the GPU ROIAlign (run here on CPU tensors): what stays float32, agreement
with float32 on a real photo, and the separable ROIAlign against the sparse one and the naive
reference."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.divide.test_cutler_model import conditioned_model
from tests.divide.test_cutler_ops import _random_boxes
from tests.reference import cutler_ops_naive as ref
from tests.reference.box_matching import greedy_box_matching
from unsam.divide.cutler import CascadeMaskRCNN, CutlerConfig, CutlerDetector, ops
from unsam.divide.cutler.model import FLOAT32_LAYERS, cast_for_inference, fold_frozen_batchnorm

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"
CONFIG = CutlerConfig(min_size=480, max_size=800)


def spread_model(seed: int = 0) -> CascadeMaskRCNN:
    """Conditioned random weights whose box classifiers really depend on the ROI features (scores
    spread over ~0.35 instead of the benchmark model's 0.0004), so that float32 and bf16 rank the
    same boxes first and the comparison measures the arithmetic, not ties."""
    model = conditioned_model(seed=seed)
    with torch.no_grad():
        for pred in model.box_predictors:
            pred.cls_score.weight.mul_(1000.0)
            pred.cls_score.bias.zero_()
    return model


def agreement(a, b) -> dict[str, float]:  # noqa: ANN001 (CutlerDetections)
    """Matched share, score / box differences and mask IoU of b's detections against a's."""
    pairs = greedy_box_matching(a.boxes_xyxy, b.boxes_xyxy)
    score = np.array([abs(float(a.scores[i]) - float(b.scores[j])) for i, j in pairs])
    box = np.array([np.abs(a.boxes_xyxy[i] - b.boxes_xyxy[j]).max() for i, j in pairs])
    ious, same = [], []
    for i, j in pairs:
        x, y = a.masks[i], b.masks[j]
        union = np.logical_or(x, y).sum()
        ious.append(np.logical_and(x, y).sum() / union if union else 1.0)
        same.append(np.array_equal(x, y))
    return {
        "matched": len(pairs) / max(1, len(a)),
        "score_diff_median": float(np.median(score)),
        "score_diff_max": float(score.max()),
        "box_diff_median_px": float(np.median(box)),
        "mask_iou_mean": float(np.mean(ious)),
        "masks_identical": float(np.mean(same)),
    }


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(IMAGES / "coffee.jpg").convert("RGB"))


# ---------------------------------------------------------------- what runs in which dtype


#: The layers the spec keeps float32 in a bf16 detector, written out here (not read from
#: FLOAT32_LAYERS, so that dropping an entry from the code's constant fails this test): the RPN's
#: ranked logits and its anchor deltas, the box predictors (scores and box deltas of every cascade
#: stage) and the mask predictor.
SPEC_FLOAT32_LAYERS = (
    "rpn.objectness_logits",
    "rpn.anchor_deltas",
    "box_predictors.0",
    "box_predictors.1",
    "box_predictors.2",
    "mask_head.predictor",
)


def test_cast_keeps_prediction_layers_and_anchors_float32() -> None:
    model = cast_for_inference(conditioned_model(), torch.bfloat16)
    assert set(FLOAT32_LAYERS) <= {"rpn.objectness_logits", "rpn.anchor_deltas",
                                   "box_predictors", "mask_head.predictor"}  # fmt: skip
    kept = set()
    for name, param in model.named_parameters():
        keep = [k for k in SPEC_FLOAT32_LAYERS if name.startswith(k + ".")]
        kept.update(keep)
        assert param.dtype == (torch.float32 if keep else torch.bfloat16), name
    assert kept == set(SPEC_FLOAT32_LAYERS)  # each named layer exists and was checked
    for name, buf in model.named_buffers():
        if name.startswith("_cell_anchors"):
            assert buf.dtype == torch.float32, name
    assert not any("norm" in name for name, _ in model.named_buffers())  # BN folded away
    untouched = conditioned_model()
    assert cast_for_inference(untouched, torch.float32) is untouched  # float32: official numerics
    assert any("norm.running_var" in n for n, _ in untouched.named_buffers())


def test_folded_batchnorm_is_the_same_function(photo: np.ndarray) -> None:
    model = conditioned_model()
    with torch.no_grad():  # non-trivial statistics, so the fold has something to do
        g = torch.Generator().manual_seed(1)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.features(x)
        after = fold_frozen_batchnorm(copy.deepcopy(model)).features(x)
    for p, q in zip(before, after, strict=True):
        torch.testing.assert_close(q, p, atol=2e-4 * float(p.abs().max()), rtol=1e-4)


def test_bf16_detector_runs_in_bf16_with_float32_outputs(photo: np.ndarray) -> None:
    det = CutlerDetector(spread_model(), CutlerConfig(min_size=128, max_size=256), dtype="bfloat16")
    seen: list[torch.dtype] = []
    handle = det.model.fpn.register_forward_hook(lambda m, i, out: seen.append(out[0].dtype))
    dets = det.detect(photo)
    handle.remove()
    assert seen == [torch.bfloat16]
    assert dets.scores.dtype == np.float32 and dets.mask_probs.dtype == torch.float32
    assert len(dets) > 0


# ---------------------------------------------------------------- bf16 against float32


def test_bf16_detections_agree_with_float32_on_a_photo(photo: np.ndarray) -> None:
    """Measured (coffee.jpg, 480/800 resize, spread_model(0)): 93/100 detections matched (box IoU
    >= 0.5), score differences median 2.4e-3 / max 0.046, box corners median 0.07 px, mask IoU
    mean 0.98, 86 % of the masks identical. The unmatched ones sit at the top-100 cut and among
    NMS-overlapping boxes whose order bf16 swaps. Thresholds with margins: 85 %, 0.01 / 0.1,
    0.5 px, 0.95, 60 %."""
    model = spread_model(0)
    a = CutlerDetector(copy.deepcopy(model), CONFIG).detect(photo)
    b = CutlerDetector(copy.deepcopy(model), CONFIG, dtype="bfloat16").detect(photo)
    assert len(a) == len(b) == 100
    got = agreement(a, b)
    assert got["matched"] >= 0.85, got
    assert got["score_diff_median"] <= 0.01 and got["score_diff_max"] <= 0.1, got
    assert got["box_diff_median_px"] <= 0.5, got
    assert got["mask_iou_mean"] >= 0.95 and got["masks_identical"] >= 0.6, got


# ---------------------------------------------------------------- the GPU ROIAlign on the CPU


@pytest.mark.parametrize(
    ("seed", "output_size", "scale", "sampling_ratio", "aligned"),
    [
        (0, 7, 0.25, 0, True),
        (1, 14, 0.125, 0, True),
        (2, 2, 1.0, 0, True),
        (3, 3, 0.5, 2, True),
        (4, 4, 0.25, 0, False),
    ],
)
def test_separable_roi_align_matches_sparse_and_naive(
    seed: int, output_size: int, scale: float, sampling_ratio: int, aligned: bool
) -> None:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 3, 11, 17, generator=g)
    boxes = _random_boxes(g, 25, 11 / scale, 17 / scale)  # partly outside, tiny, empty, thin
    batch = (torch.arange(25) % 2).float()[:, None]
    rois = torch.cat([batch, boxes], dim=1)
    sparse = ops.roi_align(feats, rois, output_size, scale, sampling_ratio, aligned)
    sep = ops.roi_align_separable(feats, rois, output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(sep, sparse, atol=2e-6, rtol=1e-5)
    naive = np.stack(
        [
            ref.roi_align_naive(
                feats[int(b)].numpy(),
                tuple(box.tolist()),
                output_size,
                scale,
                sampling_ratio,
                aligned,
            )
            for b, box in zip(batch[:, 0], boxes, strict=True)
        ]
    )
    np.testing.assert_allclose(sep.numpy(), naive, rtol=1e-5, atol=1e-5)


def test_separable_roi_align_chunks_and_bf16_features() -> None:
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(1, 8, 20, 24, generator=g)
    rois = torch.cat([torch.zeros(30, 1), _random_boxes(g, 30, 80, 96)], dim=1)
    whole = ops.roi_align_separable(feats, rois, 7, 0.25)
    chunked = ops.roi_align_separable(feats, rois, 7, 0.25, max_bytes=1)  # one box per chunk
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    half = ops.roi_align_separable(feats.bfloat16(), rois, 7, 0.25)
    assert half.dtype == torch.float32  # averaged in float32
    torch.testing.assert_close(half, ops.roi_align(feats.bfloat16().float(), rois, 7, 0.25))


def test_multilevel_separable_equals_sparse_at_detector_scale() -> None:
    """The CUDA method (level choice folded into the weights) against the CPU one: 300 clipped
    boxes on four FPN levels of an 800x1088 input."""
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 16, 200 // 2**k, 272 // 2**k, generator=g) for k in range(4)]
    boxes = ops.clip_boxes(_random_boxes(g, 300, 800, 1088), (800, 1088))
    boxes = boxes[ops.nonempty_boxes(boxes)]
    sparse = ops.multilevel_roi_align(feats, boxes, 7, (4, 8, 16, 32), method="sparse")
    sep = ops.multilevel_roi_align(feats, boxes, 7, (4, 8, 16, 32), method="separable")
    torch.testing.assert_close(sep, sparse, atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="method"):
        ops.multilevel_roi_align(feats, boxes, 7, (4, 8, 16, 32), method="dense")


def test_separable_geometry_survives_a_reciprocal_division(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA divides by a Python scalar as a product with its reciprocal. The ROI geometry divides
    by a tensor instead, so a reciprocal there (what CUDA would do) must not change the result:
    before the fix, 49 of these boxes got another adaptive grid (ceil of 48.000004) on CUDA."""
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 8, 200 // 2**k, 336 // 2**k, generator=g) for k in range(4)]
    boxes = ops.clip_boxes(_random_boxes(g, 500, 800, 1344), (800, 1344))
    boxes = boxes[ops.nonempty_boxes(boxes)]
    sparse = ops.multilevel_roi_align(feats, boxes, 7, (4, 8, 16, 32), method="sparse")
    true_div = torch.Tensor.__truediv__

    def reciprocal_div(a: torch.Tensor, b: object) -> torch.Tensor:
        if isinstance(b, (int, float)):  # CUDA's rule for a scalar divisor
            return a * torch.tensor(1.0 / b, dtype=a.dtype)
        return true_div(a, b)

    monkeypatch.setattr(torch.Tensor, "__truediv__", reciprocal_div)
    sep = ops.multilevel_roi_align(feats, boxes, 7, (4, 8, 16, 32), method="separable")
    monkeypatch.undo()
    torch.testing.assert_close(sep, sparse, atol=2e-6, rtol=1e-5)


def test_multilevel_roi_align_samples_float32_boxes_on_bf16_features() -> None:
    """bf16 feature maps are upcast level by level; the boxes, sample positions and weights stay
    float32, so the result equals the float32 path on the upcast maps exactly. Boxes rounded to
    bf16 (8 mantissa bits: +-2 px at 500 px) would move the samples."""
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(1, 8, 160 // s, 224 // s, generator=g).bfloat16() for s in (4, 8, 16, 32)]
    x0y0 = torch.rand(40, 2, generator=g) * torch.tensor([200.0, 140.0])
    size = 1 + torch.rand(40, 2, generator=g) * 150  # boxes on every level
    boxes = torch.cat([x0y0, x0y0 + size], dim=1)
    for method in ("sparse", "separable"):
        got = ops.multilevel_roi_align(feats, boxes, 7, (4, 8, 16, 32), method=method)
        want = ops.multilevel_roi_align(
            [f.float() for f in feats], boxes, 7, (4, 8, 16, 32), method=method
        )
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

