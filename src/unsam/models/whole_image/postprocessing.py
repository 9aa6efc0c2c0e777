"""Post-processing of the whole-image model (spec §6.5 steps 2-5), pure functions over tensors:
class probabilities and 1/4-resolution mask logits -> the top masks, upsampled chunk by chunk to
the image size, scored, encoded to RLE; the memory bound of one image; mask NMS.

At most ``chunk_size`` full-resolution float masks exist at any time, never ``num_queries x H x
W``.

Two forms of the same rule:

- on the CPU, :func:`postprocess_masks` / :func:`postprocess_top_masks` upsample, score and encode
  each chunk in turn (RLE leaves the chunk; the memory bound of :func:`memory_bound_bytes`);
- on a GPU, :func:`postprocess_on_device` does everything up to the final binary masks on the
  device with no host synchronisation (the masks leave it bit-packed, 1 bit a pixel), and
  :meth:`DeviceMasks.to_host` copies them to the host and encodes RLE there. The two calls are
  separate so that a caller can encode one image while the GPU works on the next.

Steps that stay in float32 whatever the model's dtype (the logits are cast before the resize):
the resize of the mask logits, the threshold (logit > ``mask_threshold``), the stability counts
(thresholds +-1), the mean sigmoid inside the mask (a sum over up to millions of pixels), the
foreground probability and the score product. bfloat16 would move the thresholded boundary by
up to 2**-9 of a logit's size and round the sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from unsam.masks import (
    LogitResizePlan,
    greedy_nms,
    logit_resize_plan,
    resize_logits_transposed,
)
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.records import encode_transposed_masks, rle_iou_matrix

__all__ = [
    "DeviceMasks",
    "ScoredMasks",
    "TopMasks",
    "memory_bound_bytes",
    "pack_masks",
    "postprocess_masks",
    "postprocess_on_device",
    "postprocess_top_masks",
    "unpack_masks",
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
        low = rows(start, start + chunk_size).float()  # float32 resize, threshold and scores
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


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """(n, ...) bool -> (n, ceil(m / 8)) uint8, m the pixels of a mask in memory order: bit ``j %
    8`` (least significant first) of byte ``j // 8`` is pixel ``j`` (numpy's
    ``unpackbits(bitorder="little")`` inverts it). On the masks' device, no synchronisation."""
    n = masks.shape[0]
    flat = masks.reshape(n, -1)
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    # 1, 2, 4, ..., 128 made on the device (no host-to-device copy)
    weights = torch.pow(2, torch.arange(8, device=flat.device)).to(torch.uint8)
    return (flat.view(n, -1, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def unpack_masks(packed: npt.NDArray[np.uint8], shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """Inverse of :func:`pack_masks` on the host: (n, bytes) uint8 -> (n, *shape) bool."""
    count = int(np.prod(shape))
    bits = np.unpackbits(packed, axis=1, count=count, bitorder="little")
    return bits.view(np.bool_).reshape(packed.shape[0], *shape)


@dataclass
class DeviceMasks:
    """One image's masks after :func:`postprocess_on_device`: everything up to the final binary
    masks, as tensors on the device (k masks, in descending foreground-probability order).

    Attributes:
        query_indices, class_probs, scores, areas, stability: (k,) tensors (int64, float32,
            float32, int64, float32), as in :class:`ScoredMasks`.
        packed: (k, ceil(H * W / 8)) uint8 bit-packed masks (:func:`pack_masks`), each mask in
            COCO RLE's column-major order (the (W, H) transpose of the mask).
        image_hw: (H, W).

    :meth:`start_copy` queues the copy to (pinned) host memory without waiting; :meth:`to_host`
    waits for this image's copy only, then unpacks and RLE-encodes on the CPU.
    """

    query_indices: torch.Tensor
    class_probs: torch.Tensor
    scores: torch.Tensor
    areas: torch.Tensor
    stability: torch.Tensor
    packed: torch.Tensor
    image_hw: tuple[int, int]
    _host: dict[str, torch.Tensor] | None = None
    _event: Any = None

    def start_copy(self) -> DeviceMasks:
        """Queue the device-to-host copies (non-blocking, into pinned memory) and record an event;
        returns self. No synchronisation."""
        if self._host is not None:
            return self
        names = ("query_indices", "class_probs", "scores", "areas", "stability", "packed")
        if self.packed.device.type != "cuda":
            self._host = {n: getattr(self, n).cpu() for n in names}
            return self
        host = {}
        for name in names:
            src = getattr(self, name)
            dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
            dst.copy_(src, non_blocking=True)
            host[name] = dst
        self._host = host
        self._event = torch.cuda.Event()
        self._event.record(torch.cuda.current_stream(self.packed.device))
        return self

    def to_host(self) -> ScoredMasks:
        """Wait for this image's copy (not for later work queued on the device), unpack the masks
        and encode them as RLE on the CPU."""
        self.start_copy()
        if self._event is not None:
            self._event.synchronize()
        host = self._host
        assert host is not None
        h, w = self.image_hw
        masks_t = unpack_masks(host["packed"].numpy(), (w, h))  # (k, W, H): RLE order
        return ScoredMasks(
            query_indices=host["query_indices"].numpy().astype(np.int64),
            class_probs=host["class_probs"].numpy().astype(np.float32),
            scores=host["scores"].numpy().astype(np.float32),
            areas=host["areas"].numpy().astype(np.int64),
            rles=encode_transposed_masks(masks_t),
            stability=host["stability"].numpy().astype(np.float32),
        )


def postprocess_on_device(
    top: TopMasks,
    *,
    image_hw: tuple[int, int],
    mask_threshold: float = 0.0,
    chunk_size: int = 16,
    chunk_bytes: int | None = None,
) -> DeviceMasks:
    """:func:`postprocess_top_masks` up to the binary masks, on the masks' device (a GPU), with no
    host synchronisation: chunk by chunk, the logits are cast to float32, upsampled bilinearly to
    the padded input, cropped and resized to the image (the original's ``F.interpolate`` chain),
    thresholded (area, SAM's stability score at +-1), scored (foreground probability x mean
    sigmoid inside the mask) and bit-packed. Encode with :meth:`DeviceMasks.to_host`.

    Equal to :func:`postprocess_top_masks` up to float rounding of the resize (~1e-6; the CPU form
    applies the same chain as banded matrices).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if chunk_bytes is not None:
        chunk_size = _chunk_for(chunk_size, chunk_bytes, image_hw, top.mask_logits.shape[-1])
    h, w = int(image_hw[0]), int(image_hw[1])
    vh, vw = top.valid_hw
    logits_all = top.mask_logits
    k = int(logits_all.shape[0])
    device = logits_all.device
    packed = torch.empty((k, (h * w + 7) // 8), dtype=torch.uint8, device=device)
    areas = torch.empty(k, dtype=torch.int64, device=device)
    inside = torch.empty(k, dtype=torch.float32, device=device)
    stability = torch.empty(k, dtype=torch.float32, device=device)
    for start in range(0, k, chunk_size):
        stop = min(start + chunk_size, k)
        # float32: resize, thresholds, stability counts and the in-mask sigmoid sum
        low = logits_all[start:stop].float()[None]
        up = F.interpolate(low, size=top.padded_hw, mode="bilinear", align_corners=False)
        up = up[..., :vh, :vw]
        if (vh, vw) != (h, w):
            up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)
        logits = up[0].transpose(1, 2)  # (n, W, H): COCO RLE's column-major order
        binary = logits > mask_threshold
        areas[start:stop] = binary.sum((1, 2))
        # SAM's stability score (offset 1.0 in logit units): the high mask lies inside the low one
        high = (logits > mask_threshold + 1.0).sum((1, 2))
        low_count = (logits > mask_threshold - 1.0).sum((1, 2))
        stability[start:stop] = torch.where(
            low_count > 0, high.double() / low_count.clamp(min=1).double(), 1.0
        ).float()
        inside[start:stop] = torch.where(binary, logits.sigmoid(), 0.0).sum((1, 2))
        packed[start:stop] = pack_masks(binary.contiguous())
    probs = top.class_probs.float()
    scores = probs * inside / (areas.to(inside.dtype) + 1e-6)
    return DeviceMasks(
        query_indices=top.query_indices,
        class_probs=probs,
        scores=scores,
        areas=areas,
        stability=stability,
        packed=packed,
        image_hw=(h, w),
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
