"""CascadePSP refinement speed per mask (random weights), at L = 256 and L = 900, and its speed-ups.

Each mask is a centred square of side L/2 in an L×L image, so UnSAM's crop is the whole image and
the network runs at native size L (padded to a multiple of 8), i.e. the cost of one UnSAM mask
whose context crop has long side L. Variants, timed in the same run:

- ``fp32``: float32, contiguous (the original's numerics);
- ``fp32_channels_last``: float32, channels-last memory format (same math);
- ``bf16_channels_last``: bfloat16 weights and activations, channels-last.

For each variant against ``fp32``: the median seconds per mask (after one warm-up run), the
speed ratio, the maximum |Δp| of the probabilities and the fraction of crop pixels whose
``uint8(255 p) > 128`` decision differs. At L = 900 only ``fp32`` runs, once, without warm-up
(one run takes minutes on 2 CPU cores); ``--full`` runs every variant there too.
Peak RSS is read after each side; the activation bytes per padded pixel come from the L = 900 run.

Usage: .venv/bin/python benchmarks/cascadepsp_speed.py [--repeats 3] [--threads 1] [--device cpu]
       [--full]
Writes benchmarks/results/cascadepsp_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np
import torch
from common import peak_rss_bytes, write_result
from torch import nn

from unsam.refine.cascadepsp import (
    CascadePSPRefiner,
    RefinementModule,
    image_to_tensor,
    mask_to_tensor,
    padded_hw,
    refine_crop_global,
)

VARIANTS = {
    "fp32": (torch.float32, False),
    "fp32_channels_last": (torch.float32, True),
    "bf16_channels_last": (torch.bfloat16, True),
}


def _peak_rss_mib() -> float:
    return peak_rss_bytes() / 2**20


def _random_model(seed: int = 0) -> RefinementModule:
    torch.manual_seed(seed)
    model = RefinementModule()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _scene(side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side), bool)
    q = side // 4
    mask[q : side - q, q : side - q] = True  # box side/2 -> crop = the whole image -> native size L
    return image, mask


def _probabilities(
    refiner: CascadePSPRefiner, image: np.ndarray, mask: np.ndarray, side: int
) -> np.ndarray:
    fmt = torch.channels_last if refiner.channels_last else torch.contiguous_format
    im = image_to_tensor(image).to(refiner.device, refiner.dtype).contiguous(memory_format=fmt)
    seg = mask_to_tensor(mask).to(refiner.device, refiner.dtype).contiguous(memory_format=fmt)
    with torch.inference_mode():
        return refine_crop_global(refiner.model, im, seg, side)[0, 0].float().cpu().numpy()


def _run_side(
    model: RefinementModule, side: int, variants: list[str], repeats: int, warmup: int, device: str
) -> dict[str, object]:
    image, mask = _scene(side, side)
    out: dict[str, object] = {"L": side, "network_input_hw": padded_hw((side, side), side)}
    base_p = None
    for name in variants:
        dtype, channels_last = VARIANTS[name]
        refiner = CascadePSPRefiner(
            copy.deepcopy(model), device=device, dtype=dtype, channels_last=channels_last
        )
        refiner._warned = True  # no CPU-time warning inside the timing loop
        for _ in range(warmup):
            refiner.refine_masks(image, [mask])
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            refiner.refine_masks(image, [mask])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        row: dict[str, object] = {
            "seconds_per_mask": statistics.median(times),
            "runs": times,
            "warmup_runs": warmup,
        }
        p = _probabilities(refiner, image, mask, side)
        if base_p is None:
            base_p = p
            row["foreground_fraction"] = float(((p * 255).astype(np.uint8) > 128).mean())
        else:
            decisions = ((p * 255).astype(np.uint8) > 128) != (
                (base_p * 255).astype(np.uint8) > 128
            )
            row["max_abs_prob_diff_vs_fp32"] = float(np.abs(p - base_p).max())
            row["mask_pixels_differing_vs_fp32"] = float(decisions.mean())
            row["speedup_vs_fp32"] = out["fp32"]["seconds_per_mask"] / row["seconds_per_mask"]  # type: ignore[index]
        out[name] = row
        print(
            f"L={side} {name}: {row['seconds_per_mask']:.2f} s/mask "
            f"(runs {[round(t, 2) for t in times]})"
            + (
                f", x{row['speedup_vs_fp32']:.2f} vs fp32, "
                f"max|dp| {row['max_abs_prob_diff_vs_fp32']:.2e}, "
                f"{100 * row['mask_pixels_differing_vs_fp32']:.3f}% pixels differ"
                if "speedup_vs_fp32" in row
                else ""
            ),
            flush=True,
        )
        del refiner
    out["peak_rss_mib_after"] = _peak_rss_mib()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per variant at L=256 (median)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (CASCADEPSP.md §5: 1 was faster than 2 on the 2-core machines)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--full", action="store_true", help="also time every variant at L=900 (slow on CPU)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _random_model()
    rss_model = _peak_rss_mib()
    print(f"model built: peak RSS {rss_model:.0f} MiB", flush=True)
    small = _run_side(model, 256, list(VARIANTS), args.repeats, 1, args.device)
    rss_256 = _peak_rss_mib()
    big_variants = list(VARIANTS) if args.full else ["fp32"]
    big = _run_side(
        model,
        900,
        big_variants,
        1 if not args.full else args.repeats,
        0 if not args.full else 1,
        args.device,
    )
    rss_900 = _peak_rss_mib()
    px = 904 * 904
    data = {
        "device": args.device,
        "threads": args.threads,
        "L256": small,
        "L900": big,
        "peak_rss_mib": {"model_built": rss_model, "after_L256": rss_256, "after_L900": rss_900},
        "activation_bytes_per_padded_pixel_L900": (rss_900 - rss_model) * 2**20 / px,
        "note": "L=900 fp32: one run, no warm-up (minutes per run on 2 CPU cores)"
        if not args.full
        else "",
    }
    print(
        f"peak RSS: model {rss_model:.0f} MiB, after L=256 {rss_256:.0f} MiB, "
        f"after L=900 {rss_900:.0f} MiB "
        f"(~{data['activation_bytes_per_padded_pixel_L900']:.0f} B per padded pixel "
        "above the model)"
    )
    print(f"wrote {write_result('cascadepsp_speed', data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
