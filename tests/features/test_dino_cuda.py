"""DINO keys on CUDA against the CPU (float32 and bf16), no host round trip inside the forward,
and the memory formula against the GPU allocator's peak. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.features.test_dino_fast import _copy, _vit_b8, crops  # noqa: F401 (fixture)
from unsam.features.dino import DinoFeatureExtractor

pytestmark = pytest.mark.gpu


@pytest.fixture
def no_tf32():
    """float32 comparisons in real float32 (cuDNN convs default to TF32 on Ampere and later)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.mark.parametrize(
    ("dtype", "min_cos", "mean_cos"),
    # float32: the same arithmetic in another summation order (1e-6 relative);
    # bf16 on CUDA vs float32 on the CPU: the CPU bf16 agreement (min 0.99994) with margin
    [("float32", 0.99999, 0.999999), ("bfloat16", 0.999, 0.9999)],
)
def test_cuda_keys_equal_cpu_keys(
    crops: np.ndarray,  # noqa: F811
    no_tf32: None,
    dtype: str,
    min_cos: float,
    mean_cos: float,
) -> None:
    model = _vit_b8()
    cpu = DinoFeatureExtractor(_copy(model))(crops)
    gpu_ext = DinoFeatureExtractor(_copy(model), device="cuda", dtype=dtype)
    assert gpu_ext.kernel == "fused"
    gpu = gpu_ext(crops)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    cos = _cos(cpu, gpu)
    assert float(cos.min()) >= min_cos and float(cos.mean()) >= mean_cos, (cos.min(), cos.mean())
    if dtype == "float32":
        torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)


def test_forward_has_no_host_round_trip(crops: np.ndarray) -> None:  # noqa: F811
    ext = DinoFeatureExtractor(_vit_b8(), device="cuda", dtype="bfloat16")
    x = torch.from_numpy(crops).cuda().permute(0, 3, 1, 2).float().div(255).bfloat16()
    ext._forward_keys(x)  # warm-up (kernel selection, workspace)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        keys = ext._forward_keys(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert keys.shape == (2, 32 * 32 + 1, 768) and keys.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_memory_formula_bounds_the_gpu_peak(dtype: str) -> None:
    """A forward pass of b crops allocates at most b * bytes_per_image beyond its input."""
    ext = DinoFeatureExtractor(_vit_b8(), device="cuda", dtype=dtype)
    b = 16
    x = torch.zeros(b, 3, 256, 256, device="cuda", dtype=ext.dtype)
    with torch.inference_mode():
        ext._forward_keys(x)  # warm-up: cuBLAS / SDPA workspaces
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        keys = ext._forward_keys(x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    del keys
    assert peak <= b * ext.bytes_per_image((256, 256)), (
        peak / 2**20,
        ext.bytes_per_image((256, 256)),
    )


def test_auto_batch_takes_all_crops_of_an_image_on_the_gpu() -> None:
    """4 GiB by default on a GPU: 100 released crops (256²) in bf16 go through 1 forward pass."""
    ext = DinoFeatureExtractor(_vit_b8(), device="cuda", dtype="bfloat16", batch_size=None)
    assert ext.batch_for((256, 256)) >= 100
