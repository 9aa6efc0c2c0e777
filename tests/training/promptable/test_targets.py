"""Click sampling and per-click target sets (unsam.training.promptable.targets)."""

from __future__ import annotations

import pytest
import torch

from unsam.training.promptable.targets import (
    click_targets,
    flatten_targets,
    jitter_click_boxes,
    mask_boxes_cxcywh,
    sample_click_masks,
    sample_clicks,
)


def _random_masks(seed: int, m: int = 9, hw: tuple[int, int] = (24, 32)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros((m, *hw), dtype=torch.bool)
    for i in range(m):
        y0 = int(torch.randint(0, hw[0] - 4, (1,), generator=g))
        x0 = int(torch.randint(0, hw[1] - 4, (1,), generator=g))
        h = int(torch.randint(2, hw[0] - y0 + 1, (1,), generator=g))
        w = int(torch.randint(2, hw[1] - x0 + 1, (1,), generator=g))
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return masks


def test_sample_click_masks_repeats_a_permutation() -> None:
    g = torch.Generator().manual_seed(0)
    src = sample_click_masks(7, 60, g)
    assert src.shape == (60,)
    counts = torch.bincount(src, minlength=7)
    # a permutation of 7 repeated 60 // 7 + 1 = 9 times, truncated to 60: each mask 8 or 9 times
    assert sorted(counts.tolist()) == [8, 8, 8, 9, 9, 9, 9]
    assert sorted(src[:7].tolist()) == list(range(7))  # the first block is a permutation
    assert torch.equal(src[:7], src[7:14])  # and it repeats
    many = sample_click_masks(100, 60, g)
    assert many.unique().numel() == 60  # M > 60: distinct masks
    with pytest.raises(ValueError, match="num_masks"):
        sample_click_masks(0, 60)


@pytest.mark.parametrize("seed", range(3))
def test_every_target_contains_its_click_and_at_most_six(seed: int) -> None:
    masks = _random_masks(seed)
    # add 8 nested masks around one pixel so that some clicks have more than 6 candidates
    nested = torch.zeros((8, *masks.shape[1:]), dtype=torch.bool)
    for i in range(8):
        nested[i, 10 - i : 12 + i, 14 - i : 16 + i] = True
    masks = torch.cat([masks, nested])
    g = torch.Generator().manual_seed(seed)
    source, points = sample_clicks(masks, 60, g)
    assert source.shape == (60,) and points.shape == (60, 2) and points.dtype == torch.int64
    targets = click_targets(masks, points, 6, g)
    assert len(targets) == 60
    over = 0
    for c, t in enumerate(targets):
        x, y = points[c].tolist()
        assert masks[source[c], y, x]  # the click is inside its source mask
        assert 1 <= t.numel() <= 6 and t.unique().numel() == t.numel()
        assert all(masks[int(i), y, x] for i in t)  # every target contains the click
        containing = int(masks[:, y, x].sum())
        assert t.numel() == min(containing, 6)
        if containing <= 6:
            assert int(source[c]) in t.tolist()
            assert t.tolist() == sorted(t.tolist())  # ascending mask order
        else:
            over += 1
    # the centre pixel (15, 11) lies in all 8 nested masks: force a click there
    t = click_targets(masks, torch.tensor([[15, 11]]), 6, g)[0]
    assert t.numel() == 6 and int(masks[:, 11, 15].sum()) >= 8


def test_click_targets_errors() -> None:
    masks = torch.zeros((2, 5, 5), dtype=torch.bool)
    masks[0, :2, :2] = True
    with pytest.raises(ValueError, match="inside no mask"):
        click_targets(masks, torch.tensor([[4, 4]]))
    with pytest.raises(ValueError, match="outside"):
        click_targets(masks, torch.tensor([[5, 0]]))
    with pytest.raises(ValueError, match="empty"):
        sample_clicks(masks, 10, torch.Generator().manual_seed(1))  # mask 1 is empty


def test_flatten_targets() -> None:
    masks, owner = flatten_targets(
        [torch.tensor([3, 1]), torch.tensor([0]), torch.tensor([2, 4, 5])]
    )
    assert masks.tolist() == [3, 1, 0, 2, 4, 5]
    assert owner.tolist() == [0, 0, 1, 2, 2, 2]


def test_mask_boxes_hand_values() -> None:
    m = torch.zeros((2, 10, 20), dtype=torch.bool)
    m[0, 2:5, 5:10] = True  # xyxy (5, 2, 10, 5) / (20, 10, 20, 10) = (0.25, 0.2, 0.5, 0.5)
    boxes = mask_boxes_cxcywh(m)
    torch.testing.assert_close(boxes[0], torch.tensor([0.375, 0.35, 0.25, 0.3]))
    assert boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # empty mask


def test_jitter_click_boxes_is_tiny_and_clamped() -> None:
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.2], [0.0, 1.0, 0.1, 0.1]])
    out = jitter_click_boxes(boxes, generator=torch.Generator().manual_seed(0))
    bound = torch.tensor([[0.05, 0.1, 0.1, 0.2], [0.05, 0.05, 0.1, 0.1]]) * 0.004
    assert bool(((out - boxes).abs() <= bound + 1e-7).all())
    assert not torch.equal(out[0], boxes[0])
    assert bool(((out >= 0) & (out <= 1)).all())
