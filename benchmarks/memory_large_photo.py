"""Peak memory of pseudo-label (classic) and segment (tiny model) on a large synthetic photo,
against the documented formulas (unsam.pipeline.memory_bound_bytes,
unsam.models.whole_image.postprocessing.memory_bound_bytes). Each command runs in a fresh process
(tests/memory/probe.py); prints one JSON line per command.

Usage: python benchmarks/memory_large_photo.py [--height 6000 --width 8000] [--max-masks 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def probe(h: int, w: int, tmp: Path, *args: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.memory.probe", str(h), str(w), str(tmp), "--", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--height", type=int, default=6000)
    p.add_argument("--width", type=int, default=8000)
    p.add_argument("--max-masks", type=int, default=100)
    a = p.parse_args()
    from unsam.models.whole_image import build_model
    from unsam.models.whole_image.postprocessing import memory_bound_bytes as segment_bound
    from unsam.models.whole_image.segment_config import SegmentConfig
    from unsam.models.whole_image.segmenter import WholeImageSegmenter
    from unsam.pipeline import PipelineConfig, memory_bound_bytes, resolve_preset

    hw = (a.height, a.width)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res = probe(
            *hw,
            tmp,
            "pseudo-label",
            "{dir}",
            "-o",
            str(tmp / "pl.json"),
            "--features",
            "classic",
            "--max-masks",
            str(a.max_masks),
            "--no-progress",
        )
        bound = memory_bound_bytes(hw, resolve_preset(PipelineConfig(features="classic")))
        print(
            json.dumps(
                {
                    "command": "pseudo-label classic",
                    "image": f"{a.width}x{a.height}",
                    "peak_GiB": round(res["peak"] / GiB, 2),
                    "growth_GiB": round((res["peak"] - res["base"]) / GiB, 2),
                    "formula_GiB": round(bound / GiB, 2),
                    "seconds": res["seconds"],
                }
            )
        )
        WholeImageSegmenter(build_model("tiny", num_queries=100)).save_pretrained(tmp / "tiny")
        res = probe(
            *hw,
            tmp,
            "segment",
            "{dir}",
            "--model",
            str(tmp / "tiny"),
            "-o",
            str(tmp / "seg.json"),
            "--min-size",
            "1024",
            "--max-size",
            "2048",
            "--no-progress",
        )
        bound = segment_bound(hw, SegmentConfig(), model_bytes=256 << 20, num_queries=100)
        print(
            json.dumps(
                {
                    "command": "segment tiny (100 queries, 1024 px)",
                    "image": f"{a.width}x{a.height}",
                    "peak_GiB": round(res["peak"] / GiB, 2),
                    "growth_GiB": round((res["peak"] - res["base"]) / GiB, 2),
                    "formula_GiB": round(bound / GiB, 2),
                    "seconds": res["seconds"],
                }
            )
        )


if __name__ == "__main__":
    main()
