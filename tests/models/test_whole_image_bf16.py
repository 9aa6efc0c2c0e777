"""The whole-image model in bfloat16 and the device form of its post-processing, on the CPU.

- In float32 the float32-step classes (unsam.models.whole_image.precision) change nothing, bit for
  bit; in bfloat16 the weights and the input are bfloat16 and the named steps run in float32.
- bf16 against float32, and the bf16 reference path against the bf16 fast path, on real photos
  (examples/coco/images) with a random-weight tiny model. The thresholds come from measurements
  on 3 photos x 2 seeds (min_size 256, 50 queries): matched mean IoU of bf16 against float32
  0.906-0.980 (a random-weight model's mask logits are small, so a boundary moves with every
  rounding: the worst case for bf16; r50 gives 0.995 mean best IoU on a 1024-px photo, see
  benchmarks/segment_speed.py), largest score change 0.0043; bf16 reference against fast
  0.952-0.988 (medians >= 0.97; one pair of a 50 can fall to 0.3), largest score change 0.0015.
  Figures move with the thread count (other summation orders, other roundings), hence the
  margins.
- The device form of post-processing (what runs on a GPU: F.interpolate chain, bit-packed masks,
  RLE on the host afterwards) against the chunked CPU form, on the CPU.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import linear_sum_assignment

from unsam.models.whole_image import build_model, precision
from unsam.models.whole_image.postprocessing import (
    TopMasks,
    pack_masks,
    postprocess_on_device,
    postprocess_top_masks,
    unpack_masks,
)
from unsam.models.whole_image.producer import SegmenterProducer
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import WholeImageSegmenter
from unsam.records import rle_iou_matrix

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "coco" / "images"
CFG = dict(min_size=256, max_size=1024, max_masks=50)


def _photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("tiny").eval()


def _matched(a, b) -> tuple[np.ndarray, np.ndarray]:
    """IoU and |score difference| of the masks of ``a`` and ``b`` matched one to one by IoU."""
    assert len(a) == len(b) > 0
    iou = rle_iou_matrix([r.rle for r in a], [r.rle for r in b])
    rows, cols = linear_sum_assignment(-iou)
    scores = np.abs(np.array([a[i].score for i in rows]) - np.array([b[j].score for j in cols]))
    return iou[rows, cols], scores


# --- the float32 steps ----------------------------------------------------------------------------


def test_float32_steps_change_nothing_in_float32() -> None:
    """Installed in a float32 model, the float32-step classes give transformers' outputs bit for bit
    (the reference path stays equal to the official code)."""
    plain = _tiny(0)
    installed = precision.install_float32_steps(copy.deepcopy(plain))
    assert type(installed.class_predictor) is precision.Float32Linear
    assert isinstance(
        installed.model.pixel_level_module.decoder, precision.Float32PixelDecoder
    ) and not isinstance(plain.model.pixel_level_module.decoder, precision.Float32PixelDecoder)
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = plain(pixel_values=x), installed(pixel_values=x)
    assert torch.equal(a.class_queries_logits, b.class_queries_logits)
    assert torch.equal(a.masks_queries_logits, b.masks_queries_logits)
    assert torch.equal(a.pixel_decoder_last_hidden_state, b.pixel_decoder_last_hidden_state)


def test_bfloat16_model_runs_its_named_steps_in_float32(monkeypatch) -> None:
    model = _tiny(0)
    seg = WholeImageSegmenter(model, SegmentConfig(dtype="bfloat16", **CFG))
    assert seg.dtype is torch.bfloat16 and seg.device == torch.device("cpu")
    weights = {p.dtype for p in seg.model.parameters() if p.is_floating_point()}
    assert weights == {torch.bfloat16}
    assert next(model.parameters()).dtype is torch.float32  # the caller's model is not cast
    seen: dict[str, torch.dtype] = {}
    backbone = seg.model.model.pixel_level_module.encoder

    def record_input(module, args, kwargs) -> None:
        seen["input"] = (args or [kwargs["pixel_values"]])[0].dtype

    hook = backbone.register_forward_pre_hook(record_input, with_kwargs=True)
    sampled = []
    gather = precision.gather_sampling

    def recording(value, shapes, locations, weights):
        sampled.append((value.dtype, locations.dtype, weights.dtype))
        return gather(value, shapes, locations, weights)

    monkeypatch.setattr(precision, "gather_sampling", recording)
    try:
        top = seg.predict_top_masks(_photo("000000229358.jpg"))
    finally:
        hook.remove()
    assert seen["input"] is torch.bfloat16  # the network is fed bfloat16
    # deformable sampling: value, locations and attention weights in float32, every layer
    assert sampled and set(sampled) == {(torch.float32, torch.float32, torch.float32)}
    assert top.class_probs.dtype is torch.float32 and top.mask_logits.dtype is torch.bfloat16
    # position embeddings: built in float32, then cast (not built in bfloat16)
    pos = seg.model.model.pixel_level_module.decoder.position_embedding
    shape = torch.Size([1, 64, 40, 300])  # positions up to 300 > 256: not exact in bfloat16
    got = pos(shape, torch.device("cpu"), torch.bfloat16)
    assert got.dtype is torch.bfloat16
    assert torch.equal(got, pos(shape, torch.device("cpu"), torch.float32).to(torch.bfloat16))
    # the class head's logits are float32
    class_logits = seg.predict_logits(_photo("000000229358.jpg"))[0]
    assert class_logits.dtype is torch.float32


@pytest.mark.parametrize(
    ("shapes", "batch"),
    [
        ([(8, 11), (16, 22), (32, 43)], 1),
        ([(3, 5), (6, 9), (12, 17)], 2),
        ([(1, 1), (2, 3), (5, 4)], 1),
    ],
)
def test_gather_sampling_equals_grid_sample(shapes, batch) -> None:
    """The CPU fast path's deformable sampling against transformers' grid_sample code, with
    points inside, on the border and far outside the maps (weight 0)."""
    from transformers.models.mask2former.modeling_mask2former import (
        multi_scale_deformable_attention,
    )

    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(batch, s, 8, 32, generator=g)
    locations = torch.rand(batch, 300, 8, 3, 4, 2, generator=g) * 1.6 - 0.3
    weights = torch.softmax(torch.randn(batch, 300, 8, 12, generator=g), -1).view(
        batch, 300, 8, 3, 4
    )
    expected = multi_scale_deformable_attention(value, shapes, locations, weights)
    got = precision.gather_sampling(value, shapes, locations, weights)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


# --- agreement on real photos ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("photo", ["000000205401.jpg", "000000229358.jpg"])
def test_bfloat16_agrees_with_float32_on_a_real_photo(seed: int, photo: str) -> None:
    model, image = _tiny(seed), _photo(photo)
    fp32 = WholeImageSegmenter(model, SegmentConfig(**CFG))(image)
    bf16 = WholeImageSegmenter(model, SegmentConfig(dtype="bfloat16", **CFG))(image)
    iou, dscore = _matched(fp32, bf16)
    assert iou.mean() >= 0.85 and np.median(iou) >= 0.9, (iou.mean(), np.median(iou))
    assert dscore.max() <= 0.01 and dscore.mean() <= 0.002, (dscore.max(), dscore.mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_bfloat16_reference_path_matches_the_fast_path(seed: int) -> None:
    seg = WholeImageSegmenter(_tiny(seed), SegmentConfig(dtype="bfloat16", **CFG))
    image = _photo("000000205401.jpg")
    iou, dscore = _matched(seg(image, reference=True), seg(image))
    assert iou.mean() >= 0.9 and np.median(iou) >= 0.95, (iou.mean(), np.median(iou))
    assert dscore.max() <= 0.005, dscore.max()


# --- the device form of post-processing ------------------------------------------------------


def test_pack_and_unpack_masks() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in ((3, 7, 5), (2, 8, 8), (1, 1, 1), (4, 13, 11)):
        masks = torch.rand(shape, generator=g) > 0.5
        packed = pack_masks(masks)
        assert packed.dtype is torch.uint8 and packed.shape == (
            shape[0],
            (shape[1] * shape[2] + 7) // 8,
        )
        np.testing.assert_array_equal(unpack_masks(packed.numpy(), shape[1:]), masks.numpy())


def test_device_postprocessing_equals_the_chunked_form() -> None:
    """Same masks, areas, stability and scores (float rounding of the resize only), also for
    bfloat16 logits, which both forms cast to float32 before the resize (a bfloat16 resize moves
    ~10 boundary pixels and the scores by ~2e-3 here)."""
    g = torch.Generator().manual_seed(0)
    logits = F.avg_pool2d(torch.randn(1, 12, 40, 56, generator=g) * 4, 5, 1, 2)[0]
    for dtype in (torch.float32, torch.bfloat16):
        top = TopMasks(
            torch.rand(12, generator=g).sort(descending=True).values,
            torch.arange(12),
            logits.to(dtype),
            padded_hw=(160, 224),
            valid_hw=(150, 210),
        )
        host = postprocess_top_masks(top, image_hw=(300, 420), chunk_size=5)
        device = postprocess_on_device(top, image_hw=(300, 420), chunk_size=5).to_host()
        np.testing.assert_array_equal(device.areas, host.areas)
        np.testing.assert_array_equal(device.query_indices, host.query_indices)
        assert np.diag(rle_iou_matrix(device.rles, host.rles)).min() == 1.0
        np.testing.assert_allclose(device.scores, host.scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(device.stability, host.stability, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_segmenter_with_device_postprocessing_gives_the_same_records(dtype: str) -> None:
    """``predict_masks`` -> ``to_records`` through the GPU's form (forced on the CPU)."""
    seg = WholeImageSegmenter(_tiny(0), SegmentConfig(dtype=dtype, **CFG))
    image = _photo("000000229358.jpg")
    expected = seg(image, image_id=4)
    seg.device_postprocessing = True
    pending = seg.predict_masks(image, image_id=4)
    assert pending.device_masks is not None and pending.device_masks.packed.dtype is torch.uint8
    got = pending.to_records()
    assert [r.id for r in got] == [r.id for r in expected]
    assert [r.rle for r in got] == [r.rle for r in expected]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in expected], atol=1e-6)
    ref = seg(image, image_id=4, reference=True)  # the reference network, device form
    iou, _ = _matched(ref, expected)
    assert iou.mean() >= (0.99 if dtype == "float32" else 0.93)


def test_run_settings_hold_the_dtype_not_the_device() -> None:
    producer = SegmenterProducer("model", SegmentConfig(device="cpu", dtype="bf16"))
    segment = producer.settings()["segment"]
    assert segment["dtype"] == "bfloat16" and "device" not in segment
    with pytest.raises(ValueError, match="--dtype 'float16'"):
        SegmentConfig(dtype="float16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="PyTorch sees no CUDA GPU.*--device cpu"):
        WholeImageSegmenter(_tiny(0), SegmentConfig(device="cuda"))


def test_the_runner_overlaps_the_host_part_on_the_device_form(tmp_path: Path) -> None:
    """With device post-processing (a GPU's; forced here on the CPU) the producer offers the
    runner's start/finisher split and asks for the overlap; the file equals a plain run's."""
    import json

    from unsam.io.images import list_images
    from unsam.runner import run_images

    model_dir = tmp_path / "model"
    WholeImageSegmenter(_tiny(0)).save_pretrained(model_dir)
    listing = list_images(PHOTOS)
    config = SegmentConfig(min_size=128, max_size=256, max_masks=20)
    plain = SegmenterProducer(model_dir, config)
    plain.setup()
    assert not plain.overlaps  # on the CPU both parts share the cores: no overlap
    run_images(plain, listing.images, listing.root, tmp_path / "plain.json")
    split = SegmenterProducer(model_dir, config)
    split.setup()
    split._segmenter.device_postprocessing = True
    assert split.overlaps
    started = []
    start = split.start
    split.start = lambda image, *, image_id: (
        started.append(image_id)
        or start(  # type: ignore[method-assign]
            image, image_id=image_id
        )
    )
    run_images(split, listing.images, listing.root, tmp_path / "split.json")
    assert len(started) == len(listing.images)  # every image went through start + finisher
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "split"))
    assert a["images"] == b["images"] and len(a["annotations"]) == len(b["annotations"]) > 0
    assert [x["segmentation"] for x in a["annotations"]] == [
        x["segmentation"] for x in b["annotations"]
    ]
    np.testing.assert_allclose(
        [x["score"] for x in a["annotations"]], [x["score"] for x in b["annotations"]], atol=1e-6
    )
