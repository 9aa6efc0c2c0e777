"""The whole-image model on CUDA (skipped with a reason without a GPU; run by benchmarks/gpu.sh).

- float32 on CUDA against float32 on the CPU, same weights, same photo. TF32 is switched off for
  these comparisons (PyTorch lets cuDNN convolutions use TF32 for float32 by default, a 10-bit
  significand). Tolerances: the fast path against the reference path on the CPU differ by
  <= 1e-4 (class logits) and <= 1e-3 (mask logits) through summation order alone
  (tests/models/test_segment_fast_path.py); two devices differ the same way (other kernels, other
  orders), so twice those bounds; masks matched one to one must overlap at IoU >= 0.99 on average,
  scores within 1e-3.
- bfloat16 on CUDA against float32 on the CPU, and the bf16 reference path against the bf16 fast
  path: the thresholds of the CPU bf16 tests (tests/models/test_whole_image_bf16.py, measured
  there), since bf16 rounding dominates any device difference.
- Nothing in the GPU part (network + post-processing up to the bit-packed masks) synchronises
  with the host: it runs under ``torch.cuda.set_sync_debug_mode("error")``, which turns every
  synchronising call (``.item()``, ``.cpu()``, a blocking copy, ``nonzero``...) into an error.
- Two images in flight: image 2's GPU part is queued before image 1's host part; both give the
  records of a plain call.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment

from unsam.cli.main import main
from unsam.io.coco import load_coco_dataset
from unsam.models.whole_image import build_model
from unsam.models.whole_image.postprocessing import postprocess_on_device
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import WholeImageSegmenter
from unsam.records import rle_iou_matrix

pytestmark = pytest.mark.gpu

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "coco" / "images"
CFG = dict(min_size=256, max_size=1024, max_masks=50)


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("tiny").eval()


def _photo(name: str = "000000229358.jpg") -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


def _segmenter(model: torch.nn.Module, device: str, dtype: str = "float32") -> WholeImageSegmenter:
    # a copy each: a segmenter moves its model to its device in place
    return WholeImageSegmenter(
        copy.deepcopy(model), SegmentConfig(device=device, dtype=dtype, **CFG)
    )


def _matched(a, b) -> tuple[np.ndarray, np.ndarray]:
    assert len(a) == len(b) > 0
    iou = rle_iou_matrix([r.rle for r in a], [r.rle for r in b])
    rows, cols = linear_sum_assignment(-iou)
    scores = np.abs(np.array([a[i].score for i in rows]) - np.array([b[j].score for j in cols]))
    return iou[rows, cols], scores


def test_cuda_matches_the_cpu_in_float32(tiny) -> None:
    cpu, gpu = _segmenter(tiny, "cpu"), _segmenter(tiny, "cuda")
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    image = _photo()
    cls_cpu, masks_cpu, *_ = cpu.predict_logits(image)
    cls_gpu, masks_gpu, *_ = gpu.predict_logits(image)
    torch.testing.assert_close(cls_gpu.cpu(), cls_cpu, rtol=0, atol=2e-4)
    torch.testing.assert_close(masks_gpu.cpu(), masks_cpu, rtol=0, atol=2e-3)
    for reference in (False, True):
        iou, dscore = _matched(cpu(image, reference=reference), gpu(image, reference=reference))
        assert iou.mean() >= 0.99 and dscore.max() <= 1e-3, (reference, iou.mean(), dscore.max())


def test_cuda_bfloat16_agrees_with_cpu_float32(tiny) -> None:
    image = _photo("000000205401.jpg")
    iou, dscore = _matched(
        _segmenter(tiny, "cpu")(image), _segmenter(tiny, "cuda", "bfloat16")(image)
    )
    assert iou.mean() >= 0.85 and np.median(iou) >= 0.9, (iou.mean(), np.median(iou))
    assert dscore.max() <= 0.01 and dscore.mean() <= 0.002, (dscore.max(), dscore.mean())


def test_cuda_bfloat16_reference_path_matches_the_fast_path(tiny) -> None:
    seg = _segmenter(tiny, "cuda", "bfloat16")
    assert {p.dtype for p in seg.model.parameters()} == {torch.bfloat16}
    image = _photo("000000205401.jpg")
    iou, dscore = _matched(seg(image, reference=True), seg(image))
    assert iou.mean() >= 0.9 and np.median(iou) >= 0.95, (iou.mean(), np.median(iou))
    assert dscore.max() <= 0.005, dscore.max()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_gpu_part_never_waits_for_the_device(tiny, dtype: str) -> None:
    seg = _segmenter(tiny, "cuda", dtype)
    image = _photo()
    expected = seg(image, image_id=7)  # warm-up: kernels chosen, caches filled
    cfg = seg.config
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):  # the mode is on: a synchronising call fails
            torch.ones(1, device=seg.device).item()
        top = seg.predict_top_masks(image)  # the network
        device_masks = postprocess_on_device(  # post-processing up to the final masks
            top, image_hw=image.shape[:2], chunk_size=cfg.chunk_size
        )
        pending = seg.predict_masks(image, image_id=7)  # both, and the queued copy to the host
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert device_masks.packed.is_cuda and device_masks.scores.is_cuda
    assert pending.device_masks is not None and pending.device_masks.packed.is_cuda
    records = pending.to_records()  # the host part: waits, unpacks, encodes RLE
    assert [r.rle for r in records] == [r.rle for r in expected]
    np.testing.assert_allclose([r.score for r in records], [r.score for r in expected], atol=1e-6)


def test_two_images_in_flight(tiny) -> None:
    seg = _segmenter(tiny, "cuda", "bfloat16")
    a, b = _photo("000000229358.jpg"), _photo("000000055299.jpg")
    expected = seg(a, image_id=1), seg(b, image_id=2)
    first = seg.predict_masks(a, image_id=1)
    second = seg.predict_masks(b, image_id=2)  # queued before image 1 is encoded
    got = first.to_records(), second.to_records()
    for g, e in zip(got, expected):
        assert [r.id for r in g] == [r.id for r in e] and [r.rle for r in g] == [r.rle for r in e]


def test_segment_cli_on_cuda_in_bfloat16(tiny, tmp_path: Path) -> None:
    folder = tmp_path / "run" / "model"
    WholeImageSegmenter(copy.deepcopy(tiny)).save_pretrained(folder)
    out = tmp_path / "pred.json"
    args = ["segment", str(PHOTOS), "--model", str(folder.parent), "-o", str(out)]
    flags = ["--device", "cuda", "--dtype", "bfloat16", "--min-size", "256", "--max-masks", "20"]
    assert main([*args, *flags, "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["info"]["settings"]["segment"]["dtype"] == "bfloat16"
    assert len(data["images"]) == 5 and data["annotations"]
    seg = WholeImageSegmenter.from_pretrained(
        folder.parent,
        device="cuda",
        dtype="bfloat16",
        config=SegmentConfig(min_size=256, max_masks=20),
    )
    written = {img.file_name: img for img in load_coco_dataset(out)}
    name = "000000229358.jpg"
    records = seg(_photo(name), image_id=written[name].id)
    assert [m.rle for m in written[name].masks] == [r.rle for r in records]
