"""Click -> 6 masks of increasing granularity, with the image encoded once (spec PROMPTABLE.md §2).

Usage::

    predictor = PromptablePredictor.from_pretrained("unsam_promptable/")   # or an official .pth
    predictor.set_image(image)                       # (H, W, 3) uint8 RGB; runs the image part once
    per_click = predictor.predict([(120, 80), (300, 210)])
    per_click[0]                                     # 6 MaskRecords of the first click, level 1..6

``set_image`` resizes (shortest side 640, bicubic: the original demo and predictor API), normalises,
pads and runs the backbone, pixel decoder and every decoder layer's value projection; ``predict``
only runs the 9 decoder layers and heads, so each click costs a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from unsam.masks import (
    LogitResizePlan,
    logit_resize_plan,
    mask_iou,
    resize_image,
    resize_logits_transposed,
)
from unsam.models.promptable.config import PromptableConfig
from unsam.models.promptable.layers import pack_linears
from unsam.models.promptable.maskops import remove_small_regions, resized_hw
from unsam.models.promptable.modeling import ImageState, PromptableModel
from unsam.records import MaskRecord, encode_mask, encode_transposed_masks
from unsam.runtime import resolve_device, resolve_dtype

__all__ = [
    "PromptablePredictor",
    "auto_input_size",
    "check_points",
    "load_promptable_model",
    "torch_threads",
]

logger = logging.getLogger(__name__)

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def auto_input_size(
    config: PromptableConfig, max_side: int | None = None, default: int = 640
) -> tuple[int, int | None]:
    """(short_side, max_side) of the model input for a model config: its ``train_image_size`` S
    as (S, S) (the image fitted into S x S, as in training) when it has one, else
    (``default``, ``max_side``)."""
    size = getattr(config, "train_image_size", None)
    return (int(size), int(size)) if size else (default, max_side)


def load_promptable_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    config: PromptableConfig | None = None,
    dtype: torch.dtype | str = torch.float32,
) -> PromptableModel:
    """Load a ``save_pretrained`` folder or an official promptable ``.pth`` (converted on the fly).

    Args:
        path: a folder with ``config.json`` + ``model.safetensors``, or an official checkpoint file.
        device: torch device for the model (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``).
        config: model size for an official ``.pth`` (default: the paper's Swin-T).
        dtype: weights and activations (:meth:`PromptableModel.cast`); loaded in float32 first.

    Raises:
        MissingWeightsError: nothing at ``path``.
    """
    from unsam.io.checkpoints import missing_weights

    device, dtype = resolve_device(device), resolve_dtype(dtype)
    p = Path(path)
    if p.is_file():
        from unsam.models.promptable.convert import model_from_official

        return model_from_official(p, config).to(device).cast(dtype)
    if p.is_dir():
        return PromptableModel.from_pretrained(p, device=device).cast(dtype)
    raise missing_weights("promptable", p)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op torch threads (None: unchanged); restores the old count."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def check_points(
    points: Sequence[tuple[float, float]] | npt.NDArray[np.floating], image_hw: tuple[int, int]
) -> npt.NDArray[np.float64]:
    """Clicks as an ``(N, 2)`` float64 array of (x, y), each inside the image: ``0 <= x < W`` and
    ``0 <= y < H`` (pixels of the original image).

    Raises:
        ValueError: a click that is not a finite (x, y) pair or lies outside the image, naming the
            click and the image size.
    """
    try:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise ValueError(f"points must be (x, y) pixel pairs, got {points!r}") from None
    h, w = image_hw
    for x, y in pts:
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < w and 0 <= y < h):
            raise ValueError(
                f"click ({x:g}, {y:g}) is outside the {w}x{h} image (x must be in [0, {w}), "
                f"y in [0, {h}))"
            )
    return pts


class PromptablePredictor:
    """Caches one image's encoding and answers clicks on it.

    Args:
        model: a :class:`PromptableModel` (put in eval mode).
        short_side: shortest side of the model input in pixels (640: demo / predictor API; 800:
            interactive evaluation; 900: automatic demo); None = no resize; "auto" (default) =
            the size the model was trained at when its config records one
            (``train_image_size`` S of a ``train-promptable`` run: the image is fitted into S x S,
            i.e. short_side = max_side = S), else 640.
        max_side: cap on the longest side (1333 in the evaluation), which also switches to
            detectron2's rounding rule (see :func:`unsam.models.promptable.maskops.resized_hw`).
        resample: "bicubic" (demo) or "bilinear" (evaluation) image resizing.
        device: torch device of the model (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``).
        dtype: weights and activations of the networks (float32 or bfloat16, not autocast; see
            :meth:`PromptableModel.cast`). Whatever it is, the pixel normalisation, the deformable
            attention's sampling, the boxes, the mask logits and IoU out of the heads, the
            upsampling to the image, the ``> 0`` threshold and the records are float32.
        click_threads: intra-op torch threads for the per-click part (6 queries per click: small
            operations, where extra threads mostly add synchronisation; on a busy 2-core machine
            2 threads were 10-30x slower than 1). None leaves torch's setting.

    On CUDA a click has no host round trip before its masks exist: the points go to the device
    without a synchronisation, the decoder, the upsampling to the image and the threshold run
    there (:meth:`masks_on_device`), and the bool masks and IoUs come back in one copy per call;
    RLE encoding and the records are made on the CPU.
    """

    def __init__(
        self,
        model: PromptableModel,
        *,
        short_side: int | Literal["auto"] | None = "auto",
        max_side: int | None = None,
        resample: Literal["bicubic", "bilinear"] = "bicubic",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        click_threads: int | None = 1,
    ) -> None:
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        if short_side == "auto":
            short_side, max_side = auto_input_size(model.config, max_side)
        if short_side is not None and short_side < 32:
            raise ValueError(f"short_side={short_side} is below 32 pixels")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if dtype is not None:
            self.model.cast(resolve_dtype(dtype))
        self.dtype = self.model.compute_dtype
        # bfloat16 on the CPU: the per-click linears keep oneDNN-packed weights (PackedLinear);
        # the value projections run once per image on thousands of rows and stay plain
        pack_linears(self.model.sem_seg_head.predictor, batch_hint=8, skip=("value_proj",))
        for layer in self.model.sem_seg_head.predictor.decoder.layers:
            layer.pack_self_attention(batch_hint=8)
        self.short_side = short_side
        self.max_side = max_side
        self.resample = resample
        self.click_threads = click_threads
        self._state: ImageState | None = None
        self._image_hw: tuple[int, int] | None = None
        self._image_id = 0

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        config: PromptableConfig | None = None,
        dtype: torch.dtype | str = torch.float32,
        **kwargs: object,
    ) -> PromptablePredictor:
        """Predictor of a ``save_pretrained`` folder or an official ``.pth``.

        ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``) and ``dtype`` (float32 or
        bfloat16: weights and activations) place the model; ``config`` is the model size of an
        official ``.pth`` (default Swin-T); ``kwargs`` go to :class:`PromptablePredictor`
        (``short_side``, ``max_side``, ``resample``, ``click_threads``).
        """
        device = resolve_device(device)
        model = load_promptable_model(path, device=device, config=config, dtype=dtype)
        return cls(model, device=device, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------ image
    @property
    def is_image_set(self) -> bool:
        return self._state is not None

    @property
    def input_hw(self) -> tuple[int, int]:
        """(H', W') of the model input of the current image."""
        return self._require_state().image_hw

    def set_image(self, image: npt.NDArray[np.uint8], image_id: int = 0) -> None:
        """Resize, normalise, pad and encode an image; the result is cached until the next call.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            image_id: id written into the records.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        hw = (int(image.shape[0]), int(image.shape[1]))
        in_hw = resized_hw(hw, self.short_side, self.max_side)
        resized = resize_image(image, in_hw, _RESAMPLE[self.resample])
        pixels = (
            torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].to(self.device)
        )
        with torch.inference_mode():
            padded = self.model.normalize_and_pad(pixels)
            self._state = self.model.encode_image(padded, image_hw=in_hw)
        self._image_hw = hw
        self._image_id = int(image_id)
        logger.debug(
            "encoded image %s -> model input %s (padded %s)", hw, in_hw, self._state.padded_hw
        )

    def reset_image(self) -> None:
        """Drop the cached encoding."""
        self._state = None
        self._image_hw = None

    def _require_state(self) -> ImageState:
        if self._state is None:
            raise RuntimeError("no image is set: call PromptablePredictor.set_image(image) first")
        return self._state

    # ------------------------------------------------------------------------------------ clicks
    def predict_logits(
        self,
        points: Sequence[tuple[float, float]] | npt.NDArray[np.floating],
        *,
        independent: bool = True,
        box_size: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits at the model-input resolution and raw predicted IoU for each click.

        Args:
            points: N clicks (x, y) in pixels of the original image.
            independent: True: each click is decoded as if alone (the evaluation's block-diagonal
                attention mask). False: the original demo / AMG mode, where all clicks of the call
                attend to each other.
            box_size: click box side in pixels of the model input (6 in training and evaluation);
                None = 0.005 of the image side (demo, predictor API, AMG).

        Returns:
            logits ``(N, 6, H', W')`` float32 (binarise with > 0), iou ``(N, 6)`` float32.
        """
        with torch.inference_mode(), torch_threads(self.click_threads):
            logits, iou = self._decode(points, independent=independent, box_size=box_size)
            return self.model.upsample_masks(logits, self._require_state()), iou

    def _decode(
        self,
        points: Sequence[tuple[float, float]] | npt.NDArray[np.floating],
        *,
        independent: bool,
        box_size: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode_clicks`` for clicks in original pixels: (N, 6, Hp/4, Wp/4) logits, (N, 6)."""
        state = self._require_state()
        h0, w0 = self._image_hw  # type: ignore[misc]
        pts = check_points(points, (h0, w0))
        h, w = state.image_hw
        scaled = pts * np.array([w / w0, h / h0])
        box_wh = None if box_size is None else (float(box_size), float(box_size))
        # to the device without a stream synchronisation (a pageable host copy is staged at once)
        points_t = torch.from_numpy(scaled).float().to(self.device, non_blocking=True)
        return self.model.decode_clicks(
            state, points_t, box_wh=box_wh, independent=independent
        )

    def predict(
        self,
        points: Sequence[tuple[float, float]] | npt.NDArray[np.floating],
        *,
        independent: bool = True,
        box_size: float | None = None,
        iou_thresh: float | None = None,
        dedup_iou_thresh: float | None = None,
        min_region_area: int = 0,
    ) -> list[list[MaskRecord]]:
        """Six masks per click, as :class:`unsam.records.MaskRecord` at the original image size.

        With the defaults every click gets all 6 records in token order (``level`` = token index
        + 1). The original demo's filtering (spec §2.8) is ``iou_thresh=0.5,
        dedup_iou_thresh=0.95, min_region_area=100``: tokens are visited by predicted IoU
        (descending); a token below ``iou_thresh`` is skipped unless nothing was kept when the last
        one is reached; a mask whose IoU with a kept (uncleaned) mask is > ``dedup_iou_thresh`` is
        skipped; kept masks have holes, then islands, smaller than ``min_region_area`` pixels
        removed. The kept records are returned in token order.

        Args:
            points: N clicks (x, y) in pixels of the original image.
            independent: see :meth:`predict_logits`.
            box_size: see :meth:`predict_logits`.
            iou_thresh: minimum raw predicted IoU; None keeps all.
            dedup_iou_thresh: mask-IoU cutoff in [0, 1] for duplicates; None keeps duplicates.
            min_region_area: hole / island size cutoff in pixels (of the original image); 0 = off.

        Returns:
            One list per click of up to 6 records: ``rle`` (original size), ``predicted_iou`` (raw),
            ``score`` (predicted IoU clipped to [0, 1]), ``point_coords`` ((x, y),) in original
            pixels, ``level`` 1..6 (token index + 1), ``source`` "promptable".
        """
        self._require_state()
        pts = check_points(points, self._image_hw)  # type: ignore[arg-type]
        out: list[list[MaskRecord]] = []
        with torch.inference_mode(), torch_threads(self.click_threads):
            low, ious = self._decode(pts, independent=independent, box_size=box_size)
            plan = self._resize_plan(low)
            # on the CPU one click's masks at a time (bounded memory); on a GPU all in one go
            step = max(1, pts.shape[0]) if self.device.type == "cuda" else 1
            ious_np = None
            for start in range(0, pts.shape[0], step):
                masks = _threshold_masks(low[start : start + step], plan)
                # the device-to-host copies: bool masks (column-major) and the float32 IoUs
                masks_np = masks.cpu().numpy()
                if ious_np is None:
                    ious_np = ious.cpu().numpy()
                for i in range(masks_np.shape[0]):
                    n = start + i
                    out.append(
                        self._records(
                            masks_np[i], ious_np[n], pts[n], iou_thresh, dedup_iou_thresh,
                            min_region_area,
                        )
                    )
        return out

    def masks_on_device(
        self,
        points: Sequence[tuple[float, float]] | npt.NDArray[np.floating],
        *,
        independent: bool = True,
        box_size: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks and predicted IoUs of clicks, left on the model's device (no host round trip:
        what :meth:`predict` runs before its copy to the host).

        The decoder, the upsampling of the float32 logits to the padded input, the crop and the
        resize to the original image (one banded product per axis) and the ``> 0`` threshold, all
        on the device, in float32 after the heads.

        Returns:
            masks ``(N, 6, W0, H0)`` bool, **transposed** (each mask's pixels in column-major
            order, the order of COCO RLE), and raw IoUs ``(N, 6)`` float32.
        """
        with torch.inference_mode(), torch_threads(self.click_threads):
            low, ious = self._decode(points, independent=independent, box_size=box_size)
            return _threshold_masks(low, self._resize_plan(low)), ious

    def _resize_plan(self, low: torch.Tensor) -> LogitResizePlan:
        """The banded resize of (Hp/4, Wp/4) logits to the original image (cached per size)."""
        state = self._require_state()
        return logit_resize_plan(
            low.shape[-2:], state.padded_hw, state.image_hw, self._image_hw, device=low.device
        )

    def _records(
        self,
        masks_t: npt.NDArray[np.bool_],
        iou: npt.NDArray[np.floating],
        point_xy: npt.NDArray[np.floating],
        iou_thresh: float | None,
        dedup_iou_thresh: float | None,
        min_region_area: int,
    ) -> list[MaskRecord]:
        """The records of one click from its (6, W0, H0) transposed bool masks (on the CPU)."""
        kept = _select_tokens(masks_t, iou, iou_thresh, dedup_iou_thresh)
        if min_region_area > 0:  # on (H, W) masks: ties between regions in raster order
            rles = []
            for k in kept:
                mask, _ = remove_small_regions(masks_t[k].T, min_region_area, "holes")
                mask, _ = remove_small_regions(mask, min_region_area, "islands")
                rles.append(encode_mask(mask))
        else:
            rles = encode_transposed_masks(masks_t[kept])
        point = ((float(point_xy[0]), float(point_xy[1])),)
        return [
            MaskRecord(
                rle=rle,
                image_id=self._image_id,
                score=float(np.clip(iou[k], 0.0, 1.0)),
                predicted_iou=float(iou[k]),
                point_coords=point,
                level=int(k) + 1,
                source="promptable",
            )
            for k, rle in zip(kept, rles)
        ]


def _threshold_masks(low: torch.Tensor, plan: LogitResizePlan) -> torch.Tensor:
    """(N, 6, h, w) logits -> (N, 6, W0, H0) transposed bool masks: the float32 resize by ``plan``
    (upsample to the padded input, crop, resize to the image) and the ``> 0`` threshold, where
    ``low`` lives."""
    return torch.stack(
        [resize_logits_transposed(low[n].float(), plan) > 0 for n in range(low.shape[0])]
    )


def _select_tokens(
    masks: npt.NDArray[np.bool_],
    iou: npt.NDArray[np.floating],
    iou_thresh: float | None,
    dedup_iou_thresh: float | None,
) -> list[int]:
    """Token indices kept by the demo's rule (spec §2.8), in token order."""
    t = len(iou)
    if iou_thresh is None and dedup_iou_thresh is None:
        return list(range(t))
    order = np.argsort(-iou, kind="stable")
    kept: list[int] = []
    for rank, k in enumerate(order.tolist()):
        last = rank == t - 1
        if iou_thresh is not None and iou[k] < iou_thresh and not (last and not kept):
            continue
        if dedup_iou_thresh is not None and any(
            mask_iou(masks[k], masks[j]) > dedup_iou_thresh for j in kept
        ):
            continue
        kept.append(k)
    return sorted(kept)
