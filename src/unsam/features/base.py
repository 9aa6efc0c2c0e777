"""The feature-extractor interface shared by the DINO and the weight-free "classic" extractors.

Every extractor maps a batch of same-size RGB uint8 images to one feature vector per
``patch_size``×``patch_size`` patch. MaskCut (spec §2.2) builds its affinity graph from these
vectors and conquer (spec §3.1) merges them, so both only ever see a ``(B, h, w, C)`` tensor.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from unsam.config import param
from unsam.io.checkpoints import MissingWeightsError

__all__ = ["FeatureConfig", "FeatureExtractor", "MissingWeightsError", "as_image_batch"]


@dataclass(frozen=True)
class FeatureConfig:
    """Options of the patch-feature extractor besides the model itself (which is
    ``PipelineConfig.features``) and its device / dtype (pipeline-wide settings); passed to
    :func:`unsam.features.load_feature_extractor`."""

    batch_size: int | None = param(
        None,
        "crops per feature-extractor forward pass (no effect on the result beyond rounding); "
        "none: as many as fit in memory_budget_mib",
    )
    memory_budget_mib: int | None = param(
        None,
        "activation memory one forward pass may use, MiB, when batch_size is none (formula: "
        "DinoFeatureExtractor.bytes_per_image); none: 256 on the CPU, 4096 on a GPU",
    )
    num_heads: int | None = param(
        None, "attention heads of a converted official .pth (None: hidden size / 64, as DINO)"
    )
    layer_norm_eps: float | None = param(
        None, "LayerNorm eps (None: DINO's 1e-6 where a config holds the HF default 1e-12)"
    )
    cache_dir: str | None = param(None, "Hugging Face cache folder for hub ids (None: the default)")

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(
                f"FeatureConfig.batch_size must be >= 1 or None (auto), got {self.batch_size}"
            )
        if self.memory_budget_mib is not None and self.memory_budget_mib < 1:
            raise ValueError(
                f"FeatureConfig.memory_budget_mib must be >= 1 or None, got "
                f"{self.memory_budget_mib}"
            )
        if self.num_heads is not None and self.num_heads < 1:
            raise ValueError(f"FeatureConfig.num_heads must be >= 1 or None, got {self.num_heads}")


def as_image_batch(
    images: npt.NDArray[np.uint8] | Sequence[npt.NDArray[np.uint8]], patch_size: int
) -> npt.NDArray[np.uint8]:
    """Validate and stack images into one ``(B, S, S', 3)`` uint8 array.

    Args:
        images: ``(B, S, S', 3)`` uint8 RGB, one ``(S, S', 3)`` image, or a sequence of
            same-size ``(S, S', 3)`` images. S and S' must be multiples of ``patch_size``.
        patch_size: patch side in pixels.

    Returns:
        ``(B, S, S', 3)`` uint8, C-contiguous.

    Raises:
        ValueError: wrong rank, dtype, channel count, empty batch, mixed sizes, or a side that
            is not a multiple of ``patch_size``.
    """
    if isinstance(images, np.ndarray):
        batch = images[None] if images.ndim == 3 else images
    else:
        if len(images) == 0:
            raise ValueError(
                "got an empty list of images; pass at least one (S, S', 3) uint8 image"
            )
        shapes = {np.asarray(im).shape for im in images}
        if len(shapes) != 1:
            raise ValueError(
                f"images in one batch must share one size, got shapes {sorted(shapes)}; "
                "resize them first (e.g. unsam.masks.resize_image)"
            )
        batch = np.stack([np.asarray(im) for im in images])
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"images must be (B, S, S', 3) RGB, got shape {batch.shape}")
    if batch.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got dtype {batch.dtype}")
    if batch.shape[0] == 0:
        raise ValueError("got an empty batch of images; pass at least one (S, S', 3) uint8 image")
    s, s2 = batch.shape[1], batch.shape[2]
    if s % patch_size or s2 % patch_size or s == 0 or s2 == 0:
        raise ValueError(
            f"image size {s}x{s2} is not a positive multiple of the patch size {patch_size}; "
            f"resize to e.g. {max(1, round(s / patch_size)) * patch_size}x"
            f"{max(1, round(s2 / patch_size)) * patch_size}"
        )
    return np.ascontiguousarray(batch)


class FeatureExtractor(abc.ABC):
    """Per-patch features of RGB images.

    Attributes:
        name: what produced the features (hub id, checkpoint path or ``"classic"``).
        patch_size: patch side in pixels; the output grid is ``(S / patch_size, S' / patch_size)``.
        feature_dim: C, the length of one patch feature.
        batch_size: images per forward pass.
    """

    name: str
    patch_size: int
    feature_dim: int
    batch_size: int = 8

    def __call__(
        self, images: npt.NDArray[np.uint8] | Sequence[npt.NDArray[np.uint8]]
    ) -> torch.Tensor:
        """Extract per-patch features.

        Args:
            images: ``(B, S, S', 3)`` uint8 RGB (or one ``(S, S', 3)`` image, or a list of
                same-size ones); S and S' multiples of :attr:`patch_size`.

        Returns:
            ``(B, S / p, S' / p, C)`` float32 CPU tensor, patches in row-major image order.
        """
        batch = as_image_batch(images, self.patch_size)
        step = self.batch_for(batch.shape[1:3])
        outs = [self._extract(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
        return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]

    def batch_for(self, image_hw: tuple[int, int]) -> int:
        """Images of size ``image_hw`` per forward pass (:attr:`batch_size`; the DINO extractor
        derives it from its memory budget when that is None)."""
        return max(1, int(self.batch_size or 1))

    @abc.abstractmethod
    def _extract(self, batch: npt.NDArray[np.uint8]) -> torch.Tensor:
        """Features of one validated chunk ``(b, S, S', 3)`` uint8 → ``(b, S/p, S'/p, C)`` float32
        CPU."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, patch_size={self.patch_size}, "
            f"feature_dim={self.feature_dim})"
        )
