"""A rerun over a folder from which an image was removed says so and lets the user choose
(issue 16 §4).

Regression: the rerun silently dropped the removed image's finished masks. Now the default keeps
them (finished work is never thrown away silently) with a warning naming the image, and
``--drop-removed`` leaves them out, for good: a later rerun does not bring them back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsam.cli.main import main


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        arr = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
        arr[:, :16] //= 4
        Image.fromarray(arr).save(root / name)
    return root


def _baseline(images: Path, out: Path, *extra: str) -> int:
    return main(["baseline", "felzenszwalb", str(images), "-o", str(out), "--no-progress", *extra])


def _results(out: Path) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in json.loads(out.read_text()))


def _names(out: Path) -> list[str]:
    return [img["file_name"] for img in json.loads(out.read_text())["images"]]


@pytest.mark.parametrize("fmt", ["coco-dataset", "coco-results", "sam-folder"])
def test_removed_image_is_kept_with_a_warning_or_dropped(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    out = tmp_path / ("out" if fmt == "sam-folder" else "out.json")
    fmt_args = ["--format", fmt]
    assert _baseline(images, out, *fmt_args) == 0
    first = _results(out) if fmt == "coco-results" else None
    capsys.readouterr()
    (images / "b.png").unlink()

    assert _baseline(images, out, *fmt_args) == 0  # default: keep, and say so
    err = capsys.readouterr().err
    assert "warning: 1 finished image(s) are no longer in the input: b.png" in err
    assert "--drop-removed" in err
    if fmt == "coco-dataset":
        assert _names(out) == ["a.png", "c.png", "b.png"]  # kept, after the listed images
        info = json.loads(out.read_text())["info"]
        assert info["removed_images"] == {"policy": "keep", "file_names": ["b.png"]}
    elif fmt == "coco-results":
        assert _results(out) == first  # the same masks as before the removal
    else:
        assert (out / "b.json").is_file()

    assert _baseline(images, out, *fmt_args, "--drop-removed") == 0
    err = capsys.readouterr().err
    assert "dropped the masks of 1 image(s) no longer in the input: b.png" in err
    if fmt == "coco-dataset":
        assert _names(out) == ["a.png", "c.png"]
    elif fmt == "coco-results":
        assert len({r["image_id"] for r in json.loads(out.read_text())}) == 2
    else:
        assert sorted(p.name for p in out.iterdir()) == ["a.json", "c.json"]

    assert _baseline(images, out, *fmt_args) == 0  # dropped for good: nothing to warn about
    assert "no longer in the input" not in capsys.readouterr().err
    if fmt == "coco-dataset":
        assert _names(out) == ["a.png", "c.png"]
