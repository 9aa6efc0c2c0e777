"""Backbone initialisation (spec §6.1): detectron2 .pkl, torchvision .pth, safetensors; safe
unpickling."""

from __future__ import annotations

import argparse
import builtins
import os
import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from unsam.models.whole_image.config import model_config
from unsam.training.whole_image.backbone_init import (
    UnsafePickleError,
    load_backbone_init,
    load_restricted_pickle,
    torchvision_to_d2_name,
)

BN = ("weight", "bias", "running_mean", "running_var")


def resnet50_d2_shapes() -> dict[str, tuple[int, ...]]:
    """Every detectron2 ResNet-50 name and shape (CutLER's dino_RN50_pretrain_d2_format.pkl; spec
    App. C)."""
    shapes: dict[str, tuple[int, ...]] = {"stem.conv1.weight": (64, 3, 7, 7)}
    shapes.update({f"stem.conv1.norm.{n}": (64,) for n in BN})
    cin = 64
    for res, (blocks, width) in zip(
        range(2, 6), ((3, 64), (4, 128), (6, 256), (3, 512)), strict=True
    ):
        cout = 4 * width
        for j in range(blocks):
            shapes[f"res{res}.{j}.conv1.weight"] = (width, cin if j == 0 else cout, 1, 1)
            shapes[f"res{res}.{j}.conv2.weight"] = (width, width, 3, 3)
            shapes[f"res{res}.{j}.conv3.weight"] = (cout, width, 1, 1)
            for c, ch in ((1, width), (2, width), (3, cout)):
                shapes.update({f"res{res}.{j}.conv{c}.norm.{n}": (ch,) for n in BN})
            if j == 0:
                shapes[f"res{res}.0.shortcut.weight"] = (cout, cin, 1, 1)
                shapes.update({f"res{res}.0.shortcut.norm.{n}": (cout,) for n in BN})
        cin = cout
    return shapes


def hf_to_d2(key: str) -> str:
    """transformers ResNetBackbone name -> detectron2 name, written independently of the library's
    map."""
    key = re.sub(r"^embedder\.embedder\.convolution\.", "stem.conv1.", key)
    key = re.sub(r"^embedder\.embedder\.normalization\.", "stem.conv1.norm.", key)
    m = re.fullmatch(r"encoder\.stages\.(\d)\.layers\.(\d+)\.(.+)", key)
    if m is None:
        return key
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    rest = re.sub(r"^layer\.(\d)\.convolution\.", lambda g: f"conv{int(g.group(1)) + 1}.", rest)
    rest = re.sub(
        r"^layer\.(\d)\.normalization\.", lambda g: f"conv{int(g.group(1)) + 1}.norm.", rest
    )
    rest = rest.replace("shortcut.convolution.", "shortcut.").replace(
        "shortcut.normalization.", "shortcut.norm."
    )
    return f"res{stage + 2}.{block}.{rest}"


def d2_to_torchvision(key: str) -> str:
    key = key.replace("stem.conv1.norm.", "bn1.").replace("stem.conv1.", "conv1.")
    key = re.sub(r"^res(\d)\.", lambda g: f"layer{int(g.group(1)) - 1}.", key)
    key = re.sub(r"conv(\d)\.norm\.", r"bn\1.", key)
    return key.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")


def _holder(name: str) -> nn.Module:
    """The transformers ResNetBackbone of ``unsam train --config NAME`` at its Mask2Former path."""
    from transformers import ResNetBackbone

    holder = nn.Module()
    holder.model = nn.Module()
    holder.model.pixel_level_module = nn.Module()
    holder.model.pixel_level_module.encoder = ResNetBackbone(model_config(name).backbone_config)
    return holder


def _backbone_state(holder: nn.Module) -> dict[str, torch.Tensor]:
    return holder.model.pixel_level_module.encoder.state_dict()


@pytest.fixture(scope="module")
def r50_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in resnet50_d2_shapes().items()}


@pytest.fixture(scope="module")
def r50() -> nn.Module:
    return _holder("r50")


def _assert_backbone_equals(holder: nn.Module, d2: dict[str, np.ndarray]) -> None:
    state = _backbone_state(holder)
    params = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(params) == len(d2) == 265
    for key, value in params.items():
        assert torch.equal(value, torch.from_numpy(d2[hf_to_d2(key)])), key


def test_resnet50_name_table_matches_the_model(r50: nn.Module) -> None:
    state = _backbone_state(r50)
    names = {
        hf_to_d2(k): tuple(v.shape)
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    assert names == resnet50_d2_shapes()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_d2_pickle_fills_every_backbone_tensor(
    tmp_path: Path, r50: nn.Module, r50_weights: dict[str, np.ndarray], protocol: int
) -> None:
    path = tmp_path / "dino_RN50_pretrain_d2_format.pkl"
    model = {
        **r50_weights,
        "stem.fc.weight": np.zeros((1000, 2048), np.float32),
    }  # d2's renamed fc: ignored
    with path.open("wb") as f:
        pickle.dump(
            {"model": model, "__author__": "DINO", "matching_heuristics": True},
            f,
            protocol=protocol,
        )
    assert load_backbone_init(r50, path) == 265
    _assert_backbone_equals(r50, r50_weights)


def test_torchvision_pth_and_safetensors_fill_every_backbone_tensor(
    tmp_path: Path, r50: nn.Module, r50_weights: dict[str, np.ndarray]
) -> None:
    tv = {d2_to_torchvision(k): torch.from_numpy(v) for k, v in r50_weights.items()}
    assert (
        "layer1.0.downsample.0.weight" in tv
        and "bn1.running_var" in tv
        and "layer4.2.bn3.bias" in tv
    )
    tv["fc.weight"], tv["fc.bias"] = (
        torch.zeros(1000, 2048),
        torch.zeros(1000),
    )  # classifier: ignored
    tv["layer1.0.bn1.num_batches_tracked"] = torch.tensor(5)
    torch.save(
        {"state_dict": {"module." + k: v for k, v in tv.items()}}, tmp_path / "dino_resnet50.pth"
    )
    load_backbone_init(r50, tmp_path / "dino_resnet50.pth")
    _assert_backbone_equals(r50, r50_weights)

    flipped = {
        k: -v for k, v in r50_weights.items()
    }  # different values, so a stale load would show
    save_file(
        {k: torch.from_numpy(v) for k, v in flipped.items()}, str(tmp_path / "rn50.safetensors")
    )
    load_backbone_init(r50, tmp_path / "rn50.safetensors")
    _assert_backbone_equals(r50, flipped)


class _Evil:
    def __init__(self, call: object, args: tuple) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple:
        return self.call, self.args


@pytest.mark.parametrize(
    ("call", "args", "global_name"),
    [
        (os.system, ("touch {marker}",), f"{os.system.__module__}.system"),
        (builtins.eval, ("open({marker!r}, 'w').close()",), "builtins.eval"),
        (subprocess.Popen, (["touch", "{marker}"],), "subprocess.Popen"),
    ],
)
def test_malicious_pickle_is_refused_without_running(
    tmp_path: Path, r50: nn.Module, call: object, args: tuple, global_name: str
) -> None:
    marker = tmp_path / "pwned"

    def fill(a: object) -> object:
        if isinstance(a, list):
            return [fill(x) for x in a]
        return a.format(marker=str(marker))  # type: ignore[union-attr]

    payload = _Evil(call, tuple(fill(a) for a in args))
    path = tmp_path / "dino_RN50_pretrain_d2_format.pkl"
    data = {
        "model": {"stem.conv1.weight": np.zeros((2, 2), np.float32), "res2.0.conv1.weight": payload}
    }
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(UnsafePickleError) as info:
        load_backbone_init(r50, path)
    assert str(info.value).startswith(f"{path}: refused to load the global {global_name}")
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        load_restricted_pickle(path)
    assert not marker.exists()


@pytest.fixture
def tiny() -> nn.Module:
    return _holder("tiny")


def _tiny_d2(tiny: nn.Module) -> dict[str, np.ndarray]:
    """Random weights for the tiny backbone under detectron2 names (positive variances, small
    scale)."""
    rng = np.random.default_rng(1)
    out = {}
    for k, v in _backbone_state(tiny).items():
        if k.endswith("num_batches_tracked"):
            continue
        value = rng.standard_normal(tuple(v.shape), dtype=np.float32) * np.float32(0.1)
        out[hf_to_d2(k)] = np.abs(value) + np.float32(0.5) if k.endswith("running_var") else value
    return out


def _write_pkl(path: Path, model: dict[str, np.ndarray]) -> Path:
    path.write_bytes(
        pickle.dumps({"model": model, "__author__": "test", "matching_heuristics": True})
    )
    return path


def test_strict_errors_name_the_file_and_keys(tmp_path: Path, tiny: nn.Module) -> None:
    good = _tiny_d2(tiny)
    load_backbone_init(tiny, _write_pkl(tmp_path / "ok.pkl", good))  # the tiny backbone, any depth
    bad = dict(good)
    del bad["res3.0.shortcut.norm.running_var"]
    bad["res2.0.conv4.weight"] = np.zeros(1, np.float32)
    bad["stem.conv1.weight"] = np.zeros((16, 6, 7, 7), np.float32)
    path = _write_pkl(tmp_path / "bad.pkl", bad)
    with pytest.raises(ValueError) as info:
        load_backbone_init(tiny, path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: does not fit the model's ResNet backbone")
    assert "1 missing (e.g. encoder.stages.1.layers.0.shortcut.normalization.running_var)" in msg
    assert "1 unexpected (e.g. res2.0.conv4.weight)" in msg
    assert "1 wrong shape (e.g. stem.conv1.weight (16, 6, 7, 7) (model: (16, 3, 7, 7)))" in msg
    only_missing = {k: v for k, v in good.items() if k != "res5.0.conv2.weight"}
    path = _write_pkl(tmp_path / "short.pkl", only_missing)
    with pytest.raises(
        ValueError, match=r"short.pkl: .*1 missing \(e.g. encoder.stages.3.layers.0.layer.1"
    ):
        load_backbone_init(tiny, path)
    with pytest.raises(FileNotFoundError, match="nope.pkl does not exist; download dino_RN50"):
        load_backbone_init(tiny, tmp_path / "nope.pkl")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: cannot read the ResNet-50 checkpoint"):
        load_backbone_init(tiny, tmp_path / "junk.pth")
    (tmp_path / "objects.pkl").write_bytes(
        pickle.dumps({"model": {"stem.conv1.weight": np.array([None])}})
    )
    with pytest.raises(ValueError, match="objects.pkl: stem.conv1.weight is a ndarray"):
        load_backbone_init(tiny, tmp_path / "objects.pkl")


def test_torchvision_renames_match_detectron2_converter() -> None:
    table = {
        "conv1.weight": "stem.conv1.weight",
        "bn1.running_mean": "stem.conv1.norm.running_mean",
        "layer1.0.conv2.weight": "res2.0.conv2.weight",
        "layer4.2.bn3.bias": "res5.2.conv3.norm.bias",
        "layer2.0.downsample.0.weight": "res3.0.shortcut.weight",
        "layer3.0.downsample.1.running_var": "res4.0.shortcut.norm.running_var",
        "fc.weight": "fc.weight",
    }
    for tv, d2 in table.items():
        assert torchvision_to_d2_name(tv) == d2


def test_train_flag_and_new_run_only(
    tmp_path: Path, tiny: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--backbone-init`` reaches TrainConfig; training applies it to a new run and not on
    --resume."""
    from tests.training.synthetic import make_shapes_dataset
    from unsam.cli.common import config_values
    from unsam.cli.train import add_arguments
    from unsam.training.whole_image import backbone_init
    from unsam.training.whole_image.config import TrainConfig
    from unsam.training.whole_image.trainer import train

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["-o", "run", "--backbone-init", "dino_RN50_pretrain_d2_format.pkl"])
    assert (
        TrainConfig(**config_values(args, TrainConfig)).backbone_init
        == "dino_RN50_pretrain_d2_format.pkl"
    )

    path = _write_pkl(tmp_path / "tiny.pkl", _tiny_d2(tiny))
    calls: list[tuple[nn.Module, Path]] = []
    real = backbone_init.load_backbone_init

    def spy(model: nn.Module, p: Path) -> int:
        calls.append((model, Path(p)))
        n = real(model, p)
        state = model.model.pixel_level_module.encoder.state_dict()
        want = _tiny_d2(tiny)
        assert all(
            torch.equal(v, torch.from_numpy(want[hf_to_d2(k)]))
            for k, v in state.items()
            if not k.endswith("num_batches_tracked")
        )
        return n

    monkeypatch.setattr(backbone_init, "load_backbone_init", spy)
    ann, images = make_shapes_dataset(tmp_path / "data", num_images=2)
    config = TrainConfig(
        config="tiny",
        max_steps=1,
        batch_size=1,
        crop_size=64,
        checkpoint_every=1,
        backbone_init=str(path),
    )
    train(config, ann, images, tmp_path / "run")
    assert [p for _, p in calls] == [path]
    train(
        TrainConfig(**{**config.__dict__, "max_steps": 2}),
        ann,
        images,
        tmp_path / "run",
        resume=True,
    )
    assert len(calls) == 1  # resumed weights win
