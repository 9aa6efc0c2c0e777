"""Official promptable checkpoint -> our model (spec PROMPTABLE.md §6).

The full-size test writes every key of ``tests/data/promptable_keys.tsv`` (derived from the official
module definitions) with random values into an official-format ``.pth``, converts it, and checks
that every tensor arrives unchanged at the target the TSV names (its own ``hf_swinbackbone`` column
for the backbone, identity elsewhere) and that nothing in the model is left unfilled.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.reference.promptable_ref import (
    official_state_dict_from_ours,
    swin_relative_position_index,
)
from unsam.models.promptable import PromptableConfig, build_model
from unsam.models.promptable.convert import (
    convert_official_state_dict,
    load_official_state_dict,
    model_from_official,
)

TSV = Path(__file__).resolve().parents[2] / "data" / "promptable_keys.tsv"


def _read_tsv() -> list[dict[str, str]]:
    lines = [ln for ln in TSV.read_text().splitlines() if ln and not ln.startswith("#")]
    header = lines[0].split("\t")
    rows = []
    for ln in lines[1:]:
        cells = ln.split("\t")
        rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True)))
    return rows


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", text))


def _synthetic_official(rows: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for row in rows:
        shape = _shape(row["shape"])
        if row["dtype"] == "int64":
            sd[row["key"]] = swin_relative_position_index(7)
            assert tuple(sd[row["key"]].shape) == shape
        elif not row["note"].startswith("alias of "):
            sd[row["key"]] = torch.randn(shape, generator=g)
    for row in rows:
        if row["note"].startswith("alias of "):
            sd[row["key"]] = sd["model." + row["note"][len("alias of ") :]].clone()
    return sd


def test_tsv_is_the_spec_table() -> None:
    rows = _read_tsv()
    assert len(rows) == 649  # 648 module tensors + the criterion buffer (spec §6.2)
    assert sum(1 for r in rows if r["note"].startswith("alias of ")) == 110
    assert sum(1 for r in rows if r["dtype"] == "int64") == 12
    total = sum(torch.Size(_shape(r["shape"])).numel() for r in rows if "criterion" not in r["key"])
    assert total == 55_396_883


def test_full_swin_t_checkpoint_every_tensor_arrives_unchanged(tmp_path: Path) -> None:
    rows = _read_tsv()
    official = _synthetic_official(rows)
    path = tmp_path / "10k_0099999.pth"
    torch.save({"model": official, "iteration": 99999}, path)
    model = model_from_official(path, PromptableConfig.swin_t())
    ours = model.state_dict()
    buffers = dict(model.named_buffers())
    filled: set[str] = set()
    for row in rows:
        key, hf, note = row["key"], row["hf_swinbackbone"], row["note"]
        src = official[key]
        if note.startswith(("alias of ", "unused", "expected-UNCERTAIN")):
            continue
        if hf.startswith("(drop"):
            target = "backbone.swin.encoder." + key[len("model.backbone.") :].replace(
                "attn.relative_position_index",
                "attention.relative_position_bias.relative_position_index",
            )
            assert torch.equal(buffers[target].view(src.shape), src), target
            continue
        if hf.startswith("split rows"):
            q_name = "backbone." + re.search(r"->(\S+)", hf).group(1)
            c = src.shape[0] // 3
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                name = q_name.replace("q_proj", proj)
                assert torch.equal(ours[name], src[i * c : (i + 1) * c]), name
                filled.add(name)
            continue
        target = "backbone." + hf if hf else key[len("model.") :]
        assert target in ours, f"{key} -> {target} is not a model tensor"
        assert ours[target].dtype == src.dtype
        assert torch.equal(ours[target], src), f"{key} -> {target} changed"
        filled.add(target)
    assert filled == set(ours), f"unfilled model tensors: {sorted(set(ours) - filled)[:5]}"
    assert len(ours) == 571  # 648 - 110 aliases - 12 buffers - 3 unused + 12 blocks x 4 (qkv split)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(PromptableConfig.tiny())


@pytest.fixture(scope="module")
def tiny_official(tiny_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in tiny_model.state_dict().items()
    }
    return official_state_dict_from_ours(sd, tiny_model.config.decoder_layers)


def test_tiny_round_trip_and_missing_file(
    tmp_path: Path, tiny_official: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_official, path)  # a bare state dict, without the "model" wrapper
    model = model_from_official(path, PromptableConfig.tiny())
    back = official_state_dict_from_ours(model.state_dict(), model.config.decoder_layers)
    for k, v in tiny_official.items():
        if "class_embed" in k or "lang_mapper" in k or "criterion" in k:
            continue
        assert torch.equal(back[k], v), k
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_official_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # an extra key: mapped by identity but unknown to the model, or matched by no rule
        (
            lambda sd: sd.update({"sem_seg_head.pixel_decoder.bogus.weight": torch.zeros(1)}),
            "unknown to the model",
        ),
        (lambda sd: sd.update({"backbone.extra.weight": torch.zeros(1)}), "unexpected keys"),
        # a deleted parameter is missing after conversion
        (lambda sd: sd.pop("sem_seg_head.predictor.mask_tokens.weight"), "missing"),
        (lambda sd: sd.pop("backbone.layers.0.blocks.0.attn.qkv.weight"), "missing"),
        # an alias that differs from its source: the checkpoint is inconsistent
        (lambda sd: sd["sem_seg_head.predictor.bbox_embed.1.layers.0.weight"].add_(1.0), "differs"),
        (lambda sd: sd["sem_seg_head.predictor.decoder.norm.bias"].add_(1.0), "differs"),
        # a wrong relative_position_index (rebuilt by transformers) is reported
        (
            lambda sd: sd["backbone.layers.1.blocks.0.attn.relative_position_index"].fill_(0),
            "rebuilt",
        ),
        # a shape that does not fit the model size
        (
            lambda sd: sd.update({"sem_seg_head.predictor.mask_tokens.weight": torch.zeros(5, 32)}),
            "shape",
        ),
    ],
)
def test_conversion_is_strict(tiny_model, tiny_official, edit, message) -> None:
    sd = {k.removeprefix("model."): v.clone() for k, v in tiny_official.items()}
    edit(sd)
    with pytest.raises(ValueError, match=message) as info:
        convert_official_state_dict(sd, tiny_model, source="ckpt.pth")
    assert "ckpt.pth" in str(info.value)
