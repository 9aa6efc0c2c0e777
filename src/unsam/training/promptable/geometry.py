"""Point sampling of masks and box geometry shared by the matcher and the losses of the promptable
model (PROMPTABLE.md §3.5-3.6): detectron2's ``point_sample``, its bool-mask twin, PointRend's
uncertain points, (cx, cy, w, h) -> xyxy and the generalized IoU.

Both :mod:`unsam.training.promptable.matching` and :mod:`unsam.training.promptable.losses` import
from here, so neither imports the other's helpers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "box_cxcywh_to_xyxy",
    "generalized_box_iou",
    "paired_generalized_box_iou",
    "point_sample",
    "point_sample_masks",
    "uncertain_point_coords",
]


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


def paired_generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of matching pairs of xyxy boxes: (N, 4), (N, 4) -> (N,), equal to
    ``diagonal(generalized_box_iou(a, b))`` without building the (N, N) matrix (the loss needs
    only the matched pairs; the matrix cost 38 ms of a 0.3 s tiny-model CPU step)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-12)
    wh_c = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    area_c = wh_c[:, 0] * wh_c[:, 1]
    return iou - (area_c - union) / area_c.clamp(min=1e-12)
