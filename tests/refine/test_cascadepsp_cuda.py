"""CascadePSP on CUDA (marked ``gpu``: skipped with a reason where CUDA is absent).

- float32 on CUDA against float32 on the CPU, same weights and crop, TF32 off;
- bf16 on CUDA against float32 on the CPU (the CPU bf16 limits);
- no host round trip inside the network: ``torch.cuda.set_sync_debug_mode("error")`` around
  ``refine_crop_global`` (the three passes, the padding, the float32 resize back);
- the refiner end to end on CUDA: same accept decisions as on the CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from tests.refine.test_cascadepsp_bf16 import (
    conditioned_model,
    crop_inputs,
    mixed_model,
    photo_and_mask,
)
from unsam.refine.cascadepsp import CascadePSPRefiner, probabilities_to_mask, refine_crop_global

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    """float32 means float32: TF32 convolutions would round inputs to 10 mantissa bits."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _probabilities(model, im, seg, side, device: str, dtype: torch.dtype) -> torch.Tensor:
    refiner = CascadePSPRefiner(copy.deepcopy(model), device=device, dtype=dtype)
    with torch.inference_mode():
        p = refine_crop_global(
            refiner.model, im.to(refiner.device), seg.to(refiner.device), side,
            dtype=refiner.dtype, memory_format=refiner.memory_format,
        )  # fmt: skip
    return p[0, 0].cpu()


@pytest.fixture(scope="module")
def case() -> tuple:
    image, mask = photo_and_mask()
    im, seg, side = crop_inputs(image, mask)
    model = mixed_model(0, im, seg, side)
    p_cpu = _probabilities(model, im, seg, side, "cpu", torch.float32)
    return model, im, seg, side, p_cpu


def test_cuda_float32_equals_cpu(case: tuple) -> None:
    """cuDNN's algorithms sum in other orders than oneDNN: differences of float32 rounding only.
    Limit |dp| <= 1e-4 (the golden cuda-float32 limit, 10x the CPU one) and at most 0.2 % of the
    thresholded pixels (a half-foreground map has many pixels within 1e-4 of the threshold)."""
    model, im, seg, side, p_cpu = case
    p_gpu = _probabilities(model, im, seg, side, "cuda", torch.float32)
    print(f"CascadePSP cuda-float32 vs cpu-float32: max |dp| {float((p_gpu - p_cpu).abs().max())}")
    assert float((p_gpu - p_cpu).abs().max()) <= 1e-4
    m_cpu, m_gpu = probabilities_to_mask(p_cpu), probabilities_to_mask(p_gpu)
    assert float((m_cpu != m_gpu).float().mean()) <= 0.002


def test_cuda_bfloat16_agrees_with_cpu_float32(case: tuple) -> None:
    """bf16 on CUDA (cuDNN NHWC bf16 convolutions, float32 accumulation): the CPU bf16 limits of
    test_cascadepsp_bf16.py (max |dp| <= 0.08, mask IoU >= 0.93, <= 3 % of pixels differ)."""
    model, im, seg, side, p_cpu = case
    p_gpu = _probabilities(model, im, seg, side, "cuda", torch.bfloat16)
    m_cpu, m_gpu = probabilities_to_mask(p_cpu), probabilities_to_mask(p_gpu)
    iou = float((m_cpu & m_gpu).sum() / (m_cpu | m_gpu).sum())
    print(f"CascadePSP cuda-bf16 vs cpu-float32: max |dp| "
          f"{float((p_gpu - p_cpu).abs().max())}, IoU {iou}")  # fmt: skip
    assert float((p_gpu - p_cpu).abs().max()) <= 0.08
    assert iou >= 0.93
    assert float((m_cpu != m_gpu).float().mean()) <= 0.03


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_host_round_trip_inside_the_network(case: tuple, dtype: torch.dtype) -> None:
    """After one warm-up (cuDNN's algorithm choice, the PSP upsampling matrix of this size), the
    whole ``refine_crop_global`` runs with synchronising CUDA calls turned into errors."""
    model, im, seg, side, _ = case
    refiner = CascadePSPRefiner(copy.deepcopy(model), device="cuda", dtype=dtype)
    im, seg = im.cuda(), seg.cuda()

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return refine_crop_global(
                refiner.model, im, seg, side, dtype=refiner.dtype,
                memory_format=refiner.memory_format,
            )  # fmt: skip

    run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pred = run()
        mask = probabilities_to_mask(pred)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert pred.dtype == torch.float32 and pred.is_cuda and mask.is_cuda


def test_refiner_on_cuda_end_to_end() -> None:
    """refine_masks on CUDA in both dtypes: the same accept decisions as the CPU's float32 run
    and refined masks with IoU >= 0.93 against it, on the three committed photos."""
    model = conditioned_model(0)
    for name in ("astronaut.jpg", "chelsea.png", "coffee.jpg"):
        image, mask = photo_and_mask(name)
        ((want, want_iou),) = CascadePSPRefiner(
            copy.deepcopy(model), min_iou=0.2
        ).refine_masks(image, [mask])
        for dtype in (torch.float32, torch.bfloat16):
            refiner = CascadePSPRefiner(
                copy.deepcopy(model), device="cuda", dtype=dtype, min_iou=0.2
            )
            ((got, got_iou),) = refiner.refine_masks(image, [mask])
            assert (got is None) == (want is None), (name, dtype)
            assert abs(got_iou - want_iou) <= 0.02, (name, dtype)
            if got is not None:
                assert (got & want).sum() / max(1, (got | want).sum()) >= 0.93
