"""Promptable model modules against the naive reference (tests/reference/promptable_ref.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.reference import promptable_ref as ref
from unsam.models.promptable import PromptableConfig, build_model
from unsam.models.promptable.decoder import DecoderLayer, mask_product
from unsam.models.promptable.layers import click_boxes, jitter_click_boxes, sine_position_encoding
from unsam.models.promptable.msda import MSDeformAttn

TINY = PromptableConfig.tiny()


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _params(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        k[len(prefix) :]: v.detach().clone()
        for k, v in module.state_dict().items()
        if k.startswith(prefix)
    }


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    _randomize(model, 1, 0.3)
    return model


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_msda_matches_naive_loop(ref_dim: int) -> None:
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=2, n_points=2)
    _randomize(attn, 0, 1.0)  # large offsets: some samples fall outside the maps (zero padding)
    g = torch.Generator().manual_seed(1)
    shapes = [(5, 7), (3, 4), (2, 2)]
    levels = [torch.randn(16, h, w, generator=g) for h, w in shapes]
    memory = torch.cat([lv.flatten(1).T for lv in levels], 0)[None]
    query = torch.randn(1, 4, 16, generator=g)
    reference = torch.rand(1, 4, ref_dim, generator=g) * 0.6 + 0.2
    out = attn(query, reference, attn.project_value(memory, shapes))[0]
    expected = ref.msda_naive(query[0], reference[0], levels, _params(attn), "", 2, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("independent", [True, False])
def test_decoder_layer_matches_naive(independent: bool) -> None:
    c, heads, points = 32, 4, 2
    layer = DecoderLayer(c, 64, 4, heads, points).eval()
    _randomize(layer, 2, 0.3)
    g = torch.Generator().manual_seed(3)
    n, t = 2, 6
    x = torch.randn(n, t, c, generator=g)
    pos = torch.randn(n, t, c, generator=g)
    boxes = torch.rand(n, t, 4, generator=g) * 0.5 + 0.2
    shapes = [(2, 3), (3, 5), (6, 9), (12, 18)]
    levels = [torch.randn(c, h, w, generator=g) for h, w in shapes]
    memory = torch.cat([lv.flatten(1).T for lv in levels], 0)[None]
    values = layer.cross_attn.project_value(memory, shapes)
    with torch.no_grad():
        out = layer(x, pos, boxes, values, independent).reshape(n * t, c)
    blocked = ref.block_diagonal_blocked(n, t) if independent else None
    expected = ref.decoder_layer_naive(
        x.reshape(-1, c),
        pos.reshape(-1, c),
        boxes.reshape(-1, 4),
        levels,
        _params(layer),
        "",
        heads,
        points,
        blocked,
    )
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_click_to_six_queries_matches_naive(tiny) -> None:
    pred = tiny.sem_seg_head.predictor
    points = [(10.0, 20.0), (0.0, 0.0), (95.0, 63.0)]
    padded, box_wh = (64, 96), (6.0, 6.0)
    boxes = click_boxes(torch.tensor(points), padded, box_wh)
    for pb in (0, 1):
        content, refs = pred.initial_queries(boxes, torch.full((3,), pb))
        exp_content, exp_ref = ref.click_queries_naive(
            points,
            padded,
            box_wh,
            pred.label_enc.weight.detach(),
            pred.pb_embedding.weight.detach(),
            pred.mask_tokens.weight.detach(),
            pb,
        )
        torch.testing.assert_close(content.reshape(-1, TINY.hidden_dim).detach(), exp_content)
        torch.testing.assert_close(refs.reshape(-1, 4), exp_ref)


@pytest.mark.parametrize("independent", [True, False])
def test_decode_matches_naive_decoder_loop(tiny, independent: bool) -> None:
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        state = tiny.encode_image(pixels, image_hw=(60, 90))
        feats = tiny.backbone(pixels).feature_maps
        mask_features, outs = tiny.sem_seg_head.pixel_decoder(feats)
        points = torch.tensor([[12.0, 30.0], [70.0, 8.0]])
        out = tiny.decode_boxes(
            state, click_boxes(points, state.padded_hw, (6.0, 6.0)), independent=independent
        )
    pred = tiny.sem_seg_head.predictor
    content, refs = ref.click_queries_naive(
        [tuple(p) for p in points.tolist()],
        state.padded_hw,
        (6.0, 6.0),
        pred.label_enc.weight.detach(),
        pred.pb_embedding.weight.detach(),
        pred.mask_tokens.weight.detach(),
        0,
    )
    blocked = ref.block_diagonal_blocked(2, 6) if independent else None
    masks, iou, boxes = ref.decode_naive(
        content,
        refs,
        [o[0] for o in outs[::-1]],
        mask_features[0],
        _params(pred),
        TINY.decoder_layers,
        TINY.decoder_heads,
        TINY.decoder_points,
        blocked,
    )
    torch.testing.assert_close(
        out.mask_logits.reshape(12, *masks.shape[1:]), masks, atol=2e-4, rtol=1e-4
    )
    torch.testing.assert_close(out.iou.reshape(-1), iou, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.boxes.reshape(-1, 4), boxes, atol=1e-5, rtol=1e-4)


def test_shapes_independence_and_gradients(tiny) -> None:
    g = torch.Generator().manual_seed(5)
    pixels = torch.randn(1, 3, 64, 64, generator=g)
    state = tiny.encode_image(pixels)
    pts = torch.tensor([[10.0, 10.0], [40.0, 50.0], [60.0, 5.0]])
    masks, iou = tiny.decode_clicks(state, pts)
    assert masks.shape == (3, 6, 16, 16) and iou.shape == (3, 6)
    one_masks, one_iou = tiny.decode_clicks(state, pts[:1])
    torch.testing.assert_close(one_masks[0], masks[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_iou[0], iou[0], atol=1e-5, rtol=1e-5)
    joint, _ = tiny.decode_clicks(state, pts, independent=False)
    assert (joint[0] - one_masks[0]).abs().max() > 1e-3  # the demo mode lets clicks interact
    loss = masks.sigmoid().mean() + iou.square().mean()
    loss.backward()
    stem = tiny.backbone.swin.embeddings.patch_embeddings.projection.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    assert tiny.sem_seg_head.predictor.mask_tokens.weight.grad.abs().sum() > 0
    assert tiny.sem_seg_head.predictor.pb_embedding.weight.grad[1].abs().sum() == 0  # pb=0 only
    tiny.zero_grad(set_to_none=True)
    up = tiny.upsample_masks(masks.detach(), state)
    assert up.shape == (3, 6, 64, 64)


def test_aux_outputs_and_batch_select(tiny) -> None:
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        state = tiny.encode_image(pixels)
        single = tiny.encode_image(pixels[1:])
        boxes = click_boxes(torch.tensor([[20.0, 30.0]]), (64, 64), (6.0, 6.0))
        out = tiny.decode_boxes(state.select(1), boxes, pb=1, return_aux=True)
        ref_out = tiny.decode_boxes(single, boxes, pb=1)
    assert len(out.aux) == TINY.decoder_layers - 1
    assert out.aux[0][0].shape == (1, 6, 16, 16) and out.aux[0][2].shape == (1, 6, 4)
    torch.testing.assert_close(out.mask_logits, ref_out.mask_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one image"):
        tiny.decode_boxes(state, boxes)


def test_input_checks(tiny) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny.encode_image(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        click_boxes(torch.zeros(3), (64, 64), (6.0, 6.0))
    padded = tiny.normalize_and_pad(torch.full((1, 3, 50, 70), 255.0))
    assert padded.shape == (1, 3, 64, 96)
    assert padded[0, 0, 0, 0].item() == pytest.approx((255 - 123.675) / 58.395)
    assert padded[0, :, 50:, :].abs().sum() == 0 and padded[0, :, :, 70:].abs().sum() == 0


def test_sine_position_encoding_hand_values() -> None:
    pe = sine_position_encoding((2, 3), 4)
    assert pe.shape == (1, 8, 2, 3)
    y = 2 / (2 + 1e-6) * 2 * math.pi  # row 1
    x = 1 / (3 + 1e-6) * 2 * math.pi  # column 0
    assert pe[0, 0, 1, 0].item() == pytest.approx(math.sin(y), abs=1e-6)
    assert pe[0, 1, 1, 0].item() == pytest.approx(math.cos(y), abs=1e-6)
    assert pe[0, 2, 1, 0].item() == pytest.approx(math.sin(y / 100.0), abs=1e-6)
    assert pe[0, 4, 1, 0].item() == pytest.approx(math.sin(x), abs=1e-6)
    assert pe[0, 7, 1, 0].item() == pytest.approx(math.cos(x / 100.0), abs=1e-6)


def test_jitter_click_boxes_bounds() -> None:
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.2], [0.0, 1.0, 0.02, 0.02]])
    out = jitter_click_boxes(boxes, torch.Generator().manual_seed(0), scale=0.5)
    d = torch.tensor([[0.05, 0.1, 0.1, 0.2], [0.01, 0.01, 0.02, 0.02]]) * 0.5
    assert ((out - boxes).abs() <= d + 1e-7).all() and (out != boxes).any()
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(
        jitter_click_boxes(boxes, torch.Generator().manual_seed(0), scale=0.0), boxes
    )


@pytest.mark.parametrize("lead", [(6,), (2, 6), (1,)])
def test_mask_product_on_channels_last_features_equals_the_einsum(lead: tuple[int, ...]) -> None:
    """The per-click mask product reads channels_last features as an (H*W, C) view: the same
    logits as the original's einsum (float summation order aside), and the einsum path for
    ordinary (channels-first) features is the einsum itself."""
    g = torch.Generator().manual_seed(len(lead))
    features = torch.randn(1, 32, 12, 20, generator=g)
    embed = torch.randn(*lead, 32, generator=g)
    expected = torch.einsum("...c,chw->...hw", embed, features[0])
    channels_last = features.contiguous(memory_format=torch.channels_last)
    assert channels_last.stride(1) == 1
    out = mask_product(embed, channels_last)
    assert out.shape == (*lead, 12, 20)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mask_product(embed, features), expected, rtol=0, atol=0)


def test_encoded_image_features_are_channels_last_outside_autograd() -> None:
    """encode_image stores mask_features channels_last for clicks, not when training."""
    torch.manual_seed(0)
    model = build_model(PromptableConfig.tiny()).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        state = model.encode_image(pixels)
    assert state.mask_features.stride(1) == 1
    state = model.encode_image(pixels)
    assert state.mask_features.is_contiguous()
