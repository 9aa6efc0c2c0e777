"""DINO key features: loading (HF folder, official .pth, hub id offline), hook, batching, dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTModel

from tests.reference.dino_vit import dino_last_keys, hf_to_dino_state_dict
from unsam.features import (
    DinoFeatureExtractor,
    FeatureExtractor,
    MissingWeightsError,
    load_feature_extractor,
)
from unsam.features.dino import IMAGENET_MEAN, IMAGENET_STD, find_key_projection

HIDDEN, LAYERS, HEADS, PATCH = 64, 2, 4, 8


def _tiny_vit(eps: float = 1e-6, seed: int = 0) -> ViTModel:
    """Tiny random ViT (hidden 64, 2 layers, 4 heads, patch 8, 4x4 pretraining grid)."""
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        patch_size=PATCH,
        image_size=32,
        layer_norm_eps=eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ViTModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():  # larger than the default 0.02 init so every weight matters
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tiny_vit")
    model = _tiny_vit()
    folder = root / "hf"
    model.save_pretrained(folder)
    official = hf_to_dino_state_dict(model.state_dict())
    pth = root / "dino_tiny.pth"
    torch.save(official, pth)
    return {"model": model, "folder": folder, "pth": pth, "official": official, "root": root}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Two 64x96 (non-square: position embeddings get interpolated) uint8 RGB images."""
    return np.random.default_rng(0).integers(0, 256, size=(2, 64, 96, 3), dtype=np.uint8)


def test_hf_folder_and_official_pth_give_identical_features(tiny: dict, images: np.ndarray) -> None:
    from_folder = load_feature_extractor(tiny["folder"])
    from_pth = load_feature_extractor(tiny["pth"], num_heads=HEADS)
    a, b = from_folder(images), from_pth(images)
    assert a.shape == (2, 8, 12, HIDDEN) and a.dtype == torch.float32
    assert a.abs().mean() > 0.1  # not a trivially small output
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_pth_keys_match_reference_dino_forward(tiny: dict, images: np.ndarray) -> None:
    """The converted model reproduces the original fused-qkv forward (q/k/v split order, heads)."""
    ours = load_feature_extractor(tiny["pth"], num_heads=HEADS)(images)
    ref = dino_last_keys(tiny["official"], torch.from_numpy(images), num_heads=HEADS)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_default_heads_change_features(tiny: dict, images: np.ndarray) -> None:
    """Without num_heads the head count is hidden/64 = 1, which is not this model's 4."""
    wrong = load_feature_extractor(tiny["pth"])(images)
    right = load_feature_extractor(tiny["pth"], num_heads=HEADS)(images)
    assert not torch.allclose(wrong, right, atol=1e-3)


def test_keys_equal_manual_last_layer_k_proj(tiny: dict, images: np.ndarray) -> None:
    model: ViTModel = tiny["model"]
    extractor = DinoFeatureExtractor(model, name="tiny")
    feats = extractor(images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    extractor.close()  # the manual forward must run to the end
    with torch.no_grad():
        out = model(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True)
        last_in = out.hidden_states[LAYERS - 1]  # input of the last layer
        layer = model.layers[LAYERS - 1]
        keys = layer.attention.k_proj(layer.layernorm_before(last_in))
    manual = keys[:, 1:].reshape(2, 8, 12, HIDDEN)
    torch.testing.assert_close(feats, manual, atol=1e-5, rtol=0)


def test_hook_registered_once(tiny: dict, images: np.ndarray) -> None:
    """Regression, spec §10 bug 14: the original added a forward hook on every call."""
    model = _tiny_vit()
    extractor = DinoFeatureExtractor(model)
    k_proj = model.get_submodule(f"layers.{LAYERS - 1}.attention.k_proj")
    first = extractor(images[:1])
    for _ in range(3):
        again = extractor(images[:1])
    assert len(k_proj._forward_hooks) == 1
    torch.testing.assert_close(first, again)
    extractor.close()
    assert len(k_proj._forward_hooks) == 0


def test_batching_and_input_forms(tiny: dict, images: np.ndarray) -> None:
    ext = load_feature_extractor(tiny["folder"], batch_size=1)
    batched = load_feature_extractor(tiny["folder"], batch_size=8)(
        np.concatenate([images, images[:1]])
    )
    assert batched.shape[0] == 3
    torch.testing.assert_close(ext(images), batched[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(ext(list(images)), batched[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(ext(images[0]), batched[:1], atol=1e-5, rtol=0)


def test_bfloat16_output_is_float32_and_close(tiny: dict, images: np.ndarray) -> None:
    f32 = load_feature_extractor(tiny["folder"])(images)
    bf16 = load_feature_extractor(tiny["folder"], dtype="bfloat16")(images)
    assert bf16.dtype == torch.float32
    corr = torch.corrcoef(torch.stack([f32.flatten(), bf16.flatten()]))[0, 1]
    assert corr > 0.99


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((1, 60, 64, 3), np.uint8), "not a positive multiple of the patch size 8"),
        (np.zeros((1, 64, 64, 3), np.float32), "uint8"),
        (np.zeros((1, 64, 64), np.uint8), r"\(B, S, S', 3\)"),
    ],
)
def test_input_validation(tiny: dict, array: np.ndarray, match: str) -> None:
    ext = load_feature_extractor(tiny["folder"])
    with pytest.raises(ValueError, match=match):
        ext(array)
    with pytest.raises(ValueError, match="share one size"):
        ext([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 72, 3), np.uint8)])


def test_wrapped_and_prefixed_checkpoints(tiny: dict, images: np.ndarray) -> None:
    official = tiny["official"]
    root: Path = tiny["root"]
    teacher = {"teacher": {f"backbone.{k}": v for k, v in official.items()}, "epoch": 100}
    teacher["teacher"]["head.mlp.0.weight"] = torch.zeros(
        4, HIDDEN
    )  # DINO projection head: ignored
    torch.save(teacher, root / "full_ckpt.pth")
    module = {"model": {f"module.{k}": v for k, v in official.items()}}
    torch.save(module, root / "ddp.pth")
    expected = load_feature_extractor(tiny["pth"], num_heads=HEADS)(images)
    for name in ("full_ckpt.pth", "ddp.pth"):
        got = load_feature_extractor(root / name, num_heads=HEADS)(images)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_strict_keys_are_named(tiny: dict) -> None:
    root: Path = tiny["root"]
    extra = dict(tiny["official"], **{"blocks.0.attn.rel_pos": torch.zeros(3)})
    torch.save(extra, root / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys.*blocks\.0\.attn\.rel_pos"):
        load_feature_extractor(root / "extra.pth", num_heads=HEADS)
    missing = {k: v for k, v in tiny["official"].items() if k != "blocks.1.mlp.fc2.weight"}
    torch.save(missing, root / "missing.pth")
    with pytest.raises(ValueError, match=r"missing \['blocks\.1\.mlp\.fc2\.weight'\]"):
        load_feature_extractor(root / "missing.pth", num_heads=HEADS)


def test_hub_id_not_cached_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as info:
        load_feature_extractor("facebook/dino-vitb8", cache_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and msg.endswith(".") and msg.count(". ") == 0  # one sentence
    assert "https://huggingface.co/facebook/dino-vitb8" in msg
    assert "dino_vitbase8_pretrain.pth" in msg
    assert "--features PATH" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no hub stack trace
    assert isinstance(info.value, FileNotFoundError)


def test_missing_official_file(tmp_path: Path) -> None:
    with pytest.raises(
        MissingWeightsError, match=r"dl\.fbaipublicfiles\.com/dino/dino_deitsmall8_pretrain"
    ):
        load_feature_extractor(tmp_path / "dino_deitsmall8_pretrain.pth")


def test_hub_config_eps_replaced_by_dino_eps(tmp_path: Path, images: np.ndarray) -> None:
    """Hub DINO configs say layer_norm_eps=1e-12 (HF default); DINO trained with 1e-6."""
    model = _tiny_vit(eps=1e-12)
    model.save_pretrained(tmp_path)
    ext = load_feature_extractor(tmp_path)
    assert isinstance(ext, DinoFeatureExtractor)
    eps = {m.eps for m in ext.model.modules() if isinstance(m, nn.LayerNorm)}
    assert eps == {1e-6}
    forced = load_feature_extractor(tmp_path, layer_norm_eps=1e-12)
    assert {m.eps for m in forced.model.modules() if isinstance(m, nn.LayerNorm)} == {1e-12}


def test_find_key_projection_covers_transformers_4_names() -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    class Old(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = ViTConfig(num_hidden_layers=2)
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList([nn.Module(), nn.Module()])
            for layer in self.encoder.layer:
                layer.attention = nn.Module()
                layer.attention.attention = Attn()

    name, _ = find_key_projection(Old())
    assert name == "encoder.layer.1.attention.attention.key"
    with pytest.raises(ValueError, match="no key projection"):
        find_key_projection(nn.Sequential(nn.Linear(2, 2)))


def test_is_a_feature_extractor(tiny: dict) -> None:
    ext = load_feature_extractor(tiny["folder"])
    assert isinstance(ext, FeatureExtractor)
    assert (ext.patch_size, ext.feature_dim) == (PATCH, HIDDEN)
