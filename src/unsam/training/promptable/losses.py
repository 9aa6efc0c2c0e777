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
processes, at least 1). Tokens without a target get no loss. The total is
Σ_layers 5·BCE + 5·dice + 5·L1 + 2·GIoU + 1·IoU (:class:`LossConfig`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from unsam.config import param

if TYPE_CHECKING:
    from unsam.training.promptable.matching import Match

__all__ = [
    "LOSS_KEYS",
    "LossConfig",
    "box_cxcywh_to_xyxy",
    "box_l1_loss",
    "dice_loss",
    "generalized_box_iou",
    "giou_loss",
    "iou_score_loss",
    "layer_losses",
    "point_sample",
    "point_sample_masks",
    "sigmoid_bce_loss",
    "uncertain_point_coords",
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


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """detectron2 ``point_sample``: bilinear values at normalised points (``align_corners=False``).

    Args:
        inputs: (N, C, H, W) float.
        coords: (N, P, 2) float (x, y) in [0, 1] of the whole map.

    Returns:
        (N, C, P) float.
    """
    if (
        inputs.ndim != 4
        or coords.ndim != 3
        or coords.shape[-1] != 2
        or coords.shape[0] != inputs.shape[0]
    ):
        raise ValueError(
            "need inputs (N, C, H, W) and coords (N, P, 2), "
            f"got {tuple(inputs.shape)}, {tuple(coords.shape)}"
        )
    out = F.grid_sample(inputs, 2.0 * coords[:, :, None] - 1.0, align_corners=False)
    return out[..., 0]


def point_sample_masks(
    masks: torch.Tensor, index: torch.Tensor, coords: torch.Tensor
) -> torch.Tensor:
    """Bilinear values of bool masks ``masks[index[i]]`` at points, as :func:`point_sample` gives.

    Reads only the 4 neighbours of each point from the bool masks (no float copy of whole masks);
    the result equals ``point_sample(masks[index].float()[:, None], coords)`` (zero padding,
    ``align_corners=False``) up to float rounding.

    Args:
        masks: (M, H, W) bool.
        index: (U,) int64 mask indices.
        coords: (P, 2) shared points or (U, P, 2) points per sample, (x, y) in [0, 1].

    Returns:
        (U, P) float32 in [0, 1].
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (M, H, W), got shape {tuple(masks.shape)}")
    _, h, w = masks.shape
    device = coords.device
    u = int(index.numel())
    pts = coords.float()
    if pts.ndim == 2:
        pts = pts[None].expand(u, *pts.shape)
    x = pts[..., 0] * w - 0.5
    y = pts[..., 1] * h - 0.5
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = x - x0
    fy = y - y0
    flat = masks.reshape(masks.shape[0], h * w).to(device)
    rows = index.to(device).long()[:, None].expand(u, pts.shape[1])
    out = torch.zeros((u, pts.shape[1]), dtype=torch.float32, device=device)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi = (x0 + dx).long()
            yi = (y0 + dy).long()
            valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            lin = yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)
            val = flat[rows, lin] & valid
            out = out + wy * wx * val.float()
    return out


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """detectron2 ``get_uncertain_point_coords_with_randomness`` with uncertainty −|logit|.

    Draws ``int(num_points * oversample_ratio)`` uniform points, keeps the
    ``int(importance_sample_ratio * num_points)`` with the highest uncertainty and adds the rest as
    fresh uniform points.

    Args:
        logits: (N, 1, h, w) float mask logits.

    Returns:
        (N, num_points, 2) float (x, y) in [0, 1].
    """
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand((n, num_sampled, 2), generator=generator).to(logits.device)
    uncertainty = -point_sample(logits.detach().float(), coords).abs()  # (N, 1, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainty[:, 0], k=num_uncertain, dim=1).indices
    picked = torch.gather(coords, 1, idx[..., None].expand(n, num_uncertain, 2))
    if num_random > 0:
        fresh = torch.rand((n, num_random, 2), generator=generator).to(logits.device)
        picked = torch.cat([picked, fresh], 1)
    return picked


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


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(…, 4) (cx, cy, w, h) -> (…, 4) (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of every pair of xyxy boxes (no +1): (N, 4), (M, 4) -> (N, M).

    Degenerate (zero-area) boxes give a 0/0 that is replaced by 0 IoU, so the loss stays finite.
    """
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / union.clamp(min=1e-12)
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    area_c = wh_c[..., 0] * wh_c[..., 1]
    return iou - (area_c - union) / area_c.clamp(min=1e-12)


def box_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 summed over the 4 (cx, cy, w, h) coordinates: (N, 4), (N, 4) -> (N,)."""
    return (pred - target).abs().sum(-1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − GIoU of matching (cx, cy, w, h) boxes: (N, 4), (N, 4) -> (N,)."""
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
    return 1.0 - torch.diagonal(giou)


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
