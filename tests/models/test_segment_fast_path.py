"""The fast whole-image path (decoder._fast_decoder + top-k masks) against the reference path.

The reference path is transformers' own decoder forward with the bounded-memory mask predictor
(``WholeImageSegmenter(..., reference=True)``), which tests/models/test_whole_image_segmenter.py
checks against stock transformers exactly. The fast path computes attention masks from pixel
embeddings resized to the attention resolution (bilinear resizing is linear, so only rounding
differs), shares one additive mask over the heads, uses fused attention and projects only the
top-k queries' final masks. Attention-mask entries may flip where a logit sits within rounding of
0; the tests count them and bound the effect on the kept masks and scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unsam.models.whole_image import build_model, decoder, model_config
from unsam.models.whole_image.postprocessing import postprocess_masks, postprocess_top_masks
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import WholeImageSegmenter
from unsam.records import rle_iou_matrix

CFG = SegmentConfig(min_size=128, max_size=256, max_masks=40, chunk_size=7)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("tiny", num_queries=60).eval()


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, : w // 2] = (200, 40, 40)
    img[h // 3 :, 2 * w // 3 :] = (20, 180, 60)
    return np.clip(img + rng.integers(0, 40, size=img.shape), 0, 255).astype(np.uint8)


def _assert_same_records(fast, ref) -> None:
    assert len(fast) == len(ref) > 0
    iou = rle_iou_matrix([r.rle for r in fast], [r.rle for r in ref])
    assert np.diag(iou).min() >= 0.99
    np.testing.assert_allclose([r.score for r in fast], [r.score for r in ref], rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        [r.stability_score for r in fast], [r.stability_score for r in ref], rtol=0, atol=1e-3
    )


@pytest.mark.parametrize(("hw", "seed"), [((150, 210), 0), ((210, 150), 1), ((97, 301), 2)])
def test_fast_path_keeps_the_masks_and_scores(tiny_model, hw, seed) -> None:
    seg = WholeImageSegmenter(tiny_model, CFG)
    image = _image(*hw, seed)
    _assert_same_records(seg(image, image_id=3), seg(image, image_id=3, reference=True))


def test_fast_path_with_thresholds_and_nms(tiny_model) -> None:
    image = _image(150, 210, 4)
    probe = WholeImageSegmenter(tiny_model, CFG)(image, reference=True)
    cut = float(np.median([r.score for r in probe]))
    cfg = SegmentConfig(
        **{**CFG.__dict__, "score_thresh": cut, "nms_iou_thresh": 0.5, "max_masks": 60}
    )
    seg = WholeImageSegmenter(tiny_model, cfg)
    fast, ref = seg(image), seg(image, reference=True)
    assert len(ref) < len(probe)
    _assert_same_records(fast, ref)


def test_top_masks_are_the_top_rows_of_the_full_logits(tiny_model) -> None:
    """predict_top_masks == top-k of predict_logits (both fast), and close to the reference."""
    seg = WholeImageSegmenter(tiny_model, CFG)
    image = _image(150, 210, 5)
    top = seg.predict_top_masks(image, max_masks=25)
    cls, masks, padded, valid = seg.predict_logits(image)
    ref_cls, ref_masks, ref_padded, ref_valid = seg.predict_logits(image, reference=True)
    assert (top.padded_hw, top.valid_hw) == (padded, valid) == (ref_padded, ref_valid)
    fg = cls.softmax(-1)[:, 0]
    expected_prob, expected_idx = fg.topk(25)
    assert torch.equal(top.query_indices, expected_idx)
    torch.testing.assert_close(top.class_probs, expected_prob, rtol=0, atol=1e-6)
    torch.testing.assert_close(top.mask_logits, masks[expected_idx], rtol=0, atol=1e-5)
    torch.testing.assert_close(cls, ref_cls, rtol=0, atol=1e-4)
    torch.testing.assert_close(masks, ref_masks, rtol=0, atol=1e-3)
    a = postprocess_top_masks(top, image_hw=image.shape[:2], chunk_size=4)
    b = postprocess_masks(
        ref_cls,
        ref_masks,
        padded_hw=padded,
        valid_hw=valid,
        image_hw=image.shape[:2],
        max_masks=25,
        chunk_size=9,
    )
    np.testing.assert_array_equal(a.query_indices, b.query_indices)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-4)
    iou = np.diag(rle_iou_matrix(a.rles, b.rles))
    assert np.all((iou >= 0.99) | ((a.areas == 0) & (b.areas == 0)))


def _attention_masks(model, run) -> list[torch.Tensor]:
    """The (Q, hw) bool 'blocked' mask each cross-attention layer received during ``run()``:
    transformers' MultiheadAttention layers (reference path) or the fast path's
    ``decoder._cross_attention``."""
    seen: list[torch.Tensor] = []
    heads = model.config.num_attention_heads

    def hook(module, args, kwargs):
        mask = kwargs["attn_mask"]
        assert mask.dtype == torch.bool  # reference: (B * heads, Q, hw), the same for every head
        assert all(torch.equal(mask[0], mask[h]) for h in range(heads))
        seen.append(mask[0].clone())

    fast_attention = decoder._cross_attention

    def recording(attn, query, key, value, mask):
        assert mask.dtype != torch.bool and mask.shape[:2] == (1, 1)  # additive (1, 1, Q, hw)
        seen.append(torch.isinf(mask[0, 0]).clone())
        return fast_attention(attn, query, key, value, mask)

    handles = [
        layer.cross_attn.register_forward_pre_hook(hook, with_kwargs=True)
        for layer in model.model.transformer_module.decoder.layers
    ]
    decoder._cross_attention = recording
    try:
        run()
    finally:
        decoder._cross_attention = fast_attention
        for h in handles:
            h.remove()
    return seen


def test_attention_masks_agree_up_to_rounding(tiny_model) -> None:
    seg = WholeImageSegmenter(tiny_model, CFG)
    total = flipped = 0
    for seed in range(3):
        image = _image(150 + 20 * seed, 210, 10 + seed)
        ref = _attention_masks(tiny_model, lambda im=image: seg.predict_logits(im, reference=True))
        fast = _attention_masks(tiny_model, lambda im=image: seg.predict_top_masks(im))
        assert len(ref) == len(fast) == len(tiny_model.model.transformer_module.decoder.layers)
        for r, f in zip(ref, fast):
            assert r.shape == f.shape
            assert 0 < int(r.sum()) < r.numel()  # masks that actually block something
            total += r.numel()
            flipped += int((r != f).sum())
    assert flipped <= max(2, total // 10_000), f"{flipped} of {total} attention-mask entries differ"


def test_resize_then_project_equals_project_then_resize() -> None:
    """The identity the fast attention masks rest on (bilinear resizing is linear)."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 50, 16, generator=g)
    pix = torch.randn(1, 16, 40, 56, generator=g)
    for size in ((5, 7), (10, 14), (20, 28)):
        slow = F.interpolate(
            torch.einsum("bqc, bchw -> bqhw", emb, pix),
            size=size,
            mode="bilinear",
            align_corners=False,
        )
        fast = torch.bmm(
            emb, F.interpolate(pix, size=size, mode="bilinear", align_corners=False).flatten(2)
        )
        torch.testing.assert_close(fast, slow.flatten(2), rtol=0, atol=1e-4)


def test_fully_blocked_queries_attend_everywhere(tiny_model) -> None:
    """A query whose mask is empty attends to every position, as in transformers (no NaN)."""
    last = tiny_model.model.transformer_module.decoder.mask_predictor.mask_embedder.layers[
        -1
    ].layers[0]
    seg = WholeImageSegmenter(tiny_model, CFG)
    image = _image(150, 210, 7)

    def constant_pixels(
        module, args, out
    ):  # pixel embeddings all 1 -> mask logits = sum(embedding)
        out.decoder_last_hidden_state = torch.ones_like(out.decoder_last_hidden_state)
        return out

    saved = last.weight.detach().clone(), last.bias.detach().clone()
    handle = tiny_model.model.pixel_level_module.register_forward_hook(constant_pixels)
    try:
        with torch.no_grad():
            last.weight.zero_()  # mask embedding = bias = -1: every logit < 0, all blocked
            last.bias.fill_(-1.0)
        fast = _attention_masks(tiny_model, lambda im=image: seg.predict_top_masks(im))
        ref = _attention_masks(tiny_model, lambda im=image: seg.predict_logits(im, reference=True))
        top = seg.predict_top_masks(image)
        cls = seg.predict_logits(image)[0]
    finally:
        handle.remove()
        with torch.no_grad():
            last.weight.copy_(saved[0])
            last.bias.copy_(saved[1])
    assert len(fast) == len(ref) > 0
    for f, r in zip(fast, ref):
        assert not f.any() and not r.any()  # fully blocked rows are opened, in both paths
    assert torch.isfinite(cls).all() and torch.isfinite(top.class_probs).all()


def test_pre_norm_models_fall_back_to_the_reference_path() -> None:
    from transformers import Mask2FormerForUniversalSegmentation

    config = model_config("tiny", num_queries=20)
    config.pre_norm = True
    torch.manual_seed(1)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    assert not decoder._supports_fast_decoder(model)
    seg = WholeImageSegmenter(model, CFG)
    image = _image(120, 160, 8)
    fast, ref = seg(image), seg(image, reference=True)
    assert [r.rle for r in fast] == [r.rle for r in ref]
    assert [r.score for r in fast] == [r.score for r in ref]
