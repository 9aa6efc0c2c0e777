"""The unsam command as a user runs it: outputs, exit codes, one-line errors, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reference.coco_reference import pycocotools_metrics
from unsam.runner import work_file_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "coco"


def unsam(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "unsam.cli.main", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"unsam {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def test_help_lists_every_command() -> None:
    out = unsam("--help").stdout
    for cmd in ("baseline", "pseudo-label", "dico", "eval"):
        assert cmd in out


def pred_results(path: Path) -> list[dict]:
    """A COCO dataset written by unsam -> a plain results list with the GT's image ids (by file
    name)."""
    gt_ids = {
        img["file_name"]: img["id"]
        for img in json.loads((EXAMPLES / "instances.json").read_text())["images"]
    }
    data = json.loads(path.read_text())
    ids = {img["id"]: gt_ids[Path(img["file_name"]).name] for img in data["images"]}
    return [
        {
            "image_id": ids[a["image_id"]],
            "category_id": 1,
            "segmentation": a["segmentation"],
            "score": a.get("score", 1.0),
        }
        for a in data["annotations"]
    ]


def test_baseline_then_eval_on_bundled_samples(tmp_path: Path) -> None:
    pred = tmp_path / "slic.json"
    unsam(
        "baseline",
        "slic",
        str(EXAMPLES / "images"),
        "-o",
        str(pred),
        "--no-progress",
        "--overlay-dir",
        str(tmp_path / "ov"),
    )
    assert len(list((tmp_path / "ov").glob("*.png"))) == 5
    metrics_path = tmp_path / "m.json"
    proc = unsam(
        "eval",
        "--gt",
        str(EXAMPLES / "instances.json"),
        "--pred",
        str(pred),
        "--json",
        str(metrics_path),
    )
    assert "AR@1000" in proc.stdout
    metrics = json.loads(metrics_path.read_text())
    assert list(metrics) == [
        "AR@1",
        "AR@10",
        "AR@100",
        "AR@1000",
        "AP",
        "AP50",
        "AP75",
        "ARs@1000",
        "ARm@1000",
        "ARl@1000",
        "images",
    ]
    assert metrics["images"] == 5 and metrics["AR@1000"] > 0.05
    # every number as plain pycocotools computes it from the written predictions
    reference = pycocotools_metrics(EXAMPLES / "instances.json", pred_results(pred))
    for key, value in reference.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "--gt", "missing.json", "--pred", "x.json"], "missing.json: no such file"),
        (
            ["baseline", "slic", "no/such/dir", "-o", "x.json"],
            "no/such/dir: no such file or folder",
        ),
        (
            ["dico", "README.md", "-o", "x.png", "--features", "classic"],
            "README.md: cannot read image",
        ),
        (
            ["pseudo-label", "examples/coco/images", "-o", "x.json", "--shard", "5/2"],
            "--shard must be",
        ),
        (
            ["pseudo-label", "examples/coco/images", "-o", "x.json", "--maskcut-tau", "3"],
            "tau=3.0 is outside",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], needle: str) -> None:
    proc = unsam(*args, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


def test_bad_gt_json_names_the_field(tmp_path: Path) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1, "width": 3}]}))
    proc = unsam("eval", "--gt", str(gt), "--pred", str(gt), check=False)
    assert proc.returncode == 2 and 'images[0]: missing field "height"' in proc.stderr


@pytest.mark.slow
def test_pseudo_label_killed_midway_resumes_to_the_same_file(
    tmp_path: Path, test_data: Path
) -> None:
    images = test_data / "images"
    args = ["pseudo-label", str(images), "--features", "classic", "--no-progress"]
    full = tmp_path / "full.json"
    unsam(*args, "-o", str(full))
    out = tmp_path / "killed.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unsam.cli.main", *args, "-o", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    work = work_file_for(out)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if work.exists() and len(work.read_text().splitlines()) >= 2:  # header + one finished image
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    done_before = len(work.read_text().splitlines()) - 1
    assert 1 <= done_before < 3
    result = unsam(*args, "-o", str(out))
    assert f"{done_before} resumed" in result.stdout
    assert out.read_bytes() == full.read_bytes()
    data = json.loads(full.read_text())
    assert len(data["images"]) == 3 and len(data["annotations"]) > 3
    levels = {a["level"] for a in data["annotations"]}
    assert 0 in levels and levels - {0}  # divide masks and conquer parts
    ids = {a["id"] for a in data["annotations"]}
    assert all(a["parent_id"] in ids for a in data["annotations"] if a["level"] > 0)
