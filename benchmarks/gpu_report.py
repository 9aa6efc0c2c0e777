"""Write ``docs/benchmarks-gpu.md`` from one ``benchmarks/gpu.sh`` run.

    python benchmarks/gpu_report.py --results DIR --steps steps.tsv --tests tests.xml \
        --device cuda --quick 0 -o docs/benchmarks-gpu.md

The page holds, in this order: the machine and the commit; every goal of the GPU issue beside the
figure measured for it (a goal whose benchmark failed or did not run says so: no figure is
guessed); the steps of the run with their status and time; the CUDA tests' counts from the junit
file (and the names of those that failed); then each benchmark's own table, rendered by
:mod:`benchmarks.report` from the same result files as ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import TABLES, _get, _markdown_table, _num, _when  # noqa: E402


@dataclass(frozen=True)
class Goal:
    """One goal: ``figure(results)`` returns the measured value or None; ``met`` compares it."""

    what: str
    unit: str
    bound: str  # "<=" or ">="
    target: float
    figure: Callable[[dict[str, dict[str, Any]]], float | None]

    def met(self, value: float | None) -> str:
        if value is None:
            return "not measured"
        ok = value <= self.target if self.bound == "<=" else value >= self.target
        return "met" if ok else "missed"


def _pipeline(variant: str) -> Callable[[dict[str, dict[str, Any]]], float | None]:
    return lambda r: _get(r, "released_pipeline_speed", "results", variant, "total")


def _sam_ratio(r: dict[str, dict[str, Any]]) -> float | None:
    """SAM ViT-B AMG time over unsam's, both at their fastest dtype in the same run."""
    unsam = _get(r, "segment_speed", "unsam") or {}
    sam = _get(r, "segment_speed", "sam_amg") or {}
    u = [v["total_s_per_image"] for v in unsam.values() if isinstance(v, dict)]
    s = [v["total_s_per_image"] for v in sam.values() if isinstance(v, dict)]
    return min(s) / min(u) if u and s else None


def _click_ms(r: dict[str, dict[str, Any]]) -> float | None:
    found = [
        _get(r, "prompt_speed", d, "click_predict_records_ms") for d in ("bfloat16", "float32")
    ]
    found = [v for v in found if v is not None]
    return min(found) if found else None


#: The goals on one H200 (issue "fast on real hardware", part 4).
GPU_GOALS = [
    Goal("released pipeline with CascadePSP, bf16", "s/image", "<=", 5.0, _pipeline("bf16+psp")),
    Goal("released pipeline without CascadePSP, bf16", "s/image", "<=", 1.0, _pipeline("bf16")),
    Goal("whole-image r50 vs SAM ViT-B AMG (same run)", "× faster", ">=", 5.0, _sam_ratio),
    Goal("one click with its records", "ms", "<=", 5.0, _click_ms),
    Goal(
        "r50 training at 1024 px, bf16",
        "images/s",
        ">=",
        16.0,
        lambda r: _get(r, "train_speed", "models", "r50", "bfloat16", "images_per_s"),
    ),
]

#: Figures the issue asks for without a goal.
OTHER_FIGURES: list[tuple[str, str, Callable[[dict[str, dict[str, Any]]], float | None]]] = [
    ("released pipeline without CascadePSP, float32", "s/image", _pipeline("fp32")),
    ("released pipeline with CascadePSP, float32", "s/image", _pipeline("fp32+psp")),
    (
        "CutLER alone, bf16",
        "s/image",
        lambda r: _get(r, "cutler_speed", "results", "bfloat16", "seconds_per_image"),
    ),
    (
        "CutLER alone, float32",
        "s/image",
        lambda r: _get(r, "cutler_speed", "results", "float32", "seconds_per_image"),
    ),
    (
        "promptable set_image, bf16",
        "s",
        lambda r: _get(r, "prompt_speed", "bfloat16", "set_image_s"),
    ),
    (
        "swin_t training at 1024 px, bf16",
        "images/s",
        lambda r: _get(r, "train_speed", "models", "swin_t", "bfloat16", "images_per_s"),
    ),
    ("unsam eval of the stored masks", "s", lambda r: _get(r, "eval_speed", "unsam_s")),
]


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # a step killed while writing: reported, not fatal
            print(f"gpu_report: {path}: unreadable result ({exc}); left out", file=sys.stderr)
            continue
        if isinstance(data, dict):
            out[path.stem] = data
    return out


def read_steps(path: Path) -> list[dict[str, str]]:
    """The steps of the run, the latest status of each (``--only`` reruns append)."""
    if not path.exists():
        return []
    latest: dict[str, dict[str, str]] = {}
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            latest[row["step"]] = row
    return list(latest.values())


def read_junit(path: Path) -> dict[str, Any] | None:
    """Counts of a pytest junit file, and the ids of the tests that failed or erred."""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"{path}: {exc}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed}


def render(
    results: dict[str, dict[str, Any]],
    steps: list[dict[str, str]],
    junit: dict[str, Any] | None,
    *,
    device: str,
    quick: bool,
) -> str:
    meta = next(iter(results.values()), {})
    gpu = next((d["gpu"] for d in results.values() if d.get("gpu")), None)
    commit = next((d["commit"] for d in results.values() if d.get("commit")), "unknown")
    lines = [
        "# Benchmarks on a GPU",
        "",
        "Written by `benchmarks/gpu.sh` (its last step, `benchmarks/gpu_report.py`), from the "
        "results of one run; every figure was measured in that run, on the machine below.",
        "",
        f"- device: {gpu or device}" + ("" if gpu else " (no GPU name recorded)"),
        f"- commit: `{commit}`",
        f"- measured at: {meta.get('measured_at', '—')}",
        f"- torch {meta.get('torch', '?')}, Python {meta.get('python', '?')}, "
        f"{meta.get('cpus', '?')} CPU cores",
    ]
    if quick:
        lines += [
            "",
            "**A dry run (`--quick`): small inputs and one repeat. These figures are not the "
            "goals' figures.**",
        ]
    lines += [
        "",
        "## Goals",
        "",
        "| goal | measured | unit | target | status |",
        "|---|--:|---|--:|---|",
    ]
    for goal in GPU_GOALS:
        value = goal.figure(results)
        lines.append(
            f"| {goal.what} | {_num(value)} | {goal.unit} | {goal.bound} {goal.target:g} "
            f"| {goal.met(value) if not quick else 'dry run'} |"
        )
    lines += ["", "| other figure | measured | unit |", "|---|--:|---|"]
    for what, unit, figure in OTHER_FIGURES:
        lines.append(f"| {what} | {_num(figure(results))} | {unit} |")
    lines += ["", "## Steps", "", "| step | status | seconds |", "|---|---|--:|"]
    for row in steps:
        lines.append(f"| {row['step']} | {row['status']} | {row['seconds']} |")
    lines += ["", "## CUDA tests", ""]
    if junit is None:
        lines.append("The tests step left no junit file.")
    elif "error" in junit:
        lines.append(f"The junit file could not be read: {junit['error']}.")
    else:
        lines.append(
            f"{junit['passed']} passed, {junit['failures']} failed, {junit['errors']} errors, "
            f"{junit['skipped']} skipped (of {junit['tests']} tests marked `gpu`)."
        )
        lines += [f"- failed: `{name}`" for name in junit["failed"]]
    lines.append("")
    for name, build in TABLES.items():
        if name in results:
            try:
                table = build(results[name])
            except Exception as exc:  # one malformed result must not lose the others
                lines += [f"## {name}", "", f"Could not be rendered: {exc!r}.", ""]
                continue
            lines += _markdown_table(table, _when(results[name]))
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, required=True, help="the run's result folder")
    p.add_argument("--steps", type=Path, required=True, help="gpu.sh's steps.tsv")
    p.add_argument("--tests", type=Path, required=True, help="the CUDA tests' junit XML")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", default="0", help="1 when the run was a --quick dry run")
    p.add_argument("-o", "--output", type=Path, default=Path("docs/benchmarks-gpu.md"))
    args = p.parse_args(argv)
    text = render(
        load_results(args.results),
        read_steps(args.steps),
        read_junit(args.tests),
        device=args.device,
        quick=args.quick not in ("0", "", "false"),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
