"""Whole-image segmentation with a trained Mask2Former: one forward pass -> hundreds of scored
masks.

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
``_lean_mask_predictions``; this is the reference path, ``reference=True``).

The default (fast) path runs the decoder with ``_fast_decoder``: attention masks are computed at
their own resolution from resized pixel embeddings, one additive mask is shared by the heads,
attention is fused, and only the top-k queries' final masks are projected at 1/4 resolution
(:meth:`WholeImageSegmenter.predict_top_masks`). Same masks and scores up to float rounding
(tests/models/test_segment_fast_path.py).
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
from unsam.masks import (
    LogitResizePlan,
    greedy_nms,
    logit_resize_plan,
    resize_logits_transposed,
)
from unsam.models.whole_image.config import IMAGE_MEAN, IMAGE_STD, preprocess, resized_hw
from unsam.records import MaskRecord, annotation_id, encode_transposed_masks, rle_iou_matrix

__all__ = [
    "HUB_ID",
    "SegmentConfig",
    "SegmenterProducer",
    "TopMasks",
    "WholeImageSegmenter",
    "postprocess_masks",
    "postprocess_top_masks",
    "resolve_model_folder",
]

logger = logging.getLogger(__name__)

#: The released UnSAM whole-image checkpoint on the Hugging Face hub (official detectron2 format).
HUB_ID = "yujunwei04/unsam-whole-image-segmentation"

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt")

#: The fast path feeds the backbone a channels_last input (same values up to float rounding).
_CHANNELS_LAST = True


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
        "cpu", "torch device for the model and the upsampling, e.g. cpu, cuda, cuda:1, mps"
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
            if c.is_dir()
            and ((c / "model" / "config.json").is_file() or (c / "config.json").is_file())
        ]
        if candidates:
            # a checkpoint is complete once its training state is written beside the model
            complete = [c for c in candidates if (c.parent / "training_state.pt").is_file()]
            best = max(
                complete or candidates,
                key=lambda c: (_step_of(c if c.name != "model" else c.parent), c.stat().st_mtime),
            )
            logger.info("%s: no final model yet, using the latest checkpoint %s", path, best)
            return best
    raise FileNotFoundError(
        f"{path}: no model found (looked for config.json, model/config.json and "
        "checkpoints/*/model/config.json); "
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
            model, info = Mask2FormerForUniversalSegmentation.from_pretrained(
                folder, output_loading_info=True
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{folder}: cannot load a Mask2Former model ({str(exc).splitlines()[0]})"
        ) from None
    finally:
        tf_logger.setLevel(previous)
    if int(model.config.num_labels) != 1:
        raise ValueError(
            f"{folder}: the model has {model.config.num_labels} classes; unsam's whole-image "
            "segmenter expects a "
            "class-agnostic model (num_labels=1, as built by unsam.models.whole_image.build_model)"
        )
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("num_batches_tracked")]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{folder}: weights do not match its config.json: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, "
            f"{len(mismatched)} mismatched (e.g. "
            f"{(missing + unexpected + [str(m) for m in mismatched])[:3]})"
        )
    return model


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id,
            allow_patterns=[
                "*.json",
                "*.safetensors",
                "*.bin",
                *(f"*{s}" for s in _CHECKPOINT_SUFFIXES),
            ],
        )
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, auth: all end in the same advice
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.split(". ")[0]
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        from unsam.features.base import MissingWeightsError

        raise MissingWeightsError(
            f"{repo_id} is no local file or folder, and cannot be downloaded from the Hugging "
            f"Face hub ({reason}); "
            "if it is a hub id, download its checkpoint file "
            f"from https://huggingface.co/{repo_id} and pass the local file's path as the model "
            "(an official .pth "
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
            f"{text}: no such file or folder in {path.parent} (expected a model folder, a "
            "training run "
            "folder or an official UnSAM .pth)"
        )
    if not path.exists():
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.endswith(
            _CHECKPOINT_SUFFIXES
        ):
            path = _download_from_hub(
                text
            )  # a typo'd local path also lands here; the error names both
            if not (path / "config.json").is_file():
                found = sorted(p for p in path.rglob("*") if p.suffix in _CHECKPOINT_SUFFIXES)
                if len(found) != 1:
                    raise ValueError(
                        f"{text}: expected one checkpoint file in the hub repository, found "
                        f"{[p.name for p in found] or 'none'}; download the one you want and pass "
                        "its path"
                    )
                path = found[0]
        else:
            raise FileNotFoundError(
                f"{text}: no such file or folder (expected a model folder, a training run folder, "
                "an official "
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

    def forward(
        outputs: torch.Tensor,
        pixel_embeddings: torch.Tensor,
        attention_mask_target_size: Any = None,
    ) -> Any:
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
        attention_mask = (
            attention_mask.unsqueeze(1).expand(-1, predictor.num_heads, -1, -1).flatten(0, 1)
        )
        return outputs_mask.new_empty((*outputs_mask.shape[:2], 0, 0)), attention_mask.detach()

    predictor.forward = forward
    try:
        yield
    finally:
        del predictor.forward  # back to the class's forward


def _supports_fast_decoder(model: Any) -> bool:
    """The fast decoder re-implements transformers' post-norm masked-attention layer only."""
    decoder = model.model.transformer_module.decoder
    return not getattr(decoder.config, "pre_norm", False) and all(
        isinstance(layer.cross_attn, torch.nn.MultiheadAttention) for layer in decoder.layers
    )


@contextlib.contextmanager
def _fast_decoder(model: Any, *, full_masks: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, the masked-attention decoder runs a faster, equivalent forward (inference).

    Yields a dict that, after the forward pass, holds ``mask_embeddings`` (B, Q, C) of the last
    layer and ``pixel_embeddings`` (B, C, H/4, W/4): the last layer's mask logits are
    ``einsum("bqc,bchw->bqhw")`` of the two, so a caller can compute them for the top-k queries.
    With ``full_masks`` the decoder also returns them for every query (``masks_queries_logits``).

    Differences from transformers' ``Mask2FormerMaskedAttentionDecoder.forward`` (same outputs up
    to float rounding; a logit within rounding of 0 may flip an attention-mask entry, counted in
    tests/models/test_segment_fast_path.py):

    - attention-mask logits are computed at the attention resolution (1/32, 1/16, 1/8): the 1/4
      pixel embeddings are resized bilinearly once per resolution and then projected on the mask
      embeddings. Bilinear resizing is linear, so this equals projecting at 1/4 then resizing, at
      1/16 to 1/64 of the cost; intermediate 1/4-resolution masks are never computed;
    - the attention mask is one (Q, hw) additive float mask shared by all heads (not a
      (B * heads, Q, hw) bool mask that the decoder sums, multiplies and MultiheadAttention turns
      into floats again), and cross-attention runs with ``need_weights=False``, so torch's fused
      scaled-dot-product attention is used instead of materialising per-head softmax weights;
    - self-attention uses the same fused kernel (transformers' ``Mask2FormerAttention`` always
      materialises its (B * heads, Q, Q) weights);
    - the key ``features + position embedding`` of each level is built once, not once per layer.
    """
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerMaskedAttentionDecoderOutput,
    )

    decoder = model.model.transformer_module.decoder
    predictor = decoder.mask_predictor
    stash: dict[str, torch.Tensor] = {}

    def attention_mask(hidden: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Additive (Q, hw) mask (B = 1) or (B * heads, Q, hw): -inf where sigmoid(logit) < 0.5."""
        emb = predictor.mask_embedder(hidden.transpose(0, 1))  # (B, Q, C)
        blocked = torch.bmm(emb, features).sigmoid_() < 0.5  # (B, Q, hw)
        blocked &= ~blocked.all(-1, keepdim=True)  # a query that sees nothing attends everywhere
        mask = torch.zeros(blocked.shape, dtype=hidden.dtype, device=hidden.device)
        mask.masked_fill_(blocked, float("-inf"))
        if mask.shape[0] == 1:
            return mask[0]  # broadcast over the heads by MultiheadAttention
        heads = predictor.num_heads
        return mask[:, None].expand(-1, heads, -1, -1).flatten(0, 1)

    def self_attention(attn: Any, hidden: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """``Mask2FormerAttention`` (no mask) with fused attention: (Q, B, E) -> (Q, B, E)."""
        h = hidden.transpose(0, 1)  # (B, Q, E)
        qk = h if pos is None else h + pos.transpose(0, 1)
        b, q, e = h.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, q, attn.num_heads, attn.head_dim).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(
            heads(attn.q_proj(qk)),
            heads(attn.k_proj(qk)),
            heads(attn.v_proj(h)),
            scale=attn.scaling,
        )
        return attn.out_proj(out.transpose(1, 2).reshape(b, q, e)).transpose(0, 1)

    def forward(
        inputs_embeds: torch.Tensor | None = None,
        multi_stage_positional_embeddings: list[torch.Tensor] | None = None,
        pixel_embeddings: torch.Tensor | None = None,
        encoder_hidden_states: list[torch.Tensor] | None = None,
        query_position_embeddings: torch.Tensor | None = None,
        feature_size_list: list[Any] | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        assert inputs_embeds is not None and pixel_embeddings is not None
        assert encoder_hidden_states is not None and multi_stage_positional_embeddings is not None
        assert feature_size_list is not None
        levels = decoder.num_feature_levels
        # pixel embeddings at each attention resolution, flattened to (B, C, hw)
        features = [
            F.interpolate(
                pixel_embeddings,
                size=tuple(int(v) for v in feature_size_list[lv]),
                mode="bilinear",
                align_corners=False,
            ).flatten(2)
            for lv in range(levels)
        ]
        keys = [
            encoder_hidden_states[lv] + multi_stage_positional_embeddings[lv]
            for lv in range(levels)
        ]
        hidden = inputs_embeds
        all_hidden: tuple[torch.Tensor, ...] = ()
        normed = decoder.layernorm(hidden)
        intermediate = (normed,)
        mask = attention_mask(normed, features[0])
        for idx, layer in enumerate(decoder.layers):
            all_hidden += (hidden,)
            level = idx % levels
            # masked cross-attention, then self-attention, then FFN (post-norm, as forward_post)
            residual = hidden
            out, _ = layer.cross_attn(
                query=hidden + query_position_embeddings,
                key=keys[level],
                value=encoder_hidden_states[level],
                attn_mask=mask,
                key_padding_mask=None,
                need_weights=False,
            )
            hidden = layer.cross_attn_layer_norm(residual + out)
            residual = hidden
            out = self_attention(layer.self_attn, hidden, query_position_embeddings)
            hidden = layer.self_attn_layer_norm(residual + out)
            residual = hidden
            out = layer.fc2(layer.activation_fn(layer.fc1(hidden)))
            hidden = layer.final_layer_norm(residual + out)
            normed = decoder.layernorm(hidden)
            intermediate += (normed,)
            if idx + 1 < len(decoder.layers):
                mask = attention_mask(normed, features[(idx + 1) % levels])
        all_hidden += (hidden,)
        mask_embeddings = predictor.mask_embedder(normed.transpose(0, 1))  # (B, Q, C)
        stash["mask_embeddings"] = mask_embeddings
        stash["pixel_embeddings"] = pixel_embeddings
        empty = mask_embeddings.new_empty((*mask_embeddings.shape[:2], 0, 0))
        last = (
            torch.einsum("bqc, bchw -> bqhw", mask_embeddings, pixel_embeddings)
            if full_masks
            else empty
        )
        return Mask2FormerMaskedAttentionDecoderOutput(
            last_hidden_state=hidden.transpose(1, 0),
            hidden_states=all_hidden if output_hidden_states else None,
            attentions=None,
            intermediate_hidden_states=intermediate,
            masks_queries_logits=(empty,) * (len(intermediate) - 1) + (last,),
        )

    decoder.forward = forward
    try:
        yield stash
    finally:
        del decoder.forward  # back to the class's forward


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
                "expected; unsam.models.whole_image.segmenter._lean_mask_predictions needs updating"
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
