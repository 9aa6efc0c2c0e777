"""The released pipeline and CutLER on CUDA against the CPU (float32 and bf16), the GPU ROIAlign
against the CPU one, and no host round trip inside CutLER's networks. Skipped without CUDA."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.divide.test_cutler_bf16 import CONFIG, agreement, spread_model
from tests.divide.test_cutler_ops import _random_boxes
from tests.test_pipeline_bf16 import (  # noqa: F401 (fixtures)
    REGIONS,
    mask_agreement,
    photo,
    released_weights,
    run_dico,
)
from unsam.divide.cutler import CutlerDetector, ops, preprocess_image

pytestmark = pytest.mark.gpu


@pytest.fixture
def no_tf32():
    """float32 on CUDA in real float32 (cuDNN convolutions default to TF32)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    from PIL import Image

    from tests.divide.test_cutler_bf16 import IMAGES

    return np.asarray(Image.open(IMAGES / "coffee.jpg").convert("RGB"))


def test_separable_roi_align_on_cuda_equals_sparse_on_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 32, 200 // 2**k, 336 // 2**k, generator=g) for k in range(4)]
    boxes = ops.clip_boxes(_random_boxes(g, 500, 800, 1344), (800, 1344))
    boxes = boxes[ops.nonempty_boxes(boxes)]
    cpu = ops.multilevel_roi_align(feats, boxes, 7, (4, 8, 16, 32), method="sparse")
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        gpu = ops.multilevel_roi_align([f.cuda() for f in feats], boxes.cuda(), 7, (4, 8, 16, 32))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cutler_on_cuda_equals_cpu(coffee: np.ndarray, no_tf32: None, dtype: str) -> None:
    """float32: the same detections (another summation order only); bf16 on CUDA vs float32 on
    the CPU: the CPU bf16 test's thresholds (tests/divide/test_cutler_bf16.py)."""
    model = spread_model(0)
    cpu = CutlerDetector(copy.deepcopy(model), CONFIG).detect(coffee)
    gpu = CutlerDetector(copy.deepcopy(model), CONFIG, device="cuda", dtype=dtype).detect(coffee)
    assert len(gpu) == len(cpu) == 100
    got = agreement(cpu, gpu)
    if dtype == "float32":
        # a swap of two near-tied boxes at the top-100 cut or in the NMS can pair different boxes
        assert got["matched"] >= 0.95, got
        assert got["score_diff_median"] <= 1e-4 and got["score_diff_max"] <= 0.05, got
        assert got["box_diff_median_px"] <= 0.05 and got["mask_iou_mean"] >= 0.98, got
    else:
        assert got["matched"] >= 0.85, got
        assert got["score_diff_median"] <= 0.01 and got["score_diff_max"] <= 0.1, got
        assert got["box_diff_median_px"] <= 0.5, got
        assert got["mask_iou_mean"] >= 0.95 and got["masks_identical"] >= 0.6, got


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cutler_networks_have_no_host_round_trip(coffee: np.ndarray, dtype: str) -> None:
    """Backbone + FPN, the three cascade stages (ROIAlign included) and the mask head run without
    a synchronising call; the RPN's NMS and the score filter between them read back by design."""
    det = CutlerDetector(spread_model(0), CONFIG, device="cuda", dtype=dtype)
    det.detect(coffee)  # warm-up
    cfg = det.config
    x, hw = preprocess_image(coffee, cfg)
    x = x.to("cuda", dtype=det.dtype, memory_format=torch.channels_last)
    with torch.inference_mode():
        feats = det.model.features(x)
        proposals = det.model.propose(
            feats, hw, cfg.rpn_pre_nms_topk, cfg.rpn_post_nms_topk, cfg.rpn_nms_thresh
        )
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            feats = det.model.features(x)
            boxes, scores = det.model.detect_boxes(feats, proposals, hw)
            probs = det.model.predict_masks(feats, boxes[:100])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert boxes.dtype == scores.dtype == probs.dtype == torch.float32
    assert probs.shape == (min(100, len(proposals)), 28, 28)


@pytest.mark.parametrize(
    ("dtype", "min_divide_iou", "min_exact", "min_iou"),
    # float32: CUDA and CPU differ in summation order only. bf16: both in bf16 on different
    # kernels, about as far apart as bf16 and float32; random ViT weights leave many adjacent-patch
    # similarities near a merge threshold, so the conquer bound is loose (real figures:
    # benchmarks/released_pipeline_speed.py)
    [("float32", 0.9, 0.8, 0.95), ("bfloat16", 0.8, 0.0, 0.5)],
)
def test_pipeline_on_cuda_equals_cpu(
    released_weights: dict[str, str],  # noqa: F811
    photo: np.ndarray,  # noqa: F811
    no_tf32: None,
    dtype: str,
    min_divide_iou: float,
    min_exact: float,
    min_iou: float,
) -> None:
    """End to end (CutLER divide + conquer) on CUDA against the CPU, then conquer alone on the
    CPU's divide masks (the features' agreement, without the divide's)."""
    cpu, divided = run_dico(released_weights, photo, device="cpu", dtype=dtype)
    gpu, _ = run_dico(released_weights, photo, device="cuda", dtype=dtype)
    end_to_end = mask_agreement(cpu, gpu)
    print(dtype, "end to end", end_to_end)
    assert end_to_end["divide_a"] == end_to_end["divide_b"] == REGIONS, end_to_end
    assert end_to_end["divide_best_iou_mean"] >= min_divide_iou, end_to_end
    gpu_same_divide, _ = run_dico(
        released_weights, photo, device="cuda", dtype=dtype, divided=divided
    )
    got = mask_agreement(cpu, gpu_same_divide)
    print(dtype, "same divide", got)
    assert got["divide_best_iou_mean"] == 1.0, got
    assert got["conquer_a"] > 0 and got["mean_best_iou"] >= min_iou, got
    assert got["exact_share"] >= min_exact, got
