"""CutLER detector as UnSAM's *divide* stage: image → scored full-resolution masks.

The released UnSAM code divides each image with CutLER's class-agnostic Cascade Mask R-CNN and
its checkpoint ``cutler_cascade_final.pth``, keeping every detection scoring > 0.1, at most 100
(spec §2.1; ``CUTLER_DETECTOR.md``). :class:`CutlerDetector` runs the same inference on CPU or
GPU in plain PyTorch:

    RGB uint8 → PIL bilinear resize (short side 800, long side ≤ 1333) → normalise (ImageNet
    RGB mean/std, 0–255 units) → pad to ×32 → ResNet-50 + FPN → RPN (1000 per level, NMS 0.65,
    1000 total) → 3 cascade box stages (scores averaged) → score > 0.1, NMS 0.5, top 100 →
    mask head → masks pasted at the original resolution (threshold 0.5).

``dtype="bfloat16"`` runs the backbone, FPN, RPN conv, box heads and mask head in bf16 (weights
and activations; see :func:`unsam.divide.cutler.model.cast_for_inference` for what stays float32).
The image is resized and normalised in float32 and rounded to bf16 once. On CUDA the network has no
host round trip (ROIAlign takes :func:`unsam.divide.cutler.ops.roi_align_separable`); the
data-dependent steps between its stages (the NMS, the score filter) read back to the host, as
detectron2's do.

Example:
    >>> detector = CutlerDetector.from_checkpoint("cutler_cascade_final.pth")  # doctest: +SKIP
    >>> # masks: [(bool (H, W), score), ...]
    >>> masks = detector(unsam.load_image("photo.jpg"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from unsam.config import param
from unsam.divide.cutler.checkpoint import load_cutler_state_dict, read_checkpoint
from unsam.divide.cutler.model import CascadeMaskRCNN, cast_for_inference
from unsam.divide.cutler.ops import batched_nms, clip_boxes, nonempty_boxes, paste_masks_in_image
from unsam.io.checkpoints import missing_weights
from unsam.runtime import resolve_device, resolve_dtype

__all__ = [
    "CUTLER_WEIGHTS_ENV",
    "CUTLER_WEIGHTS_URL",
    "CutlerConfig",
    "CutlerDetections",
    "CutlerDetector",
    "divide_cutler",
    "preprocess_image",
    "resize_shape",
    "resolve_cutler_weights",
]

logger = logging.getLogger(__name__)

CUTLER_WEIGHTS_ENV = "UNSAM_CUTLER_WEIGHTS"
CUTLER_WEIGHTS_URL = "http://dl.fbaipublicfiles.com/cutler/checkpoints/cutler_cascade_final.pth"


@dataclass(frozen=True)
class CutlerConfig:
    """Test-time settings of the CutLER detector; defaults are what UnSAM's released code runs
    (``CUTLER_DETECTOR.md`` §1.2)."""

    min_size: int = param(800, "resize: shortest image side, pixels (detectron2 MIN_SIZE_TEST)")
    max_size: int = param(1333, "resize: cap on the longest side, pixels (MAX_SIZE_TEST)")
    pixel_mean: tuple[float, ...] = param(
        (123.675, 116.28, 103.53), "per-channel RGB mean subtracted, 0-255 units"
    )
    pixel_std: tuple[float, ...] = param(
        (58.395, 57.12, 57.375), "per-channel RGB std divided by, 0-255 units"
    )
    rpn_pre_nms_topk: int = param(1000, "RPN proposals kept per FPN level before NMS")
    rpn_post_nms_topk: int = param(1000, "RPN proposals kept per image after NMS")
    rpn_nms_thresh: float = param(0.65, "RPN NMS IoU cutoff (suppress IoU > this), per level")
    score_thresh: float = param(
        0.1, "keep detections scoring > this (UnSAM --confidence-threshold)"
    )
    nms_thresh: float = param(0.5, "class-agnostic NMS IoU cutoff of the final detections")
    max_detections: int = param(100, "at most this many detections per image")
    mask_thresh: float = param(0.5, "pasted mask probability >= this is foreground")

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.max_size < self.min_size:
            raise ValueError(
                f"CutlerConfig needs 1 <= min_size <= max_size, got {self.min_size}, "
                f"{self.max_size}"
            )
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError("CutlerConfig.pixel_mean/pixel_std need 3 values (RGB), std > 0")
        for name in ("rpn_nms_thresh", "score_thresh", "nms_thresh", "mask_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CutlerConfig.{name}={getattr(self, name)} is outside [0, 1]")
        if min(self.rpn_pre_nms_topk, self.rpn_post_nms_topk, self.max_detections) < 1:
            raise ValueError("CutlerConfig top-k values must be >= 1")


@dataclass(frozen=True)
class CutlerDetections:
    """Detections of one image, by descending score.

    Attributes:
        boxes_xyxy: ``(N, 4)`` float32 boxes in original-image pixels, clipped.
        scores: ``(N,)`` float32 in (score_thresh, 1].
        masks: ``(N, H, W)`` bool, original resolution; None when detected with ``paste=False``
            (then :meth:`mask` pastes one at a time from ``mask_probs``).
        mask_probs: ``(N, M, M)`` float32 mask-head probabilities (M = 28).
        image_hw: (H, W) of the original image.
        mask_thresh: binarisation cutoff of the pasted masks.
    """

    boxes_xyxy: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    masks: npt.NDArray[np.bool_] | None
    mask_probs: torch.Tensor | None = None
    image_hw: tuple[int, int] = (0, 0)
    mask_thresh: float = 0.5

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def mask(self, k: int) -> npt.NDArray[np.bool_]:
        """``(H, W)`` bool mask of detection ``k`` (pasted now when not stored)."""
        if self.masks is not None:
            return self.masks[k]
        assert self.mask_probs is not None
        box = torch.from_numpy(self.boxes_xyxy[k : k + 1])
        pasted = paste_masks_in_image(
            self.mask_probs[k : k + 1], box, self.image_hw, self.mask_thresh
        )
        return pasted[0].cpu().numpy()


def resize_shape(hw: tuple[int, int], min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge`` output ``(h, w)``: short side ``min_size``, long side
    ≤ ``max_size``, rounded with ``int(x + 0.5)`` (double precision)."""
    h, w = hw
    size = float(min_size)
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def preprocess_image(
    image: npt.NDArray[np.uint8], config: CutlerConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize, normalise and pad one image as the released predictor does (spec §2.1).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        config: resize and normalisation settings.

    Returns:
        ``(1, 3, Hp, Wp)`` float32 network input (``Hp``, ``Wp`` multiples of 32, zero-padded
        bottom/right after normalisation) and ``(h, w)``, the resized size before padding.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    h, w = resize_shape(image.shape[:2], config.min_size, config.max_size)
    if (h, w) != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor(config.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.pixel_std, dtype=torch.float32).view(3, 1, 1)
    x = (x - mean) / std
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    x = torch.nn.functional.pad(x, (0, wp - w, 0, hp - h), value=0.0)
    return x[None], (h, w)


def resolve_cutler_weights(spec: str) -> Path:
    """Checkpoint path of a divide spec ``"cutler:PATH"`` or ``"cutler"`` (env
    ``UNSAM_CUTLER_WEIGHTS``).

    Raises:
        MissingWeightsError: no existing file (one sentence: what to download, where, which option).
    """
    if spec.startswith("cutler:"):
        path_text = spec[len("cutler:") :]
    elif spec == "cutler":
        path_text = os.environ.get(CUTLER_WEIGHTS_ENV, "")
    else:
        raise ValueError(f"not a CutLER divide spec: {spec!r} (use 'cutler' or 'cutler:PATH')")
    if path_text and Path(path_text).expanduser().is_file():
        return Path(path_text).expanduser()
    if path_text:
        raise missing_weights("cutler", Path(path_text).expanduser())
    raise missing_weights("cutler", None, f"no path given and {CUTLER_WEIGHTS_ENV} is not set")


class CutlerDetector:
    """CutLER Cascade Mask R-CNN with loaded weights: ``detector(image)`` → scored masks.

    Args:
        model: the modules, weights loaded (see :meth:`from_checkpoint`); cast in place for
            ``dtype``.
        config: test-time settings.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
        dtype: ``"float32"`` (the official numerics) or ``"bfloat16"`` (weights and activations).

    Attributes:
        last_timings: seconds per step of the last call (``preprocess``, ``backbone``, ``rpn``,
            ``box_heads``, ``mask_head``, ``paste``, ``total``).
    """

    def __init__(
        self,
        model: CascadeMaskRCNN,
        config: CutlerConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        self.config = config or CutlerConfig()
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        model = cast_for_inference(model.eval().requires_grad_(False), self.dtype)
        # channels-last convolutions: ~30% faster on CPU (oneDNN), same results up to rounding
        model = model.to(self.device, memory_format=torch.channels_last)
        self.model = model
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: CutlerConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> CutlerDetector:
        """Build the detector from ``cutler_cascade_final.pth`` (any layout in
        :mod:`unsam.divide.cutler.checkpoint`) on ``device`` in ``dtype``.

        Raises:
            MissingWeightsError: ``path`` does not exist.
            ValueError: the file is not a CutLER Cascade Mask R-CNN checkpoint (names the keys).
        """
        path = Path(path)
        if not path.is_file():
            resolve_cutler_weights(f"cutler:{path}")  # raises the one-sentence error
        model = CascadeMaskRCNN()
        load_cutler_state_dict(model, read_checkpoint(path), source=str(path))
        return cls(model, config, device, dtype)

    def _sync(self) -> None:
        """Wait for queued GPU work, so that the step timings are real (no-op on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def detect(self, image: npt.NDArray[np.uint8], *, paste: bool = True) -> CutlerDetections:
        """Run the detector on one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            paste: paste every mask to full resolution now (``N x H x W`` bytes); with False,
                :meth:`CutlerDetections.mask` pastes one at a time (bounded memory).

        Returns:
            :class:`CutlerDetections` at the original resolution, by descending score.
        """
        cfg = self.config
        model = self.model
        h0, w0 = image.shape[:2]
        t0 = time.perf_counter()
        x, hw = preprocess_image(image, cfg)
        t1 = time.perf_counter()
        # float32 resize and normalisation (preprocess_image), rounded to the model dtype once
        x = x.to(self.device, dtype=self.dtype, memory_format=torch.channels_last)
        feats = model.features(x)
        self._sync()
        t2 = time.perf_counter()
        proposals = model.propose(
            feats, hw, cfg.rpn_pre_nms_topk, cfg.rpn_post_nms_topk, cfg.rpn_nms_thresh
        )
        self._sync()
        t3 = time.perf_counter()
        boxes, scores = model.detect_boxes(feats, proposals, hw)
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores = clip_boxes(boxes[finite], hw), scores[finite]
        keep = torch.nonzero(scores > cfg.score_thresh).flatten()
        boxes, scores = boxes[keep], scores[keep]
        keep = batched_nms(boxes, scores, torch.zeros_like(keep), cfg.nms_thresh)
        keep = keep[: cfg.max_detections]
        boxes, scores = boxes[keep], scores[keep]
        t4 = time.perf_counter()
        probs = model.predict_masks(feats, boxes)
        self._sync()
        t5 = time.perf_counter()
        # back to the original resolution (detectron2 detector_postprocess)
        scale_x, scale_y = w0 / hw[1], h0 / hw[0]
        boxes = boxes.clone()
        boxes[:, 0::2] *= scale_x
        boxes[:, 1::2] *= scale_y
        boxes = clip_boxes(boxes, (h0, w0))
        keep = nonempty_boxes(boxes)
        boxes, scores, probs = boxes[keep], scores[keep], probs[keep]
        # float32 probabilities and boxes, thresholded at mask_thresh after bilinear sampling
        masks = paste_masks_in_image(probs, boxes, (h0, w0), cfg.mask_thresh) if paste else None
        self._sync()
        t6 = time.perf_counter()
        self.last_timings = {
            "preprocess": t1 - t0,
            "backbone": t2 - t1,
            "rpn": t3 - t2,
            "box_heads": t4 - t3,
            "mask_head": t5 - t4,
            "paste": t6 - t5,
            "total": t6 - t0,
        }
        logger.debug(
            "CutLER: %d proposals -> %d detections in %.2f s",
            proposals.shape[0],
            scores.shape[0],
            t6 - t0,
        )
        return CutlerDetections(
            boxes_xyxy=boxes.cpu().numpy().astype(np.float32),
            scores=scores.cpu().numpy().astype(np.float32),
            masks=masks.cpu().numpy() if masks is not None else None,
            mask_probs=probs.float().cpu(),
            image_hw=(h0, w0),
            mask_thresh=cfg.mask_thresh,
        )

    def __call__(self, image: npt.NDArray[np.uint8]) -> list[tuple[npt.NDArray[np.bool_], float]]:
        """``[(mask (H, W) bool, score), ...]`` by descending score (see :meth:`detect`)."""
        dets = self.detect(image)
        return [(dets.masks[k], float(dets.scores[k])) for k in range(len(dets))]


def divide_cutler(
    image: npt.NDArray[np.uint8],
    detector: CutlerDetector,
    score_thresh: float = 0.1,
    max_masks: int = 100,
) -> list[tuple[npt.NDArray[np.bool_], float]]:
    """UnSAM's detector divide (spec §2.1): masks scoring > ``score_thresh``, at most ``max_masks``,
    by descending score; empty masks are dropped (the original drops them at write time).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        detector: a loaded :class:`CutlerDetector`.
        score_thresh: score cutoff in [0, 1] (strict ``>``).
        max_masks: maximum number of masks.

    Returns:
        ``[(mask (H, W) bool, score)]``.
    """
    dets = detector.detect(image)
    out = []
    for k in range(len(dets)):
        if len(out) >= max_masks:
            break
        if dets.scores[k] > score_thresh and dets.masks[k].any():
            out.append((dets.masks[k], float(dets.scores[k])))
    return out


def divide_cutler_rles(
    image: npt.NDArray[np.uint8],
    detector: CutlerDetector,
    score_thresh: float = 0.1,
    max_masks: int = 100,
) -> list[tuple[dict[str, Any], float]]:
    """:func:`divide_cutler` with every mask pasted and RLE-encoded one at a time: memory holds
    one ``(H, W)`` mask, not up to 100 (the pipeline's divide).

    Returns:
        ``[(compressed RLE, score)]`` by descending score, empty masks dropped.
    """
    from unsam.records import encode_mask

    dets = detector.detect(image, paste=False)
    out: list[tuple[dict[str, Any], float]] = []
    for k in range(len(dets)):
        if len(out) >= max_masks:
            break
        if dets.scores[k] > score_thresh:
            mask = dets.mask(k)
            if mask.any():
                out.append((encode_mask(mask), float(dets.scores[k])))
    return out
