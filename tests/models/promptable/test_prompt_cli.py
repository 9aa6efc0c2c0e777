"""``unsam convert-checkpoint --kind promptable`` then ``unsam prompt`` and ``unsam segment --model
promptable:DIR`` on a tiny synthetic official-format checkpoint."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from tests.reference.promptable_ref import official_state_dict_from_ours
from unsam.cli.main import main
from unsam.cli.prompt import PANEL_SIDE
from unsam.models.promptable import PromptableConfig, build_model


def _image(path, hw=(60, 80)) -> None:
    rng = np.random.default_rng(0)
    img = np.zeros((*hw, 3), dtype=np.uint8)
    img[10:40, 20:60] = (220, 30, 30)
    Image.fromarray(
        np.clip(img + rng.integers(0, 40, size=img.shape), 0, 255).astype(np.uint8)
    ).save(path)


def test_convert_then_prompt_writes_json_and_overlay(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = build_model(PromptableConfig.tiny())
    official = official_state_dict_from_ours(model.state_dict(), model.config.decoder_layers)
    ckpt = tmp_path / "unsam_promptable_tiny.pth"
    torch.save({"model": official, "iteration": 9}, ckpt)
    out_dir = tmp_path / "converted"
    assert (
        main(
            [
                "convert-checkpoint",
                str(ckpt),
                "--kind",
                "promptable",
                "--size",
                "tiny",
                "-o",
                str(out_dir),
            ]
        )
        == 0
    )
    assert (out_dir / "model.safetensors").is_file()
    assert "unsam prompt" in capsys.readouterr().out

    image = tmp_path / "photo.png"
    _image(image)
    out_json, overlay = tmp_path / "masks.json", tmp_path / "overlay.png"
    rc = main(
        [
            "prompt",
            str(image),
            "--point",
            "30,20",
            "--point",
            "70,50",
            "--model",
            str(out_dir),
            "-o",
            str(out_json),
            "--overlay",
            str(overlay),
            "--short-side",
            "64",
        ]
    )
    assert rc == 0
    data = json.loads(out_json.read_text())
    anns = data["annotations"]
    assert data["image"]["height"] == 60 and data["image"]["width"] == 80
    assert len(anns) == 12
    assert [a["point_coords"] for a in anns] == [[[30.0, 20.0]]] * 6 + [[[70.0, 50.0]]] * 6
    assert [a["level"] for a in anns] == [1, 2, 3, 4, 5, 6] * 2
    assert all(a["segmentation"]["size"] == [60, 80] for a in anns)
    assert len({a["id"] for a in anns}) == 12
    picture = np.asarray(Image.open(overlay))
    assert picture.shape == (2 * 60, 6 * 80, 3)  # 2 clicks x 6 granularities (panels < PANEL_SIDE)
    assert 80 < PANEL_SIDE
    assert "12 masks for 2 click(s)" in capsys.readouterr().out

    # the converted folder and the official .pth give the same masks
    out2 = tmp_path / "masks_pth.json"
    assert (
        main(
            [
                "prompt",
                str(image),
                "--point",
                "30,20",
                "--point",
                "70,50",
                "--model",
                str(ckpt),
                "--config",
                "tiny",
                "-o",
                str(out2),
                "--short-side",
                "64",
            ]
        )
        == 0
    )
    assert [a["segmentation"] for a in json.loads(out2.read_text())["annotations"]] == [
        a["segmentation"] for a in anns
    ]


def test_prompt_errors(tmp_path, capsys) -> None:
    image = tmp_path / "photo.png"
    _image(image)
    rc = main(
        [
            "prompt",
            str(image),
            "--point",
            "500,20",
            "--model",
            str(tmp_path),
            "-o",
            str(tmp_path / "a.json"),
        ]
    )
    assert rc == 2
    assert "outside the 80x60 image" in capsys.readouterr().err
    # a negative coordinate is read as a value, not as an option (it was "expected one argument")
    for argv in (["--point", "-5,10"], ["--point=-5,10"], ["--point", "10,-5"]):
        rc = main(
            ["prompt", str(image), *argv, "--model", str(tmp_path), "-o", str(tmp_path / "a.json")]
        )
        err = capsys.readouterr().err
        assert rc == 2 and "outside the 80x60 image" in err and "expected one argument" not in err
    rc = main(
        [
            "prompt",
            str(image),
            "--point",
            "5,5",
            "--model",
            str(tmp_path / "none"),
            "-o",
            str(tmp_path / "a.json"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "convert-checkpoint" in err and len(err.strip().splitlines()) == 1


def _promptable_folder(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "model"
    build_model(PromptableConfig.tiny()).save_pretrained(folder)
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "a.png", (30, 40))
    return folder, images


def test_segment_with_promptable_amg_flags(tmp_path, capsys) -> None:
    # the AMG's settings are flags: 4² points at 64 px with permissive filters (issue 16)
    folder, images = _promptable_folder(tmp_path)
    out = tmp_path / "pred.json"
    rc = main(
        [
            "segment",
            str(images),
            "--model",
            f"promptable:{folder}",
            "-o",
            str(out),
            "--no-progress",
            "--amg-points-per-side",
            "4",
            "--amg-short-side",
            "64",
            "--amg-pred-iou-thresh=-1e9",
            "--amg-stability-score-thresh",
            "0",
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert [im["file_name"] for im in data["images"]] == ["a.png"]
    assert data["annotations"]
    for ann in data["annotations"]:
        assert ann["segmentation"]["size"] == [30, 40] and ann["source"] == "promptable-amg"
    assert data["info"]["settings"]["amg"]["points_per_side"] == 4
    err = capsys.readouterr().err
    # the summary counts the candidates (16 points x 6 tokens) and each filter's drops
    line = next(x for x in err.splitlines() if "promptable AMG" in x)
    assert "96 candidate masks" in line and "0 dropped by predicted IoU <= -1000000000.0" in line
    assert f"{len(data['annotations'])} kept" in line and "warning" not in err


def test_segment_promptable_amg_reports_zero_masks(tmp_path, capsys) -> None:
    # an untrained model predicts IoUs far below the original's 0.88: 0 masks, and the summary
    # says which filter dropped them and which flag loosens it
    folder, images = _promptable_folder(tmp_path)
    out = tmp_path / "pred.json"
    rc = main(
        [
            "segment",
            str(images),
            "--model",
            f"promptable:{folder}",
            "-o",
            str(out),
            "--no-progress",
            "--amg-points-per-side",
            "2",
            "--amg-short-side",
            "64",
            "--amg-pred-iou-thresh",
            "1e9",
        ]
    )
    assert rc == 0
    assert json.loads(out.read_text())["annotations"] == []
    err = capsys.readouterr().err
    assert "24 candidate masks" in err and "24 dropped by predicted IoU <= 1000000000.0" in err
    warning = next(x for x in err.splitlines() if x.startswith("warning:"))
    assert "kept no mask" in warning and "--amg-pred-iou-thresh" in warning


def test_segment_refuses_settings_of_the_other_model(tmp_path, capsys) -> None:
    folder, images = _promptable_folder(tmp_path)
    out = tmp_path / "pred.json"
    base = ["segment", str(images), "-o", str(out), "--no-progress"]
    rc = main([*base, "--model", str(folder), "--amg-pred-iou-thresh", "0.5"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--amg-pred-iou-thresh" in err and "promptable:PATH" in err
    rc = main([*base, "--model", f"promptable:{folder}", "--score-thresh", "0.5"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--score-thresh" in err and "--amg-" in err
    assert not out.exists()
