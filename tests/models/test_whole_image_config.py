"""Tests of unsam.models.whole_image.config: model sizes, FrozenBN, backbone loading, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

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
    """Spec §6.1/§6.2/Appendix C: R50, 2000 queries, 1 class, 10 decoder / 6 encoder layers, losses."""
    cfg = model_config("r50")
    bb = cfg.backbone_config
    assert bb.model_type == "resnet"
    assert list(bb.depths) == [3, 4, 6, 3] and list(bb.hidden_sizes) == [256, 512, 1024, 2048]
    assert bb.layer_type == "bottleneck" and not bb.downsample_in_bottleneck and not bb.downsample_in_first_stage
    assert list(bb.out_features) == ["stage1", "stage2", "stage3", "stage4"]
    assert (cfg.num_labels, cfg.num_queries, cfg.decoder_layers, cfg.encoder_layers) == (1, 2000, 10, 6)
    assert (cfg.hidden_dim, cfg.mask_feature_size, cfg.feature_size, cfg.dim_feedforward) == (256, 256, 256, 2048)
    assert cfg.encoder_feedforward_dim == 1024 and cfg.num_attention_heads == 8 and cfg.dropout == 0.0
    assert (cfg.class_weight, cfg.mask_weight, cfg.dice_weight, cfg.no_object_weight) == (2.0, 5.0, 5.0, 0.1)
    assert (cfg.train_num_points, cfg.oversample_ratio, cfg.importance_sample_ratio) == (12544, 3.0, 0.75)
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
    assert tiny.class_predictor.weight.grad is not None


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
    expected = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    expected = expected * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(frozen(x), expected.detach())


# --- backbone checkpoint ------------------------------------------------------------------------


def _torchvision_state_dict(depths: tuple[int, ...], hidden: tuple[int, ...], stem: int) -> dict[str, torch.Tensor]:
    """A torchvision-style ResNet (bottleneck) state dict, written out naively, with distinct values."""
    g = torch.Generator().manual_seed(3)
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        sd[prefix + ".weight"] = torch.rand(c, generator=g) + 0.5
        sd[prefix + ".bias"] = torch.randn(c, generator=g)
        sd[prefix + ".running_mean"] = torch.randn(c, generator=g)
        sd[prefix + ".running_var"] = torch.rand(c, generator=g) + 0.5
        sd[prefix + ".num_batches_tracked"] = torch.tensor(7)

    sd["conv1.weight"] = torch.randn(stem, 3, 7, 7, generator=g)
    bn("bn1", stem)
    cin = stem
    for s, (depth, c) in enumerate(zip(depths, hidden), start=1):
        w = c // 4
        for j in range(depth):
            src_c = cin if j == 0 else c
            sd[f"layer{s}.{j}.conv1.weight"] = torch.randn(w, src_c, 1, 1, generator=g)
            sd[f"layer{s}.{j}.conv2.weight"] = torch.randn(w, w, 3, 3, generator=g)
            sd[f"layer{s}.{j}.conv3.weight"] = torch.randn(c, w, 1, 1, generator=g)
            bn(f"layer{s}.{j}.bn1", w)
            bn(f"layer{s}.{j}.bn2", w)
            bn(f"layer{s}.{j}.bn3", c)
            if j == 0:
                sd[f"layer{s}.0.downsample.0.weight"] = torch.randn(c, src_c, 1, 1, generator=g)
                bn(f"layer{s}.0.downsample.1", c)
        cin = c
    sd["fc.weight"] = torch.randn(10, cin, generator=g)
    sd["fc.bias"] = torch.randn(10, generator=g)
    return sd


def test_load_backbone_checkpoint_maps_every_tensor(tmp_path, tiny: nn.Module) -> None:
    sd = _torchvision_state_dict((1, 1, 1, 1), (32, 64, 128, 256), 16)
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    load_backbone_checkpoint(tiny, path)
    hb = backbone_module(tiny).state_dict()
    torch.testing.assert_close(hb["embedder.embedder.convolution.weight"], sd["conv1.weight"])
    torch.testing.assert_close(hb["embedder.embedder.normalization.running_var"], sd["bn1.running_var"])
    torch.testing.assert_close(hb["encoder.stages.2.layers.0.layer.1.convolution.weight"], sd["layer3.0.conv2.weight"])
    torch.testing.assert_close(hb["encoder.stages.3.layers.0.layer.2.normalization.bias"], sd["layer4.0.bn3.bias"])
    torch.testing.assert_close(hb["encoder.stages.1.layers.0.shortcut.convolution.weight"], sd["layer2.0.downsample.0.weight"])
    torch.testing.assert_close(hb["encoder.stages.0.layers.0.shortcut.normalization.running_mean"],
                               sd["layer1.0.downsample.1.running_mean"])
    # every backbone tensor came from the file: the multiset of values matches
    src_total = sum(float(v.double().sum()) for k, v in sd.items() if not k.startswith("fc."))
    dst_total = sum(float(v.double().sum()) for v in hb.values())
    assert abs(src_total - dst_total) < 1e-6 * max(1.0, abs(src_total))


def test_load_backbone_checkpoint_errors(tmp_path, tiny: nn.Module) -> None:
    sd = _torchvision_state_dict((1, 1, 1, 1), (32, 64, 128, 256), 16)
    missing = dict(sd)
    del missing["layer2.0.conv3.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing.*encoder.stages.1.layers.0.layer.2.convolution.weight"):
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
    torch.testing.assert_close(backbone_module(model).state_dict()["embedder.embedder.convolution.weight"],
                               sd["conv1.weight"])


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
    z = preprocess(image[::-1].copy(), min_size=100, max_size=1000)  # non-contiguous / read-only inputs are fine
    assert z.shape == (1, 3, 128, 160)


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB array, got shape \(4, 4\)"):
        preprocess(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB .*float32"):
        preprocess(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="min_size needs max_size"):
        preprocess(np.zeros((4, 4, 3), dtype=np.uint8), min_size=8)
