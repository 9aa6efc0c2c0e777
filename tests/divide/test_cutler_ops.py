"""CutLER detector ops against the loop references in tests/reference/cutler_ops_naive.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.reference import cutler_ops_naive as ref
from unsam.divide.cutler import ops


def _random_boxes(g: torch.Generator, n: int, h: float, w: float) -> torch.Tensor:
    """XYXY boxes mixing ordinary, partly-outside, tiny (< 1 px), zero-size and thin boxes."""
    cx = torch.rand(n, generator=g) * (w + 20) - 10
    cy = torch.rand(n, generator=g) * (h + 20) - 10
    bw = torch.rand(n, generator=g) * w * 0.8
    bh = torch.rand(n, generator=g) * h * 0.8
    kind = torch.arange(n) % 5
    bw = torch.where(kind == 1, torch.rand(n, generator=g) * 0.9, bw)  # tiny
    bh = torch.where(kind == 1, torch.rand(n, generator=g) * 0.9, bh)
    bw = torch.where(kind == 2, torch.zeros(n), bw)  # zero width
    bh = torch.where(kind == 3, torch.full((n,), 0.7), bh)  # thin: many samples along x
    bw = torch.where(kind == 3, torch.full((n,), w * 1.5), bw)
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)


@pytest.mark.parametrize(
    ("seed", "output_size", "scale", "sampling_ratio", "aligned"),
    [
        (0, 7, 0.25, 0, True),
        (1, 14, 0.125, 0, True),
        (2, 2, 1.0, 0, True),
        (3, 3, 0.5, 2, True),
        (4, 4, 0.25, 0, False),
    ],
)
def test_roi_align_matches_naive(
    seed: int, output_size: int, scale: float, sampling_ratio: int, aligned: bool
) -> None:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 3, 11, 17, generator=g)
    img_h, img_w = 11 / scale, 17 / scale
    boxes = _random_boxes(g, 25, img_h, img_w)
    batch = (torch.arange(25) % 2).float()[:, None]
    rois = torch.cat([batch, boxes], dim=1)
    out = ops.roi_align(feats, rois, output_size, scale, sampling_ratio, aligned)
    assert out.shape == (25, 3, output_size, output_size)
    expected = np.stack(
        [
            ref.roi_align_naive(
                feats[int(b)].numpy(),
                tuple(box.tolist()),
                output_size,
                scale,
                sampling_ratio,
                aligned,
            )
            for b, box in zip(batch[:, 0], boxes, strict=True)
        ]
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_roi_align_chunked_equals_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(1, 8, 20, 20, generator=g)
    rois = torch.cat([torch.zeros(30, 1), _random_boxes(g, 30, 80, 80)], dim=1)
    whole = ops.roi_align(feats, rois, 7, 0.25)
    monkeypatch.setattr(ops, "_ROI_ALIGN_CHUNK", 8 * 50)  # a few boxes per chunk
    assert torch.equal(ops.roi_align(feats, rois, 7, 0.25), whole)


def test_roi_align_adaptive_grid_hand_value() -> None:
    """f(y, x) = 1 on column x = 1, else 0. Box [0, 6]² at scale 1, P = 2: roi 6 (aligned: −0.5
    shift), bin 3, adaptive grid ceil(6 / 2) = 3 → samples x = 0, 1, 2 | 3, 4, 5 → bin values 1/3
    and 0. (A 2×2 grid would sample x = 0.25, 1.75 → 0.5.)"""
    feat = torch.zeros(1, 1, 8, 8)
    feat[..., 1] = 1.0
    out = ops.roi_align(feat, torch.tensor([[0.0, 0, 0, 6, 6]]), 2, 1.0, 0, True)
    torch.testing.assert_close(out[0, 0], torch.tensor([[1 / 3, 0.0], [1 / 3, 0.0]]))
    ramp = torch.arange(10, dtype=torch.float32).repeat(10, 1)[None, None]
    # a tiny box (roi < P) has a 1×1 grid: the sample is the bin centre (x − 0.5 shift)
    out = ops.roi_align(ramp, torch.tensor([[0.0, 3, 3, 4, 4]]), 2, 1.0, 0, True)
    torch.testing.assert_close(out[0, 0], torch.tensor([[2.75, 3.25], [2.75, 3.25]]))
    # zero-size box: no samples, output 0
    out = ops.roi_align(ramp, torch.tensor([[0.0, 3, 3, 3, 6]]), 2, 1.0, 0, True)
    assert torch.equal(out, torch.zeros(1, 1, 2, 2))


def test_roi_align_rejects_bad_rois() -> None:
    with pytest.raises(ValueError, match=r"rois must be \(R, 5\)"):
        ops.roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(3, 4), 2, 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_naive(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(120, 2, generator=g) * 50
    wh = torch.rand(120, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:4] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero-area duplicates: NaN IoU never suppresses
    scores = torch.rand(120, generator=g)
    scores[10:20] = 0.5  # ties
    for thr in (0.3, 0.5, 0.7):
        keep = ops.nms(boxes, scores, thr)
        assert keep.tolist() == ref.nms_naive(boxes.numpy(), scores.numpy(), thr)
    groups = torch.randint(0, 4, (120,), generator=g)
    keep = ops.batched_nms(boxes, scores, groups, 0.5)
    assert keep.tolist() == ref.batched_nms_naive(
        boxes.numpy(), scores.numpy(), groups.numpy(), 0.5
    )


def test_nms_hand_value() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 20]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(0,1) = 90/110 > 0.5; IoU(3,0) = 100/200 = 0.5 is not > 0.5 (strict)
    assert ops.nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert ops.nms(boxes[:0], scores[:0], 0.5).shape == (0,)


@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (30.0, 30.0, 15.0, 15.0)]
)
def test_decode_matches_naive_and_inverts_encode(
    weights: tuple[float, float, float, float],
) -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 60], dim=1)
    deltas = torch.randn(50, 4, generator=g) * 3
    deltas[0, 2] = 1e4  # dw clamped at log(1000/16)
    out = ops.decode_boxes(deltas, boxes, weights)
    expected = np.stack(
        [
            ref.decode_naive(d.numpy(), b.numpy(), weights)
            for d, b in zip(deltas, boxes, strict=True)
        ]
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-4)
    assert out[0, 2] - out[0, 0] == pytest.approx(
        float(boxes[0, 2] - boxes[0, 0]) * 1000 / 16, rel=1e-5
    )
    targets = torch.cat([xy + 3, xy + 20 + torch.rand(50, 2, generator=g) * 40], dim=1)
    back = ops.decode_boxes(ops.encode_boxes(boxes, targets, weights), boxes, weights)
    torch.testing.assert_close(back, targets, rtol=1e-5, atol=1e-3)


def test_clip_nonempty_and_levels() -> None:
    boxes = torch.tensor(
        [
            [-5.0, 2, 30, 40],
            [10, 10, 10, 20],
            [0, 0, 224, 224],
            [0, 0, 112, 112],
            [0, 0, 2000, 2000],
            [0, 0, 10, 10],
        ]
    )
    clipped = ops.clip_boxes(boxes, (30, 25))
    assert clipped[0].tolist() == [0.0, 2.0, 25.0, 30.0]
    assert ops.nonempty_boxes(boxes).tolist() == [True, False, True, True, True, True]
    # canonical 224 px → level 4 (index 2 from p2); halving the side goes one level finer
    assert ops.assign_boxes_to_levels(boxes[2:], 2, 5).tolist() == [2, 1, 3, 0]


def test_multilevel_roi_align_uses_assigned_level() -> None:
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(1, 4, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 224, 224], [5, 5, 60, 40], [0, 0, 500, 500]])
    out = ops.multilevel_roi_align(feats, boxes, 7, (4, 8, 16, 32))
    levels = ops.assign_boxes_to_levels(boxes, 2, 5)
    for k in range(4):
        lvl = int(levels[k])
        single = ops.roi_align(
            feats[lvl], torch.cat([torch.zeros(1), boxes[k]])[None], 7, 1.0 / (4 * 2**lvl)
        )
        assert torch.equal(out[k], single[0])


@pytest.mark.parametrize("seed", range(3))
def test_paste_masks_matches_naive(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    h, w = 23, 31
    masks = torch.rand(6, 28, 28, generator=g)
    boxes = torch.tensor(
        [
            [2.3, 4.1, 20.7, 18.2],  # inside
            [-6.0, -3.5, 9.2, 11.0],  # partly outside (top-left)
            [25.5, 15.2, 40.0, 30.0],  # partly outside (bottom-right)
            [10.2, 10.6, 10.9, 11.1],  # tiny (< 1 px)
            [0.0, 0.0, 31.0, 23.0],  # the whole image
            [5.0, 5.0, 5.5, 20.0],  # thin
        ]
    )
    out = ops.paste_masks_in_image(masks, boxes, (h, w), 0.5)
    assert out.shape == (6, h, w) and out.dtype == torch.bool
    for k in range(6):
        values = ref.paste_values_naive(masks[k].numpy(), boxes[k].numpy(), (h, w))
        clear = np.abs(values - 0.5) > 1e-5  # skip exact-threshold rounding ties
        assert np.array_equal(out[k].numpy()[clear], (values >= 0.5)[clear])
        assert clear.mean() > 0.99


def test_paste_mask_hand_value() -> None:
    """An all-ones mask in box [2, 6)×[1, 3): exactly the pixels whose centres are inside."""
    out = ops.paste_masks_in_image(
        torch.ones(1, 28, 28), torch.tensor([[2.0, 1.0, 6.0, 3.0]]), (5, 8)
    )
    expected = torch.zeros(5, 8, dtype=torch.bool)
    expected[1:3, 2:6] = True
    assert torch.equal(out[0], expected)


def test_scale_clamp_value() -> None:
    assert math.isclose(ops.SCALE_CLAMP, 4.135166556742356)
