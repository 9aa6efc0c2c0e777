"""Tests of unsam.models.whole_image.convert against a synthetic official checkpoint (spec Appendix
C)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.reference.mask2former_official import official_entries, synthetic_official_state_dict
from unsam.models.whole_image import build_model
from unsam.models.whole_image.convert import (
    PREPROCESSOR_FILE,
    convert_checkpoint,
    convert_official_state_dict,
    convert_to_model,
    read_preprocessor_config,
)
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import WholeImageSegmenter

NUM_QUERIES = 6  # same structure as the released 2000-query model, cheaper


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return synthetic_official_state_dict(NUM_QUERIES)


@pytest.fixture(scope="module")
def r50_keys() -> dict[str, tuple[int, ...]]:
    model = build_model("r50", num_queries=NUM_QUERIES)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_reference_listing_matches_the_spec_counts() -> None:
    """Appendix C: 558 official tensors holding 45,028,996 values (2000 queries)."""
    entries = official_entries(2000)
    assert len(entries) == 558
    assert sum(math.prod(shape) for _, shape, _ in entries) == 45_028_996
    assert len({name for name, _, _ in entries}) == 558


def test_every_tensor_lands_in_the_right_place(official, r50_keys) -> None:
    converted = convert_official_state_dict(official)
    expected_targets = {}
    for name, _, targets in official_entries(NUM_QUERIES):
        for target, rows in targets:
            expected_targets[target] = official[name] if rows is None else official[name][rows]
    # nothing left over, nothing invented: exactly the expected names
    assert set(converted) == set(expected_targets)
    for key, value in expected_targets.items():
        assert torch.equal(converted[key], value), key
    # the converted names are the model's, except the 53 num_batches_tracked FrozenBN lacks
    assert set(r50_keys) - set(converted) == {
        k for k in r50_keys if k.endswith("num_batches_tracked")
    }
    assert len(set(r50_keys) - set(converted)) == 53
    assert set(converted) <= set(r50_keys)
    for key, value in converted.items():
        assert tuple(value.shape) == r50_keys[key], key
    # value totals agree exactly (Appendix C)
    assert sum(v.numel() for v in converted.values()) == sum(v.numel() for v in official.values())


def test_query_trap_feat_vs_embed(official) -> None:
    """Regression (Appendix C note 3): query_feat -> queries_features, query_embed ->
    queries_embedder."""
    converted = convert_official_state_dict(official)
    p = "sem_seg_head.predictor."
    assert torch.equal(
        converted["model.transformer_module.queries_features.weight"],
        official[p + "query_feat.weight"],
    )
    assert torch.equal(
        converted["model.transformer_module.queries_embedder.weight"],
        official[p + "query_embed.weight"],
    )
    # the two level embeddings are different tensors (note 4)
    assert torch.equal(
        converted["model.pixel_level_module.decoder.level_embed"],
        official["sem_seg_head.pixel_decoder.transformer.level_embed"],
    )
    assert torch.equal(
        converted["model.transformer_module.level_embed.weight"], official[p + "level_embed.weight"]
    )
    # the very old name of query_feat is accepted too
    old = {
        ("sem_seg_head.predictor.static_query.weight" if k == p + "query_feat.weight" else k): v
        for k, v in official.items()
    }
    assert torch.equal(
        convert_official_state_dict(old)["model.transformer_module.queries_features.weight"],
        official[p + "query_feat.weight"],
    )


def test_qkv_split_reproduces_multihead_attention() -> None:
    """Appendix C note 7: the row split gives transformers' self-attention the packed layer's
    output."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerAttention

    torch.manual_seed(0)
    d, heads = 256, 8
    mha = nn.MultiheadAttention(d, heads).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
    prefix = "sem_seg_head.predictor.transformer_self_attention_layers.0.self_attn."
    official = {prefix + k: v.detach().clone() for k, v in mha.state_dict().items()}
    converted = convert_official_state_dict(official)
    attn = Mask2FormerAttention(d, heads, is_decoder=True).eval()
    strip = "model.transformer_module.decoder.layers.0.self_attn."
    attn.load_state_dict({k[len(strip) :]: v for k, v in converted.items()}, strict=True)
    tgt = torch.randn(11, 2, d)  # (queries, batch, dim)
    pos = torch.randn(11, 2, d)
    with torch.no_grad():
        expected = mha(tgt + pos, tgt + pos, value=tgt)[0]  # the original's self-attention call
        actual = attn(hidden_states=tgt, position_embeddings=pos)[0]
    torch.testing.assert_close(actual, expected, atol=2e-6, rtol=1e-5)


def test_unknown_and_prefixed_keys(official) -> None:
    prefixed = {"module." + k: v for k, v in official.items()}
    prefixed["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    assert set(convert_official_state_dict(prefixed)) == set(convert_official_state_dict(official))
    bad = dict(official, **{"sem_seg_head.predictor.extra_head.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="1 checkpoint keys match no official.*extra_head.weight"):
        convert_official_state_dict(bad)


def test_convert_to_model_is_strict(official) -> None:
    missing = dict(official)
    del missing["sem_seg_head.predictor.transformer_ffn_layers.3.linear2.weight"]
    with pytest.raises(ValueError, match="1 model tensors have no source.*layers.3.fc2.weight"):
        convert_to_model(missing)
    with pytest.raises(ValueError, match="has 6 queries but num_queries=2000"):
        convert_to_model(official, num_queries=2000)
    wrong = dict(official)
    wrong["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(3, 256)
    with pytest.raises(ValueError, match="wrong shape.*class_predictor.weight"):
        convert_to_model(wrong)


def test_convert_checkpoint_end_to_end(tmp_path, official, monkeypatch) -> None:
    pth = tmp_path / "unsam_official.pth"
    torch.save(
        {"model": official, "optimizer": {"state": {}, "param_groups": []}, "iteration": 199999},
        pth,
    )
    out = convert_checkpoint(pth, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    prep = json.loads((out / PREPROCESSOR_FILE).read_text())
    assert (
        prep["size"] == {"shortest_edge": 1024, "longest_edge": 2048} and prep["size_divisor"] == 32
    )
    assert read_preprocessor_config(out)["mean"] == pytest.approx((123.675, 116.28, 103.53))
    assert json.loads((out / "config.json").read_text())["num_queries"] == NUM_QUERIES

    config = SegmentConfig(min_size=64, max_size=96)
    from_folder = WholeImageSegmenter.from_pretrained(out, config=config)
    state = from_folder.model.state_dict()
    assert torch.equal(
        state["model.transformer_module.queries_features.weight"],
        official["sem_seg_head.predictor.query_feat.weight"],
    )
    assert torch.equal(
        state[
            "model.pixel_level_module.encoder.encoder.stages.3.layers.2.layer.1.normalization.running_var"
        ],
        official["backbone.res5.2.conv2.norm.running_var"],
    )
    from_pth = WholeImageSegmenter.from_pretrained(pth, config=config)  # converted on the fly
    image = np.random.default_rng(0).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    a, b = from_folder(image, image_id=3), from_pth(image, image_id=3)
    assert len(a) > 0
    assert [r.rle for r in a] == [r.rle for r in b]
    assert [r.score for r in a] == pytest.approx([r.score for r in b])

    # a hub repository holding the official .pth is converted the same way
    import unsam.models.whole_image.loading as loading

    hub_dir = tmp_path / "hub_snapshot"
    hub_dir.mkdir()
    (hub_dir / "unsam_sa1b.pth").write_bytes(pth.read_bytes())
    monkeypatch.setattr(loading, "_download_from_hub", lambda repo_id: hub_dir)
    from_hub = WholeImageSegmenter.from_pretrained(
        "yujunwei04/unsam-whole-image-segmentation", config=config
    )
    assert [r.rle for r in from_hub(image, image_id=3)] == [r.rle for r in a]


def test_convert_checkpoint_rejects_other_files(tmp_path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    with pytest.raises(ValueError, match="junk.pth: cannot read the UnSAM whole-image checkpoint"):
        convert_checkpoint(tmp_path / "junk.pth", tmp_path / "out")
    torch.save({"model": {"conv.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="match no official Mask2Former name: conv.weight"):
        convert_checkpoint(tmp_path / "other.pth", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_checkpoint(tmp_path / "missing.pth", tmp_path / "out")
