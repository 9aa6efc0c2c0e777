"""Every weights option answers a bad or missing file with one line (issue 16 §4).

For each option that reads weights, three bad files: a truncated checkpoint, random bytes, and a
pickle whose payload would create a marker file. Each run must end with exit code 2 and exactly
one line on stderr that names the file, no traceback, never torch's hint that
``weights_only=False`` "will likely succeed", and the payload must not have run. A missing file
gets one line of the same form: what to download and where to put it.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "tests" / "data" / "images"
IMAGE = IMAGES / "coffee.jpg"


class _Payload:
    """Unpickling this runs ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _bad_file(kind: str, path: Path, marker: Path) -> Path:
    """Write a bad weights file of ``kind`` at ``path``."""
    if kind == "truncated":  # a torch.save zip cut in half
        buf = io.BytesIO()
        torch.save({"model": {"w": torch.zeros(64, 64), "b": torch.zeros(64)}}, buf)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "payload-torch":  # what torch.save writes: a zip holding the pickle
        torch.save({"model": {"w": torch.zeros(2)}, "x": _Payload(marker)}, path)
    elif kind == "payload-pickle":  # a plain (legacy / detectron2-style) pickle
        path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": _Payload(marker)}))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


#: option -> (file name, argv builder(weights path, tmp_path)).
OPTIONS = {
    "pseudo-label --features": (
        "dino_vits16.pth",
        lambda w, t: ["pseudo-label", str(IMAGES), "-o", str(t / "o.json"), "--features", str(w)],
    ),
    "pseudo-label --divide cutler:": (
        "cutler_cascade_final.pth",
        lambda w, t: [
            "pseudo-label",
            str(IMAGES),
            "-o",
            str(t / "o.json"),
            "--features",
            "classic",
            "--divide",
            f"cutler:{w}",
        ],
    ),
    "pseudo-label --refine cascadepsp:": (
        "model",
        lambda w, t: [
            "pseudo-label",
            str(IMAGES),
            "-o",
            str(t / "o.json"),
            "--features",
            "classic",
            "--refine",
            f"cascadepsp:{w}",
        ],
    ),
    "dico --divide cutler:": (
        "cutler_cascade_final.pth",
        lambda w, t: [
            "dico",
            str(IMAGE),
            "-o",
            str(t / "o.png"),
            "--features",
            "classic",
            "--divide",
            f"cutler:{w}",
        ],
    ),
    "train --backbone-init .pkl": (
        "dino_RN50_pretrain_d2_format.pkl",
        lambda w, t: [
            "train",
            "--annotations",
            str(REPO / "examples/coco/instances.json"),
            "--images",
            str(REPO / "examples/coco/images"),
            "-o",
            str(t / "run"),
            "--config",
            "r50",
            "--backbone-init",
            str(w),
        ],
    ),
    "train --backbone-init .pth": (
        "resnet50.pth",
        lambda w, t: [
            "train",
            "--annotations",
            str(REPO / "examples/coco/instances.json"),
            "--images",
            str(REPO / "examples/coco/images"),
            "-o",
            str(t / "run"),
            "--config",
            "r50",
            "--backbone-init",
            str(w),
        ],
    ),
    "train-promptable --backbone-init": (
        "swin_tiny_patch4_window7_224.pth",
        lambda w, t: [
            "train-promptable",
            "--annotations",
            str(REPO / "examples/coco/instances.json"),
            "--images",
            str(REPO / "examples/coco/images"),
            "-o",
            str(t / "run"),
            "--config",
            "tiny",
            "--backbone-init",
            str(w),
        ],
    ),
    "segment --model": (
        "unsam_sa1b_ckpt.pth",
        lambda w, t: ["segment", str(IMAGES), "--model", str(w), "-o", str(t / "o.json")],
    ),
    "segment --model promptable:": (
        "unsam_promptable.pth",
        lambda w, t: [
            "segment",
            str(IMAGES),
            "--model",
            f"promptable:{w}",
            "-o",
            str(t / "o.json"),
        ],
    ),
    "prompt --model": (
        "unsam_promptable.pth",
        lambda w, t: [
            "prompt",
            str(IMAGE),
            "--point",
            "10,10",
            "--model",
            str(w),
            "-o",
            str(t / "o.json"),
        ],
    ),
    "eval-points --model": (
        "unsam_promptable.pth",
        lambda w, t: [
            "eval-points",
            "--gt",
            str(REPO / "examples/coco/instances.json"),
            "--images",
            str(REPO / "examples/coco/images"),
            "--model",
            str(w),
        ],
    ),
    "demo --model": (
        "unsam_promptable.pth",
        lambda w, t: ["demo", "--model", str(w), "--port", "1"],
    ),
    "demo --whole-image": (
        "unsam_sa1b_ckpt.pth",
        lambda w, t: ["demo", "--whole-image", str(w), "--port", "1"],
    ),
    "convert-checkpoint": (
        "unsam_sa1b_ckpt.pth",
        lambda w, t: ["convert-checkpoint", str(w), "-o", str(t / "hf")],
    ),
    "convert-checkpoint --kind promptable": (
        "unsam_promptable.pth",
        lambda w, t: ["convert-checkpoint", str(w), "--kind", "promptable", "-o", str(t / "hf")],
    ),
}

BAD_KINDS = ("truncated", "random", "payload-torch", "payload-pickle")


def _subprocess(argv: list[str], tmp_path: Path) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "UNSAM_CUTLER_WEIGHTS": "", "PYTHONWARNINGS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "unsam.cli.main", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    return proc.returncode, proc.stderr


def _in_process(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    from unsam.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("UNSAM_CUTLER_WEIGHTS", raising=False)
    monkeypatch.delenv("UNSAM_CASCADEPSP_WEIGHTS", raising=False)
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def _one_line(code: int, stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, (code, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _check_bad_file_line(line: str, weights: Path, marker: Path) -> None:
    assert not marker.exists(), "the pickle's payload ran"
    assert "error:" in line and str(weights) in line, line
    assert "will likely succeed" not in line and "weights_only=False" not in line, line


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_bad_weights_file_gives_one_line(
    option: str,
    kind: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, argv = OPTIONS[option]
    marker = tmp_path / "PAYLOAD_RAN"
    weights = _bad_file(kind, tmp_path / name, marker)
    monkeypatch.chdir(tmp_path)
    line = _one_line(*_in_process(argv(weights, tmp_path), capsys, monkeypatch))
    _check_bad_file_line(line, weights, marker)


@pytest.mark.parametrize(
    "option, kind",
    [
        ("pseudo-label --divide cutler:", "truncated"),  # the traceback
        ("train --backbone-init .pth", "payload-pickle"),  # torch's warning was a second line
        ("segment --model", "payload-torch"),
    ],
)
def test_bad_weights_file_one_line_in_a_fresh_process(
    option: str, kind: str, tmp_path: Path
) -> None:
    """The same through ``python -m unsam.cli.main``: nothing else reaches stderr (warnings shown
    once per process, logging set up by the command)."""
    name, argv = OPTIONS[option]
    marker = tmp_path / "PAYLOAD_RAN"
    weights = _bad_file(kind, tmp_path / name, marker)
    line = _one_line(*_subprocess(argv(weights, tmp_path), tmp_path))
    _check_bad_file_line(line, weights, marker)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_missing_weights_file_says_what_to_download_and_where(
    option: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, argv = OPTIONS[option]
    weights = tmp_path / "nowhere" / name
    monkeypatch.chdir(tmp_path)
    line = _one_line(*_in_process(argv(weights, tmp_path), capsys, monkeypatch))
    # one form for every option (unsam.io.checkpoints.missing_weights_message)
    assert f"not found: {weights} does not exist; download " in line, line
    assert " from http" in line and " and pass its path as " in line, line
