"""``unsam eval-points`` says when the ground truth has nothing to score (issue 16 §4).

Regression: ground truth without a usable mask (every annotation crowd, or every mask empty at the
evaluation size) printed a table of empty metrics and exited 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unsam.cli.main import main
from unsam.models.promptable import PromptableConfig, build_model
from unsam.records import encode_mask


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_model(PromptableConfig.tiny()).save_pretrained(folder)
    return folder


def _gt(tmp_path: Path, masks: list[tuple[np.ndarray, int]]) -> Path:
    """One 60x80 image with the given (mask, iscrowd) annotations."""
    Image.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(tmp_path / "a.png")
    anns = []
    for k, (m, crowd) in enumerate(masks):
        rle = encode_mask(m)
        anns.append(
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": crowd,
                "segmentation": rle,
                "area": int(m.sum()),
                "bbox": [0, 0, 1, 1],
            }
        )
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "height": 60, "width": 80}],
                "annotations": anns,
                "categories": [{"id": 1, "name": "object"}],
            }
        )
    )
    return gt


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((60, 80), bool)
    m[y0:y1, x0:x1] = True
    return m


def _run(gt: Path, tmp_path: Path, model_dir: Path, *extra: str) -> int:
    return main(
        [
            "eval-points",
            "--gt",
            str(gt),
            "--images",
            str(tmp_path),
            "--model",
            str(model_dir),
            "--no-progress",
            *extra,
        ]
    )


def test_only_crowd_masks_is_an_error(tmp_path, model_dir, capsys) -> None:
    gt = _gt(tmp_path, [(_box(10, 30, 10, 40), 1)])
    assert _run(gt, tmp_path, model_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable ground-truth mask" in err[0] and str(gt) in err[0]


def test_masks_empty_at_the_evaluation_size(tmp_path, model_dir, capsys) -> None:
    dot = np.zeros((60, 80), bool)
    dot[31, 41] = True  # one pixel: gone at --short-side 6
    gt = _gt(tmp_path, [(dot, 0)])
    assert _run(gt, tmp_path, model_dir, "--short-side", "6") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could be clicked" in err[0] and "--short-side 6" in err[0]
    # one scorable mask and one that vanishes: scored, with a warning naming the count
    gt = _gt(tmp_path, [(dot, 0), (_box(0, 60, 0, 80), 0)])
    assert _run(gt, tmp_path, model_dir, "--short-side", "6") == 0
    captured = capsys.readouterr()
    assert "1 of 2 ground-truth masks are empty" in captured.err
    assert "point_max_miou" in captured.out
