"""``--device auto|cpu|cuda[:N]`` and ``--dtype float32|bfloat16`` on ``prompt``, ``eval-points``,
``demo`` and ``segment`` (the shared rule of :mod:`unsam.runtime`), on the CPU; the CUDA runs of
the same commands are in test_promptable_cuda.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.coco_subset import write_coco_subset
from unsam.cli.main import main
from unsam.masks import mask_iou
from unsam.models.promptable import PromptableConfig, build_model
from unsam.records import decode_rle

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "coco"
IMAGES = Path(__file__).resolve().parents[2] / "data" / "images"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("promptable") / "tiny"
    build_model(PromptableConfig.tiny()).save_pretrained(folder)
    return folder


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["prompt", "eval-points", "demo", "segment"])
def test_help_shows_the_shared_device_and_dtype_defaults(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from unsam.runtime import DEVICE_HELP, DTYPE_HELP

    text = _help(command, capsys)
    assert "(default: auto)" in text and "float32 (default" in text
    # one --device and one --dtype, both with the shared help (no second parser)
    assert text.count(f"--device DEVICE {' '.join(DEVICE_HELP.split())}") == 1
    assert text.count(f"--dtype {{bfloat16,float32}} {' '.join(DTYPE_HELP.split())}") == 1


def _prompt(model_dir: Path, out: Path, *extra: str) -> list[dict]:
    image = IMAGES / "coffee.jpg"
    rc = main(
        ["prompt", str(image), "--point", "80,60", "--point", "40,90", "--model", str(model_dir),
         "-o", str(out), "--short-side", "160", *extra]  # fmt: skip
    )
    assert rc == 0
    return json.loads(out.read_text())["annotations"]


def test_prompt_in_bfloat16_on_the_cpu(model_dir: Path, tmp_path: Path) -> None:
    """Same records as float32 up to bf16 rounding: 12 masks, each with IoU >= 0.85 against the
    float32 mask of its click and level (measured >= 0.923 for this random tiny model, whose flat
    logits put many pixels within bf16's error of the threshold; its logit-level bound is in
    test_promptable_bf16.py) and predicted IoU within 0.01."""
    f32 = _prompt(model_dir, tmp_path / "f32.json", "--device", "cpu")
    b16 = _prompt(model_dir, tmp_path / "b16.json", "--device", "cpu", "--dtype", "bfloat16")
    assert len(f32) == len(b16) == 12
    for a, b in zip(f32, b16, strict=True):
        assert (a["level"], a["point_coords"]) == (b["level"], b["point_coords"])
        assert mask_iou(decode_rle(a["segmentation"]), decode_rle(b["segmentation"])) >= 0.85
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= 0.01


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without CUDA")
@pytest.mark.parametrize("command", ["prompt", "eval-points"])
def test_cuda_request_without_cuda_fails_before_any_work(
    command: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if command == "prompt":
        args = ["prompt", str(IMAGES / "coffee.jpg"), "--point", "1,1", "--model", str(model_dir),
                "-o", str(tmp_path / "o.json")]  # fmt: skip
    else:
        args = ["eval-points", "--gt", str(EXAMPLES / "instances.json"), "--images",
                str(EXAMPLES / "images"), "--model", str(model_dir)]  # fmt: skip
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device 'cuda'" in err and "no CUDA GPU" in err and "--device cpu" in err
    assert not (tmp_path / "o.json").exists()


def eval_points_run(model_dir: Path, tmp_path: Path, *extra: str) -> dict:
    ann, images = write_coco_subset(
        EXAMPLES / "instances.json", EXAMPLES / "images", tmp_path / "gt", num_images=1,
        max_side=96, min_masks=1, max_masks=20, min_area=8,
    )  # fmt: skip
    out = tmp_path / f"metrics{'-'.join(extra)}.json"
    rc = main(
        ["eval-points", "--gt", str(ann), "--images", str(images), "--model", str(model_dir),
         "--json", str(out), "--short-side", "none", "--no-progress", *extra]  # fmt: skip
    )
    assert rc == 0
    return json.loads(out.read_text())


def test_eval_points_in_bfloat16_on_the_cpu(model_dir: Path, tmp_path: Path) -> None:
    """1-click mIoU of the same model in bf16 within 0.02 of float32 (masks agree to IoU >= 0.95
    each; the metric averages IoUs with the ground truth)."""
    f32 = eval_points_run(model_dir, tmp_path, "--device", "cpu")
    b16 = eval_points_run(model_dir, tmp_path, "--device", "cpu", "--dtype", "bfloat16")
    assert f32.keys() == b16.keys()
    assert abs(f32["point_oracle_miou"] - b16["point_oracle_miou"]) <= 0.02


def test_demo_backend_resolves_device_and_dtype(model_dir: Path) -> None:
    from unsam.demo.backend import DemoBackend

    backend = DemoBackend(str(model_dir), device="auto", dtype="bfloat16")
    want = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert backend.device == want and backend.dtype == "bfloat16"
    assert backend.predictor.dtype == torch.bfloat16
    assert str(backend.predictor.device) == want
    image = np.array(Image.open(IMAGES / "coffee.jpg").convert("RGB"))
    backend.predictor.set_image(image)
    assert len(backend.predictor.predict([(80, 60)])[0]) == 6
