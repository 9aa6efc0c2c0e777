"""The benchmark suite: ``python -m benchmarks [--quick] [--only NAME,...] [--report-only]``.

Runs every benchmark script (each measures its own reference in the same run and writes
``benchmarks/results/<name>.json``), measures two scaling curves itself — seconds per image
against image size (divide-and-conquer, ``classic`` features) and throughput with 1 and 2 worker
processes (the Felzenszwalb baseline) — and writes ``docs/benchmarks.md`` (one table per
benchmark, the reference figure beside the project's, built by :mod:`benchmarks.report`) with
``docs/benchmark_ratios.png`` (every speed ratio) and ``docs/benchmarks.png`` (the two curves).
``--report-only`` rebuilds the page from the results already on disk. Results depend on the
machine and its load; the page records both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import RESULTS, write_report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: name -> (script, full args, quick args)
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "conquer_speed": ("conquer_speed.py", [], []),
    "eval_speed": ("eval_speed.py", [], []),
    "pseudo_label_speed": ("pseudo_label_speed.py", [], ["--archs", "vits8", "--repeats", "1"]),
    "dino_speed": ("dino_speed.py", [], ["--quick"]),
    "cutler_speed": ("cutler_speed.py", ["--repeats", "3"], ["--quick"]),
    "cascadepsp_speed": ("cascadepsp_speed.py", ["--repeats", "3"], ["--quick"]),
    "segment_speed": ("segment_speed.py", [], ["--quick"]),
    "train_speed": ("train_speed.py", [], ["--quick"]),
    "prompt_speed": ("prompt_speed.py", [], ["--quick"]),
    "released_pipeline_speed": ("released_pipeline_speed.py", [], ["--quick"]),
    "promptable_recipe": ("promptable_recipe.py", [], ["--max-steps", "300"]),
    "ray_scaling": (
        "ray_scaling.py",
        ["--images", "8", "--repeats", "3"],
        ["--images", "4", "--repeats", "1"],
    ),
}


def run_script(name: str, quick: bool) -> dict[str, object]:
    script, full, fast = SUITE[name]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *(fast if quick else full)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    status = (
        "ok"
        if proc.returncode == 0
        else f"failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
    )
    return {"name": name, "status": status, "seconds": round(time.perf_counter() - t0, 1)}


def _time_cli(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "unsam.cli.main", *args],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t0


def scaling_curves(quick: bool) -> dict[str, object]:
    """s/image against image size, and images/s with 1 and 2 worker processes (same run)."""
    import numpy as np
    from PIL import Image

    source = np.asarray(Image.open(REPO / "examples/coco/images/000000229358.jpg").convert("RGB"))
    sides = [320, 640, 1280] if quick else [320, 640, 1280, 2048]
    sizes: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for side in sides:
            h = round(source.shape[0] * side / source.shape[1])
            path = tmp / f"img_{side}.png"
            Image.fromarray(source).resize((side, h)).save(path)
            secs = _time_cli(
                ["dico", str(path), "--json", str(tmp / f"m_{side}.json"), "--features", "classic"]
            )
            sizes.append({"width": side, "height": h, "seconds": round(secs, 2)})
        images = tmp / "many"
        images.mkdir()
        for k in range(4 if quick else 8):
            src = sorted((REPO / "examples/coco/images").glob("*.jpg"))[k % 5]
            (images / f"{k:02d}_{src.name}").write_bytes(src.read_bytes())
        workers = []
        for n in (1, 2):
            secs = _time_cli(
                [
                    "baseline",
                    "felzenszwalb",
                    str(images),
                    "-o",
                    str(tmp / f"w{n}.json"),
                    "--workers",
                    str(n),
                    "--no-progress",
                ]
            )
            workers.append(
                {
                    "workers": n,
                    "seconds": round(secs, 2),
                    "images_per_s": round(len(list(images.iterdir())) / secs, 3),
                }
            )
    result = {
        "image_size": sizes,
        "workers": workers,
        "speedup_2_workers": round(workers[1]["images_per_s"] / workers[0]["images_per_s"], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer repeats and sizes (minutes, not hours)"
    )
    p.add_argument(
        "--only", help="comma-separated benchmark names (default: all); 'scaling' for the curves"
    )
    p.add_argument(
        "--report-only", action="store_true", help="rebuild docs/benchmarks.md from results/"
    )
    args = p.parse_args()
    names = (
        list(SUITE) + ["scaling"] if not args.only else [n.strip() for n in args.only.split(",")]
    )
    unknown = [n for n in names if n not in SUITE and n != "scaling"]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {[*SUITE, 'scaling']}")
    runs: list[dict[str, object]] = []
    scaling = None
    if not args.report_only:
        for name in names:
            if name == "scaling":
                scaling = scaling_curves(args.quick)
                print(json.dumps({"name": "scaling", **scaling}))
            else:
                runs.append(run_script(name, args.quick))
                print(json.dumps(runs[-1]))
    print(f"wrote {write_report(runs, scaling)}")


if __name__ == "__main__":
    main()
