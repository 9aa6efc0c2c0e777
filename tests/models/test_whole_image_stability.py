"""The whole-image model's SAM-style stability score, computed by hand and by a naive reference.

stability = |logit > t + 1| / |logit > t - 1| on the upsampled logits (SAM's
``calculate_stability_score`` with offset 1.0; the first mask lies inside the second, so this is
their IoU), 1.0 when both are empty; t is ``mask_threshold``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.golden.common import hungarian, mask_iou_matrix
from tests.reference.mask2former_inference import (
    instance_inference_naive,
    stability_naive,
    upsample_naive,
)
from unsam.models.whole_image import SegmentConfig, WholeImageSegmenter, build_model
from unsam.models.whole_image.postprocessing import postprocess_masks
from unsam.records import decode_rles

# One 4x4 mask (16 px) with a pixel count in every band around the thresholds:
#   value  count   > 1   > -1   > 0   > 1.5   > -0.5
#    2.0     3      x     x      x     x        x
#    1.0     2            x      x              x
#    0.75    2            x      x              x
#    0.0     3            x                     x
#   -0.75    2            x
#   -1.0     2
#   -3.0     2
# t = 0:   |> 1| = 3, |> -1| = 12 -> 3 / 12 = 0.25 (|> 0| = 7: a score-like 3 / 7 would differ;
#          >= instead of > would give 5 / 14; offset 0.5: 7 / 10).
# t = 0.5: |> 1.5| = 3, |> -0.5| = 10 -> 0.3.
BANDS = [2.0] * 3 + [1.0] * 2 + [0.75] * 2 + [0.0] * 3 + [-0.75] * 2 + [-1.0] * 2 + [-3.0] * 2


def _hand_logits() -> torch.Tensor:
    logits = torch.empty(3, 4, 4)
    logits[0] = torch.tensor(BANDS).reshape(4, 4)
    logits[1] = 3.0  # every pixel above +1: 16 / 16 = 1
    logits[2] = -2.0  # empty at both thresholds: 1.0 by convention
    return logits


@pytest.mark.parametrize(("threshold", "expected"), [(0.0, 0.25), (0.5, 0.3)])
def test_stability_hand_case_every_band(threshold: float, expected: float) -> None:
    class_logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])  # query order 0, 1, 2
    out = postprocess_masks(
        class_logits,
        _hand_logits(),
        padded_hw=(4, 4),
        valid_hw=(4, 4),
        image_hw=(4, 4),
        mask_threshold=threshold,
    )
    assert out.query_indices.tolist() == [0, 1, 2]
    assert out.stability.tolist() == pytest.approx([expected, 1.0, 1.0])
    assert stability_naive(_hand_logits(), threshold) == pytest.approx([expected, 1.0, 1.0])


def test_stability_is_computed_on_the_upsampled_logits() -> None:
    """Random low-resolution logits upsampled x4 (then cropped and resized to the image): equal to
    the naive reference on the upsampled grid, and different from the low-resolution ratio."""
    g = torch.Generator().manual_seed(0)
    q = 12
    low = torch.randn(q, 12, 16, generator=g) * 3 + torch.linspace(-2, 2, q)[:, None, None]
    class_logits = torch.stack([torch.linspace(3, 1, q), torch.zeros(q)], 1)
    padded, valid, image_hw = (48, 64), (45, 61), (90, 122)
    out = postprocess_masks(
        class_logits, low, padded_hw=padded, valid_hw=valid, image_hw=image_hw, chunk_size=5
    )
    assert out.query_indices.tolist() == list(range(q))
    want = stability_naive(upsample_naive(low, padded, valid, image_hw))
    # the port resizes with a banded matrix product: a pixel within rounding of +-1 may flip
    np.testing.assert_allclose(out.stability, want, atol=2e-3)
    on_low = stability_naive(low)
    assert max(abs(a - b) for a, b in zip(want, on_low)) > 0.02  # the test can tell them apart


@pytest.fixture(scope="module")
def segmenter() -> WholeImageSegmenter:
    """A tiny random model whose mask logits spread over about +-6 (the mask embedder's output
    layer scaled x25), so that stability scores lie between 0 and 1."""
    torch.manual_seed(0)
    model = build_model("tiny", num_queries=24)
    last = model.model.transformer_module.decoder.mask_predictor.mask_embedder
    with torch.no_grad():
        for p in list(last.parameters())[-2:]:
            p.mul_(25.0)
    return WholeImageSegmenter(model, SegmentConfig(min_size=64, max_size=128, max_masks=20))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((75, 101, 3), dtype=np.uint8)
    img[:, :50] = (200, 40, 40)
    img[30:, 60:] = (20, 180, 60)
    return np.clip(img + rng.integers(0, 30, size=img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("reference", [True, False], ids=["reference", "fast"])
def test_records_carry_sams_stability_of_their_query(
    segmenter: WholeImageSegmenter, image: np.ndarray, reference: bool
) -> None:
    """Each record's stability_score is the naive stability of the query whose mask it is (records
    matched to the naive masks by IoU), on both inference paths; and the filter keeps exactly
    those >= stability_score_thresh."""
    cls, low, padded, valid = segmenter.predict_logits(image, reference=True)
    hw = image.shape[:2]
    idx, _, masks = instance_inference_naive(cls, low, padded, valid, hw, topk=20)
    want = np.array(stability_naive(upsample_naive(low[torch.from_numpy(idx)], padded, valid, hw)))
    assert 0.3 < want.min() and want.max() < 0.95  # informative: neither 0 nor 1
    records = segmenter(image, reference=reference)
    got = decode_rles([r.rle for r in records])
    rows, cols = hungarian(mask_iou_matrix(got, masks), min_iou=0.99)
    assert len(rows) == len(records) == 20
    stability = np.array([records[r].stability_score for r in rows])
    np.testing.assert_allclose(stability, want[cols], atol=2e-3)
    # the filter: stability_score_thresh halfway between two of the scores
    cut = float(np.sort(want)[10] + np.sort(want)[9]) / 2
    strict = WholeImageSegmenter(
        segmenter.model,
        SegmentConfig(min_size=64, max_size=128, max_masks=20, stability_score_thresh=cut),
    )
    kept = strict(image, reference=reference)
    assert len(kept) == int((want >= cut).sum()) == 10
    assert all(r.stability_score >= cut for r in kept)
