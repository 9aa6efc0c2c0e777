"""Tests of unsam.models.whole_image.segmenter and its post-processing, loading and producer:
inference rule, bounded memory, loading, records."""

from __future__ import annotations

import pickle
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.reference.mask2former_inference import instance_inference_naive
from unsam.masks import logit_resize_plan, resize_logits_transposed
from unsam.models.whole_image import build_model, decoder, postprocessing
from unsam.models.whole_image.loading import HUB_ID, resolve_model_folder
from unsam.models.whole_image.postprocessing import postprocess_masks
from unsam.models.whole_image.producer import SegmenterProducer
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import WholeImageSegmenter
from unsam.records import annotation_id, decode_rles, rle_iou_matrix

SMALL = SegmentConfig(min_size=64, max_size=128, max_masks=20, chunk_size=3)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("tiny", num_queries=24)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((75, 101, 3), dtype=np.uint8)
    img[:, :50] = (200, 40, 40)
    img[30:, 60:] = (20, 180, 60)
    return np.clip(img + rng.integers(0, 30, size=img.shape), 0, 255).astype(np.uint8)


# --- the inference rule -------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_postprocess_matches_the_original_order(seed: int, chunk_size: int) -> None:
    """Top-k before upsampling (bug 22 fixed) gives the original's masks and scores exactly."""
    g = torch.Generator().manual_seed(seed)
    q = 40
    class_logits = torch.randn(q, 2, generator=g) * 2
    mask_logits = torch.randn(q, 24, 32, generator=g) * 4
    padded, valid, image_hw = (96, 128), (90, 121), (137, 181)
    out = postprocess_masks(
        class_logits,
        mask_logits,
        padded_hw=padded,
        valid_hw=valid,
        image_hw=image_hw,
        max_masks=15,
        chunk_size=chunk_size,
    )
    idx, scores, masks = instance_inference_naive(
        class_logits, mask_logits, padded, valid, image_hw, topk=15
    )
    np.testing.assert_array_equal(out.query_indices, idx)
    np.testing.assert_allclose(out.scores, scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(decode_rles(out.rles), masks)
    np.testing.assert_array_equal(out.areas, masks.reshape(15, -1).sum(1))
    fg = class_logits.softmax(-1)[:, 0].numpy()
    np.testing.assert_allclose(out.class_probs, fg[idx], rtol=1e-6)
    assert np.all(np.diff(out.class_probs) <= 0)


def test_postprocess_hand_computed_score() -> None:
    """One query, logits +2 on a 2x2 block, -3 elsewhere, no resize: score = p * sigmoid(2)."""
    logits = torch.full((1, 4, 4), -3.0)
    logits[0, :2, :2] = 2.0
    cls = torch.tensor([[1.0, 0.0]])
    out = postprocess_masks(cls, logits, padded_hw=(4, 4), valid_hw=(4, 4), image_hw=(4, 4))
    p = float(torch.softmax(cls, -1)[0, 0])
    assert out.areas.tolist() == [4]
    assert out.scores[0] == pytest.approx(
        p * float(torch.sigmoid(torch.tensor(2.0))) * 4 / (4 + 1e-6), rel=1e-6
    )
    expected = np.zeros((4, 4), dtype=bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(decode_rles(out.rles)[0], expected)


def test_postprocess_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"same Q, got \(3, 2\) and \(4, 8, 8\)"):
        postprocess_masks(
            torch.zeros(3, 2),
            torch.zeros(4, 8, 8),
            padded_hw=(32, 32),
            valid_hw=(32, 32),
            image_hw=(32, 32),
        )


def test_postprocess_memory_is_bounded_by_chunks(monkeypatch) -> None:
    """Large image, many queries: no tensor larger than chunk_size x H x W is ever created."""
    sizes: list[int] = []
    resize = postprocessing.resize_logits_transposed

    def recording(low, *args, **kwargs):
        out = resize(low, *args, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(postprocessing, "resize_logits_transposed", recording)
    g = torch.Generator().manual_seed(0)
    q, chunk = 300, 4
    image_hw = (1500, 2000)  # resized to (1024, 1365), padded to (1024, 1376)
    out = postprocess_masks(
        torch.randn(q, 2, generator=g),
        torch.randn(q, 256, 344, generator=g),
        padded_hw=(1024, 1376),
        valid_hw=(1024, 1365),
        image_hw=image_hw,
        max_masks=40,
        chunk_size=chunk,
    )
    assert len(out.rles) == 40 and out.rles[0]["size"] == [1500, 2000]
    assert len(sizes) == 10  # 40 / 4 chunks
    assert max(sizes) <= chunk * 1500 * 2000
    assert max(sizes) * 50 < q * 1500 * 2000  # the original would hold all 300 queries at full size


@pytest.mark.parametrize(
    ("low_hw", "padded_hw", "valid_hw", "image_hw"),
    [
        ((24, 32), (96, 128), (90, 121), (137, 181)),  # upscale after the crop
        ((256, 344), (1024, 1376), (1024, 1365), (768, 1024)),  # the benchmark's downscale
        ((16, 16), (64, 64), (64, 64), (64, 64)),  # no crop, no second resize
        ((8, 30), (32, 120), (31, 101), (7, 300)),  # mixed: down in y, up in x
        ((5, 5), (20, 20), (17, 3), (1, 1)),  # one pixel
    ],
)
def test_banded_resize_equals_two_interpolations(low_hw, padded_hw, valid_hw, image_hw) -> None:
    """The banded-matrix resize equals F.interpolate to the padded size, crop, F.interpolate to
    the image (the original's order), transposed, up to float rounding."""
    g = torch.Generator().manual_seed(sum(low_hw))
    low = torch.randn(3, *low_hw, generator=g) * 5
    ref = F.interpolate(low[None], size=padded_hw, mode="bilinear", align_corners=False)
    ref = ref[:, :, : valid_hw[0], : valid_hw[1]]
    if tuple(valid_hw) != tuple(image_hw):
        ref = F.interpolate(ref, size=image_hw, mode="bilinear", align_corners=False)
    plan = logit_resize_plan(low_hw, padded_hw, valid_hw, image_hw, block=16)
    out = resize_logits_transposed(low, plan)
    assert out.shape == (3, image_hw[1], image_hw[0])
    torch.testing.assert_close(out.transpose(1, 2), ref[0], rtol=0, atol=2e-5)


@pytest.mark.parametrize("hw", [(64, 96), (96, 64)])
def test_lean_mask_predictions_keep_the_result(tiny_model, hw) -> None:
    """The bounded-memory mask predictor gives exactly the stock transformers outputs."""
    torch.manual_seed(5)
    x = torch.randn(1, 3, *hw)
    tiny_model.eval()
    with torch.no_grad():
        plain = tiny_model(pixel_values=x)
        with decoder._lean_mask_predictions(tiny_model):
            lean = tiny_model(pixel_values=x, output_auxiliary_logits=True)
    assert torch.equal(lean.masks_queries_logits, plain.masks_queries_logits)
    assert torch.equal(lean.class_queries_logits, plain.class_queries_logits)
    assert all(
        aux["masks_queries_logits"].numel() == 0 for aux in lean.auxiliary_logits
    )  # earlier layers dropped
    with torch.no_grad():  # the stock forward is back afterwards
        again = tiny_model(pixel_values=x, output_auxiliary_logits=True)
    assert all(aux["masks_queries_logits"].numel() > 0 for aux in again.auxiliary_logits)
    assert "forward" not in vars(tiny_model.model.transformer_module.decoder.mask_predictor)


# --- the segmenter ------------------------------------------------------------------------------


def test_segmenter_records(tiny_model, image) -> None:
    seg = WholeImageSegmenter(tiny_model, SMALL)
    records = seg(image, image_id=42)
    assert 0 < len(records) <= 20
    scores = [r.score for r in records]
    assert scores == sorted(
        scores, reverse=True
    )  # the values themselves: against the reference below
    assert [r.id for r in records] == [annotation_id(42, k) for k in range(len(records))]
    assert all(r.image_id == 42 and r.source == "model" and r.level == 0 for r in records)
    assert all(r.image_hw == (75, 101) and r.area > 0 for r in records)
    # the same numbers as the raw model output pushed through the naive original rule
    class_logits, mask_logits, padded, valid = seg.predict_logits(image)
    assert padded == (64, 96) and valid == (64, 86)
    _, ref_scores, ref_masks = instance_inference_naive(
        class_logits, mask_logits, padded, valid, (75, 101), topk=20
    )
    keep = ref_masks.reshape(20, -1).any(1)
    order = np.argsort(-ref_scores[keep], kind="stable")
    np.testing.assert_allclose(scores, ref_scores[keep][order], rtol=1e-5)
    np.testing.assert_array_equal(np.stack([r.decode() for r in records]), ref_masks[keep][order])


def test_segmenter_thresholds_and_nms(tiny_model, image) -> None:
    base = WholeImageSegmenter(tiny_model, SMALL)(image)
    cut = float(np.median([r.score for r in base]))
    high = WholeImageSegmenter(
        tiny_model, SegmentConfig(**{**SMALL.__dict__, "score_thresh": cut})
    )(image)
    assert high and all(r.score >= cut for r in high) and len(high) < len(base)
    nms = WholeImageSegmenter(
        tiny_model, SegmentConfig(**{**SMALL.__dict__, "nms_iou_thresh": 0.5})
    )(image)
    iou = rle_iou_matrix([r.rle for r in nms], [r.rle for r in nms])
    np.fill_diagonal(iou, 0)
    assert len(nms) < len(base) and iou.max(initial=0.0) <= 0.5
    assert nms[0].rle == base[0].rle  # the best mask always survives


def test_segmenter_large_image_bounded(tiny_model, monkeypatch) -> None:
    """A 1500x2000 image with max_masks 30: full-resolution work happens chunk by chunk."""
    sizes: list[int] = []

    def interpolate(*args, **kwargs):
        out = F.interpolate(*args, **kwargs)
        sizes.append(out.numel())
        return out

    functions = {name: getattr(F, name) for name in dir(F) if not name.startswith("_")}
    monkeypatch.setattr(
        decoder, "F", types.SimpleNamespace(**{**functions, "interpolate": interpolate})
    )
    big = np.random.default_rng(1).integers(0, 256, size=(1500, 2000, 3), dtype=np.uint8)
    seg = WholeImageSegmenter(
        tiny_model, SegmentConfig(min_size=128, max_size=256, max_masks=24, chunk_size=2)
    )
    records = seg(big, image_id=1)
    assert all(r.image_hw == (1500, 2000) for r in records)
    assert max(sizes) <= 2 * 1500 * 2000


def test_segment_config_validation() -> None:
    with pytest.raises(ValueError, match="min_size <= max_size"):
        SegmentConfig(min_size=800, max_size=600)
    with pytest.raises(ValueError, match="max_masks must be >= 1"):
        SegmentConfig(max_masks=0)
    with pytest.raises(ValueError, match=r"score_thresh must be in \[0, 1\]"):
        SegmentConfig(score_thresh=1.5)
    with pytest.raises(ValueError, match="nms_iou_thresh"):
        SegmentConfig(nms_iou_thresh=-0.1)
    with pytest.raises(ValueError, match="chunk_size and chunk_megabytes must be >= 1"):
        SegmentConfig(chunk_size=0)
    assert SegmentConfig().max_masks == 1000 and SegmentConfig().min_size is None  # spec §6.5


# --- loading ------------------------------------------------------------------------------------


def test_save_and_load_roundtrip_and_run_dirs(tmp_path, tiny_model, image) -> None:
    seg = WholeImageSegmenter(tiny_model, SMALL, mean=(120.0, 110.0, 100.0), std=(60.0, 50.0, 40.0))
    expected = seg(image)
    seg.save_pretrained(tmp_path / "folder")
    loaded = WholeImageSegmenter.from_pretrained(tmp_path / "folder", config=SMALL)
    assert loaded.mean == (120.0, 110.0, 100.0) and loaded.std == (60.0, 50.0, 40.0)
    got = loaded(image)
    assert [r.rle for r in got] == [r.rle for r in expected]
    assert [r.score for r in got] == pytest.approx([r.score for r in expected], rel=1e-6)

    run = tmp_path / "run"
    older = run / "checkpoints" / "step_0000010" / "model"
    seg.save_pretrained(older)
    (older.parent / "training_state.pt").write_bytes(b"")
    newer = run / "checkpoints" / "step_0000020" / "model"
    seg.save_pretrained(newer)
    assert (
        resolve_model_folder(run) == older
    )  # step 20 is still being written (no training state yet)
    (newer.parent / "training_state.pt").write_bytes(b"")
    assert (
        resolve_model_folder(run) == newer
    )  # newest complete periodic checkpoint while training runs
    seg.save_pretrained(run / "model")
    assert resolve_model_folder(run) == run / "model"  # the final model once written
    assert resolve_model_folder(run / "model") == run / "model"
    with pytest.raises(FileNotFoundError, match="no model found"):
        resolve_model_folder(tmp_path / "empty")


def test_from_pretrained_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="x.pth does not exist; download"):
        WholeImageSegmenter.from_pretrained(tmp_path / "missing_dir" / "x.pth")
    from transformers import Mask2FormerForUniversalSegmentation

    from unsam.models.whole_image import model_config

    cfg = model_config("tiny", num_queries=4)
    cfg.num_labels = 3  # a COCO-style multi-class model is not class-agnostic
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(tmp_path / "three_classes")
    with pytest.raises(ValueError, match="has 3 classes.*num_labels=1"):
        WholeImageSegmenter.from_pretrained(tmp_path / "three_classes")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    with pytest.raises(FileNotFoundError) as info:  # MissingWeightsError: a user error, one line
        WholeImageSegmenter.from_pretrained(HUB_ID)
    message = str(info.value)
    assert "\n" not in message
    assert f"https://huggingface.co/{HUB_ID}" in message and "unsam convert-checkpoint" in message


def test_producer_settings_and_pickling(tmp_path, tiny_model, image) -> None:
    WholeImageSegmenter(tiny_model, SMALL).save_pretrained(tmp_path / "run" / "model")
    producer = SegmenterProducer(tmp_path / "run", SMALL)
    settings = producer.settings()
    assert settings["model"].endswith("run/model") and settings["segment"]["max_masks"] == 20
    records = producer(image, image_id=7)
    clone = pickle.loads(pickle.dumps(producer))
    assert clone._segmenter is None  # workers load their own copy
    assert [r.rle for r in clone(image, image_id=7)] == [r.rle for r in records]


def test_stability_score_is_sams_rule_on_the_upsampled_logits() -> None:
    """Issue 11.3: stability = |logit > +1| / |logit > -1| per mask, computed on the full grid."""
    logits = torch.full((3, 4, 4), -5.0)
    logits[0, :2] = 5.0  # 8 px above +1, 8 above -1 -> 1.0
    logits[1, :1] = 5.0
    logits[1, 1:2] = 0.5  # 4 px above +1, 8 above -1 -> 0.5
    logits[2] = -5.0  # empty -> 1.0 (SAM's convention for 0/0)
    class_logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    out = postprocess_masks(
        class_logits, logits, padded_hw=(4, 4), valid_hw=(4, 4), image_hw=(4, 4)
    )
    by_query = dict(zip(out.query_indices.tolist(), out.stability.tolist()))
    assert by_query[0] == pytest.approx(1.0) and by_query[1] == pytest.approx(0.5)
    assert by_query[2] == 1.0


def test_chunks_are_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = postprocessing.encode_transposed_masks

    def spy(masks):  # type: ignore[no-untyped-def]
        seen.append(len(masks))
        return real(masks)

    monkeypatch.setattr(postprocessing, "encode_transposed_masks", spy)
    class_logits = torch.zeros(10, 2)
    postprocess_masks(
        class_logits,
        torch.randn(10, 8, 8),
        padded_hw=(32, 32),
        valid_hw=(32, 32),
        image_hw=(100, 100),
        chunk_size=16,
        chunk_bytes=3 * (12 * 100 * 100 + 4 * 100 * 8) + 1,
    )
    # a mask costs 12 bytes x 100 x 100 at full size + the (100, 8) row-resized floats: 3 fit
    assert seen == [3, 3, 3, 1]
