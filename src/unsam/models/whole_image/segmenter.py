"""Whole-image segmentation with a trained Mask2Former: one forward pass -> hundreds of scored masks.

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
``_lean_mask_predictions``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from unsam.config import config_to_dict, param
from unsam.models.whole_image.config import IMAGE_MEAN, IMAGE_STD, preprocess, resized_hw
from unsam.records import MaskRecord, annotation_id, encode_masks, rle_iou_matrix

__all__ = [
    "HUB_ID",
    "SegmentConfig",
    "WholeImageSegmenter",
    "SegmenterProducer",
    "resolve_model_folder",
    "postprocess_masks",
]

logger = logging.getLogger(__name__)

#: The released UnSAM whole-image checkpoint on the Hugging Face hub (official detectron2 format).
HUB_ID = "yujunwei04/unsam-whole-image-segmentation"

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt")


@dataclass(frozen=True)
class SegmentConfig:
    """Inference settings of the whole-image model (defaults: spec §6.5)."""

    min_size: int = param(1024, "test resize: shorter image side in pixels (spec §6.5)")
    max_size: int = param(2048, "test resize: cap on the longer image side in pixels (spec §6.5)")
    max_masks: int = param(1000, "top-k queries kept by foreground probability, chosen before upsampling")
    mask_threshold: float = param(0.0, "mask logit cutoff: a pixel is inside when its logit > this (0 = prob 0.5)")
    score_thresh: float = param(0.0, "drop masks whose final score (fg prob x mean in-mask prob) is below this, [0, 1]")
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
        "chunk_megabytes * 2**20 // (12 * H * W))); peak memory of the post-processing is about "
        "max(chunk_megabytes MiB, 12 * H * W bytes) on top of the model's",
    )
    device: str = param("cpu", "torch device for the model and the upsampling, e.g. cpu, cuda, cuda:1, mps")

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.max_size < self.min_size:
            raise ValueError(
                f"SegmentConfig: need 1 <= min_size <= max_size, got min_size={self.min_size}, max_size={self.max_size}"
            )
        if self.max_masks < 1:
            raise ValueError(f"SegmentConfig.max_masks must be >= 1, got {self.max_masks}")
        if not 0.0 <= self.score_thresh <= 1.0:
            raise ValueError(f"SegmentConfig.score_thresh must be in [0, 1], got {self.score_thresh}")
        if self.nms_iou_thresh is not None and not 0.0 <= self.nms_iou_thresh <= 1.0:
            raise ValueError(f"SegmentConfig.nms_iou_thresh must be in [0, 1] or None, got {self.nms_iou_thresh}")
        if self.chunk_size < 1 or self.chunk_megabytes < 1:
            raise ValueError(
                f"SegmentConfig.chunk_size and chunk_megabytes must be >= 1, got {self.chunk_size}, "
                f"{self.chunk_megabytes}"
            )
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"SegmentConfig.device must be a device name such as 'cpu', got {self.device!r}")


# --------------------------------------------------------------------------------------------
# Post-processing (pure function over tensors)
# --------------------------------------------------------------------------------------------



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
    if class_logits.ndim != 2 or mask_logits.ndim != 3 or class_logits.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f"expected class_logits (Q, C) and mask_logits (Q, h, w) with the same Q, got "
            f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}"
        )
    if chunk_size < 1 or max_masks < 1:
        raise ValueError(f"chunk_size and max_masks must be >= 1, got {chunk_size} and {max_masks}")
    if chunk_bytes is not None:
        per_mask = 12 * int(image_hw[0]) * int(image_hw[1])
        chunk_size = max(1, min(chunk_size, int(chunk_bytes) // max(per_mask, 1)))
    fg_prob = class_logits.float().softmax(-1)[:, 0]
    k = min(int(max_masks), int(fg_prob.shape[0]))
    top_prob, top_idx = fg_prob.topk(k, sorted=True)
    vh, vw = int(valid_hw[0]), int(valid_hw[1])
    out_hw = (int(image_hw[0]), int(image_hw[1]))
    scores: list[torch.Tensor] = []
    areas: list[torch.Tensor] = []
    stability: list[torch.Tensor] = []
    rles: list[dict[str, Any]] = []
    for start in range(0, k, chunk_size):
        idx = top_idx[start : start + chunk_size]
        logits = F.interpolate(
            mask_logits[idx].float()[None], size=tuple(int(v) for v in padded_hw), mode="bilinear", align_corners=False
        )[:, :, :vh, :vw]
        if (vh, vw) != out_hw:
            logits = F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)
        logits = logits[0]
        binary = logits > mask_threshold
        area = binary.flatten(1).sum(1, dtype=torch.int64)
        # SAM's stability score (offset 1.0 in logit units): the high mask lies inside the low one
        high = (logits > mask_threshold + 1.0).flatten(1).sum(1, dtype=torch.int64)
        low = (logits > mask_threshold - 1.0).flatten(1).sum(1, dtype=torch.int64)
        stability.append(torch.where(low > 0, high.double() / low.clamp(min=1).double(), 1.0).float())
        inside = logits.sigmoid_().mul_(binary).flatten(1).sum(1)  # in place: no second full-size tensor
        del logits
        scores.append(top_prob[start : start + chunk_size] * inside / (area.to(inside.dtype) + 1e-6))
        areas.append(area)
        rles.extend(encode_masks(binary.cpu().numpy()))
        del binary
    return ScoredMasks(
        query_indices=top_idx.cpu().numpy().astype(np.int64),
        class_probs=top_prob.cpu().numpy().astype(np.float32),
        scores=(torch.cat(scores) if scores else torch.zeros(0)).cpu().numpy().astype(np.float32),
        areas=(torch.cat(areas) if areas else torch.zeros(0, dtype=torch.long)).cpu().numpy().astype(np.int64),
        rles=rles,
        stability=(torch.cat(stability) if stability else torch.zeros(0)).cpu().numpy().astype(np.float32),
    )


def memory_bound_bytes(
    image_hw: tuple[int, int], config: SegmentConfig, *, model_bytes: int, num_queries: int = 2000
) -> int:
    """Upper bound of the memory one image needs beyond the loaded model (documented formula).

    ``peak <= model_bytes + 3*H*W + 4*3*S*L*2 + 4*Q*(S/4)*(L/4) + max(chunk_megabytes MiB, 12*H*W) + 192 MiB``

    with S x L the padded model input (``max_size``-bounded), Q the queries, H x W the photo:
    the RGB photo held while post-processing, the normalised input (and one resize copy), the
    1/4-resolution mask logits of every query, one full-resolution upsampling chunk (12 bytes a
    pixel: float logits, sigmoid, bool), and allocator slack. ``model_bytes`` is the activation
    memory of one forward pass at ``max_size``, which depends on the model (the caller measures or
    bounds it; tests/memory uses the tiny model). The number of kept masks does not appear: masks
    leave the chunk as RLE.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    side = config.max_size + 32  # padded to the size divisibility
    input_bytes = 4 * 3 * side * side * 2
    logits_bytes = 4 * num_queries * (side // 4) ** 2
    chunk = max(config.chunk_megabytes << 20, 12 * h * w)
    return int(model_bytes + 3 * h * w + input_bytes + logits_bytes + chunk + (192 << 20))


def _nms_rles(rles: list[dict[str, Any]], scores: npt.NDArray[np.float32], iou_thresh: float) -> list[int]:
    """Greedy NMS on RLEs (pycocotools IoU); kept indices in descending score order."""
    order = np.argsort(-scores, kind="stable")
    iou = rle_iou_matrix([rles[i] for i in order], [rles[i] for i in order])
    removed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(int(order[i]))
        removed[i + 1 :] |= iou[i, i + 1 :] > iou_thresh
    return keep


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _step_of(path: Path) -> int:
    digits = re.findall(r"\d+", path.name)
    return int(digits[-1]) if digits else -1


def resolve_model_folder(path: str | os.PathLike[str]) -> Path:
    """The ``save_pretrained`` folder inside ``path`` (a model folder or a training run folder).

    Looks for ``config.json`` in ``path``, then ``path/model`` (a finished run's final model),
    then the newest ``path/checkpoints/<step>/model`` (or ``<step>/``) by step number, preferring
    complete checkpoints (``training_state.pt`` written beside the model).

    Raises:
        FileNotFoundError: no model folder found, naming what was looked for.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    ckpt_root = path / "checkpoints"
    if ckpt_root.is_dir():
        candidates = [
            c / "model" if (c / "model" / "config.json").is_file() else c
            for c in ckpt_root.iterdir()
            if c.is_dir() and ((c / "model" / "config.json").is_file() or (c / "config.json").is_file())
        ]
        if candidates:
            # a checkpoint is complete once its training state is written beside the model
            complete = [c for c in candidates if (c.parent / "training_state.pt").is_file()]
            best = max(complete or candidates,
                       key=lambda c: (_step_of(c if c.name != "model" else c.parent), c.stat().st_mtime))
            logger.info("%s: no final model yet, using the latest checkpoint %s", path, best)
            return best
    raise FileNotFoundError(
        f"{path}: no model found (looked for config.json, model/config.json and checkpoints/*/model/config.json); "
        "pass a folder written by save_pretrained / unsam train, or an official UnSAM .pth"
    )


def _load_transformers_folder(folder: Path) -> Any:
    from transformers import Mask2FormerForUniversalSegmentation

    from unsam.io.checkpoints import check_safetensors_file

    for weights in folder.glob("*.safetensors"):
        check_safetensors_file(weights)  # a truncated file is named here, not deep in transformers
    tf_logger = logging.getLogger("transformers.models.mask2former.configuration_mask2former")
    previous = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        from unsam.hub import quiet_loading

        with quiet_loading():
            model, info = Mask2FormerForUniversalSegmentation.from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{folder}: cannot load a Mask2Former model ({str(exc).splitlines()[0]})") from None
    finally:
        tf_logger.setLevel(previous)
    if int(model.config.num_labels) != 1:
        raise ValueError(
            f"{folder}: the model has {model.config.num_labels} classes; unsam's whole-image segmenter expects a "
            "class-agnostic model (num_labels=1, as built by unsam.models.whole_image.build_model)"
        )
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("num_batches_tracked")]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{folder}: weights do not match its config.json: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} mismatched (e.g. {(missing + unexpected + [str(m) for m in mismatched])[:3]})"
        )
    return model


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin", *(f"*{s}" for s in _CHECKPOINT_SUFFIXES)]
        )
    except Exception as exc:  # offline, unknown repo, auth: all end in the same advice
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.split(". ")[0]
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        from unsam.features.base import MissingWeightsError

        raise MissingWeightsError(
            f"{repo_id} is no local file or folder, and cannot be downloaded from the Hugging Face hub ({reason}); "
            "if it is a hub id, download its checkpoint file "
            f"from https://huggingface.co/{repo_id} and pass the local file's path as the model (an official .pth "
            "is converted on the fly, or once with: unsam convert-checkpoint FILE.pth -o DIR)"
        ) from None
    return Path(folder)


def _load_any(path_or_hub_id: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], str]:
    """(model, preprocessing dict, description) for a folder, run folder, .pth file or hub id."""
    from unsam.models.whole_image.convert import (
        convert_to_model,
        load_official_state_dict,
        read_preprocessor_config,
    )

    text = os.fspath(path_or_hub_id)
    path = Path(text).expanduser()
    if not path.exists() and path.parent != Path(".") and path.parent.is_dir():
        raise FileNotFoundError(  # "runs/typo" where runs/ exists: a local path, not a hub id
            f"{text}: no such file or folder in {path.parent} (expected a model folder, a training run "
            "folder or an official UnSAM .pth)"
        )
    if not path.exists():
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.endswith(_CHECKPOINT_SUFFIXES):
            path = _download_from_hub(text)  # a typo'd local path also lands here; the error names both
            if not (path / "config.json").is_file():
                found = sorted(p for p in path.rglob("*") if p.suffix in _CHECKPOINT_SUFFIXES)
                if len(found) != 1:
                    raise ValueError(
                        f"{text}: expected one checkpoint file in the hub repository, found "
                        f"{[p.name for p in found] or 'none'}; download the one you want and pass its path"
                    )
                path = found[0]
        else:
            raise FileNotFoundError(
                f"{text}: no such file or folder (expected a model folder, a training run folder, an official "
                f"UnSAM .pth, or a hub id such as {HUB_ID})"
            )
    if path.is_file():
        state_dict = load_official_state_dict(path)
        model = convert_to_model(state_dict, where=str(path))
        prep = read_preprocessor_config(None)
        if "pixel_mean" in state_dict and "pixel_std" in state_dict:
            prep["mean"] = tuple(float(v) for v in state_dict["pixel_mean"].flatten())
            prep["std"] = tuple(float(v) for v in state_dict["pixel_std"].flatten())
        return model, prep, f"{path} (official checkpoint, converted)"
    folder = resolve_model_folder(path)
    return _load_transformers_folder(folder), read_preprocessor_config(folder), str(folder)


@contextlib.contextmanager
def _lean_mask_predictions(model: Any) -> Iterator[None]:
    """Inside the block, the decoder's mask predictor works with bounded memory (inference only).

    transformers' ``Mask2FormerMaskPredictor.forward`` is replaced, for this model instance, by the
    same computation with three savings that leave the outputs unchanged:

    - only the last call's (Q, H/4, W/4) mask logits are returned; earlier calls (used by the
      decoder only for their attention masks) return empty tensors, so the decoder no longer keeps
      ``decoder_layers`` of them (~8 GB for 2000 queries at 1024x1536);
    - the attention mask is thresholded (``sigmoid < 0.5``) *before* being repeated over the heads,
      so the repeat copies booleans instead of floats (4x less memory, the same mask);
    - the last call skips the attention mask, which nothing reads after the last layer.
    """
    decoder = model.model.transformer_module.decoder
    predictor = decoder.mask_predictor
    total = len(decoder.layers) + 1
    calls = [0]

    def forward(outputs: torch.Tensor, pixel_embeddings: torch.Tensor, attention_mask_target_size: Any = None) -> Any:
        calls[0] += 1
        last = calls[0] % total == 0
        mask_embeddings = predictor.mask_embedder(outputs.transpose(0, 1))
        outputs_mask = torch.einsum("bqc, bchw -> bqhw", mask_embeddings, pixel_embeddings)
        if last:
            return outputs_mask, None
        attention_mask = F.interpolate(
            outputs_mask, size=attention_mask_target_size, mode="bilinear", align_corners=False
        )
        attention_mask = attention_mask.sigmoid().flatten(2) < 0.5  # (B, Q, hw) bool
        attention_mask = attention_mask.unsqueeze(1).expand(-1, predictor.num_heads, -1, -1).flatten(0, 1)
        return outputs_mask.new_empty((*outputs_mask.shape[:2], 0, 0)), attention_mask.detach()

    predictor.forward = forward
    try:
        yield
    finally:
        del predictor.forward  # back to the class's forward


# --------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------


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
        self.config = config or SegmentConfig()
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
                - a ``save_pretrained`` folder (config.json + safetensors [+ preprocessor_config.json]);
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
        seg = cls(model, config, mean=prep["mean"], std=prep["std"], size_divisibility=prep["size_divisibility"])
        seg.source = source
        logger.info("loaded whole-image model from %s (%d queries)", source, model.config.num_queries)
        return seg

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write the model (safetensors + config.json) and ``preprocessor_config.json`` to ``path``."""
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

    def predict_logits(
        self, image: npt.NDArray[np.uint8]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Raw model output for one image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            ``(class_logits (Q, 2), mask_logits (Q, H'/4, W'/4), padded_hw (H', W'), valid_hw (h', w'))``.
        """
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
        padded_hw = (int(x.shape[2]), int(x.shape[3]))
        with torch.inference_mode(), _lean_mask_predictions(self.model):
            out = self.model(pixel_values=x)
        masks = out.masks_queries_logits[0]
        if masks.numel() == 0:
            raise RuntimeError(
                "the transformers Mask2Former decoder no longer calls its mask predictor once per layer as "
                "expected; unsam.models.whole_image.segmenter._lean_mask_predictions needs updating"
            )
        return out.class_queries_logits[0], masks, padded_hw, valid_hw

    def __call__(self, image: npt.NDArray[np.uint8], *, image_id: int = 0) -> list[MaskRecord]:
        """Segment one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            image_id: written into every record; ids are ``annotation_id(image_id, rank)``.

        Returns:
            Mask records (``source="model"``, ``level=0``) sorted by descending score; empty masks
            and masks below ``score_thresh`` are left out; at most ``max_masks``.
        """
        cfg = self.config
        class_logits, mask_logits, padded_hw, valid_hw = self.predict_logits(image)
        result = postprocess_masks(
            class_logits,
            mask_logits,
            padded_hw=padded_hw,
            valid_hw=valid_hw,
            image_hw=(image.shape[0], image.shape[1]),
            max_masks=cfg.max_masks,
            mask_threshold=cfg.mask_threshold,
            chunk_size=cfg.chunk_size,
            chunk_bytes=cfg.chunk_megabytes << 20,
        )
        del class_logits, mask_logits
        keep = np.flatnonzero(
            (result.areas > 0) & (result.scores >= cfg.score_thresh)
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


class SegmenterProducer:
    """Adapter for :func:`unsam.runner.run_images`: loads the model once per worker process."""

    def __init__(self, model: str | os.PathLike[str], config: SegmentConfig | None = None) -> None:
        self.model = os.fspath(model)
        self.config = config or SegmentConfig()
        self._segmenter: WholeImageSegmenter | None = None

    def settings(self) -> dict[str, Any]:
        model = self.model
        path = Path(model)
        if path.is_dir():
            try:
                model = str(resolve_model_folder(path).resolve())
            except FileNotFoundError:
                pass
        elif path.is_file():
            model = str(path.resolve())
        return {"producer": "whole-image", "model": model, "segment": config_to_dict(self.config)}

    def setup(self) -> None:
        if self._segmenter is None:
            self._segmenter = WholeImageSegmenter.from_pretrained(self.model, config=self.config)

    def __call__(self, image: npt.NDArray[np.uint8], *, image_id: int) -> list[MaskRecord]:
        self.setup()
        return self._segmenter(image, image_id=image_id)  # type: ignore[misc]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_segmenter"] = None  # workers load their own copy
        return state
