"""DINO ViT-B/8 key features on 256² region crops (the conquer forward): float32 against bfloat16
in the same run, the fused encoder against the transformers forward, agreement with float32 on
real photos, achieved FLOP rate against this machine's measured matmul peak, and peak memory.

Random transformers init in the real architecture (no weights can be downloaded here); timings
are those of the real model. Variants, interleaved round by round so that they share the load:

- ``fp32-hf``: transformers' forward with the key hook, float32 (the code before the fused
  encoder; transformers' SDPA attention);
- ``fp32``: the fused key encoder (one q/k/v product, SDPA, oneDNN pre-packed linears with GELU
  and residual adds fused on the CPU), float32;
- ``bf16-hf``: transformers' forward with weights and activations in bf16;
- ``bf16``: the fused key encoder in bf16 (what ``--dtype bfloat16`` runs).

Per variant: median wall seconds per crop, CPU seconds per crop (process CPU time / threads: on
an idle machine the wall time, much less sensitive to other processes sharing the cores), the
FLOP rate from the CPU time, and (CPU) that rate as a share of a 2048² matmul's rate in the same
dtype measured in the same run. FLOPs per crop are counted analytically (patch projection, 11
full blocks, the last block's LayerNorm and key projection). Agreement of each variant's keys with
``fp32-hf``: per-patch cosine (min, mean) and the largest change of an adjacent-patch cosine (what
the conquer merge compares with its thresholds).

Usage: python benchmarks/dino_speed.py [--device cpu|cuda] [--quick] [--batch 8] [--rounds 3]
Writes benchmarks/results/dino_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np
import torch
from common import SHARED_DATA, peak_rss_bytes, write_result
from PIL import Image

PHOTOS = [
    "sa1b/sam_notebooks/truck.jpg",
    "sa1b/sam_notebooks/groceries.jpg",
    "coco/images/000000229358.jpg",
    "sa1b/sam_notebooks/dogs.jpg",
]


def vit_b8(seed: int = 0) -> Any:
    from transformers import ViTModel

    from unsam.features.convert import dino_vit_config

    torch.manual_seed(seed)
    config = dino_vit_config("vitb8")
    return ViTModel(config, add_pooling_layer=False).eval()


def crops(count: int) -> np.ndarray:
    """``count`` 256² crops of real photos: each photo whole, then its four quadrants."""
    from unsam.masks import resize_image

    out = []
    for name in PHOTOS:
        path = SHARED_DATA / name
        if not path.exists():
            path = REPO / "tests" / "data" / "images" / "coffee.jpg"
        img = np.asarray(Image.open(path).convert("RGB"))
        h, w = img.shape[:2]
        parts = [img] + [
            img[y : y + h // 2, x : x + w // 2] for y in (0, h // 2) for x in (0, w // 2)
        ]
        out += [resize_image(p, (256, 256)) for p in parts]
    while len(out) < count:
        out += out
    return np.stack(out[:count])


def flops_per_crop(side: int = 256, patch: int = 8, dim: int = 768, layers: int = 12) -> int:
    """Multiply-adds x 2 of one crop up to the last layer's keys."""
    n = (side // patch) ** 2
    t = n + 1
    embed = 2 * n * (3 * patch * patch) * dim
    block = 2 * t * dim * 3 * dim + 4 * t * t * dim + 2 * t * dim * dim + 2 * 2 * t * dim * 4 * dim
    return embed + (layers - 1) * block + 2 * t * dim * dim


def matmul_peak(dtype: torch.dtype, device: str) -> float:
    """GFLOP/s of a 2048² matmul in ``dtype`` (CPU time per thread on the CPU)."""
    a = torch.randn(2048, 2048, device=device).to(dtype)
    b = torch.randn(2048, 2048, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        if device == "cpu":
            c0 = time.process_time()
            a @ b
            best = min(best, (time.process_time() - c0) / torch.get_num_threads())
        else:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                a @ b
            torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t0) / 10)
    return 2 * 2048**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--batch", type=int, default=8, help="crops per forward pass")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant")
    parser.add_argument("--quick", action="store_true", help="dry run: 2 crops, 1 round")
    args = parser.parse_args()
    from unsam.features.dino import DinoFeatureExtractor
    from unsam.runtime import cpu_matmul_kernel, resolve_device

    device = str(resolve_device(args.device))
    cuda = device.startswith("cuda")
    batch = 2 if args.quick else args.batch
    rounds = 1 if args.quick else args.rounds
    images = crops(batch)
    base = vit_b8()
    state = base.state_dict()

    def make(dtype: str, fast: bool) -> DinoFeatureExtractor:
        model = vit_b8()
        model.load_state_dict(state)
        return DinoFeatureExtractor(model, device=device, dtype=dtype, fast=fast, batch_size=batch)

    variants = {
        "fp32-hf": make("float32", False),
        "fp32": make("float32", True),
        "bf16-hf": make("bfloat16", False),
        "bf16": make("bfloat16", True),
    }
    if args.quick:
        variants.pop("bf16-hf")
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    keys: dict[str, torch.Tensor] = {}
    peaks: dict[str, float] = {}
    for name, ext in variants.items():  # warm-up (packing, kernel selection) and keys
        keys[name] = ext(images)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            ext(images)
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
    for _ in range(rounds):
        for name, ext in variants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            ext(images)
            if cuda:
                torch.cuda.synchronize()
            wall[name].append((time.perf_counter() - t0) / batch)
            cpu[name].append((time.process_time() - c0) / torch.get_num_threads() / batch)
    fl = flops_per_crop()
    peak32 = matmul_peak(torch.float32, device)
    peak16 = matmul_peak(torch.bfloat16, device)
    ref = keys["fp32-hf"]

    def adjacent(f: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.normalize(f, dim=-1)
        return torch.cat(
            [
                (f[:, :, :-1] * f[:, :, 1:]).sum(-1).flatten(),
                (f[:, :-1] * f[:, 1:]).sum(-1).flatten(),
            ]
        )

    results: dict[str, Any] = {}
    for name, ext in variants.items():
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        seconds = w if cuda else c
        peak = peak16 if name.startswith("bf16") else peak32
        cos = torch.nn.functional.cosine_similarity(keys[name], ref, dim=-1)
        results[name] = {
            "kernel": ext.kernel,
            "wall_s_per_crop": round(w, 4),
            "cpu_s_per_crop": round(c, 4),
            "gflops": round(fl / seconds / 1e9, 1),
            "share_of_matmul_peak": round(fl / seconds / 1e9 / peak, 3),
            "cos_min": float(cos.min()),
            "cos_mean": float(cos.mean()),
            "adjacent_cos_diff_max": float((adjacent(keys[name]) - adjacent(ref)).abs().max()),
        }
        if cuda:
            results[name]["peak_cuda_gib"] = round(peaks[name], 3)
    timing = "wall_s_per_crop" if cuda else "cpu_s_per_crop"
    for name, r in results.items():
        r["speedup_vs_fp32_hf"] = round(results["fp32-hf"][timing] / r[timing], 2)
        print(f"{name:8s} {json.dumps(r)}")
    bf16, fp32 = results["bf16"], results["fp32"]
    print(
        f"bf16 vs fp32 (same encoder): x{fp32[timing] / bf16[timing]:.2f}; bf16 vs the float32 "
        f"transformers forward: x{bf16['speedup_vs_fp32_hf']:.2f}; {fl / 1e9:.1f} GFLOP per crop, "
        f"100 crops at the bf16 matmul peak ({peak16:.0f} GFLOP/s): {100 * fl / peak16 / 1e9:.0f} s"
    )
    kernel = cpu_matmul_kernel() if not cuda else {"gpu": torch.cuda.get_device_name(device)}
    print("kernel:", json.dumps(kernel))
    write_result(
        "dino_speed",
        {
            "device": device,
            "quick": args.quick,
            "batch": batch,
            "rounds": rounds,
            "gflop_per_crop": round(fl / 1e9, 2),
            "matmul_peak_gflops": {"float32": round(peak32, 1), "bfloat16": round(peak16, 1)},
            "timing": timing,
            "kernel": kernel,
            "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
