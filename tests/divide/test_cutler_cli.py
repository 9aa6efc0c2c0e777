"""``unsam pseudo-label DIR -o OUT.json --divide cutler:CKPT`` end to end on the bundled images."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.divide.test_cutler_model import conditioned_model, official_state_dict
from unsam.cli.main import main
from unsam.divide.cutler import CutlerConfig
from unsam.divide.cutler import detector as detector_module

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"


@pytest.fixture
def fast_cutler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline builds CutlerConfig() itself: shrink its resize and proposal count for speed."""
    fast = dataclasses.replace(
        CutlerConfig(), min_size=128, max_size=256, rpn_post_nms_topk=100, max_detections=10
    )
    monkeypatch.setattr(detector_module, "CutlerConfig", lambda: fast)


def test_pseudo_label_with_cutler_divide(tmp_path: Path, fast_cutler: None) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("coffee.jpg", "chelsea.png"):
        shutil.copy(IMAGES / name, images / name)
    ckpt = tmp_path / "cutler_cascade_final.pth"
    torch.save({"model": official_state_dict(conditioned_model(seed=2, fg_bias=2.0))}, ckpt)
    out = tmp_path / "pseudo.json"
    rc = main(
        [
            "pseudo-label",
            str(images),
            "-o",
            str(out),
            "--features",
            "classic",
            "--divide",
            f"cutler:{ckpt}",
            "--divide-max-masks",
            "2",
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert len(data["images"]) == 2
    for image in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        divide = [a for a in anns if a["source"] == "cutler"]
        assert len(divide) == 2  # --divide-max-masks 2; every detection scores ≈ 0.88 > 0.1
        assert all(0.1 < a["score"] <= 1.0 and a["level"] == 0 for a in divide)
        assert {a["source"] for a in anns} <= {"cutler", "conquer", "image"}


def test_pseudo_label_cutler_missing_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSAM_CUTLER_WEIGHTS", raising=False)
    rc = main(
        [
            "pseudo-label",
            str(IMAGES),
            "-o",
            str(tmp_path / "o.json"),
            "--features",
            "classic",
            "--divide",
            "cutler",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "cutler_cascade_final.pth" in err and "UNSAM_CUTLER_WEIGHTS" in err
    assert not (tmp_path / "o.json").exists()
