"""Automatic mask generator of the promptable model (spec PROMPTABLE.md §4).

A point grid over the whole image; every point is a click that yields 6 granularity masks. Masks
are filtered by predicted IoU and stability score, de-duplicated by box NMS, and small holes and
islands are cleaned (SAM's AMG, as the original drives it). The image is encoded once; points go
through the decoder in batches of ``points_per_batch``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from unsam.config import param
from unsam.masks import resize_mask
from unsam.models.promptable.decoder import mask_product
from unsam.models.promptable.layers import DEMO_BOX_FRACTION, click_boxes
from unsam.models.promptable.maskops import (
    box_nms,
    boxes_xyxy_inclusive,
    point_grid,
    remove_small_regions,
    stability_scores,
)
from unsam.models.promptable.predictor import (
    PromptablePredictor,
    auto_input_size,
    torch_threads,
)
from unsam.records import MaskRecord, decode_rle, encode_mask

__all__ = [
    "AMG_STAT_KEYS",
    "PROMPT_SWITCH",
    "AMGConfig",
    "PromptableAMGProducer",
    "PromptableMaskGenerator",
]

logger = logging.getLogger(__name__)

#: The original UI's "level" 1..6 ("largest to smallest" in Semantic-SAM) -> decoder token index
#: (``prompt_switch``, spec §4). Whether UnSAM's tokens keep this order is UNCERTAIN (spec §7.3).
PROMPT_SWITCH: dict[int, int] = {1: 3, 2: 2, 3: 0, 4: 4, 5: 1, 6: 5}

#: Counters of :attr:`PromptableMaskGenerator.last_stats`, in filter order: candidate masks (grid
#: points x tokens), dropped by the predicted-IoU filter, by the stability filter, by box NMS, by
#: the NMS after small-region cleanup, and kept.
AMG_STAT_KEYS: tuple[str, ...] = (
    "amg_candidates",
    "amg_pred_iou_dropped",
    "amg_stability_dropped",
    "amg_nms_dropped",
    "amg_cleanup_nms_dropped",
    "amg_kept",
)


@dataclass(frozen=True)
class AMGConfig:
    """Settings of the promptable AMG. Defaults are the original class defaults (spec §4) with the
    automatic demo's input size; :meth:`demo` gives the automatic demo's settings.

    ``unsam segment --model promptable:PATH`` has one ``--amg-*`` flag per field.
    """

    points_per_side: int = param(
        32, "grid points per side; the grid has points_per_side² clicks (automatic demo: 80)"
    )
    points_per_batch: int = param(200, "clicks per decoder call (the original's 200)")
    pred_iou_thresh: float = param(
        0.88,
        "keep masks whose raw predicted IoU is strictly above this (automatic demo: 0.7); the "
        "head is unbounded, so negative values are allowed",
    )
    stability_score_thresh: float = param(
        0.92,
        "keep masks whose stability score (IoU of the masks at logit +-offset) is >= this, in "
        "[0, 1] (automatic demo: 0.7)",
    )
    stability_score_offset: float = param(1.0, "logit offset of the stability score")
    box_nms_thresh: float = param(
        0.7, "box IoU above which the lower-scored of two masks is dropped, in [0, 1]"
    )
    min_mask_region_area: int = param(
        10,
        "holes and islands smaller than this (pixels of the model input) are cleaned, followed by "
        "a second box NMS; 0 = off (automatic demo: 15)",
    )
    tokens: tuple[int, ...] = param((0, 1, 2, 3, 4, 5), "decoder tokens (0..5) to use")
    independent: bool = param(
        False,
        "decode each click alone (results do not depend on batching); the original lets the "
        "clicks of one batch attend to each other",
    )
    short_side: int | None = param(
        None,
        "shortest side of the model input in pixels; none = the size the model was trained at "
        "(a train-promptable run records it: the image is fitted into that square), else the "
        "automatic demo's 900",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be >= 1")
        if not 0.0 <= self.stability_score_thresh <= 1.0 or not 0.0 <= self.box_nms_thresh <= 1.0:
            raise ValueError("stability_score_thresh and box_nms_thresh must be in [0, 1]")
        if not self.tokens or len(set(self.tokens)) != len(self.tokens):
            raise ValueError(f"tokens must be distinct token indices, got {self.tokens}")
        if self.min_mask_region_area < 0:
            raise ValueError(f"min_mask_region_area={self.min_mask_region_area} must be >= 0")
        if self.short_side is not None and self.short_side < 32:
            raise ValueError(f"short_side={self.short_side} must be >= 32 pixels or None")

    @classmethod
    def demo(cls) -> AMGConfig:
        """The original automatic demo (``demo_auto_generation.py``): 80² points, 0.7 / 0.7,
        15 px."""
        return cls(
            points_per_side=80,
            pred_iou_thresh=0.7,
            stability_score_thresh=0.7,
            min_mask_region_area=15,
        )


class PromptableMaskGenerator:
    """Whole-image masks from a point grid of clicks (spec §4).

    Args:
        predictor: a :class:`PromptablePredictor` (its ``short_side`` / ``max_side`` are
            overridden per call by ``config.short_side``).
        config: :class:`AMGConfig`.
    """

    def __init__(self, predictor: PromptablePredictor, config: AMGConfig | None = None) -> None:
        self.predictor = predictor
        self.config = config or AMGConfig()
        #: What the last :meth:`generate` call dropped at each filter (:data:`AMG_STAT_KEYS`).
        self.last_stats: dict[str, int] = {}

    def generate(self, image: npt.NDArray[np.uint8], image_id: int = 0) -> list[MaskRecord]:
        """Masks of one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            image_id: id written into the records.

        Returns:
            Records at the original image size, by descending predicted IoU: ``predicted_iou``
            (raw), ``score`` (clipped to [0, 1]), ``stability_score``, ``point_coords`` ((x, y),)
            in original pixels, ``crop_box`` (whole image, XYWH), ``level`` = token index + 1,
            ``source`` "promptable-amg". :attr:`last_stats` counts the candidates (grid points
            x tokens) and what each filter dropped.
        """
        cfg = self.config
        pred = self.predictor
        if cfg.short_side is None:
            pred.short_side, pred.max_side = auto_input_size(pred.model.config, None, 900)
        else:
            pred.short_side, pred.max_side = cfg.short_side, None
        pred.set_image(image, image_id=image_id)
        state = pred._require_state()
        h, w = state.image_hw
        h0, w0 = image.shape[:2]
        grid = point_grid(cfg.points_per_side)
        tokens = torch.tensor(cfg.tokens, dtype=torch.int64)
        rles: list[dict[str, Any]] = []
        boxes, ious, stabs, points, levels = [], [], [], [], []
        stats = dict.fromkeys(AMG_STAT_KEYS, 0)
        stats["amg_candidates"] = len(grid) * len(cfg.tokens)
        self.last_stats = stats
        # the per-click part runs on the predictor's click threads (1 by default): small
        # operations, where a 2-thread pool on a busy 2-core machine spun for 16x the time
        with torch_threads(pred.click_threads):
            for start in range(0, len(grid), cfg.points_per_batch):
                batch = grid[start : start + cfg.points_per_batch]
                clicks = torch.from_numpy(batch * np.array([w, h])).float()
                boxes_in = click_boxes(
                    clicks, state.padded_hw, (DEMO_BOX_FRACTION * w, DEMO_BOX_FRACTION * h)
                )
                with torch.inference_mode():
                    out = pred.model.decode_boxes(
                        state, boxes_in, independent=cfg.independent, compute_masks=False
                    )
                # IoUs and the candidate bookkeeping on the host; embeddings stay on the device
                iou, embed = out.iou[:, tokens].float().cpu(), out.mask_embeddings[:, tokens]
                n, t = iou.shape
                flat_iou = iou.reshape(-1)
                flat_embed = embed.reshape(n * t, -1)
                keep = torch.nonzero(flat_iou > cfg.pred_iou_thresh).flatten()
                stats["amg_pred_iou_dropped"] += int(flat_iou.numel() - keep.numel())
                for chunk in keep.split(64):
                    # masks only of the queries that pass the IoU filter
                    with torch.inference_mode():
                        rows = chunk.to(flat_embed.device)
                        low = mask_product(
                            flat_embed[rows], state.mask_features, state.packed_mask_features
                        )
                        up = pred.model.upsample_masks(low, state)  # float32
                    stab = stability_scores(up, 0.0, cfg.stability_score_offset).cpu()
                    ok = stab >= cfg.stability_score_thresh
                    stats["amg_stability_dropped"] += int((~ok).sum())
                    if not ok.any():
                        continue
                    masks = (up[ok.to(up.device)] > 0).cpu()
                    idx = chunk[ok]
                    boxes.append(boxes_xyxy_inclusive(masks))
                    ious.append(flat_iou[idx])
                    stabs.append(stab[ok])
                    points.append(torch.from_numpy(batch[(idx // t).numpy()]))
                    levels.append(tokens[idx % t] + 1)
                    rles.extend(encode_mask(m) for m in masks.numpy())
        if not rles:
            return []
        box_t = torch.cat(boxes)
        iou_t = torch.cat(ious)
        keep = box_nms(box_t.float(), iou_t, cfg.box_nms_thresh)
        stats["amg_nms_dropped"] = int(box_t.shape[0] - keep.numel())
        sel = keep.tolist()
        rles = [rles[i] for i in sel]
        box_t, iou_t = box_t[keep], iou_t[keep]
        stab_t, pts_t, lvl_t = (
            torch.cat(stabs)[keep],
            torch.cat(points)[keep],
            torch.cat(levels)[keep],
        )
        if cfg.min_mask_region_area > 0:
            rles, box_t, keep2 = _clean_small_regions(
                rles, cfg.min_mask_region_area, cfg.box_nms_thresh
            )
            stats["amg_cleanup_nms_dropped"] = int(iou_t.numel() - keep2.numel())
            iou_t, stab_t, pts_t, lvl_t = iou_t[keep2], stab_t[keep2], pts_t[keep2], lvl_t[keep2]
        records = []
        for i, rle in enumerate(rles):
            if (h, w) != (h0, w0):
                rle = encode_mask(resize_mask(decode_rle(rle), (h0, w0)))
            x, y = (float(v) for v in pts_t[i])
            records.append(
                MaskRecord(
                    rle=rle,
                    image_id=int(image_id),
                    score=float(np.clip(float(iou_t[i]), 0.0, 1.0)),
                    predicted_iou=float(iou_t[i]),
                    stability_score=float(stab_t[i]),
                    point_coords=((x * w0, y * h0),),
                    crop_box=(0.0, 0.0, float(w0), float(h0)),
                    level=int(lvl_t[i]),
                    source="promptable-amg",
                )
            )
        stats["amg_kept"] = len(records)
        logger.debug("AMG: %d grid points -> %d masks (%s)", len(grid), len(records), stats)
        return records


def _clean_small_regions(
    rles: list[dict[str, Any]], min_area: int, nms_thresh: float
) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
    """SAM's ``postprocess_small_regions``: clean each mask, score 1 if unchanged else 0, NMS at
    ``nms_thresh``; cleaned survivors get their new mask. Returns (rles, boxes, kept indices)."""
    masks, scores = [], []
    for rle in rles:
        mask = decode_rle(rle)
        mask, changed_holes = remove_small_regions(mask, min_area, "holes")
        mask, changed_islands = remove_small_regions(mask, min_area, "islands")
        masks.append(mask)
        scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
    stacked = torch.from_numpy(np.stack(masks))
    boxes = boxes_xyxy_inclusive(stacked)
    keep = box_nms(boxes.float(), torch.tensor(scores), nms_thresh)
    out = [encode_mask(masks[i]) if scores[i] == 0.0 else rles[i] for i in keep.tolist()]
    return out, boxes[keep], keep


class PromptableAMGProducer:
    """Adapter for :func:`unsam.runner.run_images` (``unsam segment --model promptable:PATH``).

    ``last_stats`` (the generator's :attr:`PromptableMaskGenerator.last_stats`) is summed over the
    images into the run summary.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        config: AMGConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        self.model = os.fspath(model)
        self.config = config or AMGConfig()
        self.device = str(device)
        self.dtype = str(dtype).removeprefix("torch.")
        self._generator: PromptableMaskGenerator | None = None

    def settings(self) -> dict[str, Any]:
        path = os.path.abspath(self.model) if os.path.exists(self.model) else self.model
        return {
            "producer": "promptable-amg",
            "model": path,
            "amg": asdict(self.config),
            "dtype": self.dtype,
        }

    @property
    def last_stats(self) -> dict[str, int]:
        """Candidates and drops of the last image (:data:`AMG_STAT_KEYS`)."""
        return {} if self._generator is None else dict(self._generator.last_stats)

    def setup(self) -> None:
        if self._generator is None:
            predictor = PromptablePredictor.from_pretrained(
                self.model, device=self.device, dtype=self.dtype
            )
            self._generator = PromptableMaskGenerator(predictor, self.config)

    def __call__(self, image: npt.NDArray[np.uint8], *, image_id: int) -> list[MaskRecord]:
        self.setup()
        return self._generator.generate(image, image_id=image_id)  # type: ignore[union-attr]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_generator"] = None
        return state
