"""Training loop: schedule, parameter groups, run folder, checkpoints and exact resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.training.synthetic import make_shapes_dataset
from unsam.training.engine import (
    StepLog,
    latest_checkpoint,
    list_checkpoints,
    lr_factor,
    read_loss_csv,
)
from unsam.training.whole_image.config import TrainConfig
from unsam.training.whole_image.trainer import build_param_groups, load_train_config, train

TINY = TrainConfig(
    config="tiny", max_steps=6, batch_size=2, crop_size=64, checkpoint_every=3, keep_checkpoints=0
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_images=4)


def test_lr_schedule_matches_the_original() -> None:
    c = TrainConfig()
    assert lr_factor(0, c) == 1.0  # warmup factor 1.0: no real warmup
    assert lr_factor(177_775, c) == 1.0
    assert lr_factor(177_776, c) == pytest.approx(0.1)
    assert lr_factor(192_591, c) == pytest.approx(0.1)
    assert lr_factor(192_592, c) == pytest.approx(0.01)
    w = TrainConfig(warmup_steps=10, warmup_factor=0.001)
    assert lr_factor(0, w) == pytest.approx(0.001)
    assert lr_factor(5, w) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, w) == 1.0


def test_param_groups_backbone_lr_and_no_decay_on_norms_and_embeddings() -> None:
    from unsam.models.whole_image import build_model, freeze_batchnorm

    model = build_model("tiny")
    freeze_batchnorm(model)
    c = TrainConfig(lr=1e-4)
    groups = {g["name"]: g for g in build_param_groups(model, c)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable  # frozen BatchNorm parameters are left out
    assert not any("normalization" in n for n in groups)
    backbone = [n for n in groups if n.startswith("model.pixel_level_module.encoder.")]
    assert backbone and all(groups[n]["lr"] == pytest.approx(1e-5) for n in backbone)
    assert all(groups[n]["lr"] == 1e-4 for n in groups if n not in backbone)
    assert (
        groups["model.transformer_module.queries_features.weight"]["weight_decay"] == 0.0
    )  # nn.Embedding
    layer_norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert layer_norms and all(groups[f"{n}.weight"]["weight_decay"] == 0.0 for n in layer_norms)
    assert groups["class_predictor.weight"]["weight_decay"] == 0.05


def test_refuses_to_overwrite_a_run_without_resume(
    shapes: tuple[Path, Path], tmp_path: Path
) -> None:
    ann, images = shapes
    run = tmp_path / "run"
    run.mkdir()
    (run / "loss.csv").write_text("step,loss,lr,seconds_per_step\n")
    with pytest.raises(ValueError, match="pass --resume"):
        train(TINY, ann, images, run)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_resume_is_exact(shapes: tuple[Path, Path], tmp_path: Path) -> None:
    """6 straight steps == 3 steps, interruption (mid step 4), resume, 3 more steps: same weights
    and losses."""
    ann, images = shapes
    straight = train(TINY, ann, images, tmp_path / "straight")
    assert straight.steps == 6 and straight.start_step == 0

    def interrupt(log: StepLog) -> None:
        if log.step == 4:
            raise KeyboardInterrupt

    run = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(TINY, ann, images, run, on_step=interrupt)
    assert [s for s, _ in list_checkpoints(run)] == [3]
    assert (
        len(read_loss_csv(run / "loss.csv")) == 4
    )  # the row of the unfinished checkpoint interval
    resumed = train(TINY, ann, images, run, resume=True)
    assert resumed.start_step == 3 and resumed.steps == 6

    a, b = _weights(straight.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = read_loss_csv(straight.run_dir / "loss.csv")
    rows_b = read_loss_csv(run / "loss.csv")
    assert [(r["step"], r["loss"], r["lr"]) for r in rows_a] == [
        (r["step"], r["loss"], r["lr"]) for r in rows_b
    ]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5, 6]
    # training changed the weights, and the run folder has everything the segmenter needs
    assert rows_a[-1]["loss"] < rows_a[0]["loss"]
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "model" / "config.json").is_file()
    config, record = load_train_config(run)
    assert config == TINY and Path(record["annotations"]) == ann.resolve()


def test_checkpoint_state_loads_with_weights_only(
    shapes: tuple[Path, Path], tmp_path: Path
) -> None:
    ann, images = shapes
    config = dataclasses.replace(TINY, max_steps=2, checkpoint_every=1, keep_checkpoints=1)
    result = train(config, ann, images, tmp_path / "run")
    assert [s for s, _ in list_checkpoints(result.run_dir)] == [
        2
    ]  # keep_checkpoints=1 pruned step 1
    ckpt = latest_checkpoint(result.run_dir)
    assert ckpt is not None and ckpt.name == "step_0000002"
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    assert state["step"] == 2 and state["world_size"] == 1
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}
    assert state["optimizer"]["state"]  # AdamW moments
    assert state["scheduler"]["last_epoch"] == 2
    assert not any(p.name.startswith(".tmp") for p in (result.run_dir / "checkpoints").iterdir())
    # the checkpoint's weights equal the final model's
    a, b = _weights(ckpt / "model"), _weights(result.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resuming a finished run trains nothing and keeps the loss rows
    again = train(config, ann, images, result.run_dir, resume=True)
    assert again.start_step == 2 and again.final_loss is None
    assert [r["step"] for r in read_loss_csv(result.run_dir / "loss.csv")] == [1, 2]


def test_resume_with_another_model_size_is_refused(
    shapes: tuple[Path, Path], tmp_path: Path
) -> None:
    ann, images = shapes
    config = dataclasses.replace(TINY, max_steps=1)
    train(config, ann, images, tmp_path / "run")
    with pytest.raises(ValueError, match="num_queries=None but this run asks for 7"):
        train(
            dataclasses.replace(config, num_queries=7, max_steps=2),
            ann,
            images,
            tmp_path / "run",
            resume=True,
        )


def test_bf16_autocast_step_runs(shapes: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = shapes
    config = dataclasses.replace(TINY, max_steps=1, dtype="bfloat16")
    result = train(config, ann, images, tmp_path / "run")
    rows = read_loss_csv(tmp_path / "run" / "loss.csv")
    assert [r["step"] for r in rows] == [1] and np.isfinite(result.final_loss)
    assert result.final_loss == pytest.approx(rows[0]["loss"], rel=1e-5)
    assert result.final_loss > 1.0  # an untrained model on random shapes: a real loss, not 0


def test_loader_workers_do_not_change_the_run(shapes: tuple[Path, Path], tmp_path: Path) -> None:
    """Samples are a pure function of (seed, position): worker processes give the same weights."""
    ann, images = shapes
    config = dataclasses.replace(TINY, max_steps=2, checkpoint_every=100)
    a = train(config, ann, images, tmp_path / "w0")
    b = train(dataclasses.replace(config, num_workers=2), ann, images, tmp_path / "w2")
    wa, wb = _weights(a.model_dir), _weights(b.model_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (
        read_loss_csv(a.run_dir / "loss.csv")[1]["loss"]
        == read_loss_csv(b.run_dir / "loss.csv")[1]["loss"]
    )


def test_non_finite_loss_stops_before_the_update(
    shapes: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unsam.training.engine import NonFiniteLossError
    from unsam.training.whole_image import trainer as loop

    real = loop.collate

    def nan_collate(samples, mean, std):
        batch = real(samples, mean, std)
        batch["pixel_values"] = torch.full_like(batch["pixel_values"], float("nan"))
        return batch

    monkeypatch.setattr(loop, "collate", nan_collate)
    with pytest.raises(
        NonFiniteLossError, match=r"loss became nan at step 1; the weights were not updated"
    ):
        train(dataclasses.replace(TINY, max_steps=2), *shapes, tmp_path / "run")
    assert (
        read_loss_csv(tmp_path / "run" / "loss.csv") == []
        and list_checkpoints(tmp_path / "run") == []
    )
