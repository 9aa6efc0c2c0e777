"""Throughput of ``--engine ray`` with 1 and 2 actors on this machine, against the local runner.

Starts a private local Ray (``--cpus`` CPUs, no dashboard; its start-up time is reported), then
runs the same producer over the same images with :func:`unsam.runner.run_images`:

- ``local``: the single-process runner (no Ray);
- ``ray_1`` / ``ray_2``: :class:`unsam.engines.ray_engine.RayEngine` with 1 / 2 actors of one CPU
  each (a fresh actor pool per run, so the time includes starting the actors and loading the
  producer in each).

Each variant runs ``--repeats`` times (fresh output each time); the median wall time is kept, and
``images_per_s`` = images / median seconds. ``ratio_2_vs_1`` is the 2-actor throughput over the
1-actor one (2.0 would be perfect scaling); every output must equal the local one byte for byte.
Images: the COCO images of ../shared/data when present, else tests/data/images repeated.
The producer is the weight-free felzenszwalb baseline (``--producer dico`` runs the ``classic``
divide-and-conquer pipeline instead: slower per image, so start-up weighs less).

Usage: .venv/bin/python benchmarks/ray_scaling.py [--images 12] [--repeats 3] [--cpus 2]
       [--producer baseline|dico]
Prints one JSON line; writes benchmarks/results/ray_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import write_result

from unsam.runner import run_images

SHARED = (
    Path(os.environ.get("UNSAM_SHARED_DATA", REPO.parent / "shared" / "data")) / "coco" / "images"
)


def _images(n: int, folder: Path) -> list[Path]:
    """``n`` images copied into ``folder`` (COCO when present, else the test images repeated)."""
    sources = sorted(SHARED.glob("*.jpg")) if SHARED.is_dir() else []
    if not sources:
        sources = sorted((REPO / "tests" / "data" / "images").iterdir())
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        dst = folder / f"{i:04d}_{src.name}"
        shutil.copy(src, dst)
        out.append(dst)
    return out


def _producer(name: str):  # type: ignore[no-untyped-def]
    if name == "dico":
        from unsam.pipeline import DicoProducer, PipelineConfig

        return DicoProducer(PipelineConfig(features="classic"))
    from unsam.baselines import BaselineConfig, BaselineProducer

    return BaselineProducer(BaselineConfig(method="felzenszwalb"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--producer", choices=["baseline", "dico"], default="baseline")
    args = parser.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only
    import ray

    from unsam.engines.ray_engine import RayEngine

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        images = _images(args.images, folder)
        producer = _producer(args.producer)
        t0 = time.perf_counter()
        ray.init(
            num_cpus=args.cpus, include_dashboard=False, address="local", logging_level="warning"
        )
        ray_init_s = time.perf_counter() - t0
        variants = {
            "local": None,
            "ray_1": RayEngine(num_workers=1),
            "ray_2": RayEngine(num_workers=2),
        }
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        outputs: dict[str, bytes] = {}
        try:
            for r in range(args.repeats):
                for name, engine in variants.items():
                    out = Path(tmp) / f"{name}_{r}.json"
                    t0 = time.perf_counter()
                    run_images(producer, images, folder, out, engine=engine)
                    seconds[name].append(time.perf_counter() - t0)
                    outputs.setdefault(name, out.read_bytes())
        finally:
            ray.shutdown()
    median = {k: statistics.median(v) for k, v in seconds.items()}
    rate = {k: args.images / v for k, v in median.items()}
    result = {
        "producer": args.producer,
        "images": args.images,
        "ray_cpus": args.cpus,
        "repeats": args.repeats,
        "ray_init_s": round(ray_init_s, 2),
        "seconds": {k: round(v, 2) for k, v in median.items()},
        "images_per_s": {k: round(v, 3) for k, v in rate.items()},
        "ratio_2_vs_1": round(rate["ray_2"] / rate["ray_1"], 3),
        "ratio_ray_2_vs_local": round(rate["ray_2"] / rate["local"], 3),
        "identical_outputs": len(set(outputs.values())) == 1,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    write_result("ray_scaling", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
