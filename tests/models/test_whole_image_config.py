"""Tests of unsam.models.whole_image.config: model sizes, FrozenBN, backbone loading,
preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.reference.resnet_keys import hf_backbone_name, torchvision_resnet_state_dict
from unsam.models.whole_image import (
    IMAGE_MEAN,
    IMAGE_STD,
    FrozenBatchNorm2d,
    build_model,
    freeze_batchnorm,
    load_backbone_checkpoint,
    model_config,
    preprocess,
    resized_hw,
)
from unsam.models.whole_image.config import backbone_module


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return build_model("tiny")


# --- model sizes --------------------------------------------------------------------------------


def test_r50_config_matches_spec() -> None:
    """Spec §6.1/§6.2/Appendix C: R50, 2000 queries, 1 class, 10 decoder / 6 encoder layers,
    losses."""
    cfg = model_config("r50")
    bb = cfg.backbone_config
    assert bb.model_type == "resnet"
    assert list(bb.depths) == [3, 4, 6, 3] and list(bb.hidden_sizes) == [256, 512, 1024, 2048]
    assert (
        bb.layer_type == "bottleneck"
        and not bb.downsample_in_bottleneck
        and not bb.downsample_in_first_stage
    )
    assert list(bb.out_features) == ["stage1", "stage2", "stage3", "stage4"]
    assert (cfg.num_labels, cfg.num_queries, cfg.decoder_layers, cfg.encoder_layers) == (
        1,
        2000,
        10,
        6,
    )
    assert (cfg.hidden_dim, cfg.mask_feature_size, cfg.feature_size, cfg.dim_feedforward) == (
        256,
        256,
        256,
        2048,
    )
    assert (
        cfg.encoder_feedforward_dim == 1024 and cfg.num_attention_heads == 8 and cfg.dropout == 0.0
    )
    assert (cfg.class_weight, cfg.mask_weight, cfg.dice_weight, cfg.no_object_weight) == (
        2.0,
        5.0,
        5.0,
        0.1,
    )
    assert (cfg.train_num_points, cfg.oversample_ratio, cfg.importance_sample_ratio) == (
        12544,
        3.0,
        0.75,
    )
    assert not cfg.pre_norm and cfg.use_auxiliary_loss


def test_r50_builds_with_the_official_tensor_count() -> None:
    """Appendix C: the transformers state dict has 647 keys; ~45 M parameters with 2000 queries."""
    model = build_model("r50")
    sd = model.state_dict()
    assert len(sd) == 647
    n_params = sum(p.numel() for p in model.parameters())
    assert 44.5e6 < n_params < 45.5e6
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 53


def test_num_queries_override_and_bad_name() -> None:
    assert model_config("tiny", num_queries=7).num_queries == 7
    with pytest.raises(ValueError, match="unknown whole-image model 'r101'"):
        model_config("r101")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_queries must be a positive integer"):
        model_config("tiny", num_queries=0)


def test_tiny_forward_shapes_and_loss(tiny: nn.Module) -> None:
    tiny.train()
    x = torch.randn(2, 3, 128, 160)
    masks = [(torch.rand(3, 128, 160) > 0.5).float(), (torch.rand(1, 128, 160) > 0.5).float()]
    labels = [torch.zeros(3, dtype=torch.long), torch.zeros(1, dtype=torch.long)]
    out = tiny(pixel_values=x, mask_labels=masks, class_labels=labels)
    q = tiny.config.num_queries
    assert out.class_queries_logits.shape == (2, q, 2)  # object + no-object
    assert out.masks_queries_logits.shape == (2, q, 32, 40)  # 1/4 resolution
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grad = tiny.class_predictor.weight.grad
    assert (
        grad.shape == tiny.class_predictor.weight.shape
        and grad.abs().sum() > 0
        and torch.isfinite(grad).all()
    )


# --- frozen BatchNorm ---------------------------------------------------------------------------


def test_freeze_batchnorm_stays_frozen_in_train_mode() -> None:
    torch.manual_seed(1)
    model = build_model("tiny")
    backbone = backbone_module(model)
    for m in backbone.modules():  # non-trivial statistics so that train/eval BN would differ
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    keys_before = list(model.state_dict())
    stats_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    n = freeze_batchnorm(model)
    assert n == 17  # stem + 4 blocks x 3 convs + 4 shortcuts (block 0 of every stage)
    assert freeze_batchnorm(model) == 0  # idempotent
    assert list(model.state_dict()) == keys_before  # same names: checkpoints stay compatible
    model.train()
    bns = [m for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(bns) == 17 and all(not m.training for m in bns)
    assert all(not m.weight.requires_grad and not m.bias.requires_grad for m in bns)
    assert all(p.requires_grad for n_, p in backbone.named_parameters() if "convolution" in n_)
    x = torch.randn(2, 3, 64, 64)
    y_train = backbone(x).feature_maps[-1]
    model.eval()
    y_eval = backbone(x).feature_maps[-1]
    torch.testing.assert_close(y_train, y_eval)  # train mode normalises with the stored statistics
    for k, v in stats_before.items():
        torch.testing.assert_close(model.state_dict()[k], v)  # statistics never updated


def test_frozen_batchnorm_equals_eval_batchnorm() -> None:
    bn = nn.BatchNorm2d(4)
    bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    bn.running_var.copy_(torch.tensor([1.5, 0.5, 2.0, 1.0]))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
    frozen = FrozenBatchNorm2d.from_batchnorm(bn).train()
    x = torch.randn(3, 4, 5, 5)
    expected = (x - bn.running_mean[:, None, None]) / torch.sqrt(
        bn.running_var[:, None, None] + bn.eps
    )
    expected = expected * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(frozen(x), expected.detach())


# --- backbone checkpoint ------------------------------------------------------------------------


def _torchvision_state_dict(
    depths: tuple[int, ...], hidden: tuple[int, ...], stem: int
) -> dict[str, torch.Tensor]:
    return torchvision_resnet_state_dict(depths, hidden, stem)


def _tiny_with_depths(depths: list[int]) -> nn.Module:
    """The tiny model with other ResNet stage depths (two blocks make BN swaps across blocks
    visible)."""
    from transformers import Mask2FormerForUniversalSegmentation

    cfg = model_config("tiny")
    cfg.backbone_config.depths = depths
    torch.manual_seed(0)
    return Mask2FormerForUniversalSegmentation(cfg)


@pytest.mark.parametrize("depths", [(1, 1, 1, 1), (2, 2, 1, 1)], ids=["tiny", "two-blocks"])
def test_load_backbone_checkpoint_maps_every_tensor(tmp_path, tiny: nn.Module, depths) -> None:
    """Every backbone tensor equals the checkpoint tensor the independent name rules
    (tests/reference/resnet_keys.py) send there; all source values are distinct."""
    model = tiny if depths == (1, 1, 1, 1) else _tiny_with_depths(list(depths))
    sd = _torchvision_state_dict(depths, (32, 64, 128, 256), 16)
    # no two source tensors are equal (values differ element-wise), so a misplaced one cannot look
    # right
    values = list(sd.values())
    for i, a in enumerate(values):
        assert not any(a.shape == b.shape and (a == b).any() for b in values[i + 1 :])
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    load_backbone_checkpoint(model, path)
    hb = backbone_module(model).state_dict()
    expected = {hf_backbone_name(k): k for k in sd if not k.startswith("fc.")}
    assert len(expected) == len(sd) - 2  # the rules are one-to-one
    assert set(hb) == set(
        expected
    )  # every backbone tensor has a source, num_batches_tracked included
    for dst, src in expected.items():
        assert hb[dst].shape == sd[src].shape and torch.equal(hb[dst], sd[src].to(hb[dst].dtype)), (
            dst,
            src,
        )
    # spot checks of the rules themselves, written out
    assert (
        expected["encoder.stages.0.layers.0.shortcut.normalization.running_mean"]
        == "layer1.0.downsample.1.running_mean"
    )
    assert expected["encoder.stages.3.layers.0.layer.2.normalization.bias"] == "layer4.0.bn3.bias"
    assert expected["embedder.embedder.normalization.running_var"] == "bn1.running_var"


def test_load_backbone_checkpoint_errors(tmp_path, tiny: nn.Module) -> None:
    sd = _torchvision_state_dict((1, 1, 1, 1), (32, 64, 128, 256), 16)
    missing = dict(sd)
    del missing["layer2.0.conv3.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(
        ValueError, match="missing.*encoder.stages.1.layers.0.layer.2.convolution.weight"
    ):
        load_backbone_checkpoint(tiny, tmp_path / "missing.pth")
    extra = dict(sd, **{"layer5.0.conv1.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected.*layer5.0.conv1.weight"):
        load_backbone_checkpoint(tiny, tmp_path / "extra.pth")
    r50_like = _torchvision_state_dict((1, 1, 1, 1), (256, 512, 1024, 2048), 64)
    torch.save(r50_like, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="conv1.weight has shape"):
        load_backbone_checkpoint(tiny, tmp_path / "wide.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone_checkpoint(tiny, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        load_backbone_checkpoint(tiny, tmp_path / "junk.pth")


def test_build_model_with_backbone_checkpoint(tmp_path) -> None:
    sd = _torchvision_state_dict((1, 1, 1, 1), (32, 64, 128, 256), 16)
    torch.save(sd, tmp_path / "bb.pth")
    model = build_model("tiny", backbone_checkpoint=tmp_path / "bb.pth")
    torch.testing.assert_close(
        backbone_module(model).state_dict()["embedder.embedder.convolution.weight"],
        sd["conv1.weight"],
    )


# --- preprocessing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (1024, 1365)),  # 640 * 1024 / 480 = 1365.33
        ((1024, 768), (1365, 1024)),
        ((100, 1000), (205, 2048)),  # longer side capped: 1024 / 100 * 1000 > 2048
        ((1024, 1024), (1024, 1024)),
        ((1500, 2250), (1024, 1536)),
    ],
)
def test_resized_hw_matches_detectron2_resize_shortest_edge(hw, expected) -> None:
    assert resized_hw(hw[0], hw[1], 1024, 2048) == expected


def test_preprocess_normalises_pads_and_resizes() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    x = preprocess(image, size_divisibility=32)
    assert x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    expected = (image[7, 9].astype(np.float64) - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
    np.testing.assert_allclose(x[0, :, 7, 9].numpy(), expected, rtol=1e-5)
    assert torch.count_nonzero(x[0, :, 50:, :]) == 0 and torch.count_nonzero(x[0, :, :, 70:]) == 0
    y = preprocess(image, min_size=100, max_size=1000, size_divisibility=0)
    assert y.shape == (1, 3, 100, 140)
    z = preprocess(
        image[::-1].copy(), min_size=100, max_size=1000
    )  # non-contiguous / read-only inputs are fine
    assert z.shape == (1, 3, 128, 160)


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB array, got shape \(4, 4\)"):
        preprocess(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB .*float32"):
        preprocess(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="min_size needs max_size"):
        preprocess(np.zeros((4, 4, 3), dtype=np.uint8), min_size=8)
