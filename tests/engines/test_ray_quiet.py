"""``--engine ray`` keeps Ray's own log lines off the terminal unless ``-v`` (issue 16 §4).

Regression: a normal run printed Ray's start-up notices (token authentication), the core worker's
C++ warning about actor constructor arguments, and Ray Data's "Progress bars disabled" and
"Dataset ... execution finished" lines. The run here starts its own local Ray, as a user's does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason='needs Ray: pip install "unsam[ray]"')
pytest.importorskip("ray.data", reason='needs Ray Data: pip install "unsam[ray]"')

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"


def test_a_ray_run_prints_only_unsam_lines(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_BACKEND_LOG_LEVEL", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unsam.cli.main",
            "baseline",
            "felzenszwalb",
            str(IMAGES),
            "-o",
            str(tmp_path / "out.json"),
            "--engine",
            "ray",
            "--address",
            "local",
            "--workers",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == "", proc.stderr[-3000:]
    assert proc.stdout.startswith("wrote ") and "3 images" in proc.stdout
