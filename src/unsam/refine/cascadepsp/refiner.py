"""UnSAM's CascadePSP post-processing (spec §4.1, CASCADEPSP.md §1): the context crop and L rule
(:func:`unsam_crop_box`, :func:`clamp_side`), the CPU cost estimate, and
:class:`CascadePSPRefiner`, which loads the official weights and refines full-image masks with
UnSAM's threshold, paste-back and accept rules (§1.5-1.6).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from unsam.refine.cascadepsp.checkpoint import (
    CASCADEPSP_WEIGHTS_ENV,
    load_official_weights,
)
from unsam.refine.cascadepsp.modeling import RefinementModule, prepare_fast_inference
from unsam.refine.cascadepsp.processing import (
    image_to_tensor,
    mask_to_tensor,
    padded_hw,
    probabilities_to_mask,
    refine_crop_global,
)
from unsam.runtime import resolve_device, resolve_dtype

__all__ = [
    "CPU_SECONDS_PER_PIXEL",
    "MAC_PER_PIXEL",
    "CascadePSPRefiner",
    "RefinedCrop",
    "clamp_side",
    "estimate_cpu_seconds",
    "unsam_crop_box",
]

logger = logging.getLogger(__name__)

#: Seconds per padded input pixel of one ``refine(fast=True)`` on 2 CPU cores (CASCADEPSP.md §5:
#: 189 s for 904², 2.3 s for 104², torch 2.13 CPU, 1 thread).
CPU_SECONDS_PER_PIXEL = 189.0 / (904 * 904)
#: Multiply-accumulates per padded input pixel (§5: 3,471.6 GMAC for 904²).
MAC_PER_PIXEL = 3471.6e9 / (904 * 904)


# --------------------------------------------------------------------------------------------
# UnSAM's post-processing (§1)
# --------------------------------------------------------------------------------------------


def unsam_crop_box(
    mask: npt.NDArray[np.bool_], context_ratio: float = 2.0
) -> tuple[int, int, int, int] | None:
    """UnSAM's context crop (§1.3): square of side 2·max(w, h) on the box centre, clipped, int().

    Args:
        mask: (H, W) bool.
        context_ratio: crop side as a multiple of max(w, h) of the mask's box (UnSAM hard-codes 2).

    Returns:
        (x0, y0, x1, y1), exclusive x1 / y1, or None for an empty mask. The crop always holds the
        whole mask.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    x, y = float(cols[0]), float(rows[0])
    w, h = float(cols[-1]) + 1 - x, float(rows[-1]) + 1 - y
    xc, yc = x + w / 2, y + h / 2
    half = context_ratio / 2 * max(w, h)
    height, width = mask.shape
    return (
        int(max(0.0, xc - half)),
        int(max(0.0, yc - half)),
        int(min(float(width), xc + half)),
        int(min(float(height), yc + half)),
    )


def clamp_side(crop_hw: tuple[int, int], min_side: int = 100, max_side: int = 900) -> int:
    """UnSAM's L: the crop's longer side clamped to [min_side, max_side] (§1.4)."""
    return int(max(min(max(crop_hw), max_side), min_side))


def estimate_cpu_seconds(
    crop_hws: Iterable[tuple[int, int]], min_side: int = 100, max_side: int = 900
) -> float:
    """Expected CPU seconds to refine crops of these sizes (§5: ≈ 189 s per 904² on 2 cores)."""
    total = 0
    for hw in crop_hws:
        ph, pw = padded_hw(hw, clamp_side(hw, min_side, max_side))
        total += ph * pw
    return total * CPU_SECONDS_PER_PIXEL


@dataclass(frozen=True)
class RefinedCrop:
    """One refined mask, kept as a crop so that hundreds of them stay small.

    Attributes:
        index: position of the mask in the input sequence.
        box_xyxy: (x0, y0, x1, y1) crop in image pixels, exclusive x1 / y1; None for an empty input.
        mask: (y1 − y0, x1 − x0) bool refined crop (zero outside the crop); None when rejected.
        iou: IoU(raw mask, refined mask) over the whole image (0 for an empty refined mask).
        area_frac: refined area / image area.
    """

    index: int
    box_xyxy: tuple[int, int, int, int] | None
    mask: npt.NDArray[np.bool_] | None
    iou: float
    area_frac: float

    def full_mask(self, image_hw: tuple[int, int]) -> npt.NDArray[np.bool_] | None:
        """The refined mask pasted into a zero (H, W) bool canvas, or None when rejected."""
        if self.mask is None or self.box_xyxy is None:
            return None
        x0, y0, x1, y1 = self.box_xyxy
        out = np.zeros(image_hw, dtype=bool)
        out[y0:y1, x0:x1] = self.mask
        return out


class CascadePSPRefiner:
    """CascadePSP refinement of full-image masks with UnSAM's rules (spec §4.1, CASCADEPSP.md §1).

    For each mask: crop (:func:`unsam_crop_box`), L = clamp(long side, ``min_side``,
    ``max_side``), ``refine(fast=True, L)``, keep ``uint8(255 p) > 128``, paste into a zero canvas,
    reject when the refined area is > ``max_area_frac`` of the image or IoU(raw, refined) <
    ``min_iou`` (an empty result has IoU 0). Rejected masks are dropped, not kept unrefined.

    Crops of the same size are batched (BatchNorm runs in eval mode, so batching does not change
    the result beyond float rounding). A batch holds at most ``batch_pixels`` padded input pixels
    (one crop always fits), so memory is bounded whatever the image or mask count.

    Peak memory (float32, CPU): about ``M + A · P``, where M ≈ 0.5 GiB is the process with the
    model (259 MiB of weights), P the padded input pixels of one batch (≤ max(``batch_pixels``,
    904²)) and A ≈ 5.6 kB per padded pixel (peak RSS measured by ``benchmarks/cascadepsp_speed.py``
    at 904²: 4.9 GiB; the PSP concat alone is 10240 channels at 1/8 resolution = 640 B/px), plus
    the uint8 image, the caller's masks and one batch of bool crops. :meth:`iter_refined` yields
    crop-sized results; :meth:`refine_masks` additionally returns one (H, W) bool array per kept
    mask. No full-resolution float map is ever allocated, so a 4000×3000 image with 300 masks peaks
    at ≈ 0.5 GiB + 5.6 kB · 904² ≈ 5 GiB with the default ``batch_pixels`` (one 900-px crop at a
    time), whatever the number of masks.

    Args:
        model: a :class:`RefinementModule` with weights (see :meth:`from_checkpoint`).
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        channel_order: ``"rgb"`` feeds the RGB image (the model was trained on RGB; default);
            ``"bgr"`` flips it first, as UnSAM's ``cv2.imread`` input did.
        min_side, max_side: L clamp in pixels (UnSAM: 100, 900).
        context_ratio: crop side as a multiple of max(box w, box h) (UnSAM: 2).
        max_area_frac: reject a refined mask covering more than this fraction of the image (0.9).
        min_iou: reject a refined mask whose IoU with the raw mask is below this (0.5).
        batch_pixels: padded input pixels per batch (default 904², i.e. one full-size crop).
        dtype: the network's weights and activations (not autocast): ``torch.float32`` (the
            original's arithmetic) or ``torch.bfloat16`` (or their names). In bfloat16 the
            network is first prepared in float32 (:func:`prepare_fast_inference`: BatchNorms
            folded into the convolutions, the PSP module without its concatenation), then cast.
            What stays float32 whatever ``dtype`` is: the input crops' normalisation and their
            resize to L (exact inputs, cast once), the probability's resize back to crop size and
            the ``uint8(255 p) > 128`` threshold (they decide single pixels), and the IoU / area
            accept rules (counts on bool masks). See docs/benchmarks.md for speed and agreement.
        channels_last: convolutions in channels-last (NHWC) memory format; None (default) = on for
            bfloat16 and on CUDA (the oneDNN / cuDNN NHWC kernels), off for float32 on the CPU
            (the original's kernels, bit-exact with the official outputs).
    """

    def __init__(
        self,
        model: RefinementModule,
        *,
        device: str | torch.device = "cpu",
        channel_order: Literal["rgb", "bgr"] = "rgb",
        min_side: int = 100,
        max_side: int = 900,
        context_ratio: float = 2.0,
        max_area_frac: float = 0.9,
        min_iou: float = 0.5,
        batch_pixels: int = 904 * 904,
        dtype: torch.dtype | str = torch.float32,
        channels_last: bool | None = None,
    ) -> None:
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if not 1 <= min_side <= max_side:
            raise ValueError(
                f"need 1 <= min_side <= max_side, got {min_side}, {max_side} (UnSAM: 100, 900)"
            )
        if not 0.0 < max_area_frac <= 1.0 or not 0.0 <= min_iou <= 1.0:
            raise ValueError(
                f"max_area_frac={max_area_frac} must be in (0, 1], min_iou={min_iou} in [0, 1]"
            )
        if not context_ratio > 0:
            raise ValueError(f"context_ratio={context_ratio} must be > 0 (UnSAM: 2)")
        if batch_pixels < 1:
            raise ValueError(f"batch_pixels={batch_pixels} must be >= 1")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if channels_last is None:
            channels_last = self.dtype != torch.float32 or self.device.type == "cuda"
        self.channels_last = bool(channels_last)
        self.channel_order = channel_order
        self.min_side, self.max_side = int(min_side), int(max_side)
        self.context_ratio = float(context_ratio)
        self.max_area_frac, self.min_iou = float(max_area_frac), float(min_iou)
        self.batch_pixels = int(batch_pixels)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.eval()
        if self.dtype != torch.float32 and isinstance(model, RefinementModule):
            model = prepare_fast_inference(model)  # in float32, before the cast
        self.model = model.to(
            device=self.device, dtype=self.dtype, memory_format=self.memory_format
        )
        self._warned = False

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = "cpu",
        **kwargs: object,
    ) -> CascadePSPRefiner:
        """Build the refiner from the official weights file ``model``.

        Args:
            path: the file; None reads the environment variable ``UNSAM_CASCADEPSP_WEIGHTS``.
            device: torch device.
            **kwargs: the other :class:`CascadePSPRefiner` arguments.

        Raises:
            MissingWeightsError: no path given, or the file does not exist (says what to download).
            ValueError: the file does not match the key table (names the keys).
        """
        if path is None:
            path = os.environ.get(CASCADEPSP_WEIGHTS_ENV) or None
        if path is None:
            from unsam.io.checkpoints import missing_weights

            raise missing_weights(
                "cascadepsp", None, f"no path given and {CASCADEPSP_WEIGHTS_ENV} is not set"
            )
        with torch.device("meta"):  # no random init: every tensor is overwritten by the strict load
            model = RefinementModule()
        model = model.to_empty(device="cpu")
        for name, buffer in model.named_buffers():
            if name.endswith(
                "num_batches_tracked"
            ):  # the one key the file may lack (unused in eval)
                buffer.zero_()
        load_official_weights(model, path)
        refiner = cls(model, device=device, **kwargs)  # type: ignore[arg-type]
        if refiner.device.type == "cpu":
            logger.warning(
                "CascadePSP runs on the CPU: one 904x904 crop is about 3.5 TMAC, about 3 min on 2 "
                "cores, and every mask with context >= 900 px costs that much; use --device cuda "
                "for real runs"
            )
        return refiner

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> CascadePSPRefiner:
        """Build from a :class:`unsam.refine.RefineConfig` (weights path, L clamp, accept rules).

        Args:
            config: the refine settings.
            device: torch device (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``).
            dtype: the network's weights and activations (float32 or bfloat16).

        Raises:
            MissingWeightsError, ValueError: see :meth:`from_checkpoint`.
        """
        return cls.from_checkpoint(
            config.cascadepsp_weights,
            device=device,
            dtype=dtype,
            channel_order=config.cascadepsp_channel_order,
            min_side=config.min_side,
            max_side=config.max_side,
            context_ratio=config.context_ratio,
            max_area_frac=config.max_area_frac,
            min_iou=config.min_iou,
        )

    def _crops(
        self, image: npt.NDArray[np.uint8], masks: Iterable[npt.NDArray[np.bool_]]
    ) -> Iterator[tuple[int, tuple[int, int, int, int] | None, npt.NDArray[np.bool_] | None]]:
        hw = image.shape[:2]
        for i, m in enumerate(masks):
            if np.shape(m) != hw:
                raise ValueError(f"mask {i} has shape {np.shape(m)}; expected the image's {hw}")
            raw = np.asarray(m, dtype=bool)
            box = unsam_crop_box(raw, self.context_ratio)
            if box is None:
                yield i, None, None
                continue
            x0, y0, x1, y1 = box
            yield i, box, raw[y0:y1, x0:x1].copy()

    def _run_batch(
        self,
        image: npt.NDArray[np.uint8],
        batch: list[tuple[int, tuple[int, int, int, int], npt.NDArray[np.bool_]]],
    ) -> list[npt.NDArray[np.bool_]]:
        """Refined bool crops of same-size crops (one forward)."""
        x0, y0, x1, y1 = batch[0][1]
        side = clamp_side((y1 - y0, x1 - x0), self.min_side, self.max_side)
        ims, segs = [], []
        for _, (bx0, by0, bx1, by1), crop in batch:
            img = image[by0:by1, bx0:bx1]
            if self.channel_order == "bgr":
                img = img[:, :, ::-1]
            ims.append(image_to_tensor(img))
            segs.append(mask_to_tensor(crop))
        # float32 inputs on the device; refine_crop_global resizes them to L in float32, casts
        # them to the network's dtype and returns float32 probabilities
        im = torch.cat(ims).to(self.device)
        seg = torch.cat(segs).to(self.device)
        with torch.inference_mode():
            pred = refine_crop_global(
                self.model, im, seg, side, dtype=self.dtype, memory_format=self.memory_format
            )
            # the threshold on the float32 probability, on the device; one copy of bool crops back
            keep = probabilities_to_mask(pred)[:, 0].cpu().numpy()
        return list(keep)

    def warn_cpu_time(
        self, image_hw: tuple[int, int], masks: Iterable[npt.NDArray[np.bool_]]
    ) -> float | None:
        """Log (WARNING, once per refiner) the expected CPU time of refining ``masks``, from their
        crop sizes.

        Masks are read one at a time (bounded memory). Does nothing on a GPU or after the first
        call.

        Returns:
            The estimate in seconds, or None when nothing was logged.
        """
        if self._warned or self.device.type != "cpu":
            return None
        self._warned = True
        crops = []
        for m in masks:
            box = unsam_crop_box(np.asarray(m, dtype=bool), self.context_ratio)
            if box is not None:
                crops.append((box[3] - box[1], box[2] - box[0]))
        seconds = estimate_cpu_seconds(crops, self.min_side, self.max_side)
        logger.warning(
            "CascadePSP on CPU: %d masks of this %dx%d image need about %.1f TMAC, expected %.0f s "
            "(%.1f min) on 2 cores (one 904x904 crop = 3.5 TMAC = about 3 min)",
            len(crops),
            image_hw[1],
            image_hw[0],
            MAC_PER_PIXEL * seconds / CPU_SECONDS_PER_PIXEL / 1e12,
            seconds,
            seconds / 60,
        )
        return seconds

    def iter_refined(
        self, image: npt.NDArray[np.uint8], masks: Iterable[npt.NDArray[np.bool_]]
    ) -> Iterator[RefinedCrop]:
        """Refine masks lazily, one bounded batch at a time, yielding crop-sized results in input
        order.

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: (H, W) bool masks; consumed lazily (at most one batch of crops is held).

        Yields:
            One :class:`RefinedCrop` per mask, in input order.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if isinstance(masks, Sequence):
            self.warn_cpu_time(image.shape[:2], masks)
        total = float(image.shape[0] * image.shape[1])
        pending: list[
            tuple[int, tuple[int, int, int, int] | None, npt.NDArray[np.bool_] | None]
        ] = []
        pixels = 0

        def flush() -> Iterator[RefinedCrop]:
            groups: dict[tuple[int, int], list[int]] = {}
            for j, (_, box, crop) in enumerate(pending):
                if crop is not None:
                    groups.setdefault(crop.shape, []).append(j)
            results: dict[int, npt.NDArray[np.bool_]] = {}
            for shape, members in groups.items():
                side = clamp_side(shape, self.min_side, self.max_side)
                per = max(1, self.batch_pixels // max(1, math.prod(padded_hw(shape, side))))
                for start in range(0, len(members), per):
                    chunk = members[start : start + per]
                    outs = self._run_batch(image, [pending[j] for j in chunk])  # type: ignore[misc]
                    results.update(zip(chunk, outs))
            for j, (index, box, crop) in enumerate(pending):
                if crop is None or box is None:
                    yield RefinedCrop(index, None, None, 0.0, 0.0)
                    continue
                refined = results[j]
                # UnSAM's accept rules on bool crops: exact pixel counts (no float rounding)
                inter = np.count_nonzero(refined & crop)
                union = np.count_nonzero(refined | crop)
                iou = inter / union if union else 0.0
                area = np.count_nonzero(refined) / total
                ok = area <= self.max_area_frac and iou >= self.min_iou
                yield RefinedCrop(index, box, refined if ok else None, float(iou), float(area))

        for item in self._crops(image, masks):
            crop = item[2]
            if crop is not None:
                side = clamp_side(crop.shape, self.min_side, self.max_side)
                need = math.prod(padded_hw(crop.shape, side))
                if pending and pixels + need > self.batch_pixels:
                    yield from flush()
                    pending, pixels = [], 0
                pixels += need
            pending.append(item)
        if pending:
            yield from flush()

    def refine_masks(
        self, image: npt.NDArray[np.uint8], masks: Sequence[npt.NDArray[np.bool_]]
    ) -> list[tuple[npt.NDArray[np.bool_] | None, float]]:
        """Refine full-resolution masks of one image with UnSAM's accept rules.

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: (H, W) bool masks.

        Returns:
            One ``(refined (H, W) bool mask or None if rejected, IoU(raw, refined))`` per mask, in
            order. Empty input masks give ``(None, 0.0)``.

        Raises:
            ValueError: wrong image dtype/shape or a mask of another size.
        """
        hw = image.shape[:2]
        return [(r.full_mask(hw), r.iou) for r in self.iter_refined(image, masks)]
