"""Promptable training loop: exact resume, run folder, optimizer groups, backbone init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.coco_subset import write_coco_subset
from unsam.training.engine import read_loss_csv
from unsam.training.promptable.backbone_init import load_backbone_init
from unsam.training.promptable.config import PromptableTrainConfig
from unsam.training.promptable.trainer import (
    PromptableTrainStep,
    _prompts,
    build_param_groups,
    load_promptable_train_config,
    train_promptable,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "coco"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The 5 bundled COCO images at 96 px with their masks."""
    out = tmp_path_factory.mktemp("pdata")
    return write_coco_subset(
        EXAMPLES / "instances.json",
        EXAMPLES / "images",
        out,
        num_images=5,
        max_side=96,
        min_masks=1,
        max_masks=20,
        min_area=8,
    )


def _config(**kw: object) -> PromptableTrainConfig:
    base = {
        "config": "tiny",
        "batch_size": 1,
        "lr": 1e-3,
        "image_size": 96,
        "num_clicks": 8,
        "num_points": 64,
        "checkpoint_every": 2,
    }
    base.update(kw)
    return PromptableTrainConfig(**base)  # type: ignore[arg-type]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def test_resume_is_exact(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    """4 straight steps == 2 steps + --resume + 2 steps: same weights and loss rows, bit for bit."""
    ann, images = tiny_data
    straight = train_promptable(_config(max_steps=4), ann, images, tmp_path / "a")
    train_promptable(_config(max_steps=2), ann, images, tmp_path / "b")
    resumed = train_promptable(_config(max_steps=4), ann, images, tmp_path / "b", resume=True)
    assert resumed.start_step == 2 and resumed.steps == 4 and straight.start_step == 0
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    rows_a, rows_b = (
        read_loss_csv(tmp_path / "a" / "loss.csv"),
        read_loss_csv(tmp_path / "b" / "loss.csv"),
    )
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b] and len(rows_a) == 4
    # the run folder: a save_pretrained model at the top, checkpoints, plot, config
    assert (tmp_path / "a" / "loss.png").is_file()
    assert (tmp_path / "a" / "checkpoints" / "step_0000004" / "training_state.pt").is_file()
    state = torch.load(
        tmp_path / "a" / "checkpoints" / "step_0000004" / "training_state.pt", weights_only=True
    )
    assert state["step"] == 4
    cfg, record = load_promptable_train_config(tmp_path / "a")
    assert cfg == _config(max_steps=4) and record["model"] == "promptable"
    from unsam.models.promptable.predictor import PromptablePredictor

    predictor = PromptablePredictor.from_pretrained(tmp_path / "a", short_side=None)
    loaded = predictor.model.state_dict()
    assert all(torch.equal(loaded[k], wa[k]) for k in wa)
    # weights moved
    assert any(
        not torch.equal(wa[k], state_k) for k, state_k in _weights_after_init().items() if k in wa
    )


def _weights_after_init() -> dict[str, torch.Tensor]:
    from unsam.models.promptable.modeling import build_model
    from unsam.training.engine.rng import _seed_all

    _seed_all(0)
    return build_model("tiny").state_dict()


def test_existing_run_folder_needs_resume(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = tiny_data
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x").write_text("x")
    with pytest.raises(ValueError, match="--resume"):
        train_promptable(_config(max_steps=1), ann, images, tmp_path / "r")


def test_every_parameter_gets_a_gradient() -> None:
    """DistributedDataParallel (find_unused_parameters=False) needs every parameter in the graph,
    also for a crop without masks."""
    from unsam.models.promptable.modeling import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    step = PromptableTrainStep(model, _config())
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    masks = [torch.zeros((2, 64, 64), dtype=torch.bool), torch.zeros((0, 64, 64), dtype=torch.bool)]
    masks[0][0, 10:40, 10:40] = True
    masks[0][1, 20:30, 20:30] = True
    points, targets, count = _prompts(masks, 8, 6)
    assert points[1] is None and count >= 8
    loss = step(images, masks, points, targets, float(count))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_param_groups_backbone_lr_and_no_decay() -> None:
    from unsam.models.promptable.modeling import build_model

    cfg = _config(lr=1e-4, backbone_lr_mult=0.1, weight_decay=0.05)
    groups = {g["name"]: g for g in build_param_groups(build_model("tiny"), cfg)}
    table = next(n for n in groups if n.endswith("relative_position_bias_table"))
    assert groups[table]["weight_decay"] == 0.0 and groups[table]["lr"] == pytest.approx(1e-5)
    assert groups["sem_seg_head.predictor.mask_tokens.weight"]["weight_decay"] == 0.0
    assert groups["sem_seg_head.predictor.decoder_norm.weight"]["weight_decay"] == 0.0
    bias = "sem_seg_head.predictor.mask_embed.layers.0.bias"
    assert (
        groups[bias]["weight_decay"] == 0.05 and groups[bias]["lr"] == 1e-4
    )  # biases do get decay
    patch = "backbone.swin.embeddings.patch_embeddings.projection.weight"
    assert groups[patch]["lr"] == pytest.approx(1e-5) and groups[patch]["weight_decay"] == 0.05


def _official_swin_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's backbone written back in the official Swin naming (a MoBY-style file)."""
    out: dict[str, torch.Tensor] = {}
    hf = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    for k, v in hf.items():
        name = k.removeprefix("backbone.swin.")
        if k.startswith("backbone.hidden_states_norms.stage"):
            s, wb = k.removeprefix("backbone.hidden_states_norms.stage").split(".")
            out[f"norm{int(s) - 1}.{wb}"] = v
            continue
        if (
            ".attention.k_proj." in name
            or ".attention.v_proj." in name
            or "relative_position_index" in name
        ):
            continue
        if ".attention.q_proj." in name:
            wb = name.rsplit(".", 1)[1]
            base = name.split(".attention.")[0]
            qkv = torch.cat(
                [
                    hf[f"backbone.swin.{base}.attention.{p}.{wb}"]
                    for p in ("q_proj", "k_proj", "v_proj")
                ]
            )
            out[base.removeprefix("encoder.") + f".attn.qkv.{wb}"] = qkv
            continue
        name = (
            name.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
            .replace("embeddings.norm", "patch_embed.norm")
            .removeprefix("encoder.")
            .replace("layernorm_before", "norm1")
            .replace("layernorm_after", "norm2")
            .replace("attention.o_proj", "attn.proj")
            .replace(
                "attention.relative_position_bias.relative_position_bias_table",
                "attn.relative_position_bias_table",
            )
        )
        out[name] = v
    return out


def test_backbone_init_from_moby_checkpoint(tmp_path: Path) -> None:
    from unsam.models.promptable.modeling import build_model

    torch.manual_seed(1)
    source = build_model("tiny")
    official = _official_swin_state(source)
    assert "layers.0.blocks.0.attn.qkv.weight" in official
    ckpt = {
        "model": {
            **{f"encoder.{k}": v for k, v in official.items()},
            "encoder_k.patch_embed.proj.weight": torch.zeros(1),
            "projector.w": torch.zeros(1),
            "encoder.head.weight": torch.zeros(3, 3),
        }
    }
    path = tmp_path / "moby.pth"
    torch.save(ckpt, path)
    torch.manual_seed(2)
    target = build_model("tiny")
    n = load_backbone_init(target, path)
    assert n == sum(
        1
        for k in target.state_dict()
        if k.startswith("backbone.") and "relative_position_index" not in k
    )
    src, dst = source.state_dict(), target.state_dict()
    for k in src:
        if k.startswith("backbone."):
            assert torch.equal(src[k], dst[k]), k
    assert not torch.equal(
        src["sem_seg_head.predictor.mask_tokens.weight"],
        dst["sem_seg_head.predictor.mask_tokens.weight"],
    )
    swin_t = build_model("tiny")
    bad = {"model": {"patch_embed.proj.weight": torch.zeros(96, 3, 4, 4)}}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="shape"):
        load_backbone_init(swin_t, tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="backbone-init"):
        load_backbone_init(swin_t, tmp_path / "missing.pth")
