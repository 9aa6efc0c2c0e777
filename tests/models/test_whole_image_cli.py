"""End-to-end tests of ``unsam segment`` and ``unsam convert-checkpoint`` (tiny random models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reference.mask2former_official import synthetic_official_state_dict
from unsam.cli.main import main
from unsam.evaluation import evaluate
from unsam.io.coco import load_coco_dataset, write_coco_dataset
from unsam.models.whole_image import build_model
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import WholeImageSegmenter
from unsam.records import ImageRecord, MaskRecord

SIZE_FLAGS = ["--min-size", "64", "--max-size", "128", "--max-masks", "12", "--no-progress"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run") / "model"
    WholeImageSegmenter(build_model("tiny", num_queries=16)).save_pretrained(folder)
    return folder.parent  # a run folder: RUN_DIR/model


def _images(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.zeros((60 + 10 * i, 80, 3), dtype=np.uint8)
        img[10:40, 20:60] = (220, 30, 30)
        img = np.clip(img + rng.integers(0, 40, size=img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i + 1:012d}.png")
    return folder


def test_segment_cli_writes_dataset_overlays_and_resumes(tmp_path, model_dir, capsys) -> None:
    images = _images(tmp_path / "images")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "pred.json"
    rc = main(
        [
            "segment",
            str(images),
            "--model",
            str(model_dir),
            "-o",
            str(out),
            "--overlay-dir",
            str(tmp_path / "ov"),
            "--overlay-min-score",
            "0",
            *SIZE_FLAGS,
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "skipped broken.jpg" in captured.err
    data = json.loads(out.read_text())
    assert [im["file_name"] for im in data["images"]] == [
        "000000000001.png",
        "000000000002.png",
        "000000000003.png",
    ]
    assert [im["id"] for im in data["images"]] == [1, 2, 3]  # ids parsed from COCO-style names
    assert data["annotations"] and all(a["source"] == "model" for a in data["annotations"])
    assert max(sum(a["image_id"] == i for a in data["annotations"]) for i in (1, 2, 3)) <= 12
    assert data["info"]["settings"]["segment"]["max_masks"] == 12
    assert len(list((tmp_path / "ov").glob("*.png"))) == 3
    # same records as the library call
    seg = WholeImageSegmenter.from_pretrained(
        model_dir, config=SegmentConfig(min_size=64, max_size=128, max_masks=12)
    )
    first = np.asarray(Image.open(images / "000000000001.png").convert("RGB"))
    lib = seg(first, image_id=1)
    cli = [m for m in load_coco_dataset(out)[0].masks]
    assert [m.rle for m in cli] == [m.rle for m in lib]
    assert [m.score for m in cli] == pytest.approx([m.score for m in lib], rel=1e-6)
    # a rerun resumes from the work file and writes the same output
    before = out.read_text()
    assert (
        main(["segment", str(images), "--model", str(model_dir), "-o", str(out), *SIZE_FLAGS]) == 0
    )
    assert out.read_text() == before


def test_segment_then_eval_against_gt(tmp_path, model_dir) -> None:
    images = _images(tmp_path / "images", n=2)
    gt_records = []
    for i, name in enumerate(sorted(p.name for p in images.iterdir())):
        h = np.asarray(Image.open(images / name)).shape[0]
        mask = np.zeros((h, 80), dtype=bool)
        mask[10:40, 20:60] = True
        gt_records.append(
            ImageRecord(
                id=100 + i,
                file_name=name,
                height=h,
                width=80,
                masks=(MaskRecord.from_mask(mask, image_id=100 + i, source="gt"),),
            )
        )
    gt = tmp_path / "gt.json"
    write_coco_dataset(gt, gt_records)
    out = tmp_path / "pred.json"
    rc = main(
        [
            "segment",
            str(images / "000000000001.png"),
            str(images / "000000000002.png"),
            "--model",
            str(model_dir),
            "-o",
            str(out),
            "--image-ids-from",
            str(gt),
            *SIZE_FLAGS,
        ]
    )
    assert rc == 0
    assert [im["id"] for im in json.loads(out.read_text())["images"]] == [100, 101]
    metrics = evaluate(gt, out)
    # the numbers of the library's own masks for the same images
    seg = WholeImageSegmenter.from_pretrained(
        model_dir, config=SegmentConfig(min_size=64, max_size=128, max_masks=12)
    )
    lib = [
        m
        for i, name in enumerate(("000000000001.png", "000000000002.png"))
        for m in seg(np.asarray(Image.open(images / name).convert("RGB")), image_id=100 + i)
    ]
    expected = evaluate(gt, lib)
    assert (metrics["images"], metrics["gt_masks"], metrics["pred_masks"]) == (2, 2, len(lib))
    for key in ("AR@1", "AR@10", "AR@100", "AR@1000", "AP", "AP50", "AP75"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12), key
    assert (
        expected["AR@100"] > 0
    )  # not a 0 == 0 comparison (measured: 0.2, one of the 2 GT masks at IoU .5)


@pytest.mark.data
def test_segment_on_real_coco_images(tmp_path, model_dir, coco_images, coco_gt) -> None:
    folder = tmp_path / "coco"
    folder.mkdir()
    for name in sorted(p.name for p in coco_images.iterdir())[:2]:
        shutil.copy(coco_images / name, folder / name)
    out = tmp_path / "pred.json"
    assert (
        main(
            [
                "segment",
                str(folder),
                "--model",
                str(model_dir),
                "-o",
                str(out),
                "--image-ids-from",
                str(coco_gt),
                *SIZE_FLAGS,
            ]
        )
        == 0
    )
    gt_ids = {im["file_name"]: im["id"] for im in json.loads(coco_gt.read_text())["images"]}
    pred = json.loads(out.read_text())
    assert all(gt_ids[im["file_name"]] == im["id"] for im in pred["images"])
    for ann in pred["annotations"]:
        image = next(im for im in pred["images"] if im["id"] == ann["image_id"])
        assert ann["segmentation"]["size"] == [
            image["height"],
            image["width"],
        ]  # original resolution


def test_segment_cli_errors(tmp_path, capsys) -> None:
    images = _images(tmp_path / "images", n=1)
    rc = main(
        [
            "segment",
            str(images),
            "--model",
            str(tmp_path / "nothing_here"),
            "-o",
            str(tmp_path / "p.json"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("unsam segment: error:")
        and "nothing_here does not exist; download" in err
        and "\n" not in err
    )
    rc = main(
        [
            "segment",
            str(images),
            "--model",
            str(tmp_path),
            "-o",
            str(tmp_path / "p.json"),
            "--max-masks",
            "0",
        ]
    )
    assert rc == 2
    assert "max_masks must be >= 1" in capsys.readouterr().err


def test_convert_checkpoint_cli(tmp_path, capsys) -> None:
    sd = synthetic_official_state_dict(4)
    torch.save({"model": sd, "iteration": 10}, tmp_path / "official.pth")
    assert (
        main(["convert-checkpoint", str(tmp_path / "official.pth"), "-o", str(tmp_path / "hf")])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
    }
    rc = main(
        [
            "convert-checkpoint",
            str(tmp_path / "official.pth"),
            "-o",
            str(tmp_path / "hf2"),
            "--num-queries",
            "2000",
        ]
    )
    assert rc == 2
    assert "has 4 queries but num_queries=2000" in capsys.readouterr().err
