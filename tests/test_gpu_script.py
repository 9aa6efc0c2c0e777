"""benchmarks/gpu.sh and its report: the page says each goal's figure and status from the run's
own result files (never a figure the run did not measure), the latest status of each step, and the
CUDA tests' counts from the junit file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="2" tests="7">
<testcase classname="tests.test_a" name="test_ok"/>
<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>
</testsuite></testsuites>
"""


def _write_results(folder: Path) -> None:
    folder.mkdir(parents=True)
    meta = {"commit": "abc1234", "gpu": "NVIDIA H200", "measured_at": "2026-12-04 10:00 UTC"}
    results = {
        "released_pipeline_speed": {
            **meta,
            "results": {"bf16": {"total": 1.5}, "bf16+psp": {"total": 4.25}},
        },
        "segment_speed": {
            **meta,
            "unsam": {
                "float32": {"total_s_per_image": 0.8},
                "bfloat16": {"total_s_per_image": 0.5},
            },
            "sam_amg": {
                "float32": {"total_s_per_image": 4.0},
                "bfloat16": {"total_s_per_image": 3.0},
            },
        },
        "train_speed": {**meta, "models": {"r50": {"bfloat16": {"images_per_s": 20.0}}}},
    }
    for name, data in results.items():
        (folder / f"{name}.json").write_text(json.dumps(data))
    (folder / "prompt_speed.json").write_text('{"truncated": ')  # a step killed mid-write


def _goal_rows(page: str) -> dict[str, list[str]]:
    rows = {}
    for line in page.split("## Goals", 1)[1].split("## Steps", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("goal", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_report_states_each_goal_from_the_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _write_results(results)
    steps = tmp_path / "steps.tsv"
    steps.write_text("step\tstatus\tseconds\ncutler\tfailed (exit 1)\t3.0\ncutler\tok\t2.5\n")
    junit = tmp_path / "tests.xml"
    junit.write_text(JUNIT)
    out = tmp_path / "gpu.md"
    subprocess.run(
        [sys.executable, "benchmarks/gpu_report.py", "--results", str(results), "--steps",
         str(steps), "--tests", str(junit), "-o", str(out)],
        cwd=REPO, check=True, capture_output=True, text=True,
    )  # fmt: skip
    page = out.read_text()
    assert "NVIDIA H200" in page and "`abc1234`" in page
    goals = _goal_rows(page)
    assert goals["released pipeline with CascadePSP, bf16"] == ["4.25", "s/image", "<= 5", "met"]
    assert goals["released pipeline without CascadePSP, bf16"][0] == "1.5"
    assert goals["released pipeline without CascadePSP, bf16"][3] == "missed"
    # SAM's fastest (3.0 s) over unsam's fastest (0.5 s), both measured in the run
    assert goals["whole-image r50 vs SAM ViT-B AMG (same run)"][:1] == ["6"]
    assert goals["whole-image r50 vs SAM ViT-B AMG (same run)"][3] == "met"
    assert goals["r50 training at 1024 px, bf16"][3] == "met"
    # the click benchmark's file is unreadable: no figure, said so
    assert goals["one click with its records"] == ["—", "ms", "<= 5", "not measured"]
    assert "| cutler | ok | 2.5 |" in page and "failed (exit 1)" not in page  # latest wins
    assert "4 passed, 1 failed, 0 errors, 2 skipped (of 7 tests" in page
    assert "`tests.test_a::test_bad`" in page


def test_dry_run_page_claims_no_goal(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _write_results(results)
    out = tmp_path / "gpu.md"
    subprocess.run(
        [sys.executable, "benchmarks/gpu_report.py", "--results", str(results), "--steps",
         str(tmp_path / "none.tsv"), "--tests", str(tmp_path / "none.xml"), "--quick", "1",
         "-o", str(out)],
        cwd=REPO, check=True, capture_output=True, text=True,
    )  # fmt: skip
    page = out.read_text()
    assert "A dry run" in page
    assert {row[3] for row in _goal_rows(page).values()} == {"dry run"}
    assert "The tests step left no junit file." in page


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_sh_runs_chosen_steps_and_records_them(tmp_path: Path) -> None:
    """``--only report`` runs the report step alone into --out; an unknown option is refused."""
    out = tmp_path / "run"
    (out / "results").mkdir(parents=True)
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--device", "cpu", "--quick", "--only", "report",
         "--python", sys.executable, "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "OUT": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = (out / "logs" / "steps.tsv").read_text().splitlines()
    assert rows[0] == "step\tstatus\tseconds" and rows[1].startswith("report\tok\t")
    bad = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--no-such-option"], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr
