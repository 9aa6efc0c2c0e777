"""Inference settings of the whole-image segmenter (spec §6.5): :class:`SegmentConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from unsam.config import param

__all__ = [
    "SegmentConfig",
]


@dataclass(frozen=True)
class SegmentConfig:
    """Inference settings of the whole-image model (defaults: spec §6.5)."""

    min_size: int | None = param(
        None,
        "test resize: shorter image side in pixels; None: the size the model was trained at (its "
        "preprocessor_config.json), else the paper's 1024 (spec §6.5)",
    )
    max_size: int | None = param(
        None,
        "test resize: cap on the longer image side in pixels; None: the model's, else the paper's "
        "2048 (spec §6.5)",
    )
    max_masks: int = param(
        1000, "top-k queries kept by foreground probability, chosen before upsampling"
    )
    mask_threshold: float = param(
        0.0, "mask logit cutoff: a pixel is inside when its logit > this (0 = prob 0.5)"
    )
    score_thresh: float = param(
        0.0, "drop masks whose final score (fg prob x mean in-mask prob) is below this, [0, 1]"
    )
    stability_score_thresh: float = param(
        0.0,
        "drop masks whose stability score (SAM's: IoU of the masks at logit thresholds +-1) is "
        "below this, [0, 1]; SAM's automatic mask generator uses 0.95",
    )
    nms_iou_thresh: float | None = param(
        None, "optional greedy mask NMS: IoU cutoff in [0, 1]; none = off, as the original"
    )
    chunk_size: int = param(16, "at most this many masks upsampled to full resolution at once")
    chunk_megabytes: int = param(
        1024,
        "memory cap of one upsampling chunk: masks per chunk = max(1, min(chunk_size, "
        "chunk_megabytes * 2**20 // (12 * H * W + 4 * H * w))), w the mask logits' width (1/4 "
        "of the model input's); peak memory of the post-processing is about "
        "max(chunk_megabytes MiB, 12 * H * W + 4 * H * w bytes) on top of the model's",
    )
    device: str = param(
        "cpu",
        'where the model and the post-processing run: "auto" (CUDA when PyTorch sees a GPU), '
        '"cpu", "cuda" or "cuda:N" (unsam.runtime.resolve_device; the CLI\'s --device, default '
        "auto)",
    )
    dtype: str = param(
        "float32",
        "the model's weights and activations: float32 (the official code's numerics) or bfloat16 "
        "(faster on CPUs with AVX-512 BF16 / AMX and on GPUs); the class softmax, scores, mask "
        "resize, thresholds and stability stay float32 (the CLI's --dtype)",
    )

    def __post_init__(self) -> None:
        if (self.min_size is not None and self.min_size < 1) or (
            self.min_size is not None
            and self.max_size is not None
            and self.max_size < self.min_size
        ):
            raise ValueError(
                f"SegmentConfig: need 1 <= min_size <= max_size, got min_size={self.min_size}, "
                f"max_size={self.max_size}"
            )
        if self.max_masks < 1:
            raise ValueError(f"SegmentConfig.max_masks must be >= 1, got {self.max_masks}")
        if not 0.0 <= self.score_thresh <= 1.0:
            raise ValueError(
                f"SegmentConfig.score_thresh must be in [0, 1], got {self.score_thresh}"
            )
        if self.nms_iou_thresh is not None and not 0.0 <= self.nms_iou_thresh <= 1.0:
            raise ValueError(
                f"SegmentConfig.nms_iou_thresh must be in [0, 1] or None, got {self.nms_iou_thresh}"
            )
        if self.chunk_size < 1 or self.chunk_megabytes < 1:
            raise ValueError(
                "SegmentConfig.chunk_size and chunk_megabytes must be >= 1, got "
                f"{self.chunk_size}, "
                f"{self.chunk_megabytes}"
            )
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(
                f"SegmentConfig.device must be a device name such as 'cpu', got {self.device!r}"
            )
        from unsam.runtime import dtype_name, resolve_dtype

        # the canonical name ("bf16" -> "bfloat16"), so that run settings compare equal
        object.__setattr__(self, "dtype", dtype_name(resolve_dtype(self.dtype)))
