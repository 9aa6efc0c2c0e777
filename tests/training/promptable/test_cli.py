"""``unsam train-promptable`` and ``unsam eval-points`` end to end on the bundled samples (tiny
sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.coco_subset import write_coco_subset
from unsam.cli.main import SUBCOMMANDS, main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "coco"


def test_subcommands_registered() -> None:
    assert SUBCOMMANDS["train-promptable"][0] == "unsam.cli.train_promptable"
    assert SUBCOMMANDS["eval-points"][0] == "unsam.cli.eval_points"


def test_train_then_eval_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, images = write_coco_subset(
        EXAMPLES / "instances.json",
        EXAMPLES / "images",
        tmp_path / "d",
        num_images=2,
        max_side=64,
        min_masks=1,
        max_masks=20,
        min_area=8,
    )
    run = tmp_path / "run"
    args = [
        "train-promptable",
        "--annotations",
        str(ann),
        "--images",
        str(images),
        "--output",
        str(run),
        "--config",
        "tiny",
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--image-size",
        "64",
        "--num-clicks",
        "4",
        "--num-points",
        "32",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "trained 1 steps" in capsys.readouterr().out
    assert (
        main(
            [
                "train-promptable",
                "--output",
                str(run),
                "--resume",
                "--max-steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "from step 1" in capsys.readouterr().out
    assert main(args) == 2  # existing folder without --resume: one-line error
    assert "--resume" in capsys.readouterr().err

    out = tmp_path / "m.json"
    eval_args = [
        "eval-points",
        "--gt",
        str(ann),
        "--images",
        str(images),
        "--model",
        str(run),
        "--json",
        str(out),
        "--short-side",
        "none",
    ]
    assert main([*eval_args, "--no-progress", "--max-images", "1"]) == 0
    text = capsys.readouterr().out
    assert "point_oracle_miou" in text
    # the run records the size it was trained at; eval-points uses it unless told otherwise
    assert json.loads((run / "config.json").read_text())["train_image_size"] == 64
    assert main([*eval_args[:-4], "--no-progress", "--max-images", "1"]) == 0
    assert "images fitted into 64x64" in capsys.readouterr().err
    metrics = json.loads(out.read_text())
    expected = {
        "point_max_miou",
        "point_oracle_miou",
        "NoC@0.5",
        "NoC@0.8",
        "NoC@0.85",
        "NoC@0.9",
        "num_segments",
        "num_images",
        "max_clicks",
    }
    expected |= {
        f"point_{k}_miou_{s}" for k in ("max", "oracle") for s in ("small", "medium", "large")
    }
    expected |= {f"num_segments_{s}" for s in ("small", "medium", "large")}
    assert set(metrics) == expected
    assert metrics["num_images"] == 1 and metrics["num_segments"] >= 1
    assert (
        0.0 <= metrics["point_oracle_miou"] <= 1.0
        and metrics["point_max_miou"] <= metrics["point_oracle_miou"]
    )
    assert (
        main(
            [
                "eval-points",
                "--gt",
                str(ann),
                "--images",
                str(images),
                "--model",
                str(run),
                "--max-clicks",
                "3",
            ]
        )
        == 2
    )
    assert "max-clicks" in capsys.readouterr().err
