"""`unsam train`, `unsam self-train` and `unsam merge-gt` end to end; `torchrun` with 2 CPU
processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.synthetic import make_shapes_dataset
from unsam.cli.main import main
from unsam.io.coco import load_coco_dataset
from unsam.training.engine import list_checkpoints, read_loss_csv

TINY_FLAGS = [
    "--config",
    "tiny",
    "--batch-size",
    "2",
    "--crop-size",
    "64",
    "--lr",
    "5e-5",
    "--no-scale-jitter",
    "--no-progress",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    ann, images = make_shapes_dataset(root, num_images=3)
    run = root / "run"
    code = main(
        [
            "train",
            "--annotations",
            str(ann),
            "--images",
            str(images),
            "-o",
            str(run),
            "--max-steps",
            "2",
            *TINY_FLAGS,
        ]
    )
    assert code == 0
    return ann, images, run


def test_train_cli_refuses_overwrite_then_resumes(
    trained_run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ann, images, run = trained_run
    assert [r["step"] for r in read_loss_csv(run / "loss.csv")] == [1, 2]
    assert (run / "model" / "model.safetensors").is_file() and (run / "loss.png").is_file()
    code = main(
        [
            "train",
            "--annotations",
            str(ann),
            "--images",
            str(images),
            "-o",
            str(run),
            "--max-steps",
            "2",
            *TINY_FLAGS,
        ]
    )
    assert code == 2
    assert "run folder exists and is not empty; pass --resume" in capsys.readouterr().err
    # --resume alone: data paths and settings come from RUN_DIR/train_config.json; --max-steps
    # extends the run
    assert main(["train", "-o", str(run), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    assert [r["step"] for r in read_loss_csv(run / "loss.csv")] == [1, 2, 3]
    assert [s for s, _ in list_checkpoints(run)] == [
        2,
        3,
    ]  # the last step of each call is always saved
    stored = json.loads((run / "train_config.json").read_text())
    assert stored["train"]["max_steps"] == 3 and stored["train"]["config"] == "tiny"
    assert "trained 3 steps (from step 2)" in capsys.readouterr().out


def test_train_cli_needs_data_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "-o", str(tmp_path / "run"), "--config", "tiny"]) == 2
    assert "--annotations PSEUDO.json and --images DIR are required" in capsys.readouterr().err


def test_self_train_cli_adds_model_masks(
    trained_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ann, images, run = trained_run
    out = tmp_path / "round2.json"
    args = [
        "self-train", "--model", str(run), "--annotations", str(ann), "--images", str(images),
        "-o", str(out), "--score-thresh", "0.0", "--iou-thresh", "0.5",
        "--segment-min-size", "64", "--segment-max-size", "96", "--segment-max-masks", "8",
        "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    before = {img.id: img for img in load_coco_dataset(ann)}
    after = load_coco_dataset(out)
    assert (tmp_path / "round2.predictions.json").is_file()
    assert [img.id for img in after] == list(before)
    added = 0
    for img in after:
        old = before[img.id].masks
        assert [m.id for m in img.masks[: len(old)]] == [
            m.id for m in old
        ]  # pseudo-masks untouched
        new = img.masks[len(old) :]
        assert all(m.source == "model" for m in new)
        added += len(new)
    assert added > 0
    ids = [m.id for img in after for m in img.masks]
    assert len(ids) == len(set(ids))


def test_merge_gt_cli_with_polygon_ground_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = {
        "images": [{"id": 3, "file_name": "a.png", "height": 20, "width": 20}],
        "annotations": [
            {"id": 11, "image_id": 3, "category_id": 7, "iscrowd": 0,
             "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]], "area": 200, "bbox": [0, 0, 20, 10]},
        ],
        "categories": [{"id": 7, "name": "thing"}],
    }  # fmt: skip
    from unsam.io.coco import write_coco_dataset
    from unsam.records import ImageRecord, MaskRecord

    top = np.zeros((20, 20), bool)
    top[:10] = True
    bottom = ~top
    pseudo = [
        ImageRecord(
            1, "a.png", 20, 20, tuple(MaskRecord.from_masks(np.stack([top, bottom]), image_id=1))
        )
    ]
    write_coco_dataset(
        tmp_path / "pseudo.json", [p.with_masks(p.masks, assign_ids=True) for p in pseudo]
    )
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out = tmp_path / "merged.json"
    assert (
        main(["merge-gt", str(tmp_path / "gt.json"), str(tmp_path / "pseudo.json"), "-o", str(out)])
        == 0
    )
    merged = load_coco_dataset(out)
    assert len(merged) == 1 and merged[0].id == 1
    assert [(m.id, m.source) for m in merged[0].masks] == [(11, "gt"), (1_000_001, "unknown")]
    assert "1 GT masks + 1 pseudo-masks (1 pseudo-masks overlapped GT" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    """DDP (gloo) with 2 processes: both take one image per step, rank 0 writes the run; resume
    works."""
    ann, images = make_shapes_dataset(tmp_path, num_images=4)
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "unsam.cli.main", "train", "--annotations", str(ann), "--images", str(images),
        "-o", str(run),
        "--max-steps", "2", "--checkpoint-every", "1", "--keep-checkpoints", "0", *TINY_FLAGS,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]
    state = torch.load(
        run / "checkpoints" / "step_0000002" / "training_state.pt", weights_only=True
    )
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(
        state["rng"][0]["torch"], state["rng"][1]["torch"]
    )  # each rank's own RNG
    assert [r["step"] for r in read_loss_csv(run / "loss.csv")] == [
        1,
        2,
    ]  # one row per step, not per rank
    assert json.loads((run / "train_config.json").read_text())["world_size"] == 2
    # resume the 2-process run for one more step
    resume = [c for c in cmd if c not in (str(ann), str(images), "--annotations", "--images")]
    resume[resume.index("--max-steps") + 1] = "3"
    done = subprocess.run(
        [*resume, "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in read_loss_csv(run / "loss.csv")] == [1, 2, 3]
    assert (run / "model" / "model.safetensors").is_file()


def test_a_trained_model_remembers_its_scale(trained_run: tuple[Path, Path, Path]) -> None:
    """Issue 11.5: `unsam segment` needs no --min-size/--max-size to match the training scale."""
    from unsam.io.coco import load_coco_dataset
    from unsam.models.whole_image import WholeImageSegmenter

    ann, _, run = trained_run
    sizes = [(r.height, r.width) for r in load_coco_dataset(ann)]
    shorter = sorted(min(s) for s in sizes)[len(sizes) // 2]
    seg = WholeImageSegmenter.from_pretrained(run)
    assert (seg.config.min_size, seg.config.max_size) == (shorter, max(max(s) for s in sizes))
    assert WholeImageSegmenter(seg.model).config.min_size == 1024  # no folder: the paper's resize
