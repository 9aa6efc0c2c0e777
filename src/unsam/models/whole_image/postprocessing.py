"""Post-processing of the whole-image model (spec §6.5 steps 2-5), pure functions over tensors:
class probabilities and 1/4-resolution mask logits -> the top masks, upsampled chunk by chunk to
the image size, scored, encoded to RLE; the memory bound of one image; mask NMS.

At most ``chunk_size`` full-resolution masks exist at any time, never ``num_queries x H x W``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from unsam.masks import (
    LogitResizePlan,
    greedy_nms,
    logit_resize_plan,
    resize_logits_transposed,
)
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.records import encode_transposed_masks, rle_iou_matrix

__all__ = [
    "ScoredMasks",
    "TopMasks",
    "memory_bound_bytes",
    "postprocess_masks",
    "postprocess_top_masks",
]


@dataclass(frozen=True)
class ScoredMasks:
    """One image's kept masks, in descending foreground-probability order (all length k).

    Attributes:
        query_indices: (k,) int64 query index of each mask.
        class_probs: (k,) float32 foreground probability.
        scores: (k,) float32 final score = foreground probability x mean sigmoid inside the mask.
        areas: (k,) int64 mask area in pixels of the original image.
        rles: k COCO compressed RLE dicts on the original image grid.
        stability: (k,) float32 SAM's stability score: IoU of the masks thresholded at
            ``mask_threshold + 1`` and ``mask_threshold - 1`` on the upsampled logits (1 when both
            are empty).
    """

    query_indices: npt.NDArray[np.int64]
    class_probs: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    areas: npt.NDArray[np.int64]
    rles: list[dict[str, Any]]
    stability: npt.NDArray[np.float32]


def postprocess_masks(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    padded_hw: tuple[int, int],
    valid_hw: tuple[int, int],
    image_hw: tuple[int, int],
    max_masks: int = 1000,
    mask_threshold: float = 0.0,
    chunk_size: int = 16,
    chunk_bytes: int | None = None,
) -> ScoredMasks:
    """Top-k first, then chunked upsampling, scoring and RLE encoding (spec §6.5, bug 22 fixed).

    Equal to the original's rule (upsample every query to the padded size, crop, resize to the
    image, take the top-k by foreground probability, binarise at logit > 0, score = probability x
    mean in-mask sigmoid) but at most ``chunk_size`` masks are ever held at full resolution.

    Args:
        class_logits: (Q, 2) logits; column 0 = object, last column = no-object.
        mask_logits: (Q, h, w) mask logits at 1/4 of the padded input size.
        padded_hw: (H', W') of the padded model input.
        valid_hw: (h', w') of the resized image inside the padded input (top-left aligned).
        image_hw: (H, W) of the original image.
        max_masks: queries kept by foreground probability, before upsampling.
        mask_threshold: binarisation cutoff on the upsampled logits.
        chunk_size: queries upsampled at once.
        chunk_bytes: if given, fewer queries per chunk so that one chunk's full-resolution float
            logits, sigmoid and bool mask (12 bytes a pixel) fit in this many bytes (at least one
            query per chunk). So on a 48 MP photo one mask is upsampled at a time.

    Returns:
        :class:`ScoredMasks` (on the CPU), including empty masks (area 0, score 0).

    Raises:
        ValueError: inconsistent shapes.
    """
    if (
        class_logits.ndim != 2
        or mask_logits.ndim != 3
        or class_logits.shape[0] != mask_logits.shape[0]
    ):
        raise ValueError(
            f"expected class_logits (Q, C) and mask_logits (Q, h, w) with the same Q, got "
            f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}"
        )
    if chunk_size < 1 or max_masks < 1:
        raise ValueError(f"chunk_size and max_masks must be >= 1, got {chunk_size} and {max_masks}")
    if chunk_bytes is not None:
        chunk_size = _chunk_for(chunk_size, chunk_bytes, image_hw, mask_logits.shape[-1])
    fg_prob = class_logits.float().softmax(-1)[:, 0]
    k = min(int(max_masks), int(fg_prob.shape[0]))
    top_prob, top_idx = fg_prob.topk(k, sorted=True)
    return _score_top_masks(
        top_prob,
        top_idx,
        lambda a, b: mask_logits[top_idx[a:b]],
        padded_hw=padded_hw,
        valid_hw=valid_hw,
        image_hw=image_hw,
        mask_threshold=mask_threshold,
        chunk_size=chunk_size,
    )


@dataclass(frozen=True)
class TopMasks:
    """The forward pass of the fast path: the top-k queries and only their 1/4-resolution masks.

    Attributes:
        class_probs: (k,) foreground probabilities, descending.
        query_indices: (k,) int64 query index of each.
        mask_logits: (k, H'/4, W'/4) mask logits of those queries, in the same order.
        padded_hw: (H', W') of the padded model input.
        valid_hw: (h', w') of the resized image inside the padded input.
    """

    class_probs: torch.Tensor
    query_indices: torch.Tensor
    mask_logits: torch.Tensor
    padded_hw: tuple[int, int]
    valid_hw: tuple[int, int]


def postprocess_top_masks(
    top: TopMasks,
    *,
    image_hw: tuple[int, int],
    mask_threshold: float = 0.0,
    chunk_size: int = 16,
    chunk_bytes: int | None = None,
) -> ScoredMasks:
    """:func:`postprocess_masks` for the output of :meth:`WholeImageSegmenter.predict_top_masks`."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if chunk_bytes is not None:
        chunk_size = _chunk_for(chunk_size, chunk_bytes, image_hw, top.mask_logits.shape[-1])
    masks = top.mask_logits
    return _score_top_masks(
        top.class_probs,
        top.query_indices,
        lambda a, b: masks[a:b],
        padded_hw=top.padded_hw,
        valid_hw=top.valid_hw,
        image_hw=image_hw,
        mask_threshold=mask_threshold,
        chunk_size=chunk_size,
    )


def _chunk_for(chunk_size: int, chunk_bytes: int, image_hw: tuple[int, int], low_width: int) -> int:
    """Queries per chunk so that one chunk fits in ``chunk_bytes`` (at least one): a mask costs
    ``12*H*W + 4*H*w`` bytes (float logits, bool masks; the row-resized (H, w) floats)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    per_mask = 12 * h * w + 4 * h * int(low_width)
    return max(1, min(chunk_size, int(chunk_bytes) // max(per_mask, 1)))


def _count_true(masks: npt.NDArray[np.bool_]) -> torch.Tensor:
    """(n,) int64 number of True pixels of each mask (numpy's popcount; no int64 copy)."""
    return torch.tensor([np.count_nonzero(m) for m in masks], dtype=torch.int64)


def _score_top_masks(
    top_prob: torch.Tensor,
    top_idx: torch.Tensor,
    rows: Any,
    *,
    padded_hw: tuple[int, int],
    valid_hw: tuple[int, int],
    image_hw: tuple[int, int],
    mask_threshold: float,
    chunk_size: int,
) -> ScoredMasks:
    """Upsample, binarise, score and encode the masks ``rows(start, stop)`` chunk by chunk."""
    k = int(top_idx.shape[0])
    out_hw = (int(image_hw[0]), int(image_hw[1]))
    scores: list[torch.Tensor] = []
    areas: list[torch.Tensor] = []
    stability: list[torch.Tensor] = []
    rles: list[dict[str, Any]] = []
    plan: LogitResizePlan | None = None
    for start in range(0, k, chunk_size):
        low = rows(start, start + chunk_size).float()
        if plan is None:
            plan = logit_resize_plan(low.shape[1:], padded_hw, valid_hw, out_hw, device=low.device)
        logits = resize_logits_transposed(low, plan)  # (n, W, H)
        del low
        binary = logits > mask_threshold
        binary_np = binary.cpu().numpy()
        area = _count_true(binary_np)
        # SAM's stability score (offset 1.0 in logit units): the high mask lies inside the low one
        high = _count_true((logits > mask_threshold + 1.0).cpu().numpy())
        low_count = _count_true((logits > mask_threshold - 1.0).cpu().numpy())
        stability.append(
            torch.where(low_count > 0, high.double() / low_count.clamp(min=1).double(), 1.0).float()
        )
        # in place: no second full-size float tensor (masked_fill_ needs no float copy of the mask)
        inside = logits.sigmoid_().masked_fill_(~binary, 0.0).flatten(1).sum(1).cpu()
        del logits, binary
        scores.append(
            top_prob[start : start + chunk_size].cpu() * inside / (area.to(inside.dtype) + 1e-6)
        )
        areas.append(area)
        rles.extend(encode_transposed_masks(binary_np))
        del binary_np
    return ScoredMasks(
        query_indices=top_idx.cpu().numpy().astype(np.int64),
        class_probs=top_prob.cpu().numpy().astype(np.float32),
        scores=(torch.cat(scores) if scores else torch.zeros(0)).cpu().numpy().astype(np.float32),
        areas=(torch.cat(areas) if areas else torch.zeros(0, dtype=torch.long))
        .cpu()
        .numpy()
        .astype(np.int64),
        rles=rles,
        stability=(torch.cat(stability) if stability else torch.zeros(0))
        .cpu()
        .numpy()
        .astype(np.float32),
    )


def memory_bound_bytes(
    image_hw: tuple[int, int], config: SegmentConfig, *, model_bytes: int, num_queries: int = 2000
) -> int:
    """Upper bound of the memory one image needs beyond the loaded model (documented formula).

    ``peak <= model_bytes + 3*H*W + 4*3*S*L*2 + 4*Q*(S/4)*(L/4)
    + max(chunk_megabytes MiB, 12*H*W + 4*H*L/4) + 192 MiB``

    with S x L the padded model input (``max_size``-bounded), Q the queries, H x W the photo:
    the RGB photo held while post-processing, the normalised input (and one resize copy), the
    1/4-resolution mask logits of every query, one full-resolution upsampling chunk (12 bytes a
    pixel: float logits, bool masks; plus the (H, L/4) row-resized floats of a mask), and
    allocator slack. ``model_bytes`` is the activation
    memory of one forward pass at ``max_size``, which depends on the model (the caller measures or
    bounds it; tests/memory uses the tiny model). The number of kept masks does not appear: masks
    leave the chunk as RLE.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    side = (config.max_size or 2048) + 32  # padded to the size divisibility
    input_bytes = 4 * 3 * side * side * 2
    logits_bytes = 4 * num_queries * (side // 4) ** 2
    chunk = max(config.chunk_megabytes << 20, 12 * h * w + 4 * h * (side // 4))
    return int(model_bytes + 3 * h * w + input_bytes + logits_bytes + chunk + (192 << 20))


def _nms_rles(
    rles: list[dict[str, Any]], scores: npt.NDArray[np.float32], iou_thresh: float
) -> list[int]:
    """Greedy NMS on RLEs (pycocotools IoU, :func:`unsam.masks.greedy_nms`); kept indices in
    descending score order."""
    return greedy_nms(scores, rle_iou_matrix(rles, rles), iou_thresh)
