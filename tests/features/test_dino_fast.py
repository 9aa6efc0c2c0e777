"""DINO keys through the fused key encoder, in bfloat16, batched: agreement with the transformers
forward and with float32, the float32 hand-out, and the batch-size formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTModel

from tests.features.test_dino import _tiny_vit
from unsam.features.convert import dino_vit_config
from unsam.features.dino import DinoFeatureExtractor, _KeyEncoder, load_feature_extractor
from unsam.masks import resize_image

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"


def _vit_b8(seed: int = 0) -> ViTModel:
    """The released architecture (DINO ViT-B/8) with transformers' random init."""
    torch.manual_seed(seed)
    config = dino_vit_config("vitb8")
    return ViTModel(config, add_pooling_layer=False).eval()


def _copy(model: ViTModel) -> ViTModel:
    other = ViTModel(model.config, add_pooling_layer=False).eval()
    other.load_state_dict(model.state_dict())
    return other


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Two 256² conquer-style crops of a real photo (whole image, and a region of it)."""
    img = np.asarray(Image.open(IMAGES / "coffee.jpg").convert("RGB"))
    return np.stack([resize_image(img, (256, 256)), resize_image(img[50:300, 100:400], (256, 256))])


@pytest.fixture(scope="module")
def b8_keys(crops: np.ndarray) -> dict[str, torch.Tensor]:
    model = _vit_b8()
    return {
        "hook": DinoFeatureExtractor(_copy(model), fast=False)(crops),
        "fast": DinoFeatureExtractor(_copy(model))(crops),
        "bf16": DinoFeatureExtractor(_copy(model), dtype="bfloat16")(crops),
    }


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_fast_encoder_equals_transformers_forward(b8_keys: dict[str, torch.Tensor]) -> None:
    """float32: the fused encoder computes the hook path's keys (ViT-B/8, real photo crops)."""
    hook, fast = b8_keys["hook"], b8_keys["fast"]
    assert fast.shape == hook.shape == (2, 32, 32, 768)
    torch.testing.assert_close(fast, hook, atol=5e-5, rtol=1e-4)


def test_fast_encoder_tiny_vit_all_dtypes() -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(3, 48, 64, 3), dtype=np.uint8)
    vit = _tiny_vit()
    for dtype, atol in (("float32", 1e-5), ("bfloat16", 0.1)):
        hook = DinoFeatureExtractor(_copy(vit), dtype=dtype, fast=False)(images)
        fast = DinoFeatureExtractor(_copy(vit), dtype=dtype)(images)
        torch.testing.assert_close(fast, hook, atol=atol, rtol=0.02)


def test_bf16_keys_agree_with_float32(b8_keys: dict[str, torch.Tensor]) -> None:
    """Measured on these crops (random ViT-B/8): per-patch cosine >= 0.99994, adjacent-patch
    similarities within 0.0015 of float32. Thresholds: 10x margins (0.999, 0.9999 mean, 0.015)
    so other weights and photos pass; a lost float32 cast or an autocast-only model would show
    here as a dtype error, not as a small shift."""
    f32, bf16 = b8_keys["fast"], b8_keys["bf16"]
    assert bf16.dtype == torch.float32  # keys leave the network in float32
    cos = _cos(f32, bf16)
    assert float(cos.min()) >= 0.999 and float(cos.mean()) >= 0.9999
    assert not torch.equal(f32, bf16)  # it really ran in bf16

    def adjacent(f: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.normalize(f, dim=-1)
        return torch.cat(
            [
                (f[:, :, :-1] * f[:, :, 1:]).sum(-1).flatten(),
                (f[:, :-1] * f[:, 1:]).sum(-1).flatten(),
            ]
        )

    assert float((adjacent(f32) - adjacent(bf16)).abs().max()) <= 0.015


def test_bf16_is_weights_and_activations_not_autocast() -> None:
    ext = DinoFeatureExtractor(_tiny_vit(), dtype="bfloat16")
    assert {p.dtype for p in ext.model.parameters()} == {torch.bfloat16}
    seen: list[torch.dtype] = []
    hook = ext.model.layers[0].layernorm_before.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype)
    )
    images = np.zeros((1, 32, 32, 3), np.uint8)
    assert not torch.is_autocast_enabled("cpu")
    ext(images)
    hook.remove()
    assert seen == [torch.bfloat16]  # activations inside the network are bf16
    assert ext._encoder is not None
    assert all(b["qkv"].bias.dtype == torch.bfloat16 for b in ext._encoder.blocks)


def test_cpu_fast_path_uses_packed_onednn_linears() -> None:
    ext = DinoFeatureExtractor(_tiny_vit(), dtype="bfloat16")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    assert ext.kernel == "onednn-packed"
    assert DinoFeatureExtractor(_tiny_vit(), fast=False).kernel == "transformers"


def test_other_layout_falls_back_to_the_hook() -> None:
    class Odd(torch.nn.Module):
        pass

    assert _KeyEncoder.build(Odd(), torch.device("cpu"), torch.float32) is None


def test_batched_equals_unbatched_features() -> None:
    """Crops through one forward pass or one at a time: same keys (float32 rounding only)."""
    images = np.random.default_rng(2).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    vit = _tiny_vit()
    one = DinoFeatureExtractor(_copy(vit), batch_size=1)(images)
    auto = DinoFeatureExtractor(_copy(vit), batch_size=None)
    assert auto.batch_for((64, 64)) >= 5
    torch.testing.assert_close(auto(images), one, atol=1e-5, rtol=0)


def test_memory_budget_formula() -> None:
    """bytes_per_image = (12 * T * C) * itemsize + 16 * S * S' (T = tokens incl. CLS); ViT-B/8 on
    256² crops: 19.0 MiB in bf16, 37.0 MiB in float32; batch = floor(budget / that)."""
    vit = _vit_b8()
    bf16 = DinoFeatureExtractor(vit, dtype="bfloat16", batch_size=None, memory_budget_mib=256)
    tokens = 32 * 32 + 1
    assert bf16.bytes_per_image((256, 256)) == 12 * tokens * 768 * 2 + 16 * 256 * 256
    assert bf16.bytes_per_image((256, 256)) / 2**20 == pytest.approx(19.0, abs=0.1)
    assert bf16.batch_for((256, 256)) == 256 * 2**20 // bf16.bytes_per_image((256, 256)) == 13
    f32 = DinoFeatureExtractor(_vit_b8(), batch_size=None, memory_budget_mib=256)
    assert f32.batch_for((256, 256)) == 6
    assert DinoFeatureExtractor(_vit_b8(), batch_size=3).batch_for((256, 256)) == 3
    assert (
        DinoFeatureExtractor(_vit_b8(), batch_size=None, memory_budget_mib=1).batch_for((256, 256))
        == 1
    )  # never 0


def test_device_and_dtype_rules() -> None:
    ext = load_feature_extractor(_save_tiny(), device="auto", dtype=torch.bfloat16)
    assert (
        ext.device == torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    )
    with pytest.raises(ValueError, match="float32, bfloat16"):
        DinoFeatureExtractor(_tiny_vit(), dtype="float64")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            DinoFeatureExtractor(_tiny_vit(), device="cuda")


def _save_tiny() -> str:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="tiny_vit_")) / "hf"
    _tiny_vit().save_pretrained(folder)
    return str(folder)


def test_dino_vit_config_is_what_an_official_checkpoint_gives() -> None:
    """dino_vit_config (the random stand-ins' shapes) equals what dino_config_from_state_dict
    infers from an official DINO state dict of that architecture (shapes written out here)."""
    from unsam.features.convert import dino_config_from_state_dict

    for arch, (hidden, patch) in {"vits8": (384, 8), "vitb16": (768, 16)}.items():
        state = {
            "cls_token": torch.zeros(1, 1, hidden),
            "pos_embed": torch.zeros(1, (224 // patch) ** 2 + 1, hidden),
            "patch_embed.proj.weight": torch.zeros(hidden, 3, patch, patch),
            "blocks.0.attn.qkv.bias": torch.zeros(3 * hidden),
            "blocks.0.mlp.fc1.weight": torch.zeros(4 * hidden, hidden),
            **{f"blocks.{i}.norm1.weight": torch.zeros(hidden) for i in range(12)},
        }
        inferred = dino_config_from_state_dict(state).to_dict()
        made = dino_vit_config(arch).to_dict()
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "patch_size", "image_size", "qkv_bias", "layer_norm_eps", "hidden_act")  # fmt: skip
        assert {k: made[k] for k in keys} == {k: inferred[k] for k in keys}
    with pytest.raises(ValueError, match="unknown DINO architecture 'vitl8'"):
        dino_vit_config("vitl8")
