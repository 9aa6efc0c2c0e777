"""Promptable losses against hand-computed values (unsam.training.promptable.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from unsam.training.promptable.geometry import point_sample, uncertain_point_coords
from unsam.training.promptable.losses import (
    LossConfig,
    box_l1_loss,
    dice_loss,
    giou_loss,
    iou_score_loss,
    layer_losses,
    sigmoid_bce_loss,
    weighted_total,
)
from unsam.training.promptable.matching import Match


def test_point_sample_hand_values() -> None:
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # pixel centres of a 2x2 map are at 0.25 / 0.75 (align_corners=False)
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75]]])
    torch.testing.assert_close(point_sample(x, coords), torch.tensor([[[0.0, 1.0, 1.5, 2.0]]]))


def test_pointwise_losses_hand_values() -> None:
    logits = torch.tensor([[0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0]])
    assert sigmoid_bce_loss(logits, labels).item() == pytest.approx(math.log(2))
    # sigma = 0.5, 0.5: 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3
    dice = dice_loss(logits, labels)
    assert dice.item() == pytest.approx(1 / 3)
    # IoU head regresses 1 - dice = 2/3: (0.5 - 2/3)^2 = 1/36
    assert iou_score_loss(torch.tensor([0.5]), dice).item() == pytest.approx(1 / 36)


def test_box_losses_hand_values() -> None:
    a = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0]])
    b = torch.tensor([[0.6, 0.5, 0.2, 0.2], [2.5, 0.5, 1.0, 1.0]])
    torch.testing.assert_close(box_l1_loss(a, b), torch.tensor([0.1, 2.0]))
    # overlap: inter 0.02, union 0.06, hull 0.06 -> GIoU 1/3 -> loss 2/3
    # disjoint unit boxes 1 apart: inter 0, union 2, hull 3 -> GIoU -1/3 -> loss 4/3
    torch.testing.assert_close(giou_loss(a, b), torch.tensor([2 / 3, 4 / 3]))


def test_uncertain_points_pick_the_most_uncertain() -> None:
    logits = torch.linspace(-4, 4, 64).reshape(1, 1, 8, 8)
    g = torch.Generator().manual_seed(3)
    pts = uncertain_point_coords(logits, 10, 3.0, 1.0, g)
    assert pts.shape == (1, 10, 2)
    g2 = torch.Generator().manual_seed(3)
    cand = torch.rand((1, 30, 2), generator=g2)
    unc = -point_sample(logits, cand).abs()[0, 0]
    expected = cand[0, torch.argsort(unc, descending=True)[:10]]
    torch.testing.assert_close(torch.sort(pts[0, :, 0]).values, torch.sort(expected[:, 0]).values)
    mixed = uncertain_point_coords(logits, 8, 3.0, 0.75, torch.Generator().manual_seed(0))
    assert mixed.shape == (1, 8, 2) and bool(((mixed >= 0) & (mixed <= 1)).all())


def _hand_case() -> tuple:
    """1 click x 2 tokens, constant logits 0, one empty target mask, token 1 matched to it.

    (An empty mask is 0 at every point, also near the border where bilinear sampling of a full
    mask would mix in the zero padding.)
    """
    mask_logits = torch.zeros((1, 2, 4, 4), requires_grad=True)
    pred_iou = torch.tensor([[0.9, 0.3]], requires_grad=True)
    pred_boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    masks = torch.zeros((1, 16, 16), dtype=torch.bool)
    target_boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    match = Match(query=torch.tensor([1]), target=torch.tensor([0]), click=torch.tensor([0]))
    return mask_logits, pred_iou, pred_boxes, masks, target_boxes, match


def test_layer_losses_hand_values() -> None:
    mask_logits, pred_iou, pred_boxes, masks, target_boxes, match = _hand_case()
    cfg = LossConfig(num_points=10)
    out = layer_losses(
        mask_logits, pred_iou, pred_boxes, masks, target_boxes, match, 2.0, config=cfg
    )
    # every sampled point: sigma = 0.5, label 0 -> BCE ln 2; dice 1 - (0 + 1) / (5 + 0 + 1) = 5/6
    assert out["loss_mask_bce"].item() == pytest.approx(math.log(2) / 2)
    assert out["loss_mask_dice"].item() == pytest.approx(5 / 6 / 2)
    assert out["loss_iou"].item() == pytest.approx(
        (0.3 - 1 / 6) ** 2 / 2
    )  # token 1's IoU, not token 0's
    assert out["loss_bbox"].item() == pytest.approx(0.0) and out[
        "loss_giou"
    ].item() == pytest.approx(0.0, abs=1e-6)
    total = weighted_total([out, out], cfg)
    expected = 2 * (5 * math.log(2) / 2 + 5 * 5 / 12 + (0.3 - 1 / 6) ** 2 / 2)
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_iou_loss_backpropagates_into_the_mask_logits() -> None:
    """Spec §3.6: the IoU target (1 - dice) is not detached."""
    mask_logits, pred_iou, _pred_boxes, masks, _target_boxes, match = _hand_case()
    out = layer_losses(
        mask_logits, pred_iou, None, masks, None, match, 1.0, config=LossConfig(num_points=10)
    )
    out["loss_iou"].backward()
    assert mask_logits.grad is not None and mask_logits.grad[0, 1].abs().sum() > 0
    assert mask_logits.grad[0, 0].abs().sum() == 0  # the unmatched token gets nothing
    assert pred_iou.grad[0, 0] == 0 and pred_iou.grad[0, 1] != 0
    assert out["loss_bbox"].item() == 0.0  # no boxes given


def test_empty_match_gives_zero_losses() -> None:
    mask_logits, pred_iou, pred_boxes, masks, target_boxes, _ = _hand_case()
    empty = Match(
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
    )
    out = layer_losses(mask_logits, pred_iou, pred_boxes, masks, target_boxes, empty, 1.0)
    assert all(v.item() == 0.0 for v in out.values())


def test_unmatched_tokens_iou_targets_hand_case() -> None:
    """Issue 16 (``iou_unmatched``): a token without a target regresses the soft dice of its mask
    with its click's best target, detached; matched tokens keep the original's target."""
    from unsam.training.promptable.losses import unmatched_iou_targets

    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0] = True  # click 0's target: the whole image
    masks[1, :, :4] = True  # click 1's target: the left half
    mask_logits = torch.full((2, 3, 8, 8), -20.0)
    mask_logits[0, 1] = 20.0  # click 0, token 1 (unmatched): exactly its click's target
    mask_logits[1, 2, :, :4] = 20.0  # click 1, token 2 (unmatched): exactly its click's target
    match = Match(
        query=torch.tensor([0, 4]), target=torch.tensor([0, 1]), click=torch.tensor([0, 1])
    )
    g = torch.Generator().manual_seed(0)
    query, target = unmatched_iou_targets(mask_logits, masks, match, 400, g)
    assert query.tolist() == [1, 2, 3, 5]  # click c's token k is query 3c + k
    # query 1 covers its target exactly; 2 and 3 predict nothing (dice (0 + 1) / (|t| + 1));
    # query 5 is click 1's exact left half (click 0's whole image is not its click's target)
    # (bilinear sampling blurs the mask edges and the image border differently for the logits
    # and the bool masks: a dice just below 1)
    assert target[0].item() > 0.9 and target[3].item() > 0.9
    assert target[1].item() < 0.01 and target[2].item() < 0.02

    pred_iou = torch.zeros(2, 3, requires_grad=True)
    base = layer_losses(mask_logits, pred_iou, None, masks, None, match, 1.0)
    cfg = LossConfig(iou_unmatched=True, num_points=400)
    logits = mask_logits.clone().requires_grad_(True)
    out = layer_losses(logits, pred_iou, None, masks, None, match, 1.0, config=cfg)
    # the extra term is (0 - 1)^2 + 2 (0 - ~0)^2 + (0 - 1)^2 = ~2
    extra = out["loss_iou"].item() - base["loss_iou"].item()
    assert 1.7 < extra < 2.0
    out["loss_iou"].backward()
    assert pred_iou.grad[0, 1] != 0 and pred_iou.grad[1, 2] != 0
    assert logits.grad[0, 1].abs().sum() == 0  # detached: no mask gradient for unmatched tokens
