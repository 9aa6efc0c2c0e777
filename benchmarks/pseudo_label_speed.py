"""Seconds per 1024-px image of the divide-and-conquer pipeline on CPU, per stage, and peak memory.

Usage:
    python benchmarks/pseudo_label_speed.py [--archs vits8,vitb8,classic] [--repeats 2]
        [--refine none|crf]

DINO weights cannot be downloaded here, so ViT-S/8 and ViT-B/8 are random-initialised with DINO's
shapes (saved to a temporary HF folder and loaded through the real loading code); their timings are
those of the real models (the masks are meaningless). Each architecture runs in its own process
so its peak resident memory (VmHWM) is its own. Targets on 2 cores: ViT-S/8 <= 10 s,
ViT-B/8 <= 30 s per image, <= 4 GiB resident per worker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, peak_rss_bytes, write_result  # noqa: E402


def _image_1024():
    import numpy as np

    from unsam.io.images import load_image
    from unsam.masks import resize_image

    path = REPO.parent / "shared/data/sa1b/sam_notebooks/truck.jpg"
    if path.exists():
        img = load_image(path)
    else:  # clean clone: a smooth synthetic scene
        rng = np.random.default_rng(0)
        img = (rng.random((96, 144, 3)) * 255).astype(np.uint8)
    h, w = img.shape[:2]
    s = 1024 / max(h, w)
    return resize_image(img, (round(h * s), round(w * s)))


def child(arch: str, repeats: int, refine: str) -> dict:
    import torch

    from unsam.pipeline import DivideAndConquer, PipelineConfig
    from unsam.refine.crf import RefineConfig

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if arch == "classic":
            features = "classic"
        else:
            from transformers import ViTModel

            from unsam.features.convert import dino_vit_config

            cfg = dino_vit_config(arch)
            ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp)
            features = tmp
        dico = DivideAndConquer(
            config=PipelineConfig(features=features, refine=RefineConfig(method=refine))
        )
        # split the divide / conquer stages into feature extraction, CRF and the rest
        # (NCut / merging)
        import time

        maskcut_module = sys.modules[
            "unsam.divide.maskcut"
        ]  # the package re-exports a function of that name

        spent = {"features": 0.0, "crf": 0.0}
        extractor, crf = dico.extractor, maskcut_module.crf_refine_mask

        class TimedExtractor:
            def __getattr__(self, name):
                return getattr(extractor, name)

            def __call__(self, images):
                t0 = time.perf_counter()
                out = extractor(images)
                spent["features"] += time.perf_counter() - t0
                return out

        def timed_crf(*a, **k):
            t0 = time.perf_counter()
            out = crf(*a, **k)
            spent["crf"] += time.perf_counter() - t0
            return out

        dico.extractor = TimedExtractor()
        maskcut_module.crf_refine_mask = timed_crf
        image = _image_1024()
        dico(image)  # warm-up
        runs = []
        for _ in range(repeats):
            spent.update(features=0.0, crf=0.0)
            records = dico(image)
            runs.append(
                dict(
                    dico.last_timings,
                    masks=len(records),
                    features=spent["features"],
                    crf=spent["crf"],
                )
            )
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["peak_rss_gib"] = peak_rss_bytes() / 2**30
    out["image_hw"] = list(image.shape[:2])
    out["threads"] = torch.get_num_threads()
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--archs", default="vits8,vitb8")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--refine", default="none", choices=["none", "crf"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats, args.refine)))
        return
    results = {}
    for arch in args.archs.split(","):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                arch,
                "--repeats",
                str(args.repeats),
                "--refine",
                args.refine,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[arch] = r
        stages = {k: r[k] for k in ("divide", "conquer", "refine", "encode")}
        slowest = max(stages, key=stages.get)
        parts = {
            "DINO/feature forwards": r["features"],
            "MaskCut CRF": r["crf"],
            "NCut + merging + filters": r["total"]
            - r["features"]
            - r["crf"]
            - r["refine"]
            - r["encode"],
        }
        print(
            f"{arch:8s} {r['total']:6.2f} s/image  ("
            + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            + "; of which "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
            + ")"
        )
        print(
            f"{'':8s} "
            + "(stages: "
            + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            + f"; slowest: {slowest})  peak RSS {r['peak_rss_gib']:.2f} GiB  "
            f"{r['masks']:.0f} masks  "
            f"image {r['image_hw'][1]}x{r['image_hw'][0]}, {r['threads']} threads"
        )
    path = write_result("pseudo_label_speed", {"refine": args.refine, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
