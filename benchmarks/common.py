"""Shared benchmark helpers: timing (warm-up + median), metadata, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: where results are written (benchmarks/results, or $UNSAM_BENCH_RESULTS: gpu.sh keeps a GPU run's
#: results apart from the CPU ones)
RESULTS = Path(os.environ.get("UNSAM_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
#: ../shared/data, or $UNSAM_SHARED_DATA (as the tests read it)
SHARED_DATA = Path(os.environ.get("UNSAM_SHARED_DATA") or REPO.parent / "shared" / "data")


def peak_rss_bytes() -> int:
    """This process's peak resident memory, in bytes, since it started.

    Linux's ``VmHWM`` (/proc/self/status) belongs to the address space, which ``exec`` replaces:
    it starts afresh in a child process. ``getrusage().ru_maxrss`` does not: a child started by
    ``subprocess`` (fork + exec) inherits there the RSS its parent had at the fork, so a small
    child of a large parent would report the parent's size. Falls back to ``ru_maxrss`` where
    there is no /proc (macOS reports bytes, Linux KiB).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def time_it(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> tuple[float, Any]:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs; and its
    last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def metadata() -> dict[str, Any]:
    import numpy
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    commit = commit or os.environ.get("UNSAM_COMMIT", "")
    gpu = {}
    if torch.cuda.is_available():
        gpu = {
            "gpu": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        }
    return {
        "commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_1min": round(os.getloadavg()[0], 2),
        **gpu,
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, **metadata(), **data}, indent=2) + "\n")
    return path
