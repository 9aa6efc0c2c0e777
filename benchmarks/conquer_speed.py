"""Speed of the conquer merge: heap + union-find (unsam) vs the naive O(E^2) reference.

One 1024-patch region (32x32 grid, C = 768, like DINO ViT-B/8 keys of a 256² crop), two inputs:
"planted" (a synthetic object/part hierarchy that merges at every threshold, like real keys) and
"random" (i.i.d. Gaussian: barely any pair reaches 0.1, so almost nothing merges). For each, both
implementations run once to warm up, then ``--repeats`` times; the medians and their ratio are
printed, and the outputs are checked to be identical. A third timing runs the whole per-region
driver (merge + upsampling + coverage + NMS) with precomputed features, no network.

Usage: .venv/bin/python benchmarks/conquer_speed.py [--repeats 3] [--seed 0]
Writes benchmarks/results/conquer_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.reference
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.reference.merge_naive import merge_naive, planted_features  # noqa: E402
from unsam.conquer import ConquerConfig, conquer, merge_regions  # noqa: E402


def _median_seconds(fn, repeats: int) -> tuple[float, list[float], object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def _identical(fast, slow) -> bool:
    return all(
        (f.theta, f.level, f.emitted) == (s[0], s[1], s[3]) and np.array_equal(f.labels, s[2])
        for f, s in zip(fast, slow, strict=True)
    )


class _PrecomputedExtractor:
    """Returns precomputed planted features (the driver benchmark excludes the network)."""

    name, patch_size, feature_dim = "planted", 8, 768

    def __init__(self, seed: int, count: int) -> None:
        self.feats = torch.from_numpy(
            np.stack([planted_features(32, 32, 768, seed=seed + k) for k in range(count)])
        )

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        if images.shape[1:3] != (256, 256) or len(images) > len(self.feats):
            raise ValueError(
                f"expected at most {len(self.feats)} 256x256 crops, got {images.shape}"
            )
        return self.feats[: len(images)]


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per implementation (after 1 warm-up)"
    )
    parser.add_argument("--seed", type=int, default=0, help="feature seed")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be >= 3")
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    inputs = {
        "planted": planted_features(32, 32, 768, seed=args.seed),
        "random": np.random.default_rng(args.seed)
        .standard_normal((32, 32, 768))
        .astype(np.float32),
    }
    results: dict[str, dict] = {}
    for name, feats in inputs.items():
        tensor = torch.from_numpy(feats)
        fast_s, fast_all, fast_out = _median_seconds(lambda: merge_regions(tensor), args.repeats)
        slow_s, slow_all, slow_out = _median_seconds(lambda: merge_naive(feats), args.repeats)
        same = _identical(fast_out, slow_out)
        merges = 32 * 32 - len(np.unique(fast_out[-1].labels))
        results[name] = {
            "fast_median_s": fast_s,
            "naive_median_s": slow_s,
            "speedup": slow_s / fast_s,
            "fast_runs_s": fast_all,
            "naive_runs_s": slow_all,
            "identical": same,
            "merges": merges,
            "clusters_per_level": [len(np.unique(lv.labels)) for lv in fast_out],
            "emitted_per_level": [len(lv.emitted) for lv in fast_out],
        }
        print(
            f"{name:8s} merge 32x32x768: fast {fast_s * 1e3:8.2f} ms | "
            f"naive {slow_s * 1e3:9.2f} ms | "
            f"speedup {slow_s / fast_s:6.1f}x | identical {same} | {merges} merges, "
            f"clusters/level {results[name]['clusters_per_level']}"
        )

    rng = np.random.default_rng(args.seed)
    image = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    divide = []
    for _ in range(8):
        y0, x0 = rng.integers(0, 240), rng.integers(0, 320)
        mask = np.zeros((480, 640), dtype=bool)
        mask[y0 : y0 + rng.integers(60, 240), x0 : x0 + rng.integers(60, 320)] = True
        divide.append(mask)
    extractor = _PrecomputedExtractor(args.seed, len(divide))
    drv_s, drv_all, drv_out = _median_seconds(
        lambda: conquer(image, divide, extractor, ConquerConfig()), args.repeats
    )
    results["driver"] = {
        "regions": len(divide),
        "median_s": drv_s,
        "per_region_ms": drv_s / len(divide) * 1e3,
        "runs_s": drv_all,
        "masks_out": len(drv_out),
    }
    print(
        f"driver   conquer() on 8 regions of a 480x640 image, 256² crops, precomputed features: "
        f"{drv_s * 1e3:.1f} ms ({drv_s / len(divide) * 1e3:.1f} ms/region, {len(drv_out)} masks)"
    )

    meta = {
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "seed": args.seed,
        "device": "cpu",
    }
    out_path = REPO / "benchmarks" / "results" / "conquer_speed.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out_path.relative_to(REPO)}")
    ok = all(results[k]["identical"] for k in inputs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
