"""The promptable model on CUDA (marked ``gpu``: skipped with a reason where CUDA is absent).

- float32 on CUDA against float32 on the CPU (TF32 off), bf16 on CUDA against float32 on the CPU;
- no host round trip before a click's masks exist: ``torch.cuda.set_sync_debug_mode("error")``
  around ``decode_clicks`` and around the predictor's device part of a click (points sent, decoder,
  float32 upsampling and resize to the photo, threshold), and around ``encode_image``;
- ``unsam prompt`` and ``unsam eval-points`` with ``--device cuda``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.models.promptable.test_promptable_bf16 import CLICKS, photo
from tests.models.promptable.test_promptable_device_cli import _prompt, eval_points_run
from unsam.masks import mask_iou
from unsam.models.promptable import PromptableConfig, build_model
from unsam.models.promptable.predictor import PromptablePredictor
from unsam.records import decode_rle

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def swin_t() -> nn.Module:
    torch.manual_seed(0)
    return build_model(PromptableConfig.swin_t()).eval()


@pytest.fixture(scope="module")
def cpu_float32(swin_t: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    predictor = PromptablePredictor(copy.deepcopy(swin_t), short_side=None)
    predictor.set_image(photo())
    return predictor.predict_logits(CLICKS)


def _cuda(swin_t: nn.Module, dtype: str) -> PromptablePredictor:
    predictor = PromptablePredictor(
        copy.deepcopy(swin_t), short_side=None, device="cuda", dtype=dtype
    )
    predictor.set_image(photo())
    return predictor


def test_cuda_float32_equals_cpu(swin_t: nn.Module, cpu_float32: tuple) -> None:
    """Logits within 1e-3 and IoUs within 1e-4 (the golden cuda-float32 limits: 10x the CPU ones;
    cuDNN / cuBLAS sum in other orders), masks with IoU >= 0.999 per click and level."""
    logits, iou = _cuda(swin_t, "float32").predict_logits(CLICKS)
    l_cpu, i_cpu = cpu_float32
    assert logits.is_cuda and logits.dtype == torch.float32
    print(f"promptable cuda-float32 vs cpu: logits {float((logits.cpu() - l_cpu).abs().max())}, "
          f"iou {float((iou.cpu() - i_cpu).abs().max())}")  # fmt: skip
    assert float((logits.cpu() - l_cpu).abs().max()) <= 1e-3
    assert float((iou.cpu() - i_cpu).abs().max()) <= 1e-4
    a, b = logits.cpu() > 0, l_cpu > 0
    ious = (a & b).flatten(2).sum(-1) / (a | b).flatten(2).sum(-1).clamp(min=1)
    assert float(ious.min()) >= 0.999


def test_cuda_bfloat16_agrees_with_cpu_float32(swin_t: nn.Module, cpu_float32: tuple) -> None:
    """The CPU bf16 limits of test_promptable_bf16.py: IoU >= 0.97 per click and level, predicted
    IoU within 0.01."""
    logits, iou = _cuda(swin_t, "bfloat16").predict_logits(CLICKS)
    l_cpu, i_cpu = cpu_float32
    a, b = logits.cpu() > 0, l_cpu > 0
    ious = (a & b).flatten(2).sum(-1) / (a | b).flatten(2).sum(-1).clamp(min=1)
    print(f"promptable cuda-bf16 vs cpu-float32: min IoU {float(ious.min())}, "
          f"iou {float((iou.cpu() - i_cpu).abs().max())}")  # fmt: skip
    assert float(ious.min()) >= 0.97
    assert float((iou.cpu() - i_cpu).abs().max()) <= 0.01


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_no_host_round_trip_before_the_masks(swin_t: nn.Module, dtype: str) -> None:
    """After one warm-up click (cuBLAS handles, the resize plan of this photo's size), the decoder
    and the predictor's device part of a click run with synchronising CUDA calls turned into
    errors; the masks and IoUs stay on the GPU until ``predict`` copies them to the host once."""
    predictor = _cuda(swin_t, dtype)
    state = predictor._require_state()
    points = torch.tensor(CLICKS, device="cuda")
    predictor.predict(CLICKS)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            logits, iou = predictor.model.decode_clicks(state, points)
        masks, ious = predictor.masks_on_device(CLICKS)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert logits.is_cuda and masks.is_cuda and ious.is_cuda
    assert masks.shape == (3, 6, *photo().shape[1::-1])
    records = predictor.predict(CLICKS)  # the host part: one copy, then RLE on the CPU
    for n, click in enumerate(records):
        for rec in click:
            assert np.array_equal(decode_rle(rec.rle), masks[n, rec.level - 1].T.cpu().numpy())


def test_no_host_round_trip_in_encode_image(swin_t: nn.Module) -> None:
    """The image part (Swin, pixel decoder, value projections) after one warm-up image."""
    predictor = _cuda(swin_t, "bfloat16")
    pixels = torch.from_numpy(photo()).permute(2, 0, 1)[None].cuda()
    with torch.inference_mode():
        x = predictor.model.normalize_and_pad(pixels)
        predictor.model.encode_image(x)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            state = predictor.model.encode_image(x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert state.mask_features.is_cuda and state.packed_mask_features is None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("promptable") / "tiny"
    build_model(PromptableConfig.tiny()).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prompt_cli_on_cuda(model_dir: Path, tmp_path: Path, dtype: str) -> None:
    """``unsam prompt --device cuda``: the CPU float32 records, masks with IoU >= 0.999 (float32)
    or >= 0.95 (bf16, the CPU bf16 CLI limit)."""
    cpu = _prompt(model_dir, tmp_path / "cpu.json", "--device", "cpu")
    gpu = _prompt(model_dir, tmp_path / "gpu.json", "--device", "cuda", "--dtype", dtype)
    limit = 0.999 if dtype == "float32" else 0.95
    assert len(cpu) == len(gpu) == 12
    for a, b in zip(cpu, gpu, strict=True):
        assert a["level"] == b["level"]
        assert mask_iou(decode_rle(a["segmentation"]), decode_rle(b["segmentation"])) >= limit


def test_eval_points_cli_on_cuda(model_dir: Path, tmp_path: Path) -> None:
    """``unsam eval-points --device cuda``: the CPU's 1-click mIoU within 0.002 (float32)."""
    cpu = eval_points_run(model_dir, tmp_path, "--device", "cpu")
    gpu = eval_points_run(model_dir, tmp_path, "--device", "cuda")
    assert abs(cpu["point_oracle_miou"] - gpu["point_oracle_miou"]) <= 0.002
    print("eval-points cuda:", json.dumps(gpu)[:200])
