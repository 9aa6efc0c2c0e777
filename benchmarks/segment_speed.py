"""Whole-image model speed on CPU: unsam r50 inference vs SAM's automatic mask generator; train steps.

Measured in one run (random weights; speed does not depend on the values):

1. ``r50`` inference at 1024 px: a 768x1024 RGB image is resized to 1024x1365 (padded 1024x1376),
   2000 queries, top-1000 masks upsampled in chunks to the original size, scored and RLE-encoded
   (:class:`unsam.models.whole_image.WholeImageSegmenter`). Forward pass and post-processing are
   timed separately; peak RSS of the process is read right after this section.
2. Training s/step (forward + backward + grad clip 0.01 + AdamW, FrozenBN): ``tiny`` at 256²
   (batch 2, 10 random box masks per image) and ``r50`` at 512² (batch 1, 20 masks; 2000 queries,
   12544 points) — 512² rather than the original's 1024² crops to keep the run short.
3. SAM automatic-mask-generator cost with transformers ``SamModel(SamConfig())`` (ViT-B): image
   encoder once at 1024², then the mask decoder over a 32x32 point grid in batches of 64 points
   (3 masks each). Only ``--sam-batches`` decoder batches are timed; the median is multiplied by
   16 (= 1024 / 64). AMG's own post-processing (mask upsampling, stability score, NMS) is not
   counted, so the SAM figure is a lower bound and the ratio favours SAM.

Every timing is the median of ``--repeats`` runs after one warm-up run (r50 inference: median
forward + median post-processing; warm-ups of the r50 forward and train steps run at half size to
keep the script short). Prints the ratio
SAM-AMG / unsam-r50 per image and writes benchmarks/results/segment_speed.json.

Usage: .venv/bin/python benchmarks/segment_speed.py [--repeats 3] [--sam-batches 3] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import write_result  # noqa: E402
from unsam.models.whole_image import build_model, freeze_batchnorm  # noqa: E402
from unsam.models.whole_image.segmenter import SegmentConfig, WholeImageSegmenter, postprocess_masks  # noqa: E402


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one ``warmup()`` (default ``fn``)."""
    (warmup or fn)()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def bench_r50_inference(repeats: int) -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(768, 1024, 3), dtype=np.uint8)
    rss_before = _current_rss_mib()
    torch.manual_seed(0)
    seg = WholeImageSegmenter(build_model("r50"), SegmentConfig(max_masks=1000))
    rss_model = _current_rss_mib()
    small = image[::2, ::2].copy()  # warm-up on a 384x512 image (same kernels, 4x cheaper)
    fwd_s, fwd_all, logits = _median(lambda: seg.predict_logits(image), repeats, warmup=lambda: seg(small))
    class_logits, mask_logits, padded, valid = logits  # type: ignore[misc]

    def post():
        return postprocess_masks(class_logits, mask_logits, padded_hw=padded, valid_hw=valid, image_hw=(768, 1024),
                                 max_masks=1000, chunk_size=seg.config.chunk_size)

    post_s, post_all, _ = _median(post, repeats, warmup=lambda: None)
    records = seg(image)  # the whole call once (not timed): forward + post-processing + records
    total_s = fwd_s + post_s
    q = int(seg.model.config.num_queries)
    naive_bytes = q * padded[0] * padded[1] * 4  # the original upsamples every query to the padded size
    return {
        "image_hw": [768, 1024],
        "input_hw_padded": list(padded),
        "num_queries": q,
        "max_masks": 1000,
        "masks_returned": len(records),
        "forward_s": fwd_s,
        "postprocess_s": post_s,
        "total_s_per_image": total_s,
        "forward_runs_s": fwd_all,
        "postprocess_runs_s": post_all,
        "rss_before_model_mib": rss_before,
        "rss_after_model_mib": rss_model,
        "peak_rss_mib": _rss_mib(),
        "original_upsample_all_gib": naive_bytes / 2**30,
    }


def _random_targets(batch: int, n: int, hw: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
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
    return {"config": name, "input_hw": [hw, hw], "batch": batch, "masks_per_image": n_masks,
            "num_queries": int(model.config.num_queries), "s_per_step": secs, "runs_s": all_s, "last_loss": loss}


def bench_sam_amg(repeats: int, sam_batches: int, points_per_batch: int = 64) -> dict:
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    model = SamModel(SamConfig()).eval()
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        enc_s, enc_all, emb = _median(lambda: model.get_image_embeddings(x), repeats)
        side = 32
        offs = (np.arange(side) + 0.5) / side * 1024
        grid = np.stack(np.meshgrid(offs, offs), -1).reshape(-1, 2).astype(np.float32)  # 1024 (x, y) points
        batches = [torch.from_numpy(grid[i : i + points_per_batch])[None, :, None, :]
                   for i in range(0, len(grid), points_per_batch)]
        labels = torch.ones(1, points_per_batch, 1, dtype=torch.long)
        it = iter(range(10**9))

        def decode_one():
            pts = batches[next(it) % len(batches)]
            return model(image_embeddings=emb, input_points=pts, input_labels=labels, multimask_output=True)

        dec_s, dec_all, out = _median(decode_one, sam_batches)
    n_batches = len(batches)
    return {
        "model": "SamModel(SamConfig()) ViT-B",
        "params_m": n_params / 1e6,
        "image_hw": [1024, 1024],
        "points": len(grid),
        "points_per_batch": points_per_batch,
        "masks_per_point": int(out.pred_masks.shape[2]),
        "encoder_s": enc_s,
        "encoder_runs_s": enc_all,
        "decoder_runs_s": dec_all,
        "decoder_s_per_batch": dec_s,
        "decoder_batches_timed": sam_batches,
        "decoder_s_extrapolated": dec_s * n_batches,
        "total_s_per_image": enc_s + dec_s * n_batches,
        "note": f"decoder timed on {sam_batches} of {n_batches} batches and extrapolated; AMG post-processing not counted",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    parser.add_argument("--sam-batches", type=int, default=3, help="SAM decoder batches timed (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-sam", action="store_true", help="skip the SAM comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    _log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, repeats {args.repeats}")

    inf = bench_r50_inference(args.repeats)
    _log(f"unsam r50 inference, {inf['image_hw'][0]}x{inf['image_hw'][1]} -> {inf['input_hw_padded']} padded, "
         f"{inf['num_queries']} queries, top-{inf['max_masks']} ({inf['masks_returned']} non-empty masks): "
         f"{inf['total_s_per_image']:.2f} s/image (forward {inf['forward_s']:.2f} s, post-processing "
         f"{inf['postprocess_s']:.2f} s); peak RSS {inf['peak_rss_mib']:.0f} MiB (process before the model: "
         f"{inf['rss_before_model_mib']:.0f} MiB); the original's upsample-all step alone would need "
         f"{inf['original_upsample_all_gib']:.1f} GiB")

    tiny = bench_train_step("tiny", 256, batch=2, n_masks=10, repeats=max(args.repeats, 5))
    _log(f"train step tiny @256² batch 2: {tiny['s_per_step']:.3f} s/step")
    r50 = bench_train_step("r50", 512, batch=1, n_masks=20, repeats=args.repeats)
    _log(f"train step r50 @512² batch 1 (2000 queries, 12544 points): {r50['s_per_step']:.2f} s/step")

    result = {"device": "cpu", "r50_inference": inf, "train_tiny": tiny, "train_r50": r50}
    if not args.skip_sam:
        sam = bench_sam_amg(args.repeats, args.sam_batches)
        ratio = sam["total_s_per_image"] / inf["total_s_per_image"]
        result["sam_amg"] = sam
        result["ratio_sam_amg_over_unsam_r50"] = ratio
        _log(f"SAM ViT-B AMG 32x32 points @1024²: encoder {sam['encoder_s']:.2f} s + decoder "
             f"{sam['decoder_s_per_batch']:.2f} s/batch of 64 x 16 batches = {sam['total_s_per_image']:.1f} s/image "
             f"({sam['note']})")
        _log(f"ratio SAM-AMG / unsam-r50 per image: {ratio:.2f}x")
    result["wall_s"] = time.perf_counter() - t0
    path = write_result("segment_speed", result)
    _log(f"wrote {path} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
