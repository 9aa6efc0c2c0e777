"""CascadePSP refinement speed per crop, float32 against bfloat16, and their agreement on photos.

Random weights in the real architecture (speed does not depend on the values). Measured in one run:

1. Speed, per crop, at L = 256 and L = 900 (a 904² network input, the size every UnSAM mask with a
   context of >= 900 px runs at): a photo from ``../shared/data`` resized to L×L with a centred
   L/2 square mask, so UnSAM's context crop is the whole image and the network runs at native
   size. For each dtype: the median wall seconds per crop (after one warm-up at L = 256; L = 900
   without warm-up), the process CPU seconds (on a loaded machine CPU time is what the crop costs;
   wall time also counts the time other processes held the cores), the peak resident memory of
   the run (the kernel's peak counter is reset before each), the multiply-adds per crop (counted
   with ``torch.utils.flop_counter`` at L = 256 and scaled to the padded pixels) and the achieved
   GFLOP/s. ``bfloat16`` is the refiner's reduced-precision path (weights and activations in
   bf16, BatchNorms folded in float32 first, the PSP concatenation removed; float32 input resizes,
   resize back and threshold). The speed ratio is float32 / bfloat16 in the same run.
2. The hardware reference: a 2048² matrix product in float32 and bfloat16 with the same threads
   (GFLOP/s), so that the network's rate reads as a share of what the cores do on a large product.
3. Agreement on real photos: masks of COCO objects from ``../shared/data/coco`` (the official
   annotations, objects whose context crop is at most ``--agree-side`` px so that float32 stays
   affordable), refined in both dtypes: IoU of the refined crops, the share of identical refined
   masks, the largest probability difference, and the accept decisions (IoU >= 0.5 with the raw
   mask, area <= 0.9) that differ.
4. Which kernels ran: :func:`unsam.runtime.cpu_matmul_kernel` (CPU flags, oneDNN's
   implementation for a bf16 product and convolution).

Usage: .venv/bin/python benchmarks/cascadepsp_speed.py [--dtype both|float32|bfloat16]
       [--device cpu|cuda] [--quick] [--repeats 3] [--threads N] [--photos 3]
``--quick``: L = 256 only, one repeat, one agreement photo. Writes
benchmarks/results/cascadepsp_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np
import torch
from common import SHARED_DATA, peak_rss_bytes, write_result
from PIL import Image
from torch import nn

from unsam.refine.cascadepsp import (
    CascadePSPRefiner,
    RefinementModule,
    clamp_side,
    image_to_tensor,
    mask_to_tensor,
    padded_hw,
    probabilities_to_mask,
    refine_crop_global,
    unsam_crop_box,
)
from unsam.runtime import add_device_arguments, cpu_matmul_kernel, dtype_name, resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: the issue's goal on the 2-core CPUs, bf16, one 904² crop
GOAL_S_PER_904_CROP = 30.0


def _random_model(seed: int = 0) -> RefinementModule:
    torch.manual_seed(seed)
    model = RefinementModule()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def _photos() -> list[Path]:
    folder = SHARED_DATA / "coco" / "images"
    return sorted(folder.glob("*.jpg")) if folder.is_dir() else []


def _scene(side: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo resized to side×side (noise when the data folder is absent) and a centred square
    mask of side/2: UnSAM's crop is then the whole image and the network runs at L = side."""
    photos = _photos()
    if photos:
        image = np.array(Image.open(photos[0]).convert("RGB").resize((side, side)))
    else:
        image = np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side), bool)
    q = side // 4
    mask[q : side - q, q : side - q] = True
    return np.ascontiguousarray(image), mask


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: ``5`` into /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_bytes() / 2**20


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def flops_per_pixel(refiner: CascadePSPRefiner, side: int = 256) -> float:
    """Floating-point operations (2 per multiply-add) of one forward per padded input pixel,
    counted by ``torch.utils.flop_counter`` on a ``side``² input."""
    from torch.utils.flop_counter import FlopCounterMode

    im = torch.zeros(1, 3, side, side, device=refiner.device)
    seg = torch.ones(1, 1, side, side, device=refiner.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        refine_crop_global(
            refiner.model, im, seg, side, dtype=refiner.dtype, memory_format=refiner.memory_format
        )
    return counter.get_total_flops() / (side * side)


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < 2.0 or reps < 3:
        a @ b
        reps += 1
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def time_side(
    model: RefinementModule,
    side: int,
    dtypes: list[str],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, object]:
    image, mask = _scene(side)
    hw = padded_hw((side, side), side)
    out: dict[str, object] = {"L": side, "network_input_hw": list(hw)}
    for name in dtypes:
        refiner = CascadePSPRefiner(copy.deepcopy(model), device=device, dtype=DTYPES[name])
        refiner._warned = True  # no CPU-time warning inside the timing loop
        fpp = flops_per_pixel(refiner)
        _reset_peak(device)
        for _ in range(warmup):
            refiner.refine_masks(image, [mask])
        walls, cpus = [], []
        for _ in range(repeats):
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            refiner.refine_masks(image, [mask])
            _sync(device)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        wall = statistics.median(walls)
        flops = fpp * hw[0] * hw[1]
        row: dict[str, object] = {
            "seconds_per_crop": wall,
            "runs": walls,
            "cpu_seconds_per_crop": statistics.median(cpus),
            "warmup_runs": warmup,
            "gflop_per_crop": flops / 1e9,
            "achieved_gflops": flops / wall / 1e9,
            "achieved_gflops_cpu_time": flops / statistics.median(cpus) / 1e9,
            "peak_memory_mib": _peak_mib(device),
            "channels_last": refiner.channels_last,
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        out[name] = row
        print(
            f"L={side} {name}: {wall:.2f} s/crop wall (CPU {row['cpu_seconds_per_crop']:.2f} s; "
            f"runs {[round(t, 2) for t in walls]}), {flops / 1e9:.0f} GFLOP, "
            f"{row['achieved_gflops']:.0f} GFLOP/s, peak {row['peak_memory_mib']:.0f} MiB, "
            f"load {row['load_average_1min']}",
            flush=True,
        )
        del refiner
    if "float32" in out and "bfloat16" in out:
        f32, b16 = out["float32"], out["bfloat16"]
        out["speedup_bf16_vs_fp32"] = f32["seconds_per_crop"] / b16["seconds_per_crop"]  # type: ignore[index]
        out["speedup_bf16_vs_fp32_cpu_time"] = (
            f32["cpu_seconds_per_crop"] / b16["cpu_seconds_per_crop"]  # type: ignore[index]
        )
        print(
            f"L={side}: bf16 is x{out['speedup_bf16_vs_fp32']:.2f} faster than fp32 (wall), "
            f"x{out['speedup_bf16_vs_fp32_cpu_time']:.2f} (CPU time)",
            flush=True,
        )
    return out


def _object_masks(
    n_photos: int, max_side: int, per_photo: int
) -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """COCO photos with up to ``per_photo`` official object masks whose context crop is at most
    ``max_side`` px (and at least 32 px)."""
    gt = SHARED_DATA / "coco" / "instances.json"
    if not gt.is_file():
        return []
    from pycocotools import mask as mask_utils

    data = json.loads(gt.read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if not ann.get("iscrowd"):
            by_image.setdefault(ann["image_id"], []).append(ann)
    out = []
    for info in sorted(data["images"], key=lambda i: i["file_name"]):
        anns = by_image.get(info["id"], [])
        h, w = info["height"], info["width"]
        masks = []
        for ann in sorted(anns, key=lambda a: -a["area"]):
            side = 2 * max(ann["bbox"][2], ann["bbox"][3])
            if not 32 <= side <= max_side:
                continue
            rle = mask_utils.frPyObjects(ann["segmentation"], h, w)
            masks.append(mask_utils.decode(mask_utils.merge(rle)).astype(bool))
            if len(masks) == per_photo:
                break
        if masks:
            path = SHARED_DATA / "coco" / "images" / info["file_name"]
            image = np.array(Image.open(path).convert("RGB"))
            out.append((info["file_name"], np.ascontiguousarray(image), masks))
        if len(out) == n_photos:
            break
    return out


def _crop_probabilities(
    refiner: CascadePSPRefiner, image: np.ndarray, mask: np.ndarray
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """UnSAM's crop of one mask and the refiner's float32 probability map over it."""
    box = unsam_crop_box(mask, refiner.context_ratio)
    assert box is not None
    x0, y0, x1, y1 = box
    side = clamp_side((y1 - y0, x1 - x0), refiner.min_side, refiner.max_side)
    im = image_to_tensor(image[y0:y1, x0:x1]).to(refiner.device)
    seg = mask_to_tensor(mask[y0:y1, x0:x1]).to(refiner.device)
    with torch.inference_mode():
        p = refine_crop_global(
            refiner.model, im, seg, side, dtype=refiner.dtype, memory_format=refiner.memory_format
        )
    return box, p[0, 0].cpu().numpy()


def agreement(
    model: RefinementModule, device: torch.device, n_photos: int, max_side: int, per_photo: int
) -> dict[str, object]:
    photos = _object_masks(n_photos, max_side, per_photo)
    if not photos:
        return {"note": f"no COCO photos under {SHARED_DATA}"}
    refiners = {
        name: CascadePSPRefiner(copy.deepcopy(model), device=device, dtype=dt)
        for name, dt in DTYPES.items()
    }
    ious, identical, prob_diff, decisions, pixels = [], 0, 0.0, 0, []
    for _file, image, masks in photos:
        total = image.shape[0] * image.shape[1]
        for mask in masks:
            (box, p32), (_, p16) = (_crop_probabilities(r, image, mask) for r in refiners.values())
            m32 = probabilities_to_mask(torch.from_numpy(p32)).numpy()
            m16 = probabilities_to_mask(torch.from_numpy(p16)).numpy()
            union = np.count_nonzero(m32 | m16)
            ious.append(np.count_nonzero(m32 & m16) / union if union else 1.0)
            identical += int(np.array_equal(m32, m16))
            pixels.append(int(np.count_nonzero(m32 != m16)))
            prob_diff = max(prob_diff, float(np.abs(p32 - p16).max()))
            x0, y0, x1, y1 = box
            raw = mask[y0:y1, x0:x1]
            accept = []
            for m in (m32, m16):
                u = np.count_nonzero(m | raw)
                iou = np.count_nonzero(m & raw) / u if u else 0.0
                accept.append(iou >= refiners["float32"].min_iou and m.sum() / total <= 0.9)
            decisions += int(accept[0] != accept[1])
    n = len(ious)
    result = {
        "photos": [f for f, _, _ in photos],
        "masks": n,
        "max_context_side": max_side,
        "refined_mask_iou_mean": float(np.mean(ious)),
        "refined_mask_iou_min": float(np.min(ious)),
        "identical_masks_share": identical / n,
        "differing_pixels_max": max(pixels),
        "max_abs_prob_diff": prob_diff,
        "accept_decisions_differing": decisions,
    }
    print(
        f"agreement bf16 vs fp32 on {n} COCO object masks ({len(photos)} photos): refined-mask "
        f"IoU mean {result['refined_mask_iou_mean']:.4f} min {result['refined_mask_iou_min']:.4f}, "
        f"{100 * result['identical_masks_share']:.0f}% identical, max |dp| {prob_diff:.3g}, "
        f"{decisions} accept decisions differ",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser, dtype=False)
    parser.add_argument(
        "--dtype", default="both", choices=["both", *DTYPES], help="dtypes to time (default both)"
    )
    parser.add_argument("--quick", action="store_true", help="L=256 only, 1 repeat, 1 photo")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs at L=256 (median)")
    parser.add_argument(
        "--big-repeats", type=int, default=1, help="timed runs at L=900 (each is minutes on CPU)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's, all cores)"
    )
    parser.add_argument("--photos", type=int, default=3, help="COCO photos for the agreement")
    parser.add_argument(
        "--agree-side", type=int, default=256, help="largest context crop of an agreement mask"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    repeats = 1 if args.quick else args.repeats
    kernel = cpu_matmul_kernel() if device.type == "cpu" else {}
    print(f"device {device}, threads {torch.get_num_threads()}, kernel {kernel}", flush=True)
    reference = {name: matmul_gflops(DTYPES[name], device) for name in dtypes}
    print(f"2048² matmul GFLOP/s: {reference}", flush=True)
    model = _random_model()
    data: dict[str, object] = {
        "device": str(device),
        "dtypes": [dtype_name(DTYPES[d]) for d in dtypes],
        "quick": args.quick,
        "kernel": kernel,
        "matmul_2048_gflops": reference,
        "L256": time_side(model, 256, dtypes, repeats, 1, device),
    }
    if not args.quick:
        data["L900"] = time_side(model, 900, dtypes, args.big_repeats, 0, device)
    big = data.get("L900") or {}
    b16 = big.get("bfloat16") if isinstance(big, dict) else None
    if b16:
        data["goal_s_per_904_crop"] = GOAL_S_PER_904_CROP
        data["goal_met"] = bool(b16["seconds_per_crop"] <= GOAL_S_PER_904_CROP)
        if "bfloat16" in reference:
            data["bf16_share_of_matmul_rate"] = b16["achieved_gflops"] / reference["bfloat16"]
            # the network at this machine's bf16 matmul rate (a quiet-machine estimate)
            data["seconds_per_904_crop_at_matmul_rate"] = (
                b16["gflop_per_crop"] / reference["bfloat16"]
            )
    if len(dtypes) == 2:
        data["agreement"] = agreement(
            model, device, 1 if args.quick else args.photos, args.agree_side, 2 if args.quick else 3
        )
    print(f"wrote {write_result('cascadepsp_speed', data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
