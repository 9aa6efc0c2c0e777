"""Issue 11 at the command line: setup errors with --workers end at once, small confusions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from unsam.cli.main import main

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "tests" / "data" / "images"


@pytest.mark.parametrize(
    "args",
    [
        ["pseudo-label", str(IMAGES), "--features", "/nonexistent/dino.pth", "--workers", "2"],
        ["pseudo-label", str(IMAGES), "--features", "tests/no-such-folder", "--workers", "2"],
        ["segment", str(IMAGES), "--model", "tests/no-such-run", "--workers", "2"],
    ],
)
def test_missing_model_with_workers_ends_at_once_with_one_line(
    args: list[str], tmp_path: Path
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unsam.cli.main",
            *args,
            "-o",
            str(tmp_path / "o.json"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in proc.stderr
    assert "huggingface.co/tests" not in lines[0]  # a mistyped local path is not a hub id


def test_self_train_missing_model_with_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = tmp_path / "p.json"
    ann.write_text(
        '{"images": [{"id": 1, "file_name": "chelsea.png", "height": 300, "width": 451}], '
        '"annotations": [], "categories": [{"id": 1, "name": "object"}]}'
    )
    code = main(
        [
            "self-train",
            "--model",
            str(tmp_path / "runs" / "nonexistent"),
            "--annotations",
            str(ann),
            "--images",
            str(IMAGES),
            "-o",
            str(tmp_path / "new.json"),
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    assert code == 2 and "nonexistent does not exist; download" in capsys.readouterr().err


def test_baseline_has_no_method_flag_that_contradicts_the_positional(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(
            [
                "baseline",
                "slic",
                str(IMAGES),
                "-o",
                str(tmp_path / "o.json"),
                "--method",
                "felzenszwalb",
            ]
        )
    assert "unrecognized arguments: --method" in capsys.readouterr().err


def test_version_and_dir() -> None:
    import unsam

    proc = subprocess.run(
        [sys.executable, "-m", "unsam.cli.main", "--version"], capture_output=True, text=True
    )
    assert proc.stdout.strip() == f"unsam {unsam.__version__}"
    assert {"DivideAndConquer", "WholeImageSegmenter", "evaluate", "load_image"} <= set(dir(unsam))


def test_loading_a_model_draws_no_progress_bar(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers import ViTConfig, ViTModel

    from unsam.features import load_feature_extractor

    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=8,
        image_size=32,
    )
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    capfd.readouterr()
    load_feature_extractor(tmp_path / "vit")
    err = capfd.readouterr().err
    assert "Loading" not in err and "%|" not in err


def test_missing_maskcut_crf_is_loud_and_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9.4: the MaskCut CRF that silently turned off is now a warning in the summary and
    info."""
    import json

    import unsam.crf as crf

    monkeypatch.setattr(crf, "crf_available", lambda: False)
    out = tmp_path / "o.json"
    img = tmp_path / "imgs"
    img.mkdir()
    (img / "c.png").write_bytes((IMAGES / "chelsea.png").read_bytes())
    code = main(
        [
            "pseudo-label",
            str(img),
            "-o",
            str(out),
            "--features",
            "classic",
            "--preset",
            "spec",
            "--max-masks",
            "5",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "warning: MaskCut CRF is off" in capsys.readouterr().err
    assert "MaskCut CRF is off" in json.loads(out.read_text())["info"]["settings"]["warnings"][0]


def test_summary_says_when_masks_were_capped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tmp_path / "imgs"
    img.mkdir()
    (img / "c.png").write_bytes((IMAGES / "chelsea.png").read_bytes())
    assert (
        main(
            [
                "pseudo-label",
                str(img),
                "-o",
                str(tmp_path / "o.json"),
                "--features",
                "classic",
                "--max-masks",
                "7",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "masks capped at --max-masks on 1 image(s)" in capsys.readouterr().err
