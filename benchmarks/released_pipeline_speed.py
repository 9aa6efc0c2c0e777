"""Seconds per 1024-px image of the released UnSAM pseudo-label pipeline on CPU, per stage, and
peak RSS.

``--preset released`` end to end, CascadePSP off: the CutLER Cascade Mask R-CNN divide (800/1333
resize, up to 100 masks scoring > 0.1), DINO ViT-B/8 keys of every divide region's 256² crop
(BGR, as released), bottom-up merging, coverage filter, windowed NMS and RLE encoding.

No weights can be downloaded here, so both networks are random-initialised with the real shapes
and loaded through the real loading code: a CutLER checkpoint in the official detectron2 layout
(``{"model": state}``, official key names), conditioned so that every proposal scores ≈ 0.88
and the detector returns the full 100 detections (the worst case), and a transformers ViT-B/8
saved with ``save_pretrained``. Timings are those of the real models; the masks are meaningless.

Stages: divide (CutLER), conquer features (the ViT forwards), merge (``merge_regions``),
filters (cluster masks at crop size, coverage, NMS: the rest of conquer), encode (RLE).

Each variant runs in its own process (its own peak RSS); variants run back to back in one
invocation, so their ratios are measured under the same machine load. Variants:

- ``fp32``: the released numerics (float32 DINO, as the original's CPU path).
- ``bf16``: ``dtype="bfloat16"`` for the ViT (output float32); the mask agreement with ``fp32``
  is measured by ``--agreement`` (same image, same divide masks).

Usage:
    python benchmarks/released_pipeline_speed.py [--variants fp32,bf16] [--size 1024]
        [--max-regions 100] [--agreement]
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
from common import REPO, peak_rss_bytes, write_result

VARIANTS = {"fp32": {"dtype": "float32"}, "bf16": {"dtype": "bfloat16"}}


def image_of_side(side: int) -> Any:
    """A photo (the SAM truck, else a bundled test image) resized so its longer side is ``side``."""
    from unsam.io.images import load_image
    from unsam.masks import resize_image

    path = REPO.parent / "shared/data/sa1b/sam_notebooks/truck.jpg"
    if not path.exists():
        path = REPO / "tests/data/images/astronaut.jpg"
    img = load_image(path)
    h, w = img.shape[:2]
    s = side / max(h, w)
    return resize_image(img, (round(h * s), round(w * s)))


def cutler_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random CutLER checkpoint in the official layout: ``{"model": {official name: tensor}}``.

    Weights ~ N(0, 1/fan_in) with damped residual branches keep activations O(1); the box
    classifiers' foreground bias 2 gives every ROI a score ≈ 0.88 and the mask bias 1 a
    foreground probability ≈ 0.73, so all 100 detections survive (the worst case).
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
            pred.cls_score.weight.mul_(0.01)
            pred.cls_score.bias.copy_(torch.tensor([2.0, 0.0]))
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
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        patch_size=8,
        image_size=224,
        qkv_bias=True,
        layer_norm_eps=1e-6,
    )
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


def child(variant: str, size: int, max_regions: int, save_masks: str | None) -> dict[str, Any]:
    import numpy as np
    import torch

    from unsam.conquer import region
    from unsam.pipeline import DivideAndConquer, PipelineConfig

    tmp = Path(tempfile.mkdtemp(prefix="released_bench_"))
    ckpt = cutler_checkpoint(tmp / "cutler_cascade_final.pth")
    vit = vit_b8_folder(tmp / "vitb8")
    config = PipelineConfig(
        preset="released",
        divide=f"cutler:{ckpt}",
        features=str(vit),
        divide_max_masks=max_regions,
        **VARIANTS[variant],
    )
    dico = DivideAndConquer(config=config)
    spent = {"features": 0.0, "merge": 0.0}
    dico.extractor = _Timed(dico.extractor, spent, "features")
    region.merge_regions = _Timed(region.merge_regions, spent, "merge")
    image = image_of_side(size)
    dico.cutler.detect(image[:64, :64])  # warm-up: first-call allocations of both networks
    dico.extractor(np.zeros((1, 256, 256, 3), np.uint8))
    spent.update(features=0.0)
    records = dico(image, image_id=1)
    t = dict(dico.last_timings)
    out = {
        "variant": variant,
        "image_hw": list(image.shape[:2]),
        "threads": torch.get_num_threads(),
        "total": t["total"],
        "divide": t["divide"],
        "conquer_features": spent["features"],
        "merge": spent["merge"],
        "filters": t["conquer"] - spent["features"] - spent["merge"],
        "encode": t["encode"],
        "refine": t["refine"],
        "divide_masks": sum(r.level == 0 for r in records),
        "masks": len(records),
        "peak_rss_gib": peak_rss_bytes() / 2**30,
    }
    if save_masks:  # for --agreement: the records of this variant
        np.save(
            save_masks,
            np.array(
                [(r.level, r.parent_id or 0, json.dumps(r.rle)) for r in records], dtype=object
            ),
            allow_pickle=True,
        )
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
    div_a = [json.loads(x[2])["counts"] for x in a if x[0] == 0]
    div_b = [json.loads(x[2])["counts"] for x in b if x[0] == 0]
    exact = len({r["counts"] for r in rles_a} & {r["counts"] for r in rles_b})
    iou = (
        mask_utils.iou(rles_a, rles_b, [0] * len(rles_b)) if rles_a and rles_b else np.zeros((0, 0))
    )
    best = iou.max(axis=1) if iou.size else np.zeros(len(rles_a))
    return {
        "divide_masks_identical": div_a == div_b,
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
    p.add_argument("--size", type=int, default=1024, help="longer image side, pixels")
    p.add_argument("--max-regions", type=int, default=100, help="divide masks (released: 100)")
    p.add_argument(
        "--agreement", action="store_true", help="compare every variant's masks with the first's"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--save-masks", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.max_regions, args.save_masks)))
        return
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="released_masks_"))
    variants = args.variants.split(",")
    for variant in variants:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--size",
            str(args.size),
            "--max-regions",
            str(args.max_regions),
        ]
        if args.agreement:
            cmd += ["--save-masks", str(tmp / f"{variant}.npy")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[variant] = r
        stages = ("divide", "conquer_features", "merge", "filters", "encode")
        print(
            f"{variant:6s} {r['total']:7.1f} s/image  "
            + ", ".join(f"{k} {r[k]:.1f}" for k in stages)
            + f"  | peak RSS {r['peak_rss_gib']:.2f} GiB, {r['divide_masks']} divide masks, "
            f"{r['masks']} masks, image {r['image_hw'][1]}x{r['image_hw'][0]}, {r['threads']} "
            "threads",
            flush=True,
        )
    base = results[variants[0]]
    for variant in variants[1:]:
        r = results[variant]
        r["speedup_total"] = base["total"] / r["total"]
        r["speedup_features"] = base["conquer_features"] / r["conquer_features"]
        line = (
            f"{variant} vs {variants[0]}: total x{r['speedup_total']:.2f}, "
            f"features x{r['speedup_features']:.2f}"
        )
        if args.agreement:
            r["agreement"] = agreement(str(tmp / f"{variants[0]}.npy"), str(tmp / f"{variant}.npy"))
            line += f", masks {json.dumps(r['agreement'])}"
        print(line)
    path = write_result(
        "released_pipeline_speed",
        {"size": args.size, "max_regions": args.max_regions, "results": results},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
