"""Self-training and UnSAM+ target sets (spec §6.6).

**Self-training** (a reconstruction: the original repository only dumps the model's predictions;
how they become the next round's targets is not released, spec §6.6 and §10 bug 32). One round:
the trained model predicts on the training images; predictions with score >= ``score_thresh``
are visited by descending score and a prediction is *added* to the image's pseudo-masks when its
IoU with every mask already in the set (the pseudo-masks and, with ``dedupe``, the predictions
added before it) is below ``iou_thresh``. Pseudo-masks are never removed.

**UnSAM+** (semi-supervised): per image, all ground-truth masks plus the pseudo-masks whose
overlap with every ground-truth mask of that image is below ``iou_thresh`` (default IoU < 0.02;
``overlap="ioa"`` measures intersection over the pseudo-mask's area instead, spec §6.6).

Ids: masks that are kept keep their ids; added masks (``source="model"``) and ground-truth masks
whose id is taken get the first free ``annotation_id(image_id, k)``, k counting up from the
image's mask count, so reruns give the same ids. Ground-truth masks get ``source="gt"``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

from unsam.config import param
from unsam.records import ImageRecord, MaskRecord, annotation_id, coco_rle_bytes

__all__ = [
    "SelfTrainConfig",
    "MergeGTConfig",
    "MergeStats",
    "overlap_matrix",
    "select_new_masks",
    "add_model_masks",
    "merge_ground_truth",
    "SelfTrainResult",
    "self_train_round",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfTrainConfig:
    """One self-training round (spec §6.6; a documented reconstruction)."""

    score_thresh: float = param(
        0.5, "keep model masks whose score (fg prob x mean mask prob) is >= this, [0, 1]"
    )
    iou_thresh: float = param(
        0.5, "add a model mask when its IoU with every mask already in the set is < this"
    )
    dedupe: bool = param(
        True, "also compare a model mask with the model masks added before it (by score)"
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_thresh <= 1.0:
            raise ValueError(f"SelfTrainConfig.score_thresh={self.score_thresh} is outside [0, 1]")
        if not 0.0 < self.iou_thresh <= 1.0:
            raise ValueError(f"SelfTrainConfig.iou_thresh={self.iou_thresh} is outside (0, 1]")


@dataclass(frozen=True)
class MergeGTConfig:
    """UnSAM+ merge of ground truth and pseudo-masks (spec §6.6)."""

    iou_thresh: float = param(
        0.02, "keep a pseudo-mask when its overlap with every GT mask is < this"
    )
    overlap: Literal["iou", "ioa"] = param(
        "iou",
        "overlap measure: iou, or ioa = intersection / pseudo-mask area (spec §6.6 leaves it open)",
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_thresh <= 1.0:
            raise ValueError(f"MergeGTConfig.iou_thresh={self.iou_thresh} is outside (0, 1]")
        if self.overlap not in ("iou", "ioa"):
            raise ValueError(f"MergeGTConfig.overlap={self.overlap!r}: expected 'iou' or 'ioa'")


@dataclass(frozen=True)
class MergeStats:
    """Counts of a merge: output images, masks taken from each side and masks dropped."""

    images: int = 0
    base_masks: int = 0
    added_masks: int = 0
    dropped_masks: int = 0
    unmatched_images: int = 0


def overlap_matrix(
    a: Sequence[MaskRecord], b: Sequence[MaskRecord], measure: Literal["iou", "ioa"] = "iou"
) -> npt.NDArray[np.float64]:
    """Pairwise overlap of masks of one image (pycocotools), shape (len(a), len(b)), float64 in
    [0, 1].

    ``"iou"``: |a ∩ b| / |a ∪ b|. ``"ioa"``: |a ∩ b| / |a| (pycocotools' crowd rule, 0 for empty a).
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    for m in (*a, *b):
        if tuple(m.rle["size"]) != tuple(a[0].rle["size"]):
            raise ValueError(
                f"masks of different sizes {a[0].rle['size']} and {m.rle['size']} "
                "cannot be compared"
            )
    crowd = [1 if measure == "ioa" else 0] * len(b)
    ious = mask_utils.iou(
        [coco_rle_bytes(m.rle) for m in a], [coco_rle_bytes(m.rle) for m in b], crowd
    )
    return np.asarray(ious, dtype=np.float64).reshape(len(a), len(b))


def select_new_masks(
    existing: Sequence[MaskRecord], predictions: Sequence[MaskRecord], config: SelfTrainConfig
) -> list[MaskRecord]:
    """The predictions a self-training round adds to one image's mask set (module doc).

    Args:
        existing: the image's pseudo-masks.
        predictions: the model's masks for the image (any order; scores in [0, 1]).
        config: thresholds.

    Returns:
        Added predictions in descending score order (ties keep input order), unchanged records.
    """
    candidates = [p for p in predictions if p.score >= config.score_thresh and p.area > 0]
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i].score)
    candidates = [candidates[i] for i in order]
    if not candidates:
        return []
    vs_existing = overlap_matrix(candidates, existing).max(axis=1, initial=0.0)
    vs_self = overlap_matrix(candidates, candidates) if config.dedupe else None
    added: list[int] = []
    for i in range(len(candidates)):
        if vs_existing[i] >= config.iou_thresh:
            continue
        if vs_self is not None and added and vs_self[i, added].max() >= config.iou_thresh:
            continue
        added.append(i)
    return [candidates[i] for i in added]


def _free_ids(image_id: int, start: int, used: set[int]) -> Iterable[int]:
    k = start
    while True:
        candidate = annotation_id(image_id, k)
        if candidate not in used:
            used.add(candidate)
            yield candidate
        k += 1


def add_model_masks(
    pseudo: Sequence[ImageRecord],
    predictions: dict[int, Sequence[MaskRecord]],
    config: SelfTrainConfig,
) -> tuple[list[ImageRecord], MergeStats]:
    """One self-training round over a dataset: every pseudo image plus its selected model masks.

    Args:
        pseudo: the current training set (pseudo-labels), in output order.
        predictions: image id → the model's masks for that image (images without an entry keep
            their pseudo-masks only).
        config: thresholds.

    Returns:
        (new image records, stats with ``base_masks`` = pseudo-masks, ``added_masks`` = model
        masks added, ``dropped_masks`` = model masks above ``score_thresh`` that overlapped).
    """
    used = {m.id for img in pseudo for m in img.masks if m.id is not None}
    out: list[ImageRecord] = []
    base = added = dropped = missing = 0
    for img in pseudo:
        preds = predictions.get(img.id)
        if preds is None:
            missing += 1
            out.append(img)
            base += len(img.masks)
            continue
        for p in preds:
            if p.image_hw != img.hw:
                raise ValueError(
                    f"image {img.id} ({img.file_name}): a prediction has size "
                    f"{list(p.image_hw)}, the image "
                    f"{[img.height, img.width]}; were the predictions made on other images?"
                )
        new = select_new_masks(img.masks, preds, config)
        ids = _free_ids(img.id, len(img.masks), used)
        masks = list(_with_ids(img))
        masks += [
            p.replace(image_id=img.id, id=next(ids), source="model", parent_id=None) for p in new
        ]
        out.append(img.with_masks(masks))
        base += len(img.masks)
        added += len(new)
        dropped += sum(1 for p in preds if p.score >= config.score_thresh and p.area > 0) - len(new)
    if missing:
        logger.warning(
            "%d image(s) have no predictions; they keep their pseudo-masks only", missing
        )
    return out, MergeStats(len(out), base, added, dropped, missing)


def _with_ids(img: ImageRecord) -> Iterable[MaskRecord]:
    for m in img.masks:
        yield m if m.image_id == img.id else m.replace(image_id=img.id)


def _match_images(
    gt: Sequence[ImageRecord], pseudo: Sequence[ImageRecord]
) -> dict[int, ImageRecord | None]:
    """pseudo image id → its ground-truth image: same ``file_name`` first, then same id."""
    by_name = {g.file_name: g for g in gt if g.file_name is not None}
    matched: dict[int, ImageRecord | None] = {}
    taken: set[int] = set()
    for img in pseudo:
        g = by_name.get(img.file_name) if img.file_name is not None else None
        matched[img.id] = g
        if g is not None:
            taken.add(g.id)
    by_id = {g.id: g for g in gt if g.id not in taken}
    for img in pseudo:
        if matched[img.id] is None and img.id in by_id:
            matched[img.id] = by_id.pop(img.id)
    for img in pseudo:
        g = matched[img.id]
        if g is not None and g.hw != img.hw:
            raise ValueError(
                f"ground-truth image {g.id} ({g.file_name}) is {g.height}x{g.width} but "
                f"pseudo-label image {img.id} ({img.file_name}) is {img.height}x{img.width}; "
                "are they the same picture?"
            )
    return matched


def merge_ground_truth(
    gt: Sequence[ImageRecord], pseudo: Sequence[ImageRecord], config: MergeGTConfig | None = None
) -> tuple[list[ImageRecord], MergeStats]:
    """UnSAM+ targets: ground truth plus the pseudo-masks that overlap no ground-truth mask.

    Images are matched by ``file_name``, else by id. Output order: the pseudo-label images (with
    their id and file name), then ground-truth images without pseudo-labels (ground truth only).

    Args:
        gt: ground-truth image records.
        pseudo: pseudo-label image records.
        config: threshold and overlap measure (default IoU < 0.02).

    Returns:
        (merged image records, stats with ``base_masks`` = GT masks, ``added_masks`` = pseudo-masks
        kept, ``dropped_masks`` = pseudo-masks dropped, ``unmatched_images`` = pseudo images
        without ground truth, which keep all their pseudo-masks).

    Raises:
        ValueError: matched images of different sizes, or a GT-only image whose id is taken.
    """
    config = config or MergeGTConfig()
    matched = _match_images(gt, pseudo)
    used_gt = {g.id for g in matched.values() if g is not None}

    # pass 1: which pseudo-masks survive (their ids are kept)
    kept: dict[int, list[MaskRecord]] = {}
    dropped = unmatched = 0
    for img in pseudo:
        g = matched[img.id]
        masks = [m for m in _with_ids(img) if m.area > 0]
        if g is None:
            unmatched += 1
            kept[img.id] = masks
            continue
        gt_masks = [m for m in g.masks if m.area > 0]
        over = overlap_matrix(masks, gt_masks, config.overlap).max(axis=1, initial=0.0)
        keep = [m for m, o in zip(masks, over) if o < config.iou_thresh]
        kept_ids = {m.id for m in keep}
        kept[img.id] = [
            m if m.parent_id is None or m.parent_id in kept_ids else m.replace(parent_id=None)
            for m in keep
        ]
        dropped += len(masks) - len(keep)
    used = {m.id for ms in kept.values() for m in ms if m.id is not None}

    # pass 2: ground-truth masks first, then the surviving pseudo-masks
    def gt_records(g: ImageRecord, image_id: int, start: int) -> list[MaskRecord]:
        ids = _free_ids(image_id, start, used)
        out = []
        for m in g.masks:
            if m.area == 0:
                continue
            new_id = m.id if (m.id is not None and m.id not in used) else next(ids)
            used.add(new_id)
            out.append(
                m.replace(
                    image_id=image_id, id=new_id, source="gt", score=1.0, parent_id=None, level=0
                )
            )
        return out

    out: list[ImageRecord] = []
    n_gt = n_kept = 0
    for img in pseudo:
        g = matched[img.id]
        gts = gt_records(g, img.id, len(img.masks)) if g is not None else []
        n_gt += len(gts)
        n_kept += len(kept[img.id])
        out.append(img.with_masks([*gts, *kept[img.id]]))
    taken_ids = {img.id for img in pseudo}
    for g in gt:
        if g.id in used_gt:
            continue
        if g.id in taken_ids:
            raise ValueError(
                f"ground-truth image {g.id} ({g.file_name}) has no pseudo-labels and its id is "
                "used by another "
                "pseudo-label image; give the two files consistent image ids "
                "(e.g. unsam pseudo-label --image-ids-from GT.json)"
            )
        gts = gt_records(g, g.id, 0)
        n_gt += len(gts)
        out.append(g.with_masks(gts))
    if unmatched:
        logger.warning(
            "%d pseudo-label image(s) have no ground truth; they keep all their pseudo-masks",
            unmatched,
        )
    return out, MergeStats(len(out), n_gt, n_kept, dropped, unmatched)


@dataclass(frozen=True)
class SelfTrainResult:
    """What one self-training round wrote (see :func:`self_train_round`)."""

    output: Path
    predictions: Path
    stats: MergeStats
    unreadable: int


def self_train_round(
    model: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: SelfTrainConfig | None = None,
    segment: Any = None,
    *,
    workers: int = 1,
    progress: Callable[[int, int], Any] | None = None,
) -> SelfTrainResult:
    """One self-training round (spec §6.6): the model predicts on every image of ``annotations``
    (resumable, into ``OUTPUT.predictions.json``), then its confident masks that overlap no
    existing mask are added (:func:`add_model_masks`) and ``output`` is written.

    Args:
        model: a trained whole-image model (run folder, model folder or .pth).
        annotations: the current pseudo-labels (COCO dataset JSON with file names).
        images: folder the file names are relative to.
        output: the new COCO dataset JSON.
        config: the round's thresholds.
        segment: :class:`unsam.models.whole_image.segment_config.SegmentConfig` of the predictions
            (its score threshold is raised to ``config.score_thresh``: lower ones are never used).
        workers: prediction processes.
        progress: ``progress(done, total)`` per image.

    Raises:
        FileNotFoundError: the image folder is missing. ValueError: an image has no file name.
    """
    from unsam.config import config_to_dict
    from unsam.io.coco import load_coco_dataset, write_coco_dataset
    from unsam.models.whole_image.producer import SegmenterProducer
    from unsam.models.whole_image.segment_config import SegmentConfig
    from unsam.runner import id_rule, run_images

    config = config or SelfTrainConfig()
    segment = segment or SegmentConfig()
    segment = dataclasses.replace(
        segment, score_thresh=max(segment.score_thresh, config.score_thresh)
    )
    pseudo = load_coco_dataset(annotations)
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: image folder not found "
            f"(the folder {annotations}'s file_name values are relative to)"
        )
    missing = [img.id for img in pseudo if not img.file_name]
    if missing:
        raise ValueError(
            f"{annotations}: image id {missing[0]} has no file_name; "
            "self-training needs one per image"
        )
    output = Path(output)
    predictions_path = output.with_name(output.stem + ".predictions.json")
    result = run_images(
        SegmenterProducer(model, segment),
        [root / str(img.file_name) for img in pseudo],
        root,
        predictions_path,
        image_ids={str(img.file_name): img.id for img in pseudo},
        ids_rule=id_rule(annotations),
        workers=workers,
        progress=progress,
    )
    predictions = {img.id: img.masks for img in load_coco_dataset(predictions_path)}
    merged, stats = add_model_masks(pseudo, predictions, config)
    info = {
        "description": "unsam self-train: pseudo-labels + confident model masks (one round)",
        "model": str(model),
        "annotations": str(annotations),
        "settings": {"self_train": config_to_dict(config), "segment": config_to_dict(segment)},
    }
    write_coco_dataset(output, merged, info=info)
    return SelfTrainResult(output, predictions_path, stats, len(result.skipped))
