"""``--device`` / ``--dtype`` of the trainers on the CPU: bfloat16 is autocast with float32 master
weights, runs written with the old ``bf16`` flag still resume, the help shows the real defaults,
and ``torchrun`` makes a process group even for one process (the CUDA versions are in
tests/training/test_training_cuda.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.synthetic import make_shapes_dataset
from unsam.cli.main import main
from unsam.training.engine import read_loss_csv
from unsam.training.whole_image.config import TrainConfig
from unsam.training.whole_image.trainer import WholeImageTrainer

TINY = TrainConfig(config="tiny", max_steps=1, batch_size=2, crop_size=64, keep_checkpoints=0)
FLAGS = ["--config", "tiny", "--batch-size", "2", "--crop-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_images=3)


class _Recording(WholeImageTrainer):
    """The whole-image trainer, recording the dtype of the class head's output at every step."""

    seen: list[torch.dtype] = []

    def build_model(self, new_run: bool) -> torch.nn.Module:
        model = super().build_model(new_run)
        fc1 = model.model.transformer_module.decoder.layers[0].fc1
        fc1.register_forward_hook(lambda mod, args, out: self.seen.append(out.dtype))
        return model


@pytest.mark.parametrize(
    ("dtype", "inside"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)]
)
def test_bfloat16_training_is_autocast_over_float32_weights(
    shapes: tuple[Path, Path], tmp_path: Path, dtype: str, inside: torch.dtype
) -> None:
    ann, images = shapes
    trainer = _Recording(dataclasses.replace(TINY, dtype=dtype))
    trainer.seen = []
    result = trainer.fit(ann, images, tmp_path / "run")
    assert trainer.seen and set(trainer.seen) == {inside}  # matrix products in bf16 under autocast
    weights = load_file(str(result.model_dir / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert record["train"]["dtype"] == dtype and record["device"] == "cpu"
    assert record["backend"] == ""  # one process outside torchrun: no process group


def _make_old(run: Path) -> None:
    """Rewrite a run's settings as unsam wrote them before --dtype: ``bf16: true``."""
    path = run / "train_config.json"
    record = json.loads(path.read_text())
    del record["train"]["dtype"]
    record["train"]["bf16"] = True
    path.write_text(json.dumps(record))
    for state_path in run.glob("checkpoints/*/training_state.pt"):
        state = torch.load(state_path, weights_only=True)
        del state["config"]["dtype"]
        state["config"]["bf16"] = True
        torch.save(state, state_path)


def test_a_run_with_the_old_bf16_flag_resumes(
    shapes: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ann, images = shapes
    run = tmp_path / "run"
    common = ["-o", str(run), "--max-steps", "1", *FLAGS]
    assert (
        main(["train", "--annotations", str(ann), "--images", str(images), "--bf16", *common]) == 0
    )
    assert json.loads((run / "train_config.json").read_text())["train"]["dtype"] == "bfloat16"
    _make_old(run)
    caplog.set_level("WARNING")
    assert main(["train", "-o", str(run), "--resume", "--max-steps", "2", "--no-progress"]) == 0
    assert [r["step"] for r in read_loss_csv(run / "loss.csv")] == [1, 2]
    stored = json.loads((run / "train_config.json").read_text())["train"]
    assert stored["dtype"] == "bfloat16" and "bf16" not in stored  # kept, in today's name
    assert "dtype" not in caplog.text  # not reported as a changed setting


def test_resume_keeps_the_runs_dtype_unless_given(
    shapes: tuple[Path, Path], tmp_path: Path
) -> None:
    ann, images = shapes
    run = tmp_path / "run"
    new = ["train", "--annotations", str(ann), "--images", str(images), "-o", str(run)]
    assert main([*new, "--max-steps", "1", "--dtype", "bfloat16", *FLAGS]) == 0
    assert main(["train", "-o", str(run), "--resume", "--max-steps", "2", "--no-progress"]) == 0
    assert json.loads((run / "train_config.json").read_text())["train"]["dtype"] == "bfloat16"
    args = ["train", "-o", str(run), "--resume", "--max-steps", "3", "--dtype", "float32"]
    assert main([*args, "--no-progress"]) == 0
    assert json.loads((run / "train_config.json").read_text())["train"]["dtype"] == "float32"


@pytest.mark.parametrize("command", ["train", "train-promptable", "self-train", "segment"])
def test_help_shows_the_real_defaults(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert '"cuda" or "cuda:N" (default: auto)' in text
    assert text.count("--device") == 2 and text.count("--dtype") == 2  # usage line + one flag
    if command.startswith("train"):
        assert "autocast mixed precision: float32 master weights" in text
        assert "float32 (default for a new run; --resume keeps the run's own)" in text
    else:
        assert "float32 (default, equal to the official code) or bfloat16" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_without_a_gpu_fails_before_any_step(
    shapes: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann, images = shapes
    args = ["train", "--annotations", str(ann), "--images", str(images), "-o", str(tmp_path / "r")]
    assert main([*args, "--device", "cuda", *FLAGS]) == 2
    assert "PyTorch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "r" / "loss.csv").exists()


@pytest.mark.slow
def test_torchrun_with_one_process_makes_a_process_group(
    shapes: tuple[Path, Path], tmp_path: Path
) -> None:
    """torchrun --nproc_per_node 1 trains through DistributedDataParallel (gloo on the CPU), the
    code path of several processes; the CUDA test checks NCCL the same way."""
    ann, images = shapes
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "unsam.cli.main", "train", "--annotations", str(ann), "--images", str(images),
        "-o", str(run), "--max-steps", "1", "--device", "cpu", *FLAGS,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((run / "train_config.json").read_text())
    assert (record["backend"], record["world_size"], record["device"]) == ("gloo", 1, "cpu")
