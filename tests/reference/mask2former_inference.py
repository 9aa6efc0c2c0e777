"""The original Mask2Former instance inference, in the original's order (spec §6.5), for tests.

Upsamples *every* query's mask logits to the padded input size, crops the valid region, resizes
to the image size (detectron2 ``sem_seg_postprocess``), then takes the top-k queries by
foreground probability, binarises at logit > 0 and scores ``prob x mean in-mask sigmoid``
(``maskformer_model.py::instance_inference``). Memory ~ Q x H x W: only for small inputs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def instance_inference_naive(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_hw: tuple[int, int],
    valid_hw: tuple[int, int],
    image_hw: tuple[int, int],
    topk: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (query indices (k,), scores (k,), binary masks (k, H, W) bool) in top-k order."""
    up = F.interpolate(
        mask_logits[None].float(), size=padded_hw, mode="bilinear", align_corners=False
    )
    up = up[:, :, : valid_hw[0], : valid_hw[1]]
    up = F.interpolate(up, size=image_hw, mode="bilinear", align_corners=False)[0]
    scores = F.softmax(class_logits.float(), dim=-1)[:, :-1]  # (Q, 1)
    top_scores, top_idx = scores.flatten(0, 1).topk(topk, sorted=True)
    mask_pred = up[top_idx]
    pred_masks = (mask_pred > 0).float()
    mask_scores = (mask_pred.sigmoid().flatten(1) * pred_masks.flatten(1)).sum(1) / (
        pred_masks.flatten(1).sum(1) + 1e-6
    )
    return top_idx.numpy(), (top_scores * mask_scores).numpy(), pred_masks.bool().numpy()


def upsample_naive(
    mask_logits: torch.Tensor,
    padded_hw: tuple[int, int],
    valid_hw: tuple[int, int],
    image_hw: tuple[int, int],
) -> torch.Tensor:
    """The original's mask upsampling: bilinear to the padded input, crop, bilinear to the image."""
    up = F.interpolate(
        mask_logits[None].float(), size=padded_hw, mode="bilinear", align_corners=False
    )
    up = up[:, :, : valid_hw[0], : valid_hw[1]]
    return F.interpolate(up, size=image_hw, mode="bilinear", align_corners=False)[0]


def stability_naive(logits: torch.Tensor, mask_threshold: float = 0.0, offset: float = 1.0):
    """SAM's ``calculate_stability_score`` per mask, as a list of floats: the IoU of the masks
    thresholded at ``mask_threshold + offset`` and ``mask_threshold - offset`` (the first lies
    inside the second, so |high| / |low|), counted pixel by pixel; 1.0 when both are empty."""
    out = []
    for m in logits:
        values = m.flatten().tolist()
        high = sum(1 for v in values if v > mask_threshold + offset)
        low = sum(1 for v in values if v > mask_threshold - offset)
        out.append(high / low if low else 1.0)
    return out
