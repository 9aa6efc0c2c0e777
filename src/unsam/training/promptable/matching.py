"""Many-to-many Hungarian matching of click tokens to click targets (PROMPTABLE.md §3.5, ``S-m2m``).

For one image with C clicks of K tokens (Q = C·K queries, query q = K·c + k) and the concatenated
per-click target lists (T targets, target t owned by click ``owner[t]``):

    C[q, t] = 5·CE + 5·dice + 5·L1(box) + 2·(−GIoU)      if q belongs to click owner[t]
    C[q, t] = 1e6                                         otherwise

CE and dice are computed on ``num_points`` (12544) points drawn uniformly once per image and
shared by all predictions and targets; one ``scipy.optimize.linear_sum_assignment`` on the whole
(Q, T) matrix gives every target its own token of the same click (a click has <= K targets).
The matching runs on the last decoder layer and is reused for the auxiliary layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from unsam.config import param
from unsam.training.promptable.geometry import (
    box_cxcywh_to_xyxy,
    generalized_box_iou,
    point_sample_masks,
)
from unsam.training.promptable.targets import flatten_targets

__all__ = [
    "INVALID_COST",
    "Match",
    "MatcherConfig",
    "many_to_many_assignment",
    "mask_ce_cost",
    "mask_dice_cost",
    "match_clicks",
    "match_cost_matrix",
]

#: Cost of pairing a token with a target of another click.
INVALID_COST = 1e6


@dataclass(frozen=True)
class MatcherConfig:
    """Matcher costs and point count (PROMPTABLE.md §1.6); defaults are the original's."""

    cost_mask: float = param(5.0, "weight of the point-sampled sigmoid cross-entropy cost")
    cost_dice: float = param(5.0, "weight of the point-sampled dice cost")
    cost_box: float = param(5.0, "weight of the L1 cost between (cx, cy, w, h) boxes")
    cost_giou: float = param(2.0, "weight of the -GIoU cost")
    num_points: int = param(
        12544, "uniform points shared by all predictions and targets of an image"
    )

    def __post_init__(self) -> None:
        if self.num_points < 1:
            raise ValueError(f"MatcherConfig.num_points={self.num_points} must be >= 1")
        for name in ("cost_mask", "cost_dice", "cost_box", "cost_giou"):
            if getattr(self, name) < 0:
                raise ValueError(f"MatcherConfig.{name} must be >= 0")


@dataclass(frozen=True)
class Match:
    """Result of the matching of one image.

    Attributes:
        query: (P,) int64 flattened query index q = K·click + token.
        target: (P,) int64 index into the image's masks.
        click: (P,) int64 click of each pair.
    """

    query: torch.Tensor
    target: torch.Tensor
    click: torch.Tensor

    def __len__(self) -> int:
        return int(self.query.numel())


def mask_ce_cost(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid cross-entropy of every prediction against every target over the points.

    Args:
        logits: (Q, P) float mask logits at the points.
        labels: (T, P) float targets in [0, 1] at the same points.

    Returns:
        (Q, T) float: (Σ_p BCE(x, 1)·t + BCE(x, 0)·(1 − t)) / P.
    """
    p = logits.shape[1]
    pos = F.softplus(-logits)  # BCE(x, 1)
    neg = F.softplus(logits)  # BCE(x, 0)
    return (pos @ labels.T + neg @ (1.0 - labels).T) / p


def mask_dice_cost(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Dice cost 1 − (2 Σ σ(x)·t + 1) / (Σ σ(x) + Σ t + 1) of every prediction / target pair.

    Args:
        logits: (Q, P) float; labels: (T, P) float in [0, 1].

    Returns:
        (Q, T) float.
    """
    prob = logits.sigmoid()
    numerator = 2.0 * prob @ labels.T
    denominator = prob.sum(-1)[:, None] + labels.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def match_cost_matrix(
    point_logits: torch.Tensor,
    point_labels: torch.Tensor,
    pred_boxes: torch.Tensor | None,
    target_boxes: torch.Tensor | None,
    config: MatcherConfig = MatcherConfig(),
) -> torch.Tensor:
    """The weighted cost between all Q predictions and all T targets (no click restriction).

    Args:
        point_logits: (Q, P) predicted logits at the shared points.
        point_labels: (T, P) target values at the same points.
        pred_boxes: (Q, 4) (cx, cy, w, h) or None (no box terms).
        target_boxes: (T, 4) (cx, cy, w, h) or None.

    Returns:
        (Q, T) float32.
    """
    cost = config.cost_mask * mask_ce_cost(point_logits, point_labels)
    cost = cost + config.cost_dice * mask_dice_cost(point_logits, point_labels)
    if pred_boxes is not None and target_boxes is not None:
        cost = cost + config.cost_box * torch.cdist(pred_boxes, target_boxes, p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))
        cost = cost - config.cost_giou * giou
    return cost.float()


def many_to_many_assignment(
    cost: torch.Tensor | np.ndarray,
    query_click: Sequence[int] | np.ndarray,
    target_click: Sequence[int] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One Hungarian assignment where a query may only take targets of its own click.

    Entries of other clicks are set to :data:`INVALID_COST` and a single
    ``linear_sum_assignment`` runs on the whole matrix.

    Args:
        cost: (Q, T) costs, Q >= T.
        query_click: (Q,) click of each query.
        target_click: (T,) click of each target.

    Returns:
        (rows, cols): matched query and target indices, (T,) int64 each, sorted by row.

    Raises:
        ValueError: a click with more targets than queries (the original asserts <= 6).
    """
    c = np.array(cost.detach().cpu() if isinstance(cost, torch.Tensor) else cost, dtype=np.float64)
    qc = np.asarray(query_click, dtype=np.int64)
    tc = np.asarray(target_click, dtype=np.int64)
    if c.shape != (qc.size, tc.size):
        raise ValueError(f"cost is {c.shape} but there are {qc.size} queries and {tc.size} targets")
    queries_per_click = np.bincount(qc, minlength=int(tc.max(initial=-1)) + 1)
    targets_per_click = np.bincount(tc, minlength=queries_per_click.size)
    over = np.flatnonzero(targets_per_click > queries_per_click[: targets_per_click.size])
    if over.size:
        k = int(over[0])
        raise ValueError(
            f"click {k} has {targets_per_click[k]} targets but only {queries_per_click[k]} tokens; "
            "cap the target sets (targets.click_targets max_targets)"
        )
    c[qc[:, None] != tc[None, :]] = INVALID_COST
    if not np.isfinite(c).all():
        raise ValueError("the matching cost has NaN or infinite entries (diverged predictions?)")
    rows, cols = linear_sum_assignment(c)
    return rows.astype(np.int64), cols.astype(np.int64)


@torch.no_grad()
def match_clicks(
    mask_logits: torch.Tensor,
    pred_boxes: torch.Tensor | None,
    masks: torch.Tensor,
    target_boxes: torch.Tensor | None,
    targets: Sequence[torch.Tensor],
    *,
    config: MatcherConfig = MatcherConfig(),
    generator: torch.Generator | None = None,
) -> Match:
    """Match the tokens of C clicks to their target sets (module doc).

    Args:
        mask_logits: (C, K, h, w) predicted logits (1/4 resolution of the padded input).
        pred_boxes: (C, K, 4) predicted (cx, cy, w, h), or None to leave out the box costs.
        masks: (M, H, W) bool, all masks of the image at the padded input resolution.
        target_boxes: (M, 4) (cx, cy, w, h) of the masks (:func:`targets.mask_boxes_cxcywh`) or
            None.
        targets: C tensors of mask indices (:func:`targets.click_targets`).
        config: costs and point count.
        generator: RNG of the uniform points (default: the global one).

    Returns:
        A :class:`Match` with one pair per target.
    """
    if mask_logits.ndim != 4:
        raise ValueError(f"mask_logits must be (C, K, h, w), got shape {tuple(mask_logits.shape)}")
    c, k = mask_logits.shape[:2]
    if len(targets) != c:
        raise ValueError(f"{len(targets)} target lists for {c} clicks")
    target_masks, owner = flatten_targets(targets)
    if target_masks.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return Match(empty, empty, empty)
    device = mask_logits.device
    coords = torch.rand((1, config.num_points, 2), generator=generator).to(device)
    logits = mask_logits.reshape(1, c * k, *mask_logits.shape[-2:]).float()
    point_logits = F.grid_sample(logits, 2.0 * coords[:, :, None] - 1.0, align_corners=False)[
        0, :, :, 0
    ]
    unique, inverse = torch.unique(target_masks, return_inverse=True)
    labels = point_sample_masks(masks, unique.to(masks.device), coords[0])[inverse.to(device)]
    pb = tb = None
    if pred_boxes is not None and target_boxes is not None:
        pb = pred_boxes.reshape(c * k, 4).float()
        tb = target_boxes.to(device)[target_masks.to(device)].float()
    cost = match_cost_matrix(point_logits, labels, pb, tb, config)
    query_click = np.repeat(np.arange(c), k)
    rows, cols = many_to_many_assignment(cost, query_click, owner.numpy())
    return Match(
        query=torch.from_numpy(rows),
        target=target_masks[torch.from_numpy(cols)],
        click=owner[torch.from_numpy(cols)],
    )
