"""Whole-image model against SAM's automatic mask generator, in float32 and bfloat16, one run.

Measured in one process, so every ratio is taken under the same machine load (random weights in
the real architectures: speed does not depend on the values):

1. **unsam r50** (2000 queries, top 1000 masks, ``WholeImageSegmenter``'s fast path, what
   ``seg(image)`` runs) on a 768x1024 photo (a bundled COCO photo resized; the model
   input is 1024x1365, padded 1024x1376), in each ``--dtype``: s/image split into the device part
   (``predict_masks``: network, and on a GPU the post-processing up to bit-packed masks) and the
   host part (``to_records``: on the CPU upsampling, scores and RLE; on a GPU the copy and RLE).
   On CUDA also the pipelined s/image (image *i + 1*'s device part queued before image *i*'s host
   part, as a runner that overlaps them gets). float32 also runs the reference path
   (transformers' decoder; ``--reference-repeats``). Peak memory of each dtype: resident memory
   of the process on the CPU (the high-water mark is reset before each dtype), allocated GPU
   memory on CUDA.
2. **SAM ViT-B AMG** with transformers ``SamModel(SamConfig())`` on the same photo (resized to
   768x1024, padded to 1024²), in each ``--dtype`` (bfloat16: weights and activations cast, the
   mask logits cast back to float32 before AMG's post-processing, as unsam keeps its thresholds in
   float32): image encoder once, then for each batch of 64 points of the 32x32 grid (3 masks a
   point) the mask decoder and AMG's post-processing as transformers implements it
   (``SamImageProcessorPil.post_process_masks``: upsample the 256² logits to 1024², crop, resize
   to 768x1024; ``filter_masks`` with SAM's thresholds pred_iou 0.88 and stability 0.95: the
   stability score of every mask at full resolution, boxes, RLE of the survivors), then box NMS
   at 0.7. ``--sam-batches`` of the 16 batches are timed (fewer are extrapolated to 16). With
   random weights few masks survive the filters, and only the survivors' RLE and the NMS depend
   on that (a trained SAM keeps ~50-200 masks, well under a second more), so the SAM figure is a
   slight lower bound and the ratios favour SAM.
3. **Agreement of unsam bfloat16 with float32** on real photos (``--photos`` of
   ``$UNSAM_SHARED_DATA/coco/images``, else the bundled examples/coco/images), same r50 weights:
   the masks of the two runs are matched one to one by IoU (Hungarian); reported: mean matched
   IoU, the share of identical masks (IoU 1), the mean of each float32 mask's best IoU, the
   score differences, the top-1000 queries both keep. With random weights the mask logits are
   small, so boundaries move with any rounding: a worst case for bf16.

Ratios printed and stored: SAM time / unsam time for every pair of dtypes. Goals: on 2 CPU cores
r50 bf16 >= 10x SAM ViT-B AMG; on one H200 >= 5x. Timings are medians of ``--repeats`` runs after
one warm-up run (``--quick``: small inputs, one run, no warm-up: a dry run whose figures are not
the goals'). Prints which bf16 kernel the CPU has (``unsam.runtime.cpu_matmul_kernel``).

Writes ``segment_speed.json`` (``benchmarks/results`` or ``$UNSAM_BENCH_RESULTS``) with keys
``device``, ``dtypes``, ``quick``, ``image_hw``, ``unsam`` {dtype: {...}}, ``sam_amg``
{dtype: {...}}, ``ratios`` {"sam_<dtype>_over_unsam_<dtype>": x}, ``agreement``, ``kernel``
(CPU) and ``headline`` (unsam bf16 s/image, SAM s/image in both dtypes, both ratios, the goal).

Usage: python benchmarks/segment_speed.py [--device cpu|cuda] [--dtype float32|bfloat16|both]
       [--quick] [--repeats 3] [--reference-repeats 1] [--sam-batches 16] [--photos 5]
       [--threads N] [--skip-sam] [--memory-check]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from common import SHARED_DATA, peak_rss_bytes, write_result

from unsam.models.whole_image import build_model
from unsam.models.whole_image.config import resized_hw
from unsam.models.whole_image.postprocessing import postprocess_masks
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import WholeImageSegmenter
from unsam.runtime import cpu_matmul_kernel, resolve_device, resolve_dtype

DTYPES = ("float32", "bfloat16")
GOAL = {"cpu": 10.0, "cuda": 5.0}


def _log(text: str) -> None:
    print(text, flush=True)


class _Clock:
    """Wall seconds of ``fn()``; on CUDA after the device has finished (synchronize)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def median(
        self, fn: Callable[[], Any], repeats: int, warmup: Callable[[], Any] | None
    ) -> tuple[float, list[float], Any]:
        if warmup is not None:
            warmup()
        times, out = [], None
        for _ in range(max(1, repeats)):
            secs, out = self(fn)
            times.append(secs)
        return statistics.median(times), times, out


def _reset_peak(device: torch.device) -> None:
    """Reset the peak-memory counter: CUDA's allocator statistics, or the process's VmHWM
    (``/proc/self/clear_refs``, Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_bytes() / 2**20


def photo_768x1024() -> np.ndarray:
    """A bundled COCO photo resized to 768x1024 (the benchmark's image)."""
    from unsam.io.images import load_image
    from unsam.masks import resize_image

    return resize_image(load_image(REPO / "examples/coco/images/000000229358.jpg"), (768, 1024))


def agreement_photos(n: int) -> list[Path]:
    folder = SHARED_DATA / "coco" / "images"
    if not folder.is_dir():
        folder = REPO / "examples" / "coco" / "images"
    return sorted(folder.glob("*.jpg"))[:n]


# ---------------------------------------------------------------------------------------------
# unsam r50
# ---------------------------------------------------------------------------------------------
def bench_unsam(
    model: torch.nn.Module,
    dtype: str,
    device: torch.device,
    image: np.ndarray,
    *,
    repeats: int,
    reference_repeats: int,
    quick: bool,
    config: SegmentConfig,
) -> dict[str, Any]:
    clock = _Clock(device)
    _reset_peak(device)
    seg = WholeImageSegmenter(
        copy.deepcopy(model), dataclasses.replace(config, device=str(device), dtype=dtype)
    )
    if not quick:  # warm-up at half size: the same kernels, shorter
        seg(np.ascontiguousarray(image[::2, ::2]))
    device_runs, host_runs, records = [], [], []
    for _ in range(max(1, repeats)):
        secs, pending = clock(lambda: seg.predict_masks(image))
        device_runs.append(secs)
        secs, records = clock(pending.to_records)
        host_runs.append(secs)
    device_s, host_s = statistics.median(device_runs), statistics.median(host_runs)
    h, w = image.shape[:2]
    valid = resized_hw(h, w, seg.config.min_size, seg.config.max_size)
    result: dict[str, Any] = {
        "dtype": dtype,
        "input_hw_padded": [-(-v // seg.size_divisibility) * seg.size_divisibility for v in valid],
        "num_queries": int(seg.model.config.num_queries),
        "max_masks": int(config.max_masks),
        "masks_returned": len(records),
        "device_part_s": device_s,
        "host_part_s": host_s,
        "total_s_per_image": device_s + host_s,
        "device_part_runs_s": device_runs,
        "host_part_runs_s": host_runs,
    }
    if device.type == "cuda":  # image i + 1's device part queued before image i's host part
        n = max(3, repeats + 1)

        def pipelined() -> None:
            pending = seg.predict_masks(image)
            for _ in range(n - 1):
                following = seg.predict_masks(image)
                pending.to_records()
                pending = following
            pending.to_records()

        secs, _ = clock(pipelined)
        result["pipelined_s_per_image"] = secs / n
    if reference_repeats > 0:
        ref_fwd, ref_fwd_runs, logits = clock.median(
            lambda: seg.predict_logits(image, reference=True), reference_repeats, None
        )
        class_logits, mask_logits, padded, valid = logits

        def ref_post() -> Any:
            return postprocess_masks(
                class_logits,
                mask_logits,
                padded_hw=padded,
                valid_hw=valid,
                image_hw=image.shape[:2],
                max_masks=config.max_masks,
                chunk_size=config.chunk_size,
                chunk_bytes=config.chunk_megabytes << 20,
            )

        ref_post_s, _, _ = clock.median(ref_post, reference_repeats, None)
        result.update(
            {
                "reference_device_part_s": ref_fwd,
                "reference_host_part_s": ref_post_s,
                "reference_total_s_per_image": ref_fwd + ref_post_s,
                "speedup_fast_over_reference": (ref_fwd + ref_post_s) / (device_s + host_s),
            }
        )
    result["peak_memory_mib"] = _peak_mib(device)
    result["peak_memory_kind"] = (
        "GPU memory allocated" if device.type == "cuda" else "process resident memory"
    )
    return result


def bench_agreement(
    model: torch.nn.Module,
    device: torch.device,
    photos: list[Path],
    config: SegmentConfig,
) -> dict[str, Any]:
    """unsam bf16 against float32 on real photos (module docstring)."""
    from scipy.optimize import linear_sum_assignment

    from unsam.io.images import load_image
    from unsam.records import rle_iou_matrix

    segs = {
        dtype: WholeImageSegmenter(
            copy.deepcopy(model), dataclasses.replace(config, device=str(device), dtype=dtype)
        )
        for dtype in DTYPES
    }
    per_photo = []
    all_iou, all_best, all_dscore = [], [], []
    for path in photos:
        image = load_image(path)
        a, b = (segs[d].predict_masks(image).scored() for d in DTYPES)
        keep_a, keep_b = np.flatnonzero(a.areas > 0), np.flatnonzero(b.areas > 0)
        iou = rle_iou_matrix([a.rles[i] for i in keep_a], [b.rles[j] for j in keep_b])
        rows, cols = linear_sum_assignment(-iou)
        matched = iou[rows, cols]
        dscore = np.abs(a.scores[keep_a][rows] - b.scores[keep_b][cols])
        best = iou.max(axis=1) if iou.size else np.zeros(0)
        shared = len(set(a.query_indices.tolist()) & set(b.query_indices.tolist()))
        per_photo.append(
            {
                "photo": path.name,
                "image_hw": list(image.shape[:2]),
                "masks_float32": int(keep_a.size),
                "masks_bfloat16": int(keep_b.size),
                "matched_mean_iou": float(matched.mean()) if matched.size else None,
                "identical_share": float(np.mean(matched == 1.0)) if matched.size else None,
                "mean_best_iou": float(best.mean()) if best.size else None,
                "score_diff_mean": float(dscore.mean()) if dscore.size else None,
                "score_diff_max": float(dscore.max()) if dscore.size else None,
                "top_queries_shared": shared,
            }
        )
        all_iou.append(matched)
        all_best.append(best)
        all_dscore.append(dscore)
    iou, best, dscore = (np.concatenate(x) for x in (all_iou, all_best, all_dscore))
    return {
        "photos": len(photos),
        "source": str(photos[0].parent) if photos else None,
        "masks_matched": int(iou.size),
        "matched_mean_iou": float(iou.mean()),
        "matched_median_iou": float(np.median(iou)),
        "identical_share": float(np.mean(iou == 1.0)),
        "share_iou_at_least_0.9": float(np.mean(iou >= 0.9)),
        "mean_best_iou": float(best.mean()),
        "score_diff_mean": float(dscore.mean()),
        "score_diff_max": float(dscore.max()),
        "per_photo": per_photo,
    }


def memory_check(h: int = 3000, w: int = 4000, max_masks: int = 100) -> dict[str, Any]:
    """Peak RSS of a fresh process that segments one h x w photo with r50 on the CPU."""
    import subprocess

    code = (
        "import sys, time, numpy as np, torch\n"
        f"sys.path.insert(0, {str(REPO / 'src')!r})\n"
        f"sys.path.insert(0, {str(REPO / 'benchmarks')!r})\n"
        "from common import peak_rss_bytes\n"
        "from unsam.models.whole_image import build_model\n"
        "from unsam.models.whole_image.segment_config import SegmentConfig\n"
        "from unsam.models.whole_image.segmenter import WholeImageSegmenter\n"
        "torch.manual_seed(0)\n"
        f"seg = WholeImageSegmenter(build_model('r50'), SegmentConfig(max_masks={max_masks}))\n"
        f"img = np.random.default_rng(0).integers(0, 256, size=({h}, {w}, 3), dtype=np.uint8)\n"
        "t0 = time.perf_counter(); n = len(seg(img)); dt = time.perf_counter() - t0\n"
        "print(n, dt, peak_rss_bytes())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, secs, peak = out.stdout.split()[-3:]
    return {
        "image_hw": [h, w],
        "max_masks": max_masks,
        "masks": int(n),
        "seconds": float(secs),
        "peak_rss_gib": int(peak) / 2**30,
    }


# ---------------------------------------------------------------------------------------------
# SAM ViT-B automatic mask generation
# ---------------------------------------------------------------------------------------------
def _box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> list[int]:
    """Greedy NMS on XYXY boxes (torchvision's batched_nms, one class, as transformers calls it)."""
    from unsam.masks import box_nms

    return box_nms(boxes.float().cpu(), scores.float().cpu(), iou_thresh).tolist()


def bench_sam_amg(
    sam: torch.nn.Module,
    dtype: str,
    device: torch.device,
    *,
    repeats: int,
    sam_batches: int,
    quick: bool,
    image_hw: tuple[int, int] = (768, 1024),
    points_per_batch: int = 64,
) -> dict[str, Any]:
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    clock = _Clock(device)
    _reset_peak(device)
    torch_dtype = resolve_dtype(dtype)
    model = copy.deepcopy(sam).to(device=device, dtype=torch_dtype).eval()
    processor = SamImageProcessorPil()
    n_params = sum(p.numel() for p in model.parameters())
    # the 768x1024 photo resized (longest side 1024) and padded to 1024²
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=torch_dtype)
    h, w = image_hw
    with torch.inference_mode():
        enc_s, enc_runs, emb = clock.median(
            lambda: model.get_image_embeddings(x), repeats, None if quick else (
                lambda: model.get_image_embeddings(x)
            )
        )  # fmt: skip
        side = 32
        offs = (np.arange(side) + 0.5) / side
        grid = np.stack(np.meshgrid(offs * w, offs * h), -1).reshape(-1, 2).astype(np.float32)
        scale = 1024 / max(h, w)
        batches = [
            torch.from_numpy(grid[i : i + points_per_batch] * scale)[None, :, None, :].to(device)
            for i in range(0, len(grid), points_per_batch)
        ]
        labels = torch.ones(1, points_per_batch, 1, dtype=torch.long, device=device)
        n_batches = len(batches)
        timed = min(max(1, sam_batches), n_batches)

        def amg_batch(pts: torch.Tensor) -> tuple[float, float, tuple]:
            dec_s, out = clock(
                lambda: model(
                    image_embeddings=emb,
                    input_points=pts.to(torch_dtype),
                    input_labels=labels,
                    multimask_output=True,
                )
            )

            def post() -> tuple:
                # float32 from here on (unsam also thresholds in float32)
                masks = processor.post_process_masks(
                    [out.pred_masks[0].float()],
                    original_sizes=[(h, w)],
                    reshaped_input_sizes=[(h, w)],
                    binarize=False,
                )[0]
                return processor.filter_masks(
                    masks,
                    out.iou_scores[0].float(),
                    (h, w),
                    [0, 0, w, h],
                    pred_iou_thresh=0.88,
                    stability_score_thresh=0.95,
                    mask_threshold=0.0,
                    stability_score_offset=1.0,
                )

            post_s, kept = clock(post)
            return dec_s, post_s, kept

        if not quick:
            amg_batch(batches[0])  # warm-up
        dec_times, post_times, kept = [], [], []
        for pts in batches[:timed]:
            d, p, k = amg_batch(pts)
            dec_times.append(d)
            post_times.append(p)
            kept.append(k)
        t0 = time.perf_counter()
        all_boxes = torch.cat([k[2].float().cpu() for k in kept]) if kept else torch.zeros(0, 4)
        all_scores = torch.cat([k[1].float().cpu() for k in kept]) if kept else torch.zeros(0)
        survivors = int(all_scores.numel())
        keep = _box_nms(all_boxes, all_scores, 0.7) if survivors else []
        nms_s = time.perf_counter() - t0
    factor = n_batches / timed
    dec_total = sum(dec_times) * factor
    post_total = sum(post_times) * factor
    result = {
        "model": "SamModel(SamConfig()) ViT-B",
        "dtype": dtype,
        "params_m": n_params / 1e6,
        "image_hw": [h, w],
        "points": len(grid),
        "points_per_batch": points_per_batch,
        "masks_per_point": 3,
        "encoder_s": enc_s,
        "encoder_runs_s": enc_runs,
        "decoder_batch_runs_s": dec_times,
        "postprocess_batch_runs_s": post_times,
        "batches_timed": timed,
        "batches": n_batches,
        "decoder_s": dec_total,
        "postprocess_s": post_total + nms_s,
        "masks_surviving_filters": survivors,
        "masks_after_nms": len(keep),
        "total_s_per_image": enc_s + dec_total + post_total + nms_s,
        "peak_memory_mib": _peak_mib(device),
        "note": (
            f"decoder + AMG post-processing timed on {timed} of {n_batches} batches"
            + ("" if timed == n_batches else " and extrapolated")
            + f"; {survivors} masks pass pred_iou 0.88 / stability 0.95 with random weights"
        ),
    }
    return result


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default="both", choices=[*DTYPES, "both"])
    parser.add_argument("--quick", action="store_true", help="a dry run: small inputs, one run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument(
        "--reference-repeats",
        type=int,
        default=None,
        help="timed runs of the float32 reference path (default 1; 0 with --quick)",
    )
    parser.add_argument(
        "--sam-batches",
        type=int,
        default=None,
        help="SAM batches of 64 points timed (default all 16; 1 with --quick; fewer are "
        "extrapolated)",
    )
    parser.add_argument(
        "--photos", type=int, default=None, help="real photos for the agreement (default 5; 1)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-sam", action="store_true", help="skip the SAM comparison")
    parser.add_argument(
        "--memory-check",
        action="store_true",
        help="also segment a 4000x3000 photo with r50 on the CPU in a fresh process (peak RSS)",
    )
    args = parser.parse_args()
    quick = args.quick
    repeats = 1 if quick else args.repeats
    reference_repeats = args.reference_repeats if args.reference_repeats is not None else (
        0 if quick else 1
    )  # fmt: skip
    sam_batches = args.sam_batches if args.sam_batches is not None else (1 if quick else 16)
    photos = args.photos if args.photos is not None else (1 if quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    t_start = time.perf_counter()
    _log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"dtypes {', '.join(dtypes)}, repeats {repeats}{', quick' if quick else ''}"
    )
    result: dict[str, Any] = {"device": device.type, "dtypes": dtypes, "quick": quick}
    if device.type == "cpu":
        kernel = cpu_matmul_kernel()
        result["kernel"] = kernel
        _log(
            f"CPU {kernel['cpu']}: bf16 kernel {kernel['bf16_kernel']} (flags "
            f"{', '.join(kernel['flags']) or 'none'}; oneDNN ran {kernel['onednn_kernels']})"
        )
    image = photo_768x1024()
    config = SegmentConfig(max_masks=1000)
    if quick:  # a dry run: 384x512, the model's input 384x512, 100 masks
        image = np.ascontiguousarray(image[::2, ::2])
        config = SegmentConfig(max_masks=100, min_size=384, max_size=1024)
    result["image_hw"] = list(image.shape[:2])
    torch.manual_seed(0)
    r50 = build_model("r50").eval()

    result["unsam"] = {}
    for dtype in dtypes:
        r = bench_unsam(
            r50,
            dtype,
            device,
            image,
            repeats=repeats,
            reference_repeats=reference_repeats if dtype == "float32" else 0,
            quick=quick,
            config=config,
        )
        result["unsam"][dtype] = r
        h, w = result["image_hw"]
        extra = ""
        if "pipelined_s_per_image" in r:
            extra += f"; pipelined {r['pipelined_s_per_image']:.3f} s/image"
        if "reference_total_s_per_image" in r:
            extra += (
                f"; reference path {r['reference_total_s_per_image']:.2f} s/image "
                f"(fast path {r['speedup_fast_over_reference']:.2f}x faster)"
            )
        _log(
            f"unsam r50 {dtype}, {h}x{w} -> {r['input_hw_padded']} padded, {r['num_queries']} "
            f"queries, top-{r['max_masks']} ({r['masks_returned']} masks): "
            f"{r['total_s_per_image']:.3f} s/image (device part {r['device_part_s']:.3f} s, host "
            f"part {r['host_part_s']:.3f} s); peak {r['peak_memory_mib']:.0f} MiB "
            f"({r['peak_memory_kind']}){extra}"
        )
    if len(dtypes) == 2:
        u = result["unsam"]
        result["speedup_bfloat16_over_float32"] = (
            u["float32"]["total_s_per_image"] / u["bfloat16"]["total_s_per_image"]
        )
        _log(f"unsam r50 bf16 vs float32: {result['speedup_bfloat16_over_float32']:.2f}x faster")

    if not args.skip_sam:
        from transformers import SamConfig, SamModel

        torch.manual_seed(0)
        sam = SamModel(SamConfig()).eval()
        result["sam_amg"] = {}
        for dtype in dtypes:
            s = bench_sam_amg(
                sam, dtype, device, repeats=repeats, sam_batches=sam_batches, quick=quick
            )
            result["sam_amg"][dtype] = s
            _log(
                f"SAM ViT-B AMG {dtype}, 32x32 points: encoder {s['encoder_s']:.2f} s + decoder "
                f"{s['decoder_s']:.2f} s + AMG post-processing {s['postprocess_s']:.2f} s = "
                f"{s['total_s_per_image']:.2f} s/image ({s['note']}; {s['masks_after_nms']} after "
                f"NMS); peak {s['peak_memory_mib']:.0f} MiB"
            )
        del sam
        ratios = {}
        for sd in dtypes:
            for ud in dtypes:
                ratios[f"sam_{sd}_over_unsam_{ud}"] = (
                    result["sam_amg"][sd]["total_s_per_image"]
                    / result["unsam"][ud]["total_s_per_image"]
                )
        result["ratios"] = ratios
        goal = GOAL.get(device.type, 5.0)
        for key, value in ratios.items():
            _log(f"ratio {key.replace('_', ' ')}: {value:.2f}x (goal for unsam bf16: >= {goal:g})")
        if "bfloat16" in dtypes:
            result["headline"] = {
                "unsam_bfloat16_s_per_image": result["unsam"]["bfloat16"]["total_s_per_image"],
                **{
                    f"sam_{sd}_s_per_image": result["sam_amg"][sd]["total_s_per_image"]
                    for sd in dtypes
                },
                **{f"ratio_vs_sam_{sd}": ratios[f"sam_{sd}_over_unsam_bfloat16"] for sd in dtypes},
                "goal_ratio": goal,
            }

    if len(dtypes) == 2 and photos > 0:
        agree_config = config if not quick else SegmentConfig(max_masks=100, min_size=384)
        agree = bench_agreement(r50, device, agreement_photos(photos), agree_config)
        result["agreement"] = agree
        _log(
            f"bf16 vs float32 on {agree['photos']} real photo(s) ({agree['masks_matched']} masks "
            f"matched by IoU): mean IoU {agree['matched_mean_iou']:.4f} (median "
            f"{agree['matched_median_iou']:.4f}, {100 * agree['share_iou_at_least_0.9']:.1f}% "
            f">= 0.9), identical {100 * agree['identical_share']:.1f}%, mean best IoU "
            f"{agree['mean_best_iou']:.4f}; score difference mean {agree['score_diff_mean']:.2g}, "
            f"max {agree['score_diff_max']:.2g}"
        )
    if args.memory_check:
        mem = memory_check()
        result["memory_4000x3000"] = mem
        _log(
            f"r50 on a 4000x3000 photo in a fresh process: peak RSS {mem['peak_rss_gib']:.2f} GiB "
            f"(target <= 4 GiB), {mem['masks']} masks, {mem['seconds']:.1f} s"
        )
    result["wall_s"] = time.perf_counter() - t_start
    path = write_result("segment_speed", result)
    _log(f"wrote {path} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
