"""The evaluation suite (unsam.evaluation.suite) and ``unsam eval-suite`` on a fixture data root
with two of the seven datasets present."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsam.cli.main import main
from unsam.evaluation.suite import (
    DATASET_ORDER,
    PAPER_AR1000,
    dataset_paths,
    evaluate_suite,
    format_suite_table,
    model_tag,
    parse_dataset_names,
    suite_average,
    suite_to_json,
)
from unsam.io.coco import write_coco_dataset
from unsam.records import ImageRecord, MaskRecord

DASH = "–"


def _rect(hw: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def _dataset(root: Path, name: str, first_id: int, with_images: bool = False) -> Path:
    """ROOT/<name>/gt.json with 2 images of 3 masks in all; optionally the images too."""
    hw = (24, 32)
    records = [
        ImageRecord(
            id=first_id,
            file_name=f"img_{first_id}.png",
            height=hw[0],
            width=hw[1],
            masks=(
                MaskRecord.from_mask(_rect(hw, 0, 10, 0, 10), source="gt"),
                MaskRecord.from_mask(_rect(hw, 12, 24, 5, 30), source="gt"),
            ),
        ),
        ImageRecord(
            id=first_id + 1,
            file_name=f"img_{first_id + 1}.png",
            height=hw[0],
            width=hw[1],
            masks=(MaskRecord.from_mask(_rect(hw, 4, 20, 8, 16), source="gt"),),
        ),
    ]
    gt, images = dataset_paths(root, name)
    write_coco_dataset(gt, records)
    if with_images:
        images.mkdir(parents=True)
        rng = np.random.default_rng(first_id)
        for r in records:
            Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(
                images / r.file_name
            )
    return gt


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    _dataset(root, "coco", 1)
    _dataset(root, "sa1b", 100)
    return root


@pytest.fixture()
def pred_dir(root: Path, tmp_path: Path) -> Path:
    """Predictions equal to the ground truth (a dataset JSON, as unsam segment writes)."""
    folder = tmp_path / "preds"
    folder.mkdir()
    for name in ("coco", "sa1b"):
        (folder / f"{name}.json").write_bytes(dataset_paths(root, name)[0].read_bytes())
    return folder


def test_perfect_predictions_give_100_and_missing_datasets_are_not_present(
    root: Path, pred_dir: Path
) -> None:
    entries = evaluate_suite(root, {n: pred_dir / f"{n}.json" for n in DATASET_ORDER})
    assert [e.name for e in entries] == list(DATASET_ORDER)
    status = {e.name: e.status for e in entries}
    assert status == {
        "coco": "ok",
        "lvis": "not present",
        "ade20k": "not present",
        "entityseg": "not present",
        "sa1b": "ok",
        "partimagenet": "not present",
        "paco": "not present",
    }
    for e in entries:
        if e.status == "ok":
            assert e.metrics["AR@1000"] == pytest.approx(1.0)
            assert e.metrics["AP"] == pytest.approx(1.0)
            assert e.metrics["images"] == 2 and e.metrics["gt_masks"] == 3
        else:
            assert e.metrics is None
    assert suite_average(entries) == pytest.approx(1.0)


def test_table_layout(root: Path, pred_dir: Path) -> None:
    entries = evaluate_suite(root, {n: pred_dir / f"{n}.json" for n in DATASET_ORDER})
    lines = format_suite_table(entries).splitlines()
    assert lines[1].split() == ["Avg", "COCO", "LVIS", "ADE20K", "Entity", "SA-1B", "PtIn", "PACO"]
    rows = {}
    for line in lines[2:9]:
        label, *cells = re.split(r"\s{2,}", line.strip())
        rows[label] = cells
    assert rows["this run: AR@1000"] == ["100.0*", "100.0", DASH, DASH, DASH, "100.0", DASH, DASH]
    assert rows["this run: AP"] == ["100.0*", "100.0", DASH, DASH, DASH, "100.0", DASH, DASH]
    # the paper's rows, in the same column order (spec §8.3)
    assert rows["paper AR@1000: UnSAM R-50 0.1M"] == [
        "39.2",
        "40.5",
        "37.7",
        "35.7",
        "39.6",
        "41.9",
        "51.6",
        "27.5",
    ]
    assert rows["paper AR@1000: SAM ViT-B 11M (supervised)"] == [
        "42.1",
        "49.6",
        "46.1",
        "45.8",
        "45.9",
        "60.8",
        "28.3",
        "18.1",
    ]
    assert len(rows) == 2 + len(PAPER_AR1000)
    # the columns line up: every value of a dataset column ends where its header ends
    header_ends = [lines[1].index(h) + len(h) for h in ("COCO", "SA-1B", "PACO")]
    for line in lines[2:9]:
        assert all(line[end - 1] != " " and line[end : end + 1] in ("", " ") for end in header_ends)
    text = "\n".join(lines)
    assert "* average over the 2 of 7 datasets evaluated (coco, sa1b)" in text
    assert "lvis: not present (no " in text and "github.com/frank-xwang/UnSAM" in text


def test_missing_predictions_and_subsets(root: Path, pred_dir: Path) -> None:
    (pred_dir / "sa1b.json").unlink()
    entries = evaluate_suite(
        root, {n: pred_dir / f"{n}.json" for n in DATASET_ORDER}, ("coco", "sa1b", "lvis")
    )
    assert [(e.name, e.status) for e in entries] == [
        ("coco", "ok"),
        ("sa1b", "no predictions"),
        ("lvis", "not present"),
    ]
    text = format_suite_table(entries)
    row = next(line for line in text.splitlines() if line.startswith("this run: AR@1000")).split()[
        -8:
    ]
    assert row == ["100.0*", "100.0", DASH, DASH, DASH, DASH, DASH, DASH]
    assert "sa1b: no predictions" in text
    summary = suite_to_json(entries)
    assert summary["datasets"]["sa1b"]["status"] == "no predictions"
    assert summary["average"] == {
        "over": ["coco"],
        "AR@1000": pytest.approx(1.0),
        "AP": pytest.approx(1.0),
    }
    assert summary["paper_ar1000_percent"]["UnSAM+ R-50 0.1M"]["sa1b"] == 64.8


def test_imperfect_predictions_lower_the_numbers(root: Path, pred_dir: Path) -> None:
    data = json.loads((pred_dir / "coco.json").read_text())
    data["annotations"] = data["annotations"][:1]  # 1 of 3 masks found
    (pred_dir / "coco.json").write_text(json.dumps(data))
    entries = evaluate_suite(root, {"coco": pred_dir / "coco.json"}, ("coco",))
    assert entries[0].metrics["AR@1000"] == pytest.approx(1 / 3)
    assert suite_average(entries) == pytest.approx(1 / 3)
    assert "33.3*" in format_suite_table(entries)


def test_parse_dataset_names() -> None:
    assert parse_dataset_names(None) == DATASET_ORDER
    assert parse_dataset_names("paco, Entity,coco,ptin") == (
        "coco",
        "entityseg",
        "partimagenet",
        "paco",
    )
    with pytest.raises(ValueError, match="unknown dataset 'voc'; choose from coco, lvis"):
        parse_dataset_names("coco,voc")


def test_model_tag(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r50"
    (run / "model").mkdir(parents=True)
    (tmp_path / "ckpt.pth").write_bytes(b"")
    assert model_tag(run) == "r50"
    assert model_tag(run / "model") == "r50"
    assert model_tag(tmp_path / "ckpt.pth") == "ckpt"
    assert model_tag("org/unsam whole") == "org_unsam_whole"


def test_cli_pred_dir_prints_the_table_and_writes_json(
    root: Path, pred_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "suite.json"
    rc = main(
        ["eval-suite", "--pred-dir", str(pred_dir), "--data-root", str(root), "--json", str(out)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "Avg" in text and "this run: AR@1000" in text and "paco: not present" in text
    data = json.loads(out.read_text())
    assert data["datasets"]["coco"]["metrics"]["AR@1000"] == pytest.approx(1.0)
    assert data["datasets"]["lvis"] == {
        "status": "not present",
        "gt": str(root / "lvis" / "gt.json"),
    }
    gt = root / "coco" / "gt.json"
    assert (
        main(
            ["eval-suite", "--pred-dir", str(pred_dir), "--data-root", str(root), "--json", str(gt)]
        )
        == 2
    )
    assert "is an input file" in capsys.readouterr().err
    assert (
        main(["eval-suite", "--pred-dir", str(pred_dir), "--data-root", str(tmp_path / "nowhere")])
        == 2
    )
    assert "--data-root" in capsys.readouterr().err
    assert (
        main(
            ["eval-suite", "--pred-dir", str(pred_dir), "--data-root", str(root), "--datasets", "x"]
        )
        == 2
    )
    assert "unknown dataset 'x'" in capsys.readouterr().err


def test_cli_model_writes_resumable_predictions_under_the_root(tmp_path: Path, capsys) -> None:
    import torch

    from unsam.models.whole_image import build_model
    from unsam.models.whole_image.segmenter import WholeImageSegmenter

    torch.manual_seed(0)
    run = tmp_path / "runs" / "tiny"
    WholeImageSegmenter(build_model("tiny", num_queries=8)).save_pretrained(run / "model")
    root = tmp_path / "root"
    gt = _dataset(root, "coco", 7, with_images=True)  # ids 7, 8; names do not give them
    flags = [
        "eval-suite",
        "--model",
        str(run),
        "--data-root",
        str(root),
        "--no-progress",
        "--min-size",
        "32",
        "--max-size",
        "64",
        "--max-masks",
        "5",
    ]
    assert main(flags) == 0
    pred = root / "coco" / "pred_tiny.json"
    data = json.loads(pred.read_text())
    assert [(im["id"], im["file_name"]) for im in data["images"]] == [
        (im["id"], im["file_name"]) for im in json.loads(gt.read_text())["images"]
    ]
    assert 0 < len(data["annotations"]) <= 10
    out = capsys.readouterr().out
    assert "this run: AR@1000" in out and "lvis: not present" in out
    before = pred.read_bytes()
    assert main(flags) == 0  # a rerun resumes: nothing is segmented again, same file
    assert "(0 processed now, 2 resumed)" in capsys.readouterr().out
    assert pred.read_bytes() == before
    (root / "coco" / "images" / "img_8.png").unlink()
    (pred).unlink()
    assert main(flags) == 2
    assert "img_8.png: missing (1 of the 2 images" in capsys.readouterr().err
