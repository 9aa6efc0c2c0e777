"""Whole-image segmentation with a trained Mask2Former: one forward pass -> hundreds of scored
masks.

This module holds the segmenter class. In the same package: its settings (``segment_config``),
loading and the hub (``loading``), the decoder paths (``decoder``), post-processing
(``postprocessing``) and folder runs (``producer``).

Inference rule (spec §6.5), with the original's memory bug fixed (spec §10 bug 22):

1. Resize the shorter side to ``min_size`` (longer side <= ``max_size``), normalise, zero-pad to a
   multiple of 32 (:func:`unsam.models.whole_image.config.preprocess`).
2. Foreground probability per query = softmax over (object, no-object), index 0.
3. Keep the top ``max_masks`` queries by foreground probability **before** any upsampling.
4. In chunks of ``chunk_size`` queries: upsample the 1/4-resolution mask logits bilinearly to the
   padded input size, crop the valid region, resize bilinearly to the original image size,
   binarise at logit > ``mask_threshold`` (0 = sigmoid 0.5), score = foreground probability x
   mean sigmoid inside the binary mask (``(σ·m).sum / (m.sum + 1e-6)``), and encode to RLE.
   At most ``chunk_size`` full-resolution masks exist at any time, never ``num_queries x H x W``.
5. Drop empty masks and masks scoring below ``score_thresh``; optional mask NMS; sort by score.

During the forward pass only the last decoder layer's mask logits are kept (transformers keeps
every layer's, ``decoder_layers x num_queries x H/4 x W/4`` floats, which alone is ~8 GB for 2000
queries at 1024x1536), and the per-head attention masks are built from booleans (see
``_lean_mask_predictions`` in :mod:`unsam.models.whole_image.decoder`; this is the reference
path, ``reference=True``).

The default (fast) path runs the decoder with ``_fast_decoder`` (same module): attention masks
are computed at their own resolution from resized pixel embeddings, one additive mask is shared by
the heads, attention is fused, and only the top-k queries' final masks are projected at 1/4
resolution (:meth:`WholeImageSegmenter.predict_top_masks`). Same masks and scores up to float
rounding (tests/models/test_segment_fast_path.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from unsam.models.whole_image.config import IMAGE_MEAN, IMAGE_STD, preprocess, resized_hw
from unsam.models.whole_image.decoder import (
    _fast_decoder,
    _lean_mask_predictions,
    _supports_fast_decoder,
)
from unsam.models.whole_image.loading import _load_any
from unsam.models.whole_image.postprocessing import (
    TopMasks,
    _nms_rles,
    postprocess_masks,
    postprocess_top_masks,
)
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.records import MaskRecord, annotation_id

__all__ = ["WholeImageSegmenter"]

logger = logging.getLogger(__name__)

#: The fast path feeds the backbone a channels_last input (same values up to float rounding).
_CHANNELS_LAST = True


class WholeImageSegmenter:
    """Run a whole-image Mask2Former on RGB images and return scored mask records.

    Example:
        >>> seg = WholeImageSegmenter.from_pretrained("runs/unsam_r50")       # doctest: +SKIP
        >>> records = seg(load_image("photo.jpg"), image_id=1)                # doctest: +SKIP
        >>> records[0].score, records[0].bbox                                 # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        config: SegmentConfig | None = None,
        *,
        mean: tuple[float, ...] = IMAGE_MEAN,
        std: tuple[float, ...] = IMAGE_STD,
        size_divisibility: int = 32,
    ) -> None:
        """Wrap a ``Mask2FormerForUniversalSegmentation`` (moved to ``config.device``, eval mode).

        Args:
            model: the model (e.g. from :func:`unsam.models.whole_image.build_model` or training).
            config: inference settings (default :class:`SegmentConfig`).
            mean, std: pixel statistics in 0-255 RGB units.
            size_divisibility: pad the input to a multiple of this.
        """
        config = config or SegmentConfig()
        if config.min_size is None or config.max_size is None:  # the paper's test resize
            config = dataclasses.replace(
                config, min_size=config.min_size or 1024, max_size=config.max_size or 2048
            )
        self.config = config
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.size_divisibility = int(size_divisibility)
        self.model = model.to(self.config.device).eval()
        self.source: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike[str],
        *,
        device: str | None = None,
        config: SegmentConfig | None = None,
    ) -> WholeImageSegmenter:
        """Load a model from a folder, a training run, an official ``.pth`` or the hub.

        Args:
            path_or_hub_id: one of
                - a ``save_pretrained`` folder (config.json + safetensors [+
                  preprocessor_config.json]);
                - a training run folder: its final ``model/`` or else its newest
                  ``checkpoints/<step>/model`` (see :func:`resolve_model_folder`);
                - an official UnSAM whole-image ``.pth`` (detectron2 names), converted on the fly;
                - a Hugging Face hub id, e.g. :data:`HUB_ID` (needs network or the local hub cache).
            device: torch device; overrides ``config.device`` when given.
            config: inference settings (default :class:`SegmentConfig`).

        Raises:
            FileNotFoundError, ValueError: nothing loadable at that path (the message says what).
            RuntimeError: a hub download failed (the message says which file to fetch and where).
        """
        config = config or SegmentConfig()
        if device is not None and device != config.device:
            config = dataclasses.replace(config, device=device)
        model, prep, source = _load_any(path_or_hub_id)
        if config.min_size is None or config.max_size is None:  # the scale the model remembers
            config = dataclasses.replace(
                config,
                min_size=config.min_size or int(prep["min_size"]),
                max_size=config.max_size or max(int(prep["max_size"]), config.min_size or 0),
            )
        seg = cls(
            model,
            config,
            mean=prep["mean"],
            std=prep["std"],
            size_divisibility=prep["size_divisibility"],
        )
        seg.source = source
        logger.info(
            "loaded whole-image model from %s (%d queries)", source, model.config.num_queries
        )
        return seg

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write the model (safetensors + config.json) and ``preprocessor_config.json`` to
        ``path``."""
        from unsam.models.whole_image.convert import write_preprocessor_config

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        write_preprocessor_config(
            path,
            mean=self.mean,
            std=self.std,
            min_size=self.config.min_size,
            max_size=self.config.max_size,
            size_divisibility=self.size_divisibility,
        )
        return path

    def _input(
        self, image: npt.NDArray[np.uint8]
    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        cfg = self.config
        x = preprocess(
            image,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            size_divisibility=self.size_divisibility,
            mean=self.mean,  # type: ignore[arg-type]
            std=self.std,  # type: ignore[arg-type]
            device=cfg.device,
        )
        valid_hw = resized_hw(image.shape[0], image.shape[1], cfg.min_size, cfg.max_size)
        return x, (int(x.shape[2]), int(x.shape[3])), valid_hw

    def predict_logits(
        self, image: npt.NDArray[np.uint8], *, reference: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Raw model output for one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            reference: run transformers' own decoder forward (with the bounded-memory mask
                predictor) instead of the fast decoder; the two agree up to float rounding.

        Returns:
            ``(class_logits (Q, 2), mask_logits (Q, H'/4, W'/4), padded_hw (H', W'), valid_hw (h',
            w'))``.
        """
        x, padded_hw, valid_hw = self._input(image)
        with torch.inference_mode():
            if reference or not _supports_fast_decoder(self.model):
                with _lean_mask_predictions(self.model):
                    out = self.model(pixel_values=x)
            else:
                with _fast_decoder(self.model, full_masks=True):
                    out = self.model(pixel_values=x)
        masks = out.masks_queries_logits[0]
        if masks.numel() == 0:
            raise RuntimeError(
                "the transformers Mask2Former decoder no longer calls its mask predictor once per "
                "layer as "
                "expected; unsam.models.whole_image.decoder._lean_mask_predictions needs updating"
            )
        return out.class_queries_logits[0], masks, padded_hw, valid_hw

    def predict_top_masks(
        self, image: npt.NDArray[np.uint8], max_masks: int | None = None
    ) -> TopMasks:
        """The fast forward pass: 1/4-resolution mask logits of the top-k queries only.

        The top ``max_masks`` (default ``config.max_masks``) queries by foreground probability are
        chosen from the class logits; only their masks are projected (``k x C x H/4 x W/4``
        instead of ``Q x ...``). Equal to ``predict_logits`` followed by the top-k selection of
        :func:`postprocess_masks` up to float rounding.
        """
        k_max = int(self.config.max_masks if max_masks is None else max_masks)
        if k_max < 1:
            raise ValueError(f"max_masks must be >= 1, got {k_max}")
        x, padded_hw, valid_hw = self._input(image)
        if _CHANNELS_LAST:
            x = x.contiguous(
                memory_format=torch.channels_last
            )  # oneDNN convolutions without reorders
        with torch.inference_mode(), _fast_decoder(self.model, full_masks=False) as stash:
            out = self.model(pixel_values=x)
            fg_prob = out.class_queries_logits[0].float().softmax(-1)[:, 0]
            k = min(k_max, int(fg_prob.shape[0]))
            top_prob, top_idx = fg_prob.topk(k, sorted=True)
            masks = torch.einsum(
                "bqc, bchw -> bqhw", stash["mask_embeddings"][:, top_idx], stash["pixel_embeddings"]
            )[0]
        return TopMasks(
            class_probs=top_prob,
            query_indices=top_idx,
            mask_logits=masks,
            padded_hw=padded_hw,
            valid_hw=valid_hw,
        )

    def __call__(
        self, image: npt.NDArray[np.uint8], *, image_id: int = 0, reference: bool = False
    ) -> list[MaskRecord]:
        """Segment one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            image_id: written into every record; ids are ``annotation_id(image_id, rank)``.
            reference: the reference path (transformers' decoder forward, every query's mask
                logits at 1/4 resolution) instead of the fast one (:meth:`predict_top_masks`);
                both give the same masks and scores up to float rounding.

        Returns:
            Mask records (``source="model"``, ``level=0``) sorted by descending score; empty masks
            and masks below ``score_thresh`` are left out; at most ``max_masks``.
        """
        cfg = self.config
        image_hw = (image.shape[0], image.shape[1])
        if reference or not _supports_fast_decoder(self.model):
            class_logits, mask_logits, padded_hw, valid_hw = self.predict_logits(
                image, reference=True
            )
            result = postprocess_masks(
                class_logits,
                mask_logits,
                padded_hw=padded_hw,
                valid_hw=valid_hw,
                image_hw=image_hw,
                max_masks=cfg.max_masks,
                mask_threshold=cfg.mask_threshold,
                chunk_size=cfg.chunk_size,
                chunk_bytes=cfg.chunk_megabytes << 20,
            )
            del class_logits, mask_logits
        else:
            top = self.predict_top_masks(image)
            result = postprocess_top_masks(
                top,
                image_hw=image_hw,
                mask_threshold=cfg.mask_threshold,
                chunk_size=cfg.chunk_size,
                chunk_bytes=cfg.chunk_megabytes << 20,
            )
            del top
        keep = np.flatnonzero(
            (result.areas > 0)
            & (result.scores >= cfg.score_thresh)
            & (result.stability >= cfg.stability_score_thresh)
        )
        if cfg.nms_iou_thresh is not None and keep.size > 1:
            sub = _nms_rles([result.rles[i] for i in keep], result.scores[keep], cfg.nms_iou_thresh)
            keep = keep[sub]
        keep = keep[np.argsort(-result.scores[keep], kind="stable")]
        return [
            MaskRecord(
                rle=result.rles[i],
                image_id=int(image_id),
                id=annotation_id(int(image_id), rank),
                score=float(result.scores[i]),
                stability_score=float(result.stability[i]),
                level=0,
                source="model",
            )
            for rank, i in enumerate(keep)
        ]
