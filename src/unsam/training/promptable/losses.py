"""Losses of the promptable model (PROMPTABLE.md §3.6, ``S-crit``), as plain functions.

For every matched (token, target) pair, on the last decoder layer and each auxiliary layer (same
matching):

- mask BCE: ``num_points`` (12544) points chosen PointRend-style per prediction
  (:func:`uncertain_point_coords`: 3× oversampling, the 75 % most uncertain (−|logit|) kept, 25 %
  fresh uniform points); BCE-with-logits averaged over the points;
- dice on the same points: 1 − (2 Σ σ·t + 1) / (Σ σ + Σ t + 1);
- IoU head: (predicted IoU − (1 − dice))², i.e. it regresses the point-sampled **soft dice
  coefficient**, not a hard IoU, and the target is **not detached** (spec §3.6, §8.6);
- boxes: L1 between (cx, cy, w, h) boxes (summed over the 4 coordinates) and 1 − GIoU.

Each term is summed over pairs and divided by ``num_masks`` (the number of targets, averaged over
processes, at least 1). Tokens without a target get no loss, as in the original, unless
``LossConfig.iou_unmatched``: then their IoU head regresses the soft dice of their mask with the
best of their click's targets, on ``num_points`` uniform points, detached (no mask gradient), in
the same IoU term. Without it their predicted IoU is never trained, and Point(Max), which takes
the token of highest predicted IoU, often picks one of them (:func:`unmatched_iou_targets`).
The total is Σ_layers 5·BCE + 5·dice + 5·L1 + 2·GIoU + 1·IoU (:class:`LossConfig`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from unsam.config import param
from unsam.training.promptable.geometry import (
    box_cxcywh_to_xyxy,
    paired_generalized_box_iou,
    point_sample,
    point_sample_masks,
    uncertain_point_coords,
)

if TYPE_CHECKING:
    from unsam.training.promptable.matching import Match

__all__ = [
    "LOSS_KEYS",
    "LossConfig",
    "box_l1_loss",
    "dice_loss",
    "giou_loss",
    "iou_score_loss",
    "layer_losses",
    "sigmoid_bce_loss",
    "unmatched_iou_targets",
    "weighted_total",
]

#: Keys of :func:`layer_losses`.
LOSS_KEYS = ("loss_mask_bce", "loss_mask_dice", "loss_iou", "loss_bbox", "loss_giou")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and point sampling (PROMPTABLE.md §1.6); defaults are the original's."""

    weight_mask: float = param(5.0, "weight of the point-sampled mask BCE")
    weight_dice: float = param(5.0, "weight of the point-sampled dice loss")
    weight_box: float = param(5.0, "weight of the box L1 loss")
    weight_giou: float = param(2.0, "weight of the box GIoU loss")
    weight_iou: float = param(1.0, "weight of the IoU-head MSE")
    num_points: int = param(12544, "points per mask for the mask losses")
    oversample_ratio: float = param(3.0, "PointRend oversampling of the candidate points")
    importance_sample_ratio: float = param(0.75, "fraction of the points chosen by uncertainty")
    deep_supervision: bool = param(True, "apply the same losses to every auxiliary decoder layer")
    iou_unmatched: bool = param(
        False,
        "also train the IoU head on tokens without a target (the original does not, spec §3.7)",
    )

    def __post_init__(self) -> None:
        if (
            self.num_points < 1
            or self.oversample_ratio < 1
            or not 0 <= self.importance_sample_ratio <= 1
        ):
            raise ValueError(
                "LossConfig: need num_points >= 1, oversample_ratio >= 1 and "
                f"importance_sample_ratio in [0, 1], got {self.num_points}, "
                f"{self.oversample_ratio}, {self.importance_sample_ratio}"
            )

    def weights(self) -> dict[str, float]:
        """Loss key -> weight."""
        return {
            "loss_mask_bce": self.weight_mask,
            "loss_mask_dice": self.weight_dice,
            "loss_iou": self.weight_iou,
            "loss_bbox": self.weight_box,
            "loss_giou": self.weight_giou,
        }


def sigmoid_bce_loss(point_logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over points: (N, P), (N, P) -> (N,)."""
    return F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)


def dice_loss(point_logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """Soft dice loss 1 − (2 Σ σ·t + 1) / (Σ σ + Σ t + 1) per row: (N, P), (N, P) -> (N,)."""
    prob = point_logits.sigmoid()
    numerator = 2.0 * (prob * point_labels).sum(-1)
    denominator = prob.sum(-1) + point_labels.sum(-1)
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def iou_score_loss(pred_iou: torch.Tensor, dice: torch.Tensor) -> torch.Tensor:
    """(pred_iou − (1 − dice))² per pair; the target is not detached (spec §3.6).
    (N,), (N,) -> (N,)."""
    return (pred_iou - (1.0 - dice)) ** 2


def box_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 summed over the 4 (cx, cy, w, h) coordinates: (N, 4), (N, 4) -> (N,)."""
    return (pred - target).abs().sum(-1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − GIoU of matching (cx, cy, w, h) boxes: (N, 4), (N, 4) -> (N,)."""
    return 1.0 - paired_generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))


def unmatched_iou_targets(
    mask_logits: torch.Tensor,
    masks: torch.Tensor,
    match: Match,
    num_points: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU-head targets of the tokens without a target (``LossConfig.iou_unmatched``).

    Each unmatched token of click c gets max over c's matched targets t of the soft dice
    (2 Σ σ·t + 1) / (Σ σ + Σ t + 1) between its mask and t, on ``num_points`` uniform points shared
    by all, computed without gradient.

    Args:
        mask_logits: (C, K, h, w) predicted logits.
        masks: (M, H, W) bool masks of the image.
        match: the image's matching (every click has at least one pair).

    Returns:
        (U,) int64 flattened query indices of the unmatched tokens of clicks with a target, and
        (U,) float32 their targets.
    """
    c, k = mask_logits.shape[:2]
    device = mask_logits.device
    matched = torch.zeros(c * k, dtype=torch.bool, device=device)
    matched[match.query.to(device)] = True
    has_target = torch.zeros(c, dtype=torch.bool, device=device)
    has_target[match.click.to(device)] = True
    unmatched = torch.nonzero(~matched & has_target.repeat_interleave(k)).flatten()
    if unmatched.numel() == 0:
        return unmatched, mask_logits.new_zeros(0, dtype=torch.float32)
    with torch.no_grad():
        coords = torch.rand((num_points, 2), generator=generator).to(device)
        src = mask_logits.detach().reshape(c * k, 1, *mask_logits.shape[-2:])[unmatched].float()
        prob = point_sample(src, coords[None].expand(len(unmatched), -1, -1))[:, 0].sigmoid()
        labels = point_sample_masks(masks, match.target, coords)  # (pairs, P)
        dice = (2.0 * prob @ labels.T + 1.0) / (
            prob.sum(-1)[:, None] + labels.sum(-1)[None, :] + 1.0
        )
        same_click = (unmatched // k)[:, None] == match.click.to(device)[None, :]
        target = dice.masked_fill(~same_click, -1.0).max(dim=1).values.clamp(min=0.0)
    return unmatched, target


def layer_losses(
    mask_logits: torch.Tensor,
    pred_iou: torch.Tensor,
    pred_boxes: torch.Tensor | None,
    masks: torch.Tensor,
    target_boxes: torch.Tensor | None,
    match: Match,
    num_masks: float,
    *,
    config: LossConfig = LossConfig(),
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The unweighted losses of one decoder layer for one image (module doc).

    Args:
        mask_logits: (C, K, h, w) predicted logits.
        pred_iou: (C, K) raw predicted IoU.
        pred_boxes: (C, K, 4) predicted (cx, cy, w, h) or None (box losses are then 0).
        masks: (M, H, W) bool, the image's masks at the padded input resolution.
        target_boxes: (M, 4) (cx, cy, w, h) or None.
        match: the image's matching (:func:`unsam.training.promptable.matching.match_clicks`).
        num_masks: normaliser (targets in the batch, averaged over processes, >= 1).
        config: point sampling settings.
        generator: RNG of the point sampling.

    Returns:
        :data:`LOSS_KEYS` -> scalar tensors (sum over pairs / num_masks).
    """
    c, k = mask_logits.shape[:2]
    zero = mask_logits.sum() * 0.0
    if len(match) == 0:
        return {key: zero for key in LOSS_KEYS}
    q = match.query.to(mask_logits.device)
    src = mask_logits.reshape(c * k, 1, *mask_logits.shape[-2:])[q]
    coords = uncertain_point_coords(
        src, config.num_points, config.oversample_ratio, config.importance_sample_ratio, generator
    )
    labels = point_sample_masks(masks, match.target, coords)
    logits = point_sample(src, coords)[:, 0]
    dice = dice_loss(logits, labels)
    out = {
        "loss_mask_bce": sigmoid_bce_loss(logits, labels).sum() / num_masks,
        "loss_mask_dice": dice.sum() / num_masks,
        "loss_iou": iou_score_loss(pred_iou.reshape(c * k)[q], dice).sum() / num_masks,
    }
    if config.iou_unmatched:
        others, target = unmatched_iou_targets(
            mask_logits, masks, match, config.num_points, generator
        )
        if len(others):
            extra = (pred_iou.reshape(c * k)[others] - target) ** 2
            out["loss_iou"] = out["loss_iou"] + extra.sum() / num_masks
    if pred_boxes is not None and target_boxes is not None:
        pb = pred_boxes.reshape(c * k, 4)[q]
        tb = target_boxes.to(pb.device)[match.target.to(pb.device)]
        out["loss_bbox"] = box_l1_loss(pb, tb).sum() / num_masks
        out["loss_giou"] = giou_loss(pb, tb).sum() / num_masks
    else:
        out["loss_bbox"] = zero
        out["loss_giou"] = zero
    return out


def weighted_total(
    per_layer: Sequence[Mapping[str, torch.Tensor]], config: LossConfig = LossConfig()
) -> torch.Tensor:
    """Σ over layers and keys of weight · loss (PROMPTABLE.md §3.6 total)."""
    if not per_layer:
        raise ValueError("no layer losses to add up")
    weights = config.weights()
    total = per_layer[0][LOSS_KEYS[0]] * 0.0
    for layer in per_layer:
        for key, value in layer.items():
            total = total + weights[key] * value
    return total
