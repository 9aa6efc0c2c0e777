"""Both trainers on CUDA (skipped with a reason without a GPU; run by benchmarks/gpu.sh): one step
of each in float32 and in bfloat16 autocast, ``torchrun`` with the NCCL backend on one GPU, and
resuming on CUDA (a CUDA run, and a run started on the CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.training.coco_subset import write_coco_subset
from tests.training.synthetic import make_shapes_dataset
from unsam.training.engine import list_checkpoints, read_loss_csv
from unsam.training.promptable.config import PromptableTrainConfig
from unsam.training.promptable.trainer import train_promptable
from unsam.training.whole_image.config import TrainConfig
from unsam.training.whole_image.trainer import train

pytestmark = pytest.mark.gpu

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "coco"
TINY = TrainConfig(
    config="tiny", max_steps=1, batch_size=2, crop_size=64, keep_checkpoints=0, device="cuda"
)
FLAGS = ["--config", "tiny", "--batch-size", "2", "--crop-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_images=3)


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_coco_subset(
        EXAMPLES / "instances.json",
        EXAMPLES / "images",
        tmp_path_factory.mktemp("pdata"),
        num_images=3,
        max_side=96,
        min_masks=1,
        max_masks=20,
        min_area=8,
    )


def _record(run: Path) -> dict:
    return json.loads((run / "train_config.json").read_text())


def _float32_weights(folder: Path) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_whole_image_step_on_cuda(shapes: tuple[Path, Path], tmp_path: Path, dtype: str) -> None:
    ann, images = shapes
    result = train(dataclasses.replace(TINY, dtype=dtype), ann, images, tmp_path / "run")
    assert result.steps == 1 and result.final_loss is not None
    assert np.isfinite(result.final_loss) and result.final_loss > 1.0
    record = _record(tmp_path / "run")
    assert record["device"] == f"cuda:{torch.cuda.current_device()}"
    assert record["train"]["dtype"] == dtype
    _float32_weights(result.model_dir)  # bfloat16 is autocast: the master weights stay float32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_promptable_step_on_cuda(coco: tuple[Path, Path], tmp_path: Path, dtype: str) -> None:
    ann, images = coco
    config = PromptableTrainConfig(
        config="tiny",
        max_steps=1,
        batch_size=1,
        lr=1e-3,
        image_size=96,
        num_clicks=8,
        num_points=64,
        device="cuda",
        dtype=dtype,
    )
    result = train_promptable(config, ann, images, tmp_path / "run")
    assert result.steps == 1 and result.final_loss is not None and np.isfinite(result.final_loss)
    assert _record(tmp_path / "run")["device"].startswith("cuda")
    _float32_weights(result.model_dir)


def test_torchrun_with_nccl_on_one_gpu_then_resume_on_cuda(
    shapes: tuple[Path, Path], tmp_path: Path
) -> None:
    """torchrun --nproc_per_node 1 --device cuda: a process group with the NCCL backend and
    DistributedDataParallel on one GPU; the run then resumes on CUDA in a plain process."""
    ann, images = shapes
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "unsam.cli.main", "train", "--annotations", str(ann), "--images", str(images),
        "-o", str(run), "--max-steps", "1", "--device", "cuda", "--dtype", "bfloat16", *FLAGS,
    ]  # fmt: skip
    done = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = _record(run)
    assert (record["backend"], record["world_size"], record["device"]) == ("nccl", 1, "cuda:0")
    resumed = train(dataclasses.replace(TINY, max_steps=2, dtype="bfloat16"), ann, images, run,
                    resume=True)  # fmt: skip
    assert (resumed.start_step, resumed.steps) == (1, 2)
    assert [r["step"] for r in read_loss_csv(run / "loss.csv")] == [1, 2]
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]


def test_a_cpu_run_resumes_on_cuda(shapes: tuple[Path, Path], tmp_path: Path) -> None:
    """The optimizer state and RNG of a CPU checkpoint move to the GPU; the weights change."""
    ann, images = shapes
    run = tmp_path / "run"
    train(dataclasses.replace(TINY, device="cpu"), ann, images, run)
    before = load_file(str(run / "model" / "model.safetensors"))
    resumed = train(dataclasses.replace(TINY, max_steps=2), ann, images, run, resume=True)
    assert (resumed.start_step, resumed.steps) == (1, 2) and _record(run)["device"].startswith(
        "cuda"
    )
    after = load_file(str(run / "model" / "model.safetensors"))
    changed = [
        k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])
    ]
    assert changed  # the CUDA step trained the CPU run's weights
