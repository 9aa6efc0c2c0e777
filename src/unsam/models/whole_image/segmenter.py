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

Devices and precision: ``device`` / ``dtype`` of :class:`SegmentConfig` (``--device``,
``--dtype``). In bfloat16 the weights and activations are bfloat16 (cast, not autocast) and the
steps named in :mod:`unsam.models.whole_image.precision` and
:mod:`unsam.models.whole_image.postprocessing` stay float32. On a GPU every step up to the final
binary masks runs on the device with no host synchronisation (:meth:`WholeImageSegmenter.
predict_masks`), and RLE encoding runs on the CPU afterwards (:meth:`PendingMasks.to_records`).
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
    _gather_sampling,
    _lean_mask_predictions,
    _supports_fast_decoder,
)
from unsam.models.whole_image.loading import _load_any
from unsam.models.whole_image.postprocessing import (
    DeviceMasks,
    ScoredMasks,
    TopMasks,
    _nms_rles,
    postprocess_masks,
    postprocess_on_device,
    postprocess_top_masks,
)
from unsam.models.whole_image.precision import install_float32_steps, model_dtype
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.records import MaskRecord, annotation_id
from unsam.runtime import dtype_name, resolve_device, resolve_dtype

__all__ = ["PendingMasks", "WholeImageSegmenter"]

logger = logging.getLogger(__name__)

#: The fast path feeds the backbone a channels_last input (same values up to float rounding).
_CHANNELS_LAST = True


def _prepare_model(model: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """The model on ``device`` in ``dtype``, in eval mode, with the float32 steps of
    :mod:`unsam.models.whole_image.precision` installed. A model in another dtype is copied first,
    so the caller's model is never cast in place (moving it to ``device`` is in place, as
    ``nn.Module.to``)."""
    if model_dtype(model) != dtype:
        import copy

        model = copy.deepcopy(model)
    model = model.to(device=device, dtype=dtype)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # cuDNN's NHWC convolutions
    install_float32_steps(model)
    return model.eval()


class PendingMasks:
    """One image between the two parts of :meth:`WholeImageSegmenter.predict_masks`.

    The device part has run (or is queued, on a GPU) when this object exists; :meth:`to_records`
    runs the host part: on a GPU it waits for this image's masks only (not for work queued after
    them), copies them and encodes RLE on the CPU; on the CPU it upsamples, scores and encodes
    chunk by chunk. So a caller can call ``to_records`` of image *i* while the GPU runs
    ``predict_masks`` of image *i + 1*.

    Attributes:
        image_id: the id written into the records.
        image_hw: (H, W) of the image.
        device_masks: on a GPU, the final masks, scores, areas and stability scores as device
            tensors (:class:`unsam.models.whole_image.postprocessing.DeviceMasks`); None on the
            CPU.
        top: on the CPU, the top-k queries' 1/4-resolution mask logits (post-processed by
            :meth:`to_records`); None on a GPU.
    """

    def __init__(
        self,
        segmenter: WholeImageSegmenter,
        image_id: int,
        image_hw: tuple[int, int],
        *,
        device_masks: DeviceMasks | None = None,
        top: TopMasks | None = None,
        logits: tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int]] | None = None,
    ) -> None:
        self._segmenter = segmenter
        self.image_id = int(image_id)
        self.image_hw = image_hw
        self.device_masks = device_masks
        self.top = top
        self._logits = logits

    def scored(self) -> ScoredMasks:
        """Every top-k mask, RLE-encoded and scored (nothing filtered yet)."""
        cfg = self._segmenter.config
        chunk = {"chunk_size": cfg.chunk_size, "chunk_bytes": cfg.chunk_megabytes << 20}
        if self.device_masks is not None:
            return self.device_masks.to_host()
        if self.top is not None:
            return postprocess_top_masks(
                self.top, image_hw=self.image_hw, mask_threshold=cfg.mask_threshold, **chunk
            )
        assert self._logits is not None
        class_logits, mask_logits, padded_hw, valid_hw = self._logits
        self._logits = None
        return postprocess_masks(
            class_logits,
            mask_logits,
            padded_hw=padded_hw,
            valid_hw=valid_hw,
            image_hw=self.image_hw,
            max_masks=cfg.max_masks,
            mask_threshold=cfg.mask_threshold,
            **chunk,
        )

    def to_records(self) -> list[MaskRecord]:
        """Mask records (``source="model"``, ``level=0``) sorted by descending score; empty masks
        and masks below ``score_thresh`` / ``stability_score_thresh`` are left out; optional mask
        NMS; at most ``max_masks``."""
        cfg = self._segmenter.config
        result = self.scored()
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
                image_id=self.image_id,
                id=annotation_id(self.image_id, rank),
                score=float(result.scores[i]),
                stability_score=float(result.stability[i]),
                level=0,
                source="model",
            )
            for rank, i in enumerate(keep)
        ]


class WholeImageSegmenter:
    """Run a whole-image Mask2Former on RGB images and return scored mask records.

    ``device`` / ``dtype`` (from :class:`SegmentConfig`, or ``from_pretrained(device=, dtype=)``):
    the model runs where and in the precision asked for (``"auto"``: CUDA when present; bfloat16:
    weights and activations cast, not autocast; the steps that stay float32 are listed in
    :mod:`unsam.models.whole_image.precision` and :mod:`unsam.models.whole_image.postprocessing`).

    Example:
        >>> seg = WholeImageSegmenter.from_pretrained("runs/unsam_r50")       # doctest: +SKIP
        >>> records = seg(load_image("photo.jpg"), image_id=1)                # doctest: +SKIP
        >>> records[0].score, records[0].bbox                                 # doctest: +SKIP
        >>> pending = seg.predict_masks(image, image_id=2)   # device part    # doctest: +SKIP
        >>> records = pending.to_records()                   # host part      # doctest: +SKIP
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
        """Wrap a ``Mask2FormerForUniversalSegmentation``.

        The model is moved to ``config.device`` (in place) and cast to ``config.dtype`` (a copy
        when that changes its dtype), put in eval mode, and gets the float32 steps of
        :func:`unsam.models.whole_image.precision.install_float32_steps` (no-ops in float32).

        Args:
            model: the model (e.g. from :func:`unsam.models.whole_image.build_model` or training).
            config: inference settings (default :class:`SegmentConfig`).
            mean, std: pixel statistics in 0-255 RGB units.
            size_divisibility: pad the input to a multiple of this.

        Raises:
            ValueError: a device that does not exist here, or a bad mean / std.
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
        #: where the model runs (``config.device`` resolved: "auto" becomes cpu or cuda:N)
        self.device = resolve_device(config.device)
        #: the dtype of the model's weights and activations
        self.dtype = resolve_dtype(config.dtype)
        self.model = _prepare_model(model, self.device, self.dtype)
        #: post-process on the model's device up to bit-packed masks (:func:`postprocess_on_device`)
        #: and encode on the host afterwards; True on CUDA. On the CPU the chunked form (RLE per
        #: chunk, bounded memory) is used.
        self.device_postprocessing = self.device.type == "cuda"
        self.source: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
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
            device: ``"auto" | "cpu" | "cuda" | "cuda:N"``; overrides ``config.device`` when given.
            dtype: ``"float32" | "bfloat16"`` (or the torch dtype); overrides ``config.dtype``.
            config: inference settings (default :class:`SegmentConfig`).

        Raises:
            FileNotFoundError, ValueError: nothing loadable at that path (the message says what),
                or a device that does not exist here.
            RuntimeError: a hub download failed (the message says which file to fetch and where).
        """
        config = config or SegmentConfig()
        if device is not None:
            config = dataclasses.replace(config, device=str(device))
        if dtype is not None:
            config = dataclasses.replace(config, dtype=dtype_name(resolve_dtype(dtype)))
        resolve_device(config.device)  # a missing GPU fails before the weights are read
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
            "loaded whole-image model from %s (%d queries) on %s in %s",
            source,
            model.config.num_queries,
            seg.device,
            dtype_name(seg.dtype),
        )
        return seg

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write the model (safetensors + config.json) and ``preprocessor_config.json`` to
        ``path`` (in the model's dtype)."""
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
        """The padded model input on the device, in the model's dtype (normalised in float32,
        then cast: the network is fed bfloat16 when its weights are)."""
        cfg = self.config
        x = preprocess(
            image,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            size_divisibility=self.size_divisibility,
            mean=self.mean,  # type: ignore[arg-type]
            std=self.std,  # type: ignore[arg-type]
            device=self.device,
        )
        valid_hw = resized_hw(image.shape[0], image.shape[1], cfg.min_size, cfg.max_size)
        return x.to(self.dtype), (int(x.shape[2]), int(x.shape[3])), valid_hw

    def predict_logits(
        self, image: npt.NDArray[np.uint8], *, reference: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Raw model output for one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            reference: run transformers' own decoder forward (with the bounded-memory mask
                predictor) instead of the fast decoder; the two agree up to float rounding.

        Returns:
            ``(class_logits (Q, 2) float32, mask_logits (Q, H'/4, W'/4) in the model's dtype,
            padded_hw (H', W'), valid_hw (h', w'))``, on the model's device.
        """
        x, padded_hw, valid_hw = self._input(image)
        with torch.inference_mode():
            if reference or not _supports_fast_decoder(self.model):
                with _lean_mask_predictions(self.model):
                    out = self.model(pixel_values=x)
            else:
                with (
                    _gather_sampling(self.model, enabled=self.device.type == "cpu"),
                    _fast_decoder(self.model, full_masks=True),
                ):
                    out = self.model(pixel_values=x)
        masks = out.masks_queries_logits[0]
        if masks.numel() == 0:
            raise RuntimeError(
                "the transformers Mask2Former decoder no longer calls its mask predictor once per "
                "layer as "
                "expected; unsam.models.whole_image.decoder._lean_mask_predictions needs updating"
            )
        return out.class_queries_logits[0].float(), masks, padded_hw, valid_hw

    def predict_top_masks(
        self, image: npt.NDArray[np.uint8], max_masks: int | None = None
    ) -> TopMasks:
        """The fast forward pass: 1/4-resolution mask logits of the top-k queries only.

        The top ``max_masks`` (default ``config.max_masks``) queries by foreground probability are
        chosen from the class logits; only their masks are projected (``k x C x H/4 x W/4``
        instead of ``Q x ...``). Equal to ``predict_logits`` followed by the top-k selection of
        :func:`postprocess_masks` up to float rounding. On a GPU nothing in it waits for the
        device.
        """
        k_max = int(self.config.max_masks if max_masks is None else max_masks)
        if k_max < 1:
            raise ValueError(f"max_masks must be >= 1, got {k_max}")
        x, padded_hw, valid_hw = self._input(image)
        if _CHANNELS_LAST:
            x = x.contiguous(
                memory_format=torch.channels_last
            )  # oneDNN / cuDNN convolutions without reorders
        with (
            torch.inference_mode(),
            _gather_sampling(self.model, enabled=self.device.type == "cpu"),
            _fast_decoder(self.model, full_masks=False) as stash,
        ):
            out = self.model(pixel_values=x)
            # float32: the class softmax and the top-k selection on it
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

    def predict_masks(
        self, image: npt.NDArray[np.uint8], *, image_id: int = 0, reference: bool = False
    ) -> PendingMasks:
        """The device part of segmenting one image; :meth:`PendingMasks.to_records` is the host
        part (``seg(image)`` is the two in a row).

        On a GPU this runs the network and every post-processing step up to the final binary
        masks, scores, areas and stability scores (``pending.device_masks``, bit-packed masks),
        queues their copy to pinned host memory and returns **without waiting** for the GPU;
        ``to_records()`` then waits for this image only and RLE-encodes on the CPU. A caller can
        so encode image *i* while the GPU computes image *i + 1*::

            pending = seg.predict_masks(images[0], image_id=0)
            for i in range(1, len(images)):
                following = seg.predict_masks(images[i], image_id=i)   # queued on the GPU
                write(pending.to_records())                            # CPU work meanwhile
                pending = following
            write(pending.to_records())

        On the CPU the network runs here and the post-processing (upsampling chunk by chunk,
        scores, RLE; bounded memory) in ``to_records()``.

        Args:
            image: (H, W, 3) uint8 RGB.
            image_id: written into every record; ids are ``annotation_id(image_id, rank)``.
            reference: the reference path (transformers' decoder forward, every query's mask
                logits at 1/4 resolution) instead of the fast one (:meth:`predict_top_masks`);
                both give the same masks and scores up to float rounding. On a GPU the reference
                network synchronises with the host (transformers' own code does).
        """
        cfg = self.config
        image_hw = (int(image.shape[0]), int(image.shape[1]))
        use_reference = reference or not _supports_fast_decoder(self.model)
        if not self.device_postprocessing:
            if use_reference:
                logits = self.predict_logits(image, reference=True)
                return PendingMasks(self, image_id, image_hw, logits=logits)
            return PendingMasks(self, image_id, image_hw, top=self.predict_top_masks(image))
        if use_reference:
            class_logits, mask_logits, padded_hw, valid_hw = self.predict_logits(
                image, reference=True
            )
            with torch.inference_mode():
                # float32: the class softmax and the top-k selection on it
                fg_prob = class_logits.float().softmax(-1)[:, 0]
                top_prob, top_idx = fg_prob.topk(min(cfg.max_masks, int(fg_prob.shape[0])))
                top = TopMasks(top_prob, top_idx, mask_logits[top_idx], padded_hw, valid_hw)
            del class_logits, mask_logits
        else:
            top = self.predict_top_masks(image)
        with torch.inference_mode():
            device_masks = postprocess_on_device(
                top,
                image_hw=image_hw,
                mask_threshold=cfg.mask_threshold,
                chunk_size=cfg.chunk_size,
                chunk_bytes=cfg.chunk_megabytes << 20,
            )
        return PendingMasks(self, image_id, image_hw, device_masks=device_masks.start_copy())

    def __call__(
        self, image: npt.NDArray[np.uint8], *, image_id: int = 0, reference: bool = False
    ) -> list[MaskRecord]:
        """Segment one image: ``predict_masks(image, ...).to_records()``.

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
        return self.predict_masks(image, image_id=image_id, reference=reference).to_records()
