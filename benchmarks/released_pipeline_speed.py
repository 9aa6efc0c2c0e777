"""Seconds per 1024-px image of the released UnSAM pseudo-label pipeline, per stage, float32
against bfloat16 in the same run, their mask agreement, and peak memory.

``--preset released`` end to end: the CutLER Cascade Mask R-CNN divide (800/1333 resize, up to 100
masks scoring > 0.1), DINO ViT-B/8 keys of every divide region's 256² crop (BGR, as released),
bottom-up merging, coverage filter, windowed NMS and RLE encoding; CascadePSP off, on, or both
(``--cascadepsp``).

No weights can be downloaded here, so every network is random-initialised with the real shapes
and loaded through the real loading code: a CutLER checkpoint in the official detectron2 layout
(``{"model": state}``, official key names), conditioned so that activations stay O(1), box scores
spread by the features and the detector returns the full 100 detections (the worst case); a
transformers ViT-B/8 saved with ``save_pretrained``; CascadePSP's module with random weights
saved as its weights file. Timings are those of the real models; the masks are meaningless.

Stages: divide (CutLER), conquer features (the ViT forwards), merge (``merge_regions``), filters
(cluster masks at crop size, coverage, NMS: the rest of conquer), refine (CascadePSP), encode.

Each variant runs in its own process (its own peak memory); variants run back to back in one
invocation, so their ratios are measured under the same machine load (``cpu_s`` is the process's
CPU time divided by its threads: on an idle machine equal to the wall time, and much less
sensitive to other processes sharing the cores). Variants: ``fp32`` (the released numerics) and
``bf16`` (every network in bfloat16 weights and activations), each with ``+psp`` when CascadePSP is
on. Agreement of each variant with the first one without CascadePSP (``--no-agreement`` skips it):
end to end (divide masks: mean best IoU; conquer masks: share identical and mean best IoU), and
conquer alone on the first variant's divide masks (the features' agreement without the divide's).

Usage:
    python benchmarks/released_pipeline_speed.py [--device cpu|cuda] [--quick]
        [--variants fp32,bf16] [--cascadepsp none|on|both] [--size 1024] [--max-regions 100]
Writes benchmarks/results/released_pipeline_speed.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_DATA, peak_rss_bytes, write_result

VARIANTS = {"fp32": {"dtype": "float32"}, "bf16": {"dtype": "bfloat16"}}
QUICK = {"size": 512, "max_regions": 20}


def image_of_side(side: int) -> Any:
    """A photo (the SAM truck, else a bundled test image) resized so its longer side is ``side``."""
    from unsam.io.images import load_image
    from unsam.masks import resize_image

    path = SHARED_DATA / "sa1b/sam_notebooks/truck.jpg"
    if not path.exists():
        path = REPO / "tests/data/images/astronaut.jpg"
    img = load_image(path)
    h, w = img.shape[:2]
    s = side / max(h, w)
    return resize_image(img, (round(h * s), round(w * s)))


def cutler_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random CutLER checkpoint in the official layout: ``{"model": {official name: tensor}}``.

    Weights ~ N(0, 1/fan_in) with damped residual branches keep activations O(1); box classifiers
    N(0, 100/fan_in) spread the scores by the ROI features (float32 and bf16 then rank the same
    boxes first) and the mask bias 1 gives a foreground probability ≈ 0.73, so 100 detections
    survive (the worst case).
    """
    import torch

    from unsam.divide.cutler import KEY_RULES, CascadeMaskRCNN
    from unsam.divide.cutler.model import ConvNorm, FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    model = CascadeMaskRCNN()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mod.weight.copy_(
                    torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.weight[0].numel())
                )
            elif isinstance(mod, torch.nn.ConvTranspose2d):
                mod.weight.copy_(
                    torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.weight.shape[0])
                )
            if getattr(mod, "bias", None) is not None and not isinstance(mod, FrozenBatchNorm2d):
                mod.bias.zero_()
            if isinstance(mod, ConvNorm) and name.endswith("conv3"):
                mod.norm.weight.fill_(0.3)
        for pred in model.box_predictors:
            pred.cls_score.weight.mul_(10.0)
            pred.bbox_pred.weight.mul_(0.01)
        model.mask_head.predictor.weight.mul_(0.01)
        model.mask_head.predictor.bias.fill_(1.0)
    state = {}
    for name, value in model.state_dict().items():
        official = next(o + name[len(ours) :] for o, ours in KEY_RULES if name.startswith(ours))
        state[official] = value.clone()
        if official.endswith(".norm.running_var"):
            state[official[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(1000)
    torch.save({"model": state}, path)
    return path


def vit_b8_folder(folder: Path, seed: int = 0) -> Path:
    """A random-init DINO ViT-B/8 (12 layers, 768-d, 12 heads, qkv bias, eps 1e-6), saved as HF."""
    import torch
    from transformers import ViTModel

    from unsam.features.convert import dino_vit_config

    torch.manual_seed(seed)
    cfg = dino_vit_config("vitb8")
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder


class _Timed:
    """Wraps a callable, adding its wall time to ``spent[key]``; other attributes pass through."""

    def __init__(self, fn: Any, spent: dict[str, float], key: str) -> None:
        self._fn, self._spent, self._key = fn, spent, key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fn, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._fn(*args, **kwargs)
        finally:
            self._spent[self._key] += time.perf_counter() - t0


def cascadepsp_weights(path: Path, seed: int = 0) -> Path:
    """CascadePSP's module with random weights (BN statistics in a trained range), saved as its
    weights file."""
    import torch

    from unsam.refine.cascadepsp import RefinementModule

    torch.manual_seed(seed)
    model = RefinementModule()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return path


def _save_records(path: str, records: list[Any]) -> None:
    import numpy as np

    np.save(
        path,
        np.array([(r.level, r.parent_id or 0, json.dumps(r.rle)) for r in records], dtype=object),
        allow_pickle=True,
    )


def child(
    variant: str,
    size: int,
    max_regions: int,
    device: str,
    psp: bool,
    save_masks: str | None,
    divide_from: str | None,
) -> dict[str, Any]:
    import numpy as np
    import torch

    from unsam.conquer import region
    from unsam.pipeline import DivideAndConquer, PipelineConfig

    tmp = Path(tempfile.mkdtemp(prefix="released_bench_"))
    ckpt = cutler_checkpoint(tmp / "cutler_cascade_final.pth")
    vit = vit_b8_folder(tmp / "vitb8")
    extra: dict[str, Any] = {}
    if psp:
        extra["refine"] = f"cascadepsp:{cascadepsp_weights(tmp / 'model')}"
    config = PipelineConfig(
        preset="released",
        divide=f"cutler:{ckpt}",
        features=str(vit),
        divide_max_masks=max_regions,
        device=device,
        **VARIANTS[variant],
    )
    dico = DivideAndConquer(config=config, **extra)
    spent = {"features": 0.0, "merge": 0.0}
    dico.extractor = _Timed(dico.extractor, spent, "features")
    region.merge_regions = _Timed(region.merge_regions, spent, "merge")  # in-process merges
    region._gather = _Timed(region._gather, spent, "merge")  # waits for the merge processes
    image = image_of_side(size)
    dico.cutler.detect(image[:64, :64])  # warm-up: first-call allocations of both networks
    dico.extractor(np.zeros((2, 256, 256, 3), np.uint8))
    workers = region.merge_workers_for(dico.config.conquer, dico.extractor)
    if workers:  # start the merge processes (spawned once per pipeline, reused for every image)
        pool = region._merge_pool(workers)
        ones = np.ones((4, 4, 8), np.float32)
        list(
            pool.map(
                region._merge_job,
                [ones] * (2 * workers),
                [(0.5,)] * (2 * workers),
                [1] * (2 * workers),
            )
        )
    cuda = dico.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    spent.update(features=0.0, merge=0.0)
    cpu0 = time.process_time()
    records = dico(image, image_id=1)
    cpu_s = (time.process_time() - cpu0) / torch.get_num_threads()
    t = dict(dico.last_timings)
    out = {
        "variant": variant + ("+psp" if psp else ""),
        "device": dico.device,
        "image_hw": list(image.shape[:2]),
        "threads": torch.get_num_threads(),
        "total": t["total"],
        "cpu_s": cpu_s,
        "divide": t["divide"],
        "conquer_features": spent["features"],
        "merge": spent["merge"],
        "filters": t["conquer"] - spent["features"] - spent["merge"],
        "refine": t["refine"],
        "encode": t["encode"],
        "divide_masks": sum(r.level == 0 for r in records),
        "masks": len(records),
        "feature_batch": dico.extractor.batch_for((256, 256)),
        "feature_kernel": getattr(dico.extractor, "kernel", "?"),
        "merge_workers": region.merge_workers_for(dico.config.conquer, dico.extractor),
        "peak_rss_gib": peak_rss_bytes() / 2**30,
    }
    if cuda:
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if save_masks:  # for the agreement: the records of this variant
        _save_records(save_masks, records)
    if divide_from:  # conquer alone on another variant's divide masks
        saved = np.load(divide_from, allow_pickle=True)
        divided = [(json.loads(x[2]), 1.0) for x in saved if x[0] == 0]
        dico.divide = lambda img: divided
        _save_records(save_masks + ".same_divide.npy", dico(image, image_id=1))
    return out


def agreement(path_a: str, path_b: str) -> dict[str, float]:
    """How far variant b's masks are from variant a's: per divide mask and in total, the share of
    a's conquer masks that b has exactly, and the mean best IoU of a's conquer masks in b's set."""
    import numpy as np
    from pycocotools import mask as mask_utils

    a = np.load(path_a, allow_pickle=True)
    b = np.load(path_b, allow_pickle=True)
    rles_a = [json.loads(x[2]) for x in a if x[0] > 0]
    rles_b = [json.loads(x[2]) for x in b if x[0] > 0]
    for r in rles_a + rles_b:
        r["counts"] = r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]
    div_a = [json.loads(x[2]) for x in a if x[0] == 0]
    div_b = [json.loads(x[2]) for x in b if x[0] == 0]
    for r in div_a + div_b:
        r["counts"] = r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]
    div_iou = mask_utils.iou(div_a, div_b, [0] * len(div_b)) if div_a and div_b else None
    exact = len({r["counts"] for r in rles_a} & {r["counts"] for r in rles_b})
    iou = (
        mask_utils.iou(rles_a, rles_b, [0] * len(rles_b)) if rles_a and rles_b else np.zeros((0, 0))
    )
    best = iou.max(axis=1) if iou.size else np.zeros(len(rles_a))
    return {
        "divide_masks_identical": [r["counts"] for r in div_a] == [r["counts"] for r in div_b],
        "divide_best_iou_mean": float(div_iou.max(axis=1).mean()) if div_iou is not None else 0.0,
        "conquer_masks_a": len(rles_a),
        "conquer_masks_b": len(rles_b),
        "exact_share": exact / max(1, len(rles_a)),
        "mean_best_iou": float(best.mean()) if len(best) else 1.0,
        "share_best_iou_ge_0.9": float((best >= 0.9).mean()) if len(best) else 1.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", default="fp32,bf16")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (every network)")
    p.add_argument("--cascadepsp", default="none", choices=["none", "on", "both"])
    p.add_argument("--size", type=int, default=1024, help="longer image side, pixels")
    p.add_argument("--max-regions", type=int, default=100, help="divide masks (released: 100)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"dry run: {QUICK['size']} px, {QUICK['max_regions']} regions",
    )
    p.add_argument("--no-agreement", action="store_true", help="skip the mask agreement")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--psp", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--save-masks", help=argparse.SUPPRESS)
    p.add_argument("--divide-from", help=argparse.SUPPRESS)
    args = p.parse_args()
    size = QUICK["size"] if args.quick else args.size
    regions = QUICK["max_regions"] if args.quick else args.max_regions
    if args.child:
        out = child(
            args.child, size, regions, args.device, args.psp, args.save_masks, args.divide_from
        )
        print(json.dumps(out))
        return
    from unsam.runtime import cpu_matmul_kernel, resolve_device

    device = str(resolve_device(args.device))
    kernel = (
        cpu_matmul_kernel()
        if device == "cpu"
        else {"gpu": __import__("torch").cuda.get_device_name(device)}
    )
    print("kernel:", json.dumps(kernel), flush=True)
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="released_masks_"))
    runs = []
    for variant in args.variants.split(","):
        if args.cascadepsp in ("none", "both"):
            runs.append((variant, False))
        if args.cascadepsp in ("on", "both"):
            runs.append((variant, True))
    agree = not args.no_agreement
    base_masks = None
    for variant, psp in runs:
        name = variant + ("+psp" if psp else "")
        cmd = [sys.executable, __file__, "--child", variant, "--device", device]
        cmd += ["--size", str(size), "--max-regions", str(regions)]
        cmd += ["--psp"] if psp else []
        cmd += ["--quick"] if args.quick else []
        masks = tmp / f"{name}.npy"
        if agree and not psp:
            cmd += ["--save-masks", str(masks)]
            if base_masks is not None:
                cmd += ["--divide-from", str(base_masks)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = r
        stages = ("divide", "conquer_features", "merge", "filters", "refine", "encode")
        cuda_peak = f", CUDA peak {r['peak_cuda_gib']:.2f} GiB" if "peak_cuda_gib" in r else ""
        print(
            f"{name:9s} {r['total']:7.2f} s/image (cpu_s {r['cpu_s']:.1f})  "
            + ", ".join(f"{k} {r[k]:.2f}" for k in stages)
            + f"  | peak RSS {r['peak_rss_gib']:.2f} GiB{cuda_peak}, {r['divide_masks']} divide "
            f"masks, {r['masks']} masks, image {r['image_hw'][1]}x{r['image_hw'][0]}, "
            f"{r['threads']} threads, {r['feature_batch']} crops/forward ({r['feature_kernel']}), "
            f"{r['merge_workers']} merge processes",
            flush=True,
        )
        if agree and not psp:
            if base_masks is None:
                base_masks = masks
            else:
                r["agreement"] = agreement(str(base_masks), str(masks))
                r["agreement_same_divide"] = agreement(
                    str(base_masks), str(masks) + ".same_divide.npy"
                )
    base = results[next(iter(results))]
    for name, r in list(results.items())[1:]:
        if name.endswith("+psp"):
            continue
        r["speedup_total"] = base["total"] / r["total"]
        r["speedup_cpu_s"] = base["cpu_s"] / r["cpu_s"]
        r["speedup_features"] = base["conquer_features"] / r["conquer_features"]
        r["speedup_divide"] = base["divide"] / r["divide"]
        line = (
            f"{name} vs {next(iter(results))}: total x{r['speedup_total']:.2f} (cpu_s "
            f"x{r['speedup_cpu_s']:.2f}), features x{r['speedup_features']:.2f}, divide "
            f"x{r['speedup_divide']:.2f}"
        )
        if "agreement" in r:
            line += f"\n  end to end: {json.dumps(r['agreement'])}"
            line += f"\n  same divide: {json.dumps(r['agreement_same_divide'])}"
        print(line)
    path = write_result(
        "released_pipeline_speed",
        {
            "device": device,
            "quick": args.quick,
            "size": size,
            "max_regions": regions,
            "cascadepsp": args.cascadepsp,
            "kernel": kernel,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
