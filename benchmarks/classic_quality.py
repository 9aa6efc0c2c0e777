"""Weight-free divide-and-conquer ("classic" features) against the classical baselines on real COCO.

Usage:
    python benchmarks/classic_quality.py [--images 144] [--start 0] [--baselines felzenszwalb,slic]
                                         [--preset auto|spec] [--save-dir DIR]

Runs, on the first ``--images`` COCO val2017 images of ../shared/data/coco (sorted by file name):
the felzenszwalb / slic baselines (``unsam.baselines``, as ``unsam baseline``) and
``DivideAndConquer(features="classic")`` (classic preset unless ``--preset spec``), then the
class-agnostic AR of each (``unsam.evaluate``, as ``unsam eval``). Prints the AR table, the ratio
AR@1000(DiCo) / AR@1000(best baseline), seconds per image (median over images after one warm-up
image) and DiCo's per-stage seconds (``DivideAndConquer.last_timings``, mean per image).
Writes benchmarks/results/classic_quality.json (``_spec`` / ``_classic`` suffix for those presets).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, write_result  # noqa: E402

KEYS = ("AR@1", "AR@10", "AR@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000")


def run_producer(name, produce, images, folder):
    from unsam.io.images import load_image
    from unsam.records import ImageRecord

    out, seconds, stages, counts = [], [], {}, []
    produce(
        load_image(folder / images[0]["file_name"]), images[0]["id"]
    )  # warm-up (lazy imports, caches)
    for info in images:
        image = load_image(folder / info["file_name"])
        t0 = time.perf_counter()
        records, timings = produce(image, info["id"])
        seconds.append(time.perf_counter() - t0)
        for k, v in timings.items():
            stages[k] = stages.get(k, 0.0) + v
        counts.append(len(records))
        out.append(
            ImageRecord(
                info["id"], info["file_name"], info["height"], info["width"], tuple(records)
            )
        )
        print(f"\r{name}: {len(out)}/{len(images)} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out, {
        "s_per_image_median": statistics.median(seconds),
        "s_per_image_mean": float(np.mean(seconds)),
        "masks_per_image": float(np.mean(counts)),
        "stages_mean_s": {k: v / len(images) for k, v in stages.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=144)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--baselines", default="felzenszwalb,slic")
    p.add_argument("--preset", default="auto", choices=["auto", "spec", "classic"])
    p.add_argument("--save-dir", help="also write each method's COCO JSON here")
    args = p.parse_args()

    import torch

    import unsam
    from unsam.baselines import BaselineConfig, baseline_masks
    from unsam.config import config_to_dict
    from unsam.io.coco import coco_dataset_dict, write_coco_dataset
    from unsam.pipeline import DivideAndConquer, PipelineConfig

    torch.manual_seed(0)
    np.random.seed(0)
    data = REPO.parent / "shared" / "data" / "coco"
    if not (data / "instances.json").exists():
        sys.exit(f"needs the shared COCO subset at {data}")
    gt = json.loads((data / "instances.json").read_text())
    images = sorted(gt["images"], key=lambda i: i["file_name"])[
        args.start : args.start + args.images
    ]
    ids = {i["id"] for i in images}
    sub = {
        "images": images,
        "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
        "categories": gt["categories"],
    }

    producers = {}
    for method in filter(None, args.baselines.split(",")):
        cfg = BaselineConfig(method=method)
        producers[method] = lambda im, iid, cfg=cfg: (
            [r.replace(image_id=iid) for r in baseline_masks(im, cfg)],
            {},
        )
    dico = DivideAndConquer(config=PipelineConfig(features="classic", preset=args.preset))

    def run_dico(image, image_id):
        return dico(image, image_id=image_id), dico.last_timings

    producers["dico-classic"] = run_dico

    results = {}
    for name, produce in producers.items():
        preds, timing = run_producer(name, produce, images, data / "images")
        metrics = unsam.evaluate(sub, coco_dataset_dict(preds))
        results[name] = {**{k: metrics[k] for k in KEYS}, **timing}
        if args.save_dir:
            write_coco_dataset(Path(args.save_dir) / f"{name}.json", preds)

    print(
        f"COCO val2017 subset, {len(images)} images from #{args.start} (sorted by file name), "
        "class-agnostic"
    )
    print(f"{'method':14s} " + " ".join(f"{k:>8s}" for k in KEYS) + "  s/img  masks/img")
    for name, r in results.items():
        print(
            f"{name:14s} "
            + " ".join(f"{100 * r[k]:8.1f}" for k in KEYS)
            + f"  {r['s_per_image_median']:5.2f}  {r['masks_per_image']:9.1f}"
        )
    print(
        "dico-classic stages (s/img): "
        + ", ".join(f"{k} {v:.2f}" for k, v in results["dico-classic"]["stages_mean_s"].items())
    )
    baselines = [n for n in results if n != "dico-classic"]
    if baselines:
        best = max(baselines, key=lambda n: results[n]["AR@1000"])
        ratio = results["dico-classic"]["AR@1000"] / max(results[best]["AR@1000"], 1e-9)
        print(f"AR@1000 ratio dico-classic / {best}: {ratio:.2f}")
    name = "classic_quality" if args.preset == "auto" else f"classic_quality_{args.preset}"
    path = write_result(
        name,
        {
            "images": len(images),
            "start": args.start,
            "preset": args.preset,
            "config": config_to_dict(dico.config),
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
