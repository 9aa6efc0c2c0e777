"""Speed of the CutLER Cascade Mask R-CNN divide at the released 800/1333 test resize, float32
against bfloat16 in the same run, and their agreement on real photos.

Random weights (no checkpoint needed), conditioned so that activations stay O(1), with box
classifiers that really depend on the ROI features (scores spread over ~0.35: float32 and bf16
then rank the same boxes first, and the comparison measures the arithmetic rather than ties) and
every image giving the full 100 detections, the worst case for the mask head and the pasting.

Each dtype runs in its own child process (its own peak memory): one warm-up, then ``--repeats``
timed runs of ``CutlerDetector.detect`` on the first photo, then one run on every photo for the
agreement. Printed and written: median seconds per image and per step (pre-processing,
backbone+FPN, RPN, box heads (3 cascade stages incl. final NMS), mask head, paste), the bf16
speed-up, peak memory (CPU: VmHWM; CUDA: the allocator's peak), the matmul kernel
(``unsam.runtime.cpu_matmul_kernel()``) and, per photo, the bf16 detections matched to float32's
(box IoU >= 0.5, one to one, by score), score and box-corner differences of the matched pairs,
their mask IoU and the share of identical masks.

Usage: python benchmarks/cutler_speed.py [--device cpu|cuda] [--quick] [--repeats 3]
Writes benchmarks/results/cutler_speed.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))  # tests.reference

import numpy as np
import torch
from common import SHARED_DATA, peak_rss_bytes, write_result
from PIL import Image

from tests.reference.box_matching import greedy_box_matching
from unsam.divide.cutler import CascadeMaskRCNN, CutlerConfig, CutlerDetector, resize_shape
from unsam.divide.cutler.model import ConvNorm

PHOTOS = [
    "coco/images/000000229358.jpg",
    "sa1b/sam_notebooks/truck.jpg",
    "sa1b/sam_notebooks/groceries.jpg",
]


def conditioned_random_model(seed: int) -> CascadeMaskRCNN:
    """Weights ~ N(0, 1/fan_in), damped residual branches; box classifiers N(0, 100/fan_in) (scores
    spread by the features), box regressors damped, mask bias 1."""
    g = torch.Generator().manual_seed(seed)
    model = CascadeMaskRCNN()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)):
                fan_in = (
                    mod.weight.shape[0]
                    if isinstance(mod, torch.nn.ConvTranspose2d)
                    else (mod.weight[0].numel())
                )
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan_in))
                if mod.bias is not None:
                    mod.bias.zero_()
            if isinstance(mod, ConvNorm) and name.endswith("conv3"):
                mod.norm.weight.fill_(0.3)
        for pred in model.box_predictors:
            pred.cls_score.weight.mul_(10.0)
            pred.bbox_pred.weight.mul_(0.01)
        model.mask_head.predictor.weight.mul_(0.01)
        model.mask_head.predictor.bias.fill_(1.0)
    return model


def photos(quick: bool) -> list[tuple[str, np.ndarray]]:
    names = PHOTOS[:1] if quick else PHOTOS
    out = []
    for name in names:
        path = SHARED_DATA / name
        if not path.exists():
            path = REPO / "tests" / "data" / "images" / "coffee.jpg"
        out.append((name, np.asarray(Image.open(path).convert("RGB"))))
    return out


def child(dtype: str, device: str, repeats: int, quick: bool, save: str) -> dict[str, Any]:
    config = CutlerConfig(min_size=480, max_size=800) if quick else CutlerConfig()
    detector = CutlerDetector(conditioned_random_model(0), config, device=device, dtype=dtype)
    images = photos(quick)
    first = images[0][1]
    detector.detect(first)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    totals, steps = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        detector.detect(first)
        totals.append(time.perf_counter() - t0)
        for key, value in detector.last_timings.items():
            steps.setdefault(key, []).append(value)
    arrays = {}
    for k, (_, image) in enumerate(images):
        dets = detector.detect(image)
        arrays[f"boxes{k}"] = dets.boxes_xyxy
        arrays[f"scores{k}"] = dets.scores
        arrays[f"masks{k}"] = np.packbits(dets.masks, axis=-1)
        arrays[f"hw{k}"] = np.array(image.shape[:2])
    np.savez_compressed(save, **arrays)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else peak_rss_bytes()
    return {
        "dtype": dtype,
        "seconds_per_image": statistics.median(totals),
        "seconds_per_step": {
            k: round(statistics.median(v), 4) for k, v in steps.items() if k != "total"
        },
        "detections": int(len(arrays["scores0"])),
        "peak_memory_gib": round(peak / 2**30, 3),
        "peak_memory_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "VmHWM",
        "threads": torch.get_num_threads(),
    }


def agreement(path_a: str, path_b: str, names: list[str]) -> list[dict[str, Any]]:
    a, b = np.load(path_a), np.load(path_b)
    out = []
    for k, name in enumerate(names):
        w = int(a[f"hw{k}"][1])
        ma = np.unpackbits(a[f"masks{k}"], axis=-1, count=w).astype(bool)
        mb = np.unpackbits(b[f"masks{k}"], axis=-1, count=w).astype(bool)
        pairs = greedy_box_matching(a[f"boxes{k}"], b[f"boxes{k}"])
        sd = np.array([abs(a[f"scores{k}"][i] - b[f"scores{k}"][j]) for i, j in pairs])
        bd = np.array([np.abs(a[f"boxes{k}"][i] - b[f"boxes{k}"][j]).max() for i, j in pairs])
        ious, same = [], []
        for i, j in pairs:
            union = np.logical_or(ma[i], mb[j]).sum()
            ious.append(float(np.logical_and(ma[i], mb[j]).sum() / union) if union else 1.0)
            same.append(bool(np.array_equal(ma[i], mb[j])))
        out.append(
            {
                "photo": name,
                "detections": [len(a[f"scores{k}"]), len(b[f"scores{k}"])],
                "matched": len(pairs),
                "score_diff_median": float(np.median(sd)) if len(sd) else None,
                "score_diff_max": float(sd.max()) if len(sd) else None,
                "box_diff_median_px": float(np.median(bd)) if len(bd) else None,
                "box_diff_max_px": float(bd.max()) if len(bd) else None,
                "mask_iou_mean": float(np.mean(ious)) if ious else None,
                "mask_iou_min": float(np.min(ious)) if ious else None,
                "masks_identical": float(np.mean(same)) if same else None,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--quick", action="store_true", help="dry run: 480/800 resize, one photo, one repeat"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    if args.child:
        print(json.dumps(child(args.child, args.device, repeats, args.quick, args.save)))
        return
    from unsam.runtime import cpu_matmul_kernel, resolve_device

    device = str(resolve_device(args.device))
    tmp = Path(tempfile.mkdtemp(prefix="cutler_bench_"))
    dtypes = args.dtypes.split(",")
    results: dict[str, Any] = {}
    for dtype in dtypes:
        cmd = [sys.executable, __file__, "--child", dtype, "--device", device]
        cmd += ["--repeats", str(repeats), "--save", str(tmp / f"{dtype}.npz")]
        cmd += ["--quick"] if args.quick else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"{dtype} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[dtype] = r
        print(
            f"{dtype:8s} {r['seconds_per_image']:.3f} s/image on {device}, steps "
            f"{r['seconds_per_step']}, {r['detections']} detections, peak "
            f"{r['peak_memory_gib']:.2f} GiB ({r['peak_memory_kind']})",
            flush=True,
        )
    names = [n for n, _ in photos(args.quick)]
    base = results[dtypes[0]]
    for dtype in dtypes[1:]:
        r = results[dtype]
        r["speedup"] = base["seconds_per_image"] / r["seconds_per_image"]
        r["agreement"] = agreement(str(tmp / f"{dtypes[0]}.npz"), str(tmp / f"{dtype}.npz"), names)
        print(f"{dtype} vs {dtypes[0]}: x{r['speedup']:.2f}")
        for row in r["agreement"]:
            print("  " + json.dumps(row))
    config = CutlerConfig(min_size=480, max_size=800) if args.quick else CutlerConfig()
    image = photos(args.quick)[0][1]
    kernel = (
        cpu_matmul_kernel()
        if device == "cpu"
        else {"gpu": torch.cuda.get_device_name(torch.device(device))}
    )
    print("kernel:", json.dumps(kernel))
    write_result(
        "cutler_speed",
        {
            "device": device,
            "quick": args.quick,
            "image_hw": list(image.shape[:2]),
            "network_input_hw": [
                -(-v // 32) * 32
                for v in resize_shape(image.shape[:2], config.min_size, config.max_size)
            ],
            "repeats": repeats,
            "kernel": kernel,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
