"""Promptable model speed: encode once + cheap clicks, float32 against bfloat16, vs the original's
per-click recompute and SAM; and bf16 vs fp32 agreement of click masks on real photos.

Measured in one run (random weights in the real architectures; speed does not depend on the
values):

1. unsam ``swin_t`` (the paper's Swin-T promptable model) on a 1024x1024 photo
   (``PromptablePredictor(short_side=1024)``, padded 1024x1024), for each dtype (``--dtype both``:
   float32 and bfloat16 weights and activations, in the same process):
   - ``set_image``: resize/normalise/pad + Swin-T + 6-layer deformable pixel decoder + the 9
     decoder layers' value projections (cached per image);
   - per click: ``decode_clicks`` alone (9 decoder layers + heads, 6 masks at 256²), then
     ``predict_logits`` (plus bilinear upsampling of the 6 masks to 1024²), then ``predict``
     (plus the float32 resize to the photo, the threshold and 6 RLE-encoded MaskRecords). Wall
     time and this thread's CPU time (on a loaded machine the CPU time is what a click costs).
   The bf16 / fp32 speed ratios are from the same run.
2. The original's cost per click (float32): Semantic-SAM's ``evaluate_demo`` recomputes the
   backbone and the pixel decoder on every call unless features are passed in (spec
   PROMPTABLE.md §2.2), so one click = a full forward of the same model.
3. transformers ``SamModel(SamConfig())`` (SAM ViT-B, random init, float32):
   ``get_image_embeddings`` at 1024², then one point through the prompt encoder + mask decoder
   (3 masks at 256², upsampled to 1024² as SAM's post-processing does). Skipped with ``--quick``.
4. Agreement on real photos (``../shared/data/coco``, predictor defaults: short side 640, masks at
   the photo's size): clicks at the centres of the official object boxes, decoded in float32 and
   in bfloat16; per granularity level the mean and smallest IoU of the bf16 mask with the fp32
   mask, the share of identical masks, and the differences of the predicted IoUs.
5. Which kernels ran: :func:`unsam.runtime.cpu_matmul_kernel` on the CPU.

Timings: set_image: median of ``--image-repeats`` runs after one warm-up at 512 px. Click
timings: median of ``--click-repeats`` runs after 2 warm-ups. Prints one JSON line and writes
benchmarks/results/prompt_speed.json (the float32 figures also under the keys older reports
read).

Usage: .venv/bin/python benchmarks/prompt_speed.py [--dtype both|float32|bfloat16]
       [--device cpu|cuda] [--quick] [--image-repeats 2] [--click-repeats 10] [--threads N]
       [--photos 3] [--skip-sam]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.nn.functional as F
from common import SHARED_DATA, peak_rss_bytes, write_result
from PIL import Image

from unsam.masks import mask_iou
from unsam.models.promptable import PromptableConfig, build_model
from unsam.models.promptable.layers import DEMO_BOX_FRACTION, click_boxes
from unsam.models.promptable.predictor import PromptablePredictor, torch_threads
from unsam.records import decode_rle
from unsam.runtime import add_device_arguments, cpu_matmul_kernel, resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: the issue's goals for one click with its records: these 2-core CPUs in bf16, one H200
GOAL_CLICK_MS = {"cpu": 30.0, "cuda": 5.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(
    fn, repeats: int, warmup: int, device: torch.device, clock=time.process_time
) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn()``; CPU = ``clock`` (the process's, summed over its
    threads; ``time.thread_time`` for the one-thread clicks)."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), clock()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(clock() - c0)
    return statistics.median(walls), statistics.median(cpus)


def _runs(mask: np.ndarray) -> int:
    """Runs of COCO RLE (column-major) in a bool mask."""
    flat = mask.T.ravel()
    return 1 + int(np.count_nonzero(flat[1:] != flat[:-1]))


def _photos() -> list[Path]:
    folder = SHARED_DATA / "coco" / "images"
    return sorted(folder.glob("*.jpg")) if folder.is_dir() else []


def _image(side: int) -> np.ndarray:
    """A photo resized to side x side (a synthetic image when the data folder is absent)."""
    photos = _photos()
    if photos:
        return np.array(Image.open(photos[0]).convert("RGB").resize((side, side)))
    rng = np.random.default_rng(0)
    img = np.full((side, side, 3), 90, dtype=np.uint8)
    img[side // 4 : side // 2, side // 5 : side // 2] = (220, 40, 40)
    return np.clip(img + rng.integers(0, 50, size=img.shape), 0, 255).astype(np.uint8)


def bench_unsam(
    base: torch.nn.Module, dtype: torch.dtype, side: int, args: argparse.Namespace,
    device: torch.device,
) -> dict[str, float]:
    predictor = PromptablePredictor(
        copy.deepcopy(base), short_side=side, device=device, dtype=dtype
    )
    predictor.short_side = 512
    predictor.set_image(_image(512))  # warm-up
    predictor.short_side = side
    image = _image(side)
    set_image_s, set_image_cpu = _median_time(
        lambda: predictor.set_image(image), args.image_repeats, 0, device
    )
    state = predictor._require_state()
    model = predictor.model
    point = [(300.0 * side / 1024, 400.0 * side / 1024)]
    pts = torch.tensor(point, device=device)

    def decode_only() -> None:
        with torch.inference_mode(), torch_threads(predictor.click_threads):
            model.decode_clicks(state, pts)

    clicks = (args.click_repeats, 2, device, time.thread_time)  # clicks run on one thread
    decode = _median_time(decode_only, *clicks)
    logits = _median_time(lambda: predictor.predict_logits(point), *clicks)
    predict = _median_time(lambda: predictor.predict(point), *clicks)
    records = predictor.predict(point)[0]
    out = {
        "set_image_s": set_image_s,
        "set_image_cpu_s": set_image_cpu,
        "click_decode_ms": 1000 * decode[0],
        "click_decode_cpu_ms": 1000 * decode[1],
        "click_logits_ms": 1000 * logits[0],
        "click_predict_records_ms": 1000 * predict[0],
        "click_predict_records_cpu_ms": 1000 * predict[1],
        "masks_per_click": len(records),
        # mask complexity, which the RLE cost follows (random weights: salt-and-pepper masks)
        "rle_runs_per_mask": float(np.mean([_runs(decode_rle(r.rle)) for r in records])),
    }
    print(
        f"{str(dtype).removeprefix('torch.')}: set_image {set_image_s:.2f} s (CPU "
        f"{set_image_cpu:.2f} s), click decode {out['click_decode_ms']:.1f} ms (CPU "
        f"{out['click_decode_cpu_ms']:.1f}), with 6 records {out['click_predict_records_ms']:.1f} "
        f"ms (CPU {out['click_predict_records_cpu_ms']:.1f})",
        flush=True,
    )
    if dtype == torch.float32 and not args.quick:

        def full_forward() -> None:  # the original's path: everything recomputed for one click
            with torch.inference_mode():
                pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
                padded = model.normalize_and_pad(pixels)
                boxes = click_boxes(
                    pts, tuple(padded.shape[-2:]), (DEMO_BOX_FRACTION * side,) * 2
                )
                res = model(padded, boxes)
                F.interpolate(
                    res.mask_logits, size=padded.shape[-2:], mode="bilinear", align_corners=False
                )

        out["original_full_forward_per_click_s"] = _median_time(
            full_forward, args.image_repeats, 0, device
        )[0]
    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return out


def bench_sam(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    sam = SamModel(SamConfig()).eval().to(device)
    pixels = torch.randn(1, 3, 1024, 1024, device=device)
    with torch.inference_mode():
        sam.get_image_embeddings(pixels)  # warm-up
    holder: dict[str, torch.Tensor] = {}

    def encode() -> None:
        with torch.inference_mode():
            holder["emb"] = sam.get_image_embeddings(pixels)

    encode_s = _median_time(encode, args.image_repeats, 0, device)[0]
    points = torch.tensor([[[[300.0, 400.0]]]], device=device)
    labels = torch.tensor([[[1]]], device=device)

    def click() -> None:
        with torch.inference_mode():
            out = sam(
                image_embeddings=holder["emb"],
                input_points=points,
                input_labels=labels,
                multimask_output=True,
            )
            F.interpolate(
                out.pred_masks[0], size=(1024, 1024), mode="bilinear", align_corners=False
            )

    click_s = _median_time(click, args.click_repeats, 2, device)[0]
    return {
        "sam_vitb_image_embeddings_s": encode_s,
        "sam_vitb_click_ms": 1000 * click_s,
        "sam_vitb_params_m": sum(p.numel() for p in sam.parameters()) / 1e6,
    }


def _clicks(n_photos: int, per_photo: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """COCO photos and the centres of their largest official object boxes, (x, y) pixels."""
    gt = SHARED_DATA / "coco" / "instances.json"
    if not gt.is_file():
        return []
    data = json.loads(gt.read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = []
    for info in sorted(data["images"], key=lambda i: i["file_name"]):
        anns = sorted(by_image.get(info["id"], []), key=lambda a: -a["area"])[:per_photo]
        if not anns:
            continue
        pts = np.array([[a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2]
                        for a in anns])
        image = np.array(Image.open(SHARED_DATA / "coco" / "images" / info["file_name"])
                         .convert("RGB"))
        out.append((info["file_name"], image, pts))
        if len(out) == n_photos:
            break
    return out


def agreement(
    base: torch.nn.Module, device: torch.device, n_photos: int, per_photo: int
) -> dict[str, object]:
    photos = _clicks(n_photos, per_photo)
    if not photos:
        return {"note": f"no COCO photos under {SHARED_DATA}"}
    predictors = {
        name: PromptablePredictor(copy.deepcopy(base), device=device, dtype=dt)
        for name, dt in DTYPES.items()
    }
    per_level: list[list[float]] = [[] for _ in range(6)]
    identical, total, iou_diffs = 0, 0, []
    for _file, image, pts in photos:
        results = {}
        for name, pred in predictors.items():
            pred.set_image(image)
            results[name] = pred.predict(pts)
        for recs32, recs16 in zip(results["float32"], results["bfloat16"], strict=True):
            for r32, r16 in zip(recs32, recs16, strict=True):
                m32, m16 = decode_rle(r32.rle), decode_rle(r16.rle)
                iou = mask_iou(m32, m16) if (m32.any() or m16.any()) else 1.0
                per_level[r32.level - 1].append(iou)
                identical += int(np.array_equal(m32, m16))
                total += 1
                iou_diffs.append(abs(r32.predicted_iou - r16.predicted_iou))
    result = {
        "photos": [f for f, _, _ in photos],
        "clicks": sum(len(p) for _, _, p in photos),
        "mask_iou_mean_per_level": [float(np.mean(v)) for v in per_level],
        "mask_iou_min_per_level": [float(np.min(v)) for v in per_level],
        "identical_masks_share": identical / total,
        "predicted_iou_abs_diff_max": float(np.max(iou_diffs)),
        "predicted_iou_abs_diff_mean": float(np.mean(iou_diffs)),
    }
    print(
        f"agreement bf16 vs fp32, {result['clicks']} clicks on {len(photos)} photos: mask IoU "
        f"per level mean {[round(v, 4) for v in result['mask_iou_mean_per_level']]} min "
        f"{[round(v, 4) for v in result['mask_iou_min_per_level']]}, "
        f"{100 * result['identical_masks_share']:.0f}% identical, predicted-IoU difference max "
        f"{result['predicted_iou_abs_diff_max']:.3g} "
        f"mean {result['predicted_iou_abs_diff_mean']:.3g}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_arguments(parser, dtype=False)
    parser.add_argument("--dtype", default="both", choices=["both", *DTYPES])
    parser.add_argument(
        "--quick", action="store_true", help="512 px, 1 image repeat, 5 clicks, no SAM, 1 photo"
    )
    parser.add_argument("--image-repeats", type=int, default=2)
    parser.add_argument("--click-repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--photos", type=int, default=3, help="COCO photos for the agreement")
    parser.add_argument("--skip-sam", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.image_repeats, args.click_repeats = 1, 5
    side = 512 if args.quick else 1024
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    kernel = cpu_matmul_kernel() if device.type == "cpu" else {}
    print(f"device {device}, threads {torch.get_num_threads()}, kernel {kernel}", flush=True)
    torch.manual_seed(0)
    base = build_model(PromptableConfig.swin_t()).eval()
    data: dict[str, object] = {
        "device": str(device),
        "image_side": side,
        "quick": args.quick,
        "kernel": kernel,
        "settings": {k: v for k, v in vars(args).items() if k != "device"},
    }
    for name in dtypes:
        data[name] = bench_unsam(base, DTYPES[name], side, args, device)
    data["peak_rss_mib"] = peak_rss_bytes() / 2**20
    if device.type == "cuda":
        data["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    f32, b16 = data.get("float32"), data.get("bfloat16")
    if f32:  # the keys older reports read: the float32 figures
        data.update(
            unsam_set_image_s=f32["set_image_s"],
            unsam_click_decode_ms=f32["click_decode_ms"],
            unsam_click_logits_1024_ms=f32["click_logits_ms"],
            unsam_click_predict_records_ms=f32["click_predict_records_ms"],
            unsam_masks_per_click=f32["masks_per_click"],
            unsam_params_m=f32["params_m"],
        )
        if "original_full_forward_per_click_s" in f32:
            data["original_full_forward_per_click_s"] = f32["original_full_forward_per_click_s"]
            data["ratio_original_recompute_vs_unsam_click"] = (
                f32["original_full_forward_per_click_s"] / (f32["click_predict_records_ms"] / 1e3)
            )
    if f32 and b16:
        data["speedup_bf16_vs_fp32"] = {
            "set_image": f32["set_image_s"] / b16["set_image_s"],
            "click_decode": f32["click_decode_ms"] / b16["click_decode_ms"],
            "click_with_records": f32["click_predict_records_ms"] / b16["click_predict_records_ms"],
            "click_with_records_cpu_time": f32["click_predict_records_cpu_ms"]
            / b16["click_predict_records_cpu_ms"],
        }
        print(f"bf16 / fp32 speed-ups: {data['speedup_bf16_vs_fp32']}", flush=True)
    best = b16 or f32
    if best and not args.quick:
        goal = GOAL_CLICK_MS.get(device.type)
        data["goal_click_ms"] = goal
        data["goal_click_met"] = bool(goal and best["click_predict_records_ms"] <= goal)
    if not args.skip_sam and not args.quick:
        data.update(bench_sam(args, device))
        if f32:
            data["ratio_sam_click_vs_unsam_click"] = (
                data["sam_vitb_click_ms"] / f32["click_predict_records_ms"]
            )
            data["ratio_sam_encode_vs_unsam_set_image"] = (
                data["sam_vitb_image_embeddings_s"] / f32["set_image_s"]
            )
    if len(dtypes) == 2:
        data["agreement"] = agreement(
            base, device, 1 if args.quick else args.photos, 3 if args.quick else 5
        )
    write_result("prompt_speed", data)
    print(json.dumps({k: v for k, v in data.items() if not isinstance(v, dict)}, default=str))


if __name__ == "__main__":
    main()
