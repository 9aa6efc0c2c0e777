"""Issue 8.1: memory on large photos is bounded by a documented formula, not by the number of masks.

Each command runs in a fresh subprocess (tests/memory/probe.py) on a synthetic photo; the peak RSS
growth over the process after its imports and one image load is compared with the formula of the
command's docstring. The subprocess has an 8 GiB address-space limit, so a regression fails the
test (MemoryError, or an image recorded as skipped) instead of exhausting the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def _probe(h: int, w: int, tmp: Path, *args: str) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.memory.probe", str(h), str(w), str(tmp), "--", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == 0, proc.stderr[-3000:]
    return out


def test_pseudo_label_classic_on_a_large_photo(tmp_path: Path) -> None:
    from unsam.pipeline import PipelineConfig, memory_bound_bytes, resolve_preset

    h, w = 3000, 4000
    out = tmp_path / "pl.json"
    res = _probe(
        h,
        w,
        tmp_path,
        "pseudo-label",
        "{dir}",
        "-o",
        str(out),
        "--features",
        "classic",
        "--max-masks",
        "40",
        "--no-progress",
    )
    data = json.loads(out.read_text())
    assert data["info"]["skipped"] == [] and len(data["annotations"]) == 40
    bound = memory_bound_bytes((h, w), resolve_preset(PipelineConfig(features="classic")))
    grown = res["peak"] - res["base"]
    assert grown <= bound, f"peak grew {grown / MiB:.0f} MiB, formula {bound / MiB:.0f} MiB"


def test_segment_on_a_large_photo(tmp_path: Path) -> None:
    from unsam.models.whole_image import build_model
    from unsam.models.whole_image.postprocessing import memory_bound_bytes
    from unsam.models.whole_image.segment_config import SegmentConfig
    from unsam.models.whole_image.segmenter import WholeImageSegmenter

    model_dir = tmp_path / "tiny"
    WholeImageSegmenter(build_model("tiny", num_queries=40)).save_pretrained(model_dir)
    h, w = 4000, 6000
    out = tmp_path / "seg.json"
    res = _probe(
        h,
        w,
        tmp_path,
        "segment",
        "{dir}",
        "--model",
        str(model_dir),
        "-o",
        str(out),
        "--min-size",
        "256",
        "--max-size",
        "512",
        "--no-progress",
    )
    assert json.loads(out.read_text())["info"]["skipped"] == []
    bound = memory_bound_bytes(
        (h, w), SegmentConfig(min_size=256, max_size=512), model_bytes=64 * MiB
    )
    grown = res["peak"] - res["base"]
    assert grown <= bound, f"peak grew {grown / MiB:.0f} MiB, formula {bound / MiB:.0f} MiB"
