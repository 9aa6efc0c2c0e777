"""Whole-image model speed on CPU: unsam r50 inference vs SAM's automatic mask generator; training.

Measured in one run (random weights; speed does not depend on the values):

1. ``r50`` inference at 1024 px: a 768x1024 RGB image is resized to 1024x1365 (padded 1024x1376),
   2000 queries, top-1000 masks upsampled in chunks to the original size, scored and RLE-encoded
   (:class:`unsam.models.whole_image.WholeImageSegmenter`). The fast path (``predict_top_masks`` +
   ``postprocess_top_masks``, what ``seg(image)`` runs) and the reference path
   (``predict_logits(reference=True)`` + ``postprocess_masks``, transformers' decoder forward) are
   timed on the same image; forward pass and post-processing separately. Peak RSS of the process
   is read right after this section.
2. Training s/step (forward + backward + grad clip 0.01 + AdamW, FrozenBN): ``tiny`` at 256²
   (batch 2, 10 random box masks per image) and ``r50`` at 512² (batch 1, 20 masks; 2000 queries,
   12544 points) — 512² rather than the original's 1024² crops to keep the run short.
   ``--skip-train`` leaves this out.
3. SAM automatic mask generator with transformers ``SamModel(SamConfig())`` (ViT-B) on the same
   768x1024 image (resized to 768x1024, padded to 1024²): image encoder once, then for each batch
   of 64 points of the 32x32 grid (3 masks a point): the mask decoder, and AMG's post-processing as
   transformers implements it (``SamImageProcessorPil.post_process_masks``: upsample the 256² mask
   logits to 1024², crop, resize to 768x1024; ``filter_masks`` with SAM's thresholds pred_iou 0.88
   and stability 0.95: the stability score of every mask at full resolution, boxes, RLE of the
   survivors), then box NMS at 0.7 over all survivors. All 16 batches (all 1024 points) are timed
   by default (``--sam-batches 16``; fewer batches are extrapolated to 16). Random weights: the
   decoder and the upsampling/stability work do not depend on the values, so they are counted in
   full for all 3072 masks; only the survivors' RLE and the NMS depend on them (the number of
   survivors is printed; a trained SAM keeps ~50-200 masks per image, whose RLE + box NMS cost
   well under a second), so the SAM figure is a slight lower bound and the ratio favours SAM.

Every timing is the median of ``--repeats`` runs after one warm-up run (r50 inference: median
forward + median post-processing; the reference path runs ``--reference-repeats`` times; warm-ups
of the r50 forward and train steps run at half size to keep the script short). Prints the ratios
SAM-AMG / unsam-r50 per image (target >= 5) and writes benchmarks/results/segment_speed.json.

``--memory-check`` also segments a 4000x3000 photo with r50 in a fresh process and reports its
peak RSS (target <= 4 GiB).

Usage: .venv/bin/python benchmarks/segment_speed.py [--repeats 3] [--reference-repeats 1]
       [--sam-batches 16] [--threads N] [--skip-train] [--skip-sam] [--memory-check]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from common import peak_rss_bytes, write_result

from unsam.models.whole_image import build_model, freeze_batchnorm
from unsam.models.whole_image.postprocessing import postprocess_masks, postprocess_top_masks
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import WholeImageSegmenter


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    return peak_rss_bytes() / 2**20


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _log(text: str) -> None:
    print(text, flush=True)


def _median(fn, repeats: int, warmup=None) -> tuple[float, list[float], object]:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one ``warmup()`` (default
    ``fn``)."""
    (warmup or fn)()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def bench_r50_inference(repeats: int, reference_repeats: int) -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(768, 1024, 3), dtype=np.uint8)
    rss_before = _current_rss_mib()
    torch.manual_seed(0)
    seg = WholeImageSegmenter(build_model("r50"), SegmentConfig(max_masks=1000))
    rss_model = _current_rss_mib()
    small = image[::2, ::2].copy()  # warm-up on a 384x512 image (same kernels)
    cfg = seg.config
    fwd_s, fwd_all, top = _median(
        lambda: seg.predict_top_masks(image), repeats, warmup=lambda: seg(small)
    )

    def post():
        return postprocess_top_masks(
            top,
            image_hw=(768, 1024),
            chunk_size=cfg.chunk_size,
            chunk_bytes=cfg.chunk_megabytes << 20,
        )

    post_s, post_all, scored = _median(post, repeats, warmup=lambda: None)
    padded = top.padded_hw
    records = seg(image)  # the whole call once (not timed): forward + post-processing + records
    result = {
        "image_hw": [768, 1024],
        "input_hw_padded": list(padded),
        "num_queries": int(seg.model.config.num_queries),
        "max_masks": 1000,
        "masks_returned": len(records),
        "forward_s": fwd_s,
        "postprocess_s": post_s,
        "total_s_per_image": fwd_s + post_s,
        "forward_runs_s": fwd_all,
        "postprocess_runs_s": post_all,
        "rss_before_model_mib": rss_before,
        "rss_after_model_mib": rss_model,
        "peak_rss_mib": _rss_mib(),
    }
    if reference_repeats > 0:
        ref_fwd, ref_fwd_all, logits = _median(
            lambda: seg.predict_logits(image, reference=True),
            reference_repeats,
            warmup=lambda: None,
        )
        class_logits, mask_logits, padded, valid = logits  # type: ignore[misc]

        def ref_post():
            return postprocess_masks(
                class_logits,
                mask_logits,
                padded_hw=padded,
                valid_hw=valid,
                image_hw=(768, 1024),
                max_masks=1000,
                chunk_size=cfg.chunk_size,
                chunk_bytes=cfg.chunk_megabytes << 20,
            )

        ref_post_s, ref_post_all, ref_scored = _median(
            ref_post, reference_repeats, warmup=lambda: None
        )
        result.update(
            {
                "reference_forward_s": ref_fwd,
                "reference_postprocess_s": ref_post_s,
                "reference_total_s_per_image": ref_fwd + ref_post_s,
                "reference_forward_runs_s": ref_fwd_all,
                "reference_postprocess_runs_s": ref_post_all,
                "speedup_fast_over_reference": (ref_fwd + ref_post_s) / (fwd_s + post_s),
                # random weights: many near-tied foreground probabilities, so rounding may swap
                # queries at the top-1000 boundary; count the queries both paths keep
                "top_queries_shared": len(
                    set(scored.query_indices.tolist()) & set(ref_scored.query_indices.tolist())
                ),
            }
        )
    return result


def memory_check(h: int = 3000, w: int = 4000, max_masks: int = 100) -> dict:
    """Peak RSS of a fresh process that segments one h x w photo with r50 (2000 queries).

    ``max_masks`` 100 rather than 1000 keeps it short: masks are upsampled chunk by chunk
    (``chunk_megabytes``) and leave the chunk as RLE, so the peak does not grow with their number.
    """
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


def _random_targets(
    batch: int, n: int, hw: int, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    masks, labels = [], []
    for _ in range(batch):
        m = torch.zeros(n, hw, hw)
        for k in range(n):
            y0, x0 = torch.randint(0, hw // 2, (2,), generator=g).tolist()
            h, w = torch.randint(hw // 16, hw // 2, (2,), generator=g).tolist()
            m[k, y0 : y0 + h, x0 : x0 + w] = 1.0
        masks.append(m)
        labels.append(torch.zeros(n, dtype=torch.long))
    return masks, labels


def bench_train_step(name: str, hw: int, batch: int, n_masks: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name)  # type: ignore[arg-type]
    freeze_batchnorm(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.05)
    x = torch.randn(batch, 3, hw, hw)
    masks, labels = _random_targets(batch, n_masks, hw, seed=1)

    def step() -> float:
        out = model(pixel_values=x, mask_labels=masks, class_labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.01)
        opt.step()
        return float(out.loss.detach())

    x_small = torch.randn(batch, 3, hw // 2, hw // 2)
    masks_small, _ = _random_targets(batch, n_masks, hw // 2, seed=2)

    def warm() -> None:  # one step at half size: optimizer state and kernels initialised
        out = model(pixel_values=x_small, mask_labels=masks_small, class_labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    secs, all_s, loss = _median(step, repeats, warmup=warm)
    return {
        "config": name,
        "input_hw": [hw, hw],
        "batch": batch,
        "masks_per_image": n_masks,
        "num_queries": int(model.config.num_queries),
        "s_per_step": secs,
        "runs_s": all_s,
        "last_loss": loss,
    }


def _box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> list[int]:
    """Greedy NMS on XYXY boxes (torchvision's batched_nms, one class, as transformers calls it)."""
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    b = boxes.double()
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    keep: list[int] = []
    removed = torch.zeros(len(order), dtype=torch.bool)
    for i in order:
        if removed[i]:
            continue
        keep.append(i)
        lt = torch.maximum(b[i, :2], b[:, :2])
        rb = torch.minimum(b[i, 2:], b[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        removed |= inter / (area[i] + area - inter).clamp(min=1e-12) > iou_thresh
    return keep


def bench_sam_amg(
    repeats: int,
    sam_batches: int,
    points_per_batch: int = 64,
    image_hw: tuple[int, int] = (768, 1024),
) -> dict:
    from transformers import SamConfig, SamModel
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(0)
    model = SamModel(SamConfig()).eval()
    processor = SamImageProcessorPil()
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, 1024, 1024)  # the 768x1024 image resized (longest side 1024) and padded
    h, w = image_hw
    with torch.inference_mode():
        enc_s, enc_all, emb = _median(lambda: model.get_image_embeddings(x), repeats)
        side = 32
        offs = (np.arange(side) + 0.5) / side
        grid = (
            np.stack(np.meshgrid(offs * w, offs * h), -1).reshape(-1, 2).astype(np.float32)
        )  # (x, y)
        scale = 1024 / max(h, w)
        batches = [
            torch.from_numpy(grid[i : i + points_per_batch] * scale)[None, :, None, :]
            for i in range(0, len(grid), points_per_batch)
        ]
        labels = torch.ones(1, points_per_batch, 1, dtype=torch.long)
        n_batches = len(batches)
        timed = min(max(1, sam_batches), n_batches)

        def amg_batch(pts: torch.Tensor) -> tuple[float, float, tuple]:
            t0 = time.perf_counter()
            out = model(
                image_embeddings=emb, input_points=pts, input_labels=labels, multimask_output=True
            )
            t1 = time.perf_counter()
            masks = processor.post_process_masks(
                [out.pred_masks[0]],
                original_sizes=[(h, w)],
                reshaped_input_sizes=[(h, w)],
                binarize=False,
            )[0]
            rles, scores, boxes = processor.filter_masks(
                masks,
                out.iou_scores[0],
                (h, w),
                [0, 0, w, h],
                pred_iou_thresh=0.88,
                stability_score_thresh=0.95,
                mask_threshold=0.0,
                stability_score_offset=1.0,
            )
            return t1 - t0, time.perf_counter() - t1, (rles, scores, boxes)

        amg_batch(batches[0])  # warm-up
        dec_times, post_times, kept = [], [], []
        for pts in batches[:timed]:
            d, p, k = amg_batch(pts)
            dec_times.append(d)
            post_times.append(p)
            kept.append(k)
        t0 = time.perf_counter()
        all_boxes = torch.cat([k[2] for k in kept]) if kept else torch.zeros(0, 4)
        all_scores = torch.cat([k[1] for k in kept]) if kept else torch.zeros(0)
        survivors = int(all_scores.numel())
        keep = _box_nms(all_boxes, all_scores, 0.7) if survivors else []
        nms_s = time.perf_counter() - t0
    factor = n_batches / timed
    dec_total = sum(dec_times) * factor
    post_total = sum(post_times) * factor
    return {
        "model": "SamModel(SamConfig()) ViT-B",
        "params_m": n_params / 1e6,
        "image_hw": [h, w],
        "points": len(grid),
        "points_per_batch": points_per_batch,
        "masks_per_point": 3,
        "encoder_s": enc_s,
        "encoder_runs_s": enc_all,
        "decoder_batch_runs_s": dec_times,
        "postprocess_batch_runs_s": post_times,
        "batches_timed": timed,
        "batches": n_batches,
        "decoder_s": dec_total,
        "postprocess_s": post_total + nms_s,
        "masks_surviving_filters": survivors,
        "masks_after_nms": len(keep),
        "total_s_per_image": enc_s + dec_total + post_total + nms_s,
        "note": (
            f"decoder + AMG post-processing timed on {timed} of {n_batches} batches"
            + ("" if timed == n_batches else " and extrapolated")
            + f"; {survivors} masks pass pred_iou 0.88 / stability 0.95 with random weights"
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)"
    )
    parser.add_argument(
        "--reference-repeats",
        type=int,
        default=1,
        help="timed runs of the reference path (0: skip it)",
    )
    parser.add_argument(
        "--sam-batches",
        type=int,
        default=16,
        help="SAM batches of 64 points timed (16 = all 1024 points; fewer are extrapolated)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-sam", action="store_true", help="skip the SAM comparison")
    parser.add_argument("--skip-train", action="store_true", help="skip the training steps")
    parser.add_argument(
        "--memory-check",
        action="store_true",
        help="also segment a 4000x3000 photo with r50 in a fresh process and report its peak RSS",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    _log(f"torch {torch.__version__}, {threads} threads, device cpu, repeats {args.repeats}")

    inf = bench_r50_inference(args.repeats, args.reference_repeats)
    h, w = inf["image_hw"]
    _log(
        f"unsam r50 inference (fast path), {h}x{w} -> {inf['input_hw_padded']} padded, "
        f"{inf['num_queries']} queries, top-{inf['max_masks']} "
        f"({inf['masks_returned']} non-empty masks): {inf['total_s_per_image']:.2f} s/image "
        f"(forward {inf['forward_s']:.2f} s, post-processing {inf['postprocess_s']:.2f} s); "
        f"peak RSS {inf['peak_rss_mib']:.0f} MiB "
        f"(process before the model: {inf['rss_before_model_mib']:.0f} MiB)"
    )
    if "reference_total_s_per_image" in inf:
        _log(
            "unsam r50 inference (reference path): "
            f"{inf['reference_total_s_per_image']:.2f} s/image "
            f"(forward {inf['reference_forward_s']:.2f} s, "
            f"post-processing {inf['reference_postprocess_s']:.2f} s); "
            f"fast path {inf['speedup_fast_over_reference']:.2f}x faster; "
            f"{inf['top_queries_shared']} of 1000 top queries shared"
        )

    result: dict = {"device": "cpu", "r50_inference": inf}
    if not args.skip_train:
        tiny = bench_train_step("tiny", 256, batch=2, n_masks=10, repeats=max(args.repeats, 5))
        _log(f"train step tiny @256² batch 2: {tiny['s_per_step']:.3f} s/step")
        r50 = bench_train_step("r50", 512, batch=1, n_masks=20, repeats=args.repeats)
        _log(
            "train step r50 @512² batch 1 (2000 queries, 12544 points): "
            f"{r50['s_per_step']:.2f} s/step"
        )
        result.update({"train_tiny": tiny, "train_r50": r50})
    if not args.skip_sam:
        sam = bench_sam_amg(args.repeats, args.sam_batches)
        ratio = sam["total_s_per_image"] / inf["total_s_per_image"]
        result["sam_amg"] = sam
        result["ratio_sam_amg_over_unsam_r50"] = ratio
        _log(
            f"SAM ViT-B AMG 32x32 points, 768x1024 image: encoder {sam['encoder_s']:.2f} s "
            f"+ decoder {sam['decoder_s']:.1f} s "
            f"+ AMG post-processing {sam['postprocess_s']:.1f} s "
            f"= {sam['total_s_per_image']:.1f} s/image "
            f"({sam['note']}; {sam['masks_after_nms']} after NMS)"
        )
        _log(f"ratio SAM-AMG / unsam-r50 fast path per image: {ratio:.2f}x (target >= 5)")
        if "reference_total_s_per_image" in inf:
            ref_ratio = sam["total_s_per_image"] / inf["reference_total_s_per_image"]
            result["ratio_sam_amg_over_unsam_r50_reference"] = ref_ratio
            _log(f"ratio SAM-AMG / unsam-r50 reference path per image: {ref_ratio:.2f}x")
    if args.memory_check:
        mem = memory_check()
        result["memory_4000x3000"] = mem
        _log(
            f"r50 on a 4000x3000 photo in a fresh process: peak RSS {mem['peak_rss_gib']:.2f} GiB "
            f"(target <= 4 GiB), {mem['masks']} masks, {mem['seconds']:.1f} s"
        )
    result["wall_s"] = time.perf_counter() - t0
    path = write_result("segment_speed", result)
    _log(f"wrote {path} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
