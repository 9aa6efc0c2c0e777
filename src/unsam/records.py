"""Class-agnostic mask records: the one mask type used by every unsam stage.

A :class:`MaskRecord` holds one mask as COCO compressed RLE (pycocotools' codec, never a
hand-written one) plus the fields of SAM's automatic mask generator records and UnSAM's
hierarchy fields (spec §5.2). An :class:`ImageRecord` is one image's info plus its masks.

``area`` and ``bbox`` are derived from the RLE, never stored separately, so they cannot drift.
Conversion to and from on-disk formats lives in :mod:`unsam.io.coco`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

__all__ = [
    "MaskRecord",
    "ImageRecord",
    "annotation_id",
    "encode_masks",
    "encode_mask",
    "encode_transposed_masks",
    "decode_rle",
    "decode_rles",
    "normalize_rle",
    "coco_rle_bytes",
    "rle_counts_errors",
    "check_rles",
    "rle_iou_matrix",
    "box_xyxy_to_xywh",
]

#: Annotation ids are ``image_id * ANN_ID_STRIDE + k``: deterministic and unique across shards.
ANN_ID_STRIDE = 1_000_000


def annotation_id(image_id: int, index: int) -> int:
    """Deterministic, globally unique annotation id for the ``index``-th mask of an image.

    Fixes the original's process-local counter (spec §10, bugs 1-2): ids never collide across
    shards or reruns as long as image ids are unique and an image has < 1e6 masks.
    """
    if not 0 <= index < ANN_ID_STRIDE:
        raise ValueError(f"mask index {index} is outside [0, {ANN_ID_STRIDE})")
    return int(image_id) * ANN_ID_STRIDE + int(index)


def encode_masks(masks: npt.NDArray[np.bool_]) -> list[dict[str, Any]]:
    """Encode binary masks as COCO compressed RLE with pycocotools.

    Args:
        masks: (N, H, W) bool (or 0/1 integer) array, pixel grid.

    Returns:
        N dicts ``{"size": [H, W], "counts": str}`` with ``counts`` decoded to UTF-8.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    masks = masks.view(np.uint8) if masks.dtype == np.bool_ else (masks != 0).view(np.uint8)
    rles = []
    for (
        m
    ) in masks:  # one mask at a time: cache-friendly, no (H, W, N) Fortran copy of the whole stack
        rle = mask_utils.encode(np.asfortranarray(m)[:, :, None])[0]
        rle["counts"] = rle["counts"].decode("utf-8")
        rles.append(rle)
    return rles


def encode_transposed_masks(masks_t: npt.NDArray[np.bool_]) -> list[dict[str, Any]]:
    """:func:`encode_masks` for masks stored transposed, in COCO RLE's own (column-major) order.

    Args:
        masks_t: (N, W, H) bool array, C-contiguous: ``masks_t[i].T`` is the i-th (H, W) mask.
            Its (H, W, N) transpose is Fortran-ordered, what pycocotools encodes, so the whole
            stack is encoded in one call with no copy.

    Returns:
        N dicts ``{"size": [H, W], "counts": str}``.
    """
    masks_t = np.ascontiguousarray(masks_t)
    if masks_t.ndim != 3:
        raise ValueError(f"masks_t must be (N, W, H), got shape {masks_t.shape}")
    if masks_t.shape[0] == 0:
        return []
    if masks_t.dtype != np.bool_:
        masks_t = masks_t != 0
    rles = mask_utils.encode(masks_t.view(np.uint8).transpose(2, 1, 0))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles


def encode_mask(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """Encode one (H, W) binary mask as COCO compressed RLE (see :func:`encode_masks`)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    return encode_masks(mask[None])[0]


def coco_rle_bytes(rle: dict[str, Any]) -> dict[str, Any]:
    """RLE with bytes counts, as pycocotools' C functions want it."""
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode("utf-8") if isinstance(counts, str) else counts,
    }


def decode_rle(rle: dict[str, Any]) -> npt.NDArray[np.bool_]:
    """Decode one compressed RLE into an (H, W) bool mask."""
    return mask_utils.decode(coco_rle_bytes(rle)).astype(bool)


def decode_rles(rles: Sequence[dict[str, Any]]) -> npt.NDArray[np.bool_]:
    """Decode RLEs of one image into an (N, H, W) bool array (N may be 0: then (0, 0, 0))."""
    if len(rles) == 0:
        return np.zeros((0, 0, 0), dtype=bool)
    return mask_utils.decode([coco_rle_bytes(r) for r in rles]).transpose(2, 0, 1).astype(bool)


def normalize_rle(segmentation: Any, image_hw: tuple[int, int] | None) -> dict[str, Any]:
    """Turn any COCO segmentation (polygons, uncompressed or compressed RLE) into compressed RLE.

    Args:
        segmentation: a list of polygons ``[[x1, y1, x2, y2, ...], ...]``, an uncompressed RLE
            ``{"size": [H, W], "counts": [int, ...]}`` or a compressed one (``counts`` str/bytes).
        image_hw: (H, W) of the image; required for polygons.

    Returns:
        ``{"size": [H, W], "counts": str}``.

    Raises:
        ValueError: unknown form, or polygons without an image size.
    """
    if isinstance(segmentation, list):
        if image_hw is None:
            raise ValueError("polygon segmentation needs the image height and width")
        polys = [p for p in segmentation if len(p) >= 6]
        h, w = int(image_hw[0]), int(image_hw[1])
        if not polys:
            return encode_mask(np.zeros((h, w), dtype=bool))
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        h, w = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, h, w)
        elif isinstance(counts, (str, bytes)):
            return {
                "size": [h, w],
                "counts": counts.decode("utf-8") if isinstance(counts, bytes) else counts,
            }
        else:
            raise ValueError(
                f"segmentation.counts has type {type(counts).__name__}; expected str or list"
            )
    else:
        raise ValueError(
            f"segmentation has type {type(segmentation).__name__}; expected polygons (list) or RLE "
            '({"size": [H, W], "counts": ...})'
        )
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def rle_counts_errors(
    rles: Sequence[dict[str, Any]], *, chunk_chars: int = 1 << 20
) -> list[tuple[int, str]]:
    """Find compressed RLEs whose ``counts`` string is malformed, vectorised over all of them.

    pycocotools does not validate a counts string: a corrupt one decodes to garbage (or reads past
    its end). This decodes every string the way pycocotools' ``rleFrString`` does (6-bit groups from
    ``chr(48)``, a continuation bit 0x20, sign bit 0x10 of the last group, counts after the second
    stored as differences to the count two before) and checks that each string ends on a complete
    count, that no run is negative and that the runs add up to ``H * W``.

    Args:
        rles: ``{"size": [H, W], "counts": str | bytes}`` dicts (uncompressed RLEs are skipped).

    Returns:
        ``[(index, reason), ...]`` for the malformed ones, in order (empty when all are valid).
    """
    picked = [
        (i, r["counts"]) for i, r in enumerate(rles) if isinstance(r.get("counts"), (str, bytes))
    ]
    out: list[tuple[int, str]] = []
    start = 0
    while start < len(picked):  # chunks of about chunk_chars characters stay in the CPU caches
        stop, chars = start, 0
        while stop < len(picked) and (chars < chunk_chars or stop == start):
            chars += len(picked[stop][1])
            stop += 1
        out += _rle_chunk_errors(rles, picked[start:stop])
        start = stop
    return out


def _rle_chunk_errors(
    rles: Sequence[dict[str, Any]], picked: list[tuple[int, Any]]
) -> list[tuple[int, str]]:
    errors: dict[int, str] = {}
    raw = [c.encode("ascii", "replace") if isinstance(c, str) else c for _, c in picked]
    lengths = np.fromiter((len(b) for b in raw), dtype=np.int64, count=len(raw))
    sizes = np.array(
        [int(rles[i]["size"][0]) * int(rles[i]["size"][1]) for i, _ in picked], dtype=np.int64
    )
    c = np.frombuffer(b"".join(raw), dtype=np.uint8).astype(np.int64) - 48
    owner = np.repeat(np.arange(len(raw)), lengths)
    if c.size == 0:
        return [(i, "counts is empty") for i, _ in picked]
    bad_char = (c < 0) | (c > 63)
    for k in np.unique(owner[bad_char]):
        errors[int(k)] = "counts has a character outside the RLE alphabet"
    last = np.cumsum(lengths) - 1
    nonempty = lengths > 0
    ends = (c & 0x20) == 0  # the last group of a count
    for k in np.flatnonzero(nonempty & ~ends[np.clip(last, 0, None)]):
        errors.setdefault(int(k), "counts ends in the middle of a number (truncated)")
    ends[last[nonempty]] = True  # a count never runs into the next string
    totals = np.zeros(len(raw), dtype=np.int64)
    if ends.any():
        tok_end = np.flatnonzero(ends)
        tok_start = np.concatenate(([0], tok_end[:-1] + 1))
        tok_owner = owner[tok_end]
        tok_len = tok_end - tok_start + 1
        for k in np.unique(tok_owner[tok_len > 12]):
            errors.setdefault(int(k), "counts holds a number too large for any image")
        pos = np.arange(len(c)) - np.repeat(tok_start, tok_len)
        value = np.add.reduceat((c & 0x1F) << np.minimum(5 * pos, 60), tok_start)
        negative = (c[tok_end] & 0x10) != 0
        value = np.where(negative, value - (np.int64(1) << np.minimum(5 * tok_len, 62)), value)
        # counts[m] = value[m] + counts[m - 2] for m > 2, so per string counts at odd m are running
        # sums of the values at odd m, at even m >= 2 running sums of the values at even m >= 2
        first_tok = np.searchsorted(tok_owner, tok_owner)
        m = np.arange(len(tok_end)) - first_tok
        counts = value.copy()
        for parity in (0, 1):
            sel = (m % 2 == parity) & (m >= 1)
            run = np.cumsum(np.where(sel, value, 0))
            before = np.where(first_tok > 0, run[np.maximum(first_tok - 1, 0)], 0)
            counts[sel] = (run - before)[sel]
        for k in np.unique(tok_owner[counts < 0]):
            errors.setdefault(int(k), "counts decodes to a negative run length")
        totals = np.bincount(tok_owner, weights=counts, minlength=len(raw)).astype(np.int64)
    for k in np.flatnonzero(totals != sizes):
        errors.setdefault(
            int(k), f"counts add up to {int(totals[k])} pixels, not H*W = {int(sizes[k])}"
        )
    return [(picked[k][0], reason) for k, reason in sorted(errors.items())]


def check_rles(rles: Sequence[dict[str, Any]], where: Callable[[int], str]) -> None:
    """Raise ``ValueError`` naming the first malformed compressed RLE (``where(index)`` gives its
    position, e.g. ``"pred.json: [12]"``); see :func:`rle_counts_errors`."""
    errors = rle_counts_errors(rles)
    if errors:
        i, reason = errors[0]
        more = f" ({len(errors) - 1} more malformed)" if len(errors) > 1 else ""
        raise ValueError(f'{where(i)}: field "segmentation": {reason}{more}')


def rle_iou_matrix(
    a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]
) -> npt.NDArray[np.float64]:
    """Pairwise mask IoU (pycocotools), shape (len(a), len(b)), float64 in [0, 1]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    ca = [coco_rle_bytes(r) for r in a]
    cb = [coco_rle_bytes(r) for r in b]
    return np.asarray(mask_utils.iou(ca, cb, [0] * len(cb)), dtype=np.float64).reshape(
        len(a), len(b)
    )


def box_xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """(x0, y0, x1, y1) -> (x, y, w, h), COCO's box convention."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


@dataclass(frozen=True)
class MaskRecord:
    """One class-agnostic mask. Field meanings follow spec §5.2 and SAM's AMG records.

    Attributes:
        rle: COCO compressed RLE ``{"size": [H, W], "counts": str}``.
        image_id: id of the image the mask belongs to.
        id: annotation id (deterministic, see :func:`annotation_id`); None until assigned.
        score: confidence in [0, 1] used to rank masks for AR@k (1.0 for ground truth).
        predicted_iou: model-predicted IoU (SAM / promptable model), or None.
        stability_score: SAM's stability score, or None.
        point_coords: prompt points ``((x, y), ...)`` in pixels, or None.
        crop_box: crop the mask was generated in, XYWH pixels, or None.
        level: granularity: 0 = an object-level mask (a divide mask, the whole-image region, a
            whole-image model's mask, ground truth); k >= 1 = the k-th conquer merge level, finest
            first (theta = ``ConquerConfig.thetas[k - 1]``: 1..6 with the spec's six thresholds,
            1..16 with the classic preset); promptable masks: the granularity token 1..6;
            baselines: 1 + the scale's rank, coarsest scale first.
        parent_id: annotation id of the mask this one was split from, or None.
        theta: conquer merge threshold the mask was emitted at, or None.
        source: producer: "maskcut", "conquer", "model", "gt", "felzenszwalb", "slic", ...
        refined: refinement applied: "none", "crf" or "cascadepsp".
    """

    rle: dict[str, Any]
    image_id: int = 0
    id: int | None = None
    score: float = 1.0
    predicted_iou: float | None = None
    stability_score: float | None = None
    point_coords: tuple[tuple[float, float], ...] | None = None
    crop_box: tuple[float, float, float, float] | None = None
    level: int = 0
    parent_id: int | None = None
    theta: float | None = None
    source: str = "unknown"
    refined: str = "none"

    def __post_init__(self) -> None:
        rle = self.rle
        if not isinstance(rle, dict) or "size" not in rle or not isinstance(rle.get("counts"), str):
            raise ValueError(
                'MaskRecord.rle must be a compressed RLE {"size": [H, W], "counts": str}; '
                "use MaskRecord.from_mask or unsam.records.normalize_rle to build one"
            )
        if not (np.isfinite(self.score)):
            raise ValueError(f"MaskRecord.score must be finite, got {self.score}")

    # --- derived fields -------------------------------------------------------------------
    @cached_property
    def area(self) -> int:
        """Number of mask pixels (from the RLE)."""
        return int(mask_utils.area(coco_rle_bytes(self.rle)))

    @cached_property
    def bbox(self) -> list[float]:
        """Tight box XYWH in pixels (from the RLE); [0, 0, 0, 0] for an empty mask."""
        return [float(v) for v in mask_utils.toBbox(coco_rle_bytes(self.rle))]

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the image the mask lives in."""
        return int(self.rle["size"][0]), int(self.rle["size"][1])

    def decode(self) -> npt.NDArray[np.bool_]:
        """The mask as an (H, W) bool array."""
        return decode_rle(self.rle)

    def replace(self, **changes: Any) -> MaskRecord:
        """A copy with some fields changed (records are immutable)."""
        return dataclasses.replace(self, **changes)

    # --- constructors ---------------------------------------------------------------------
    @classmethod
    def from_mask(cls, mask: npt.NDArray[np.bool_], **fields: Any) -> MaskRecord:
        """Build a record from an (H, W) bool mask; other fields as keyword arguments."""
        return cls(rle=encode_mask(mask), **fields)

    @classmethod
    def from_masks(
        cls, masks: npt.NDArray[np.bool_], scores: Iterable[float] | None = None, **fields: Any
    ) -> list[MaskRecord]:
        """Build records from (N, H, W) bool masks and optional (N,) scores; shared fields as
        kwargs."""
        rles = encode_masks(masks)
        score_list = [1.0] * len(rles) if scores is None else [float(s) for s in scores]
        if len(score_list) != len(rles):
            raise ValueError(f"{len(rles)} masks but {len(score_list)} scores")
        return [cls(rle=r, score=s, **fields) for r, s in zip(rles, score_list)]

    # --- COCO conversion (used by unsam.io and unsam.evaluation) ---------------------------
    def to_coco(self) -> dict[str, Any]:
        """COCO dataset annotation dict (category 1, iscrowd 0) with unsam's extra fields."""
        ann: dict[str, Any] = {
            "id": self.id,
            "image_id": self.image_id,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": {"size": list(self.rle["size"]), "counts": self.rle["counts"]},
            "area": self.area,
            "bbox": self.bbox,
            "score": float(self.score),
            "level": int(self.level),
            "parent_id": self.parent_id,
            "theta": self.theta,
            "source": self.source,
            "refined": self.refined,
        }
        for key in ("predicted_iou", "stability_score"):
            value = getattr(self, key)
            if value is not None:
                ann[key] = float(value)
        if self.point_coords is not None:
            ann["point_coords"] = [list(p) for p in self.point_coords]
        if self.crop_box is not None:
            ann["crop_box"] = list(self.crop_box)
        return ann

    def to_result(self) -> dict[str, Any]:
        """COCO results entry ``{image_id, category_id, segmentation, score}``."""
        return {
            "image_id": self.image_id,
            "category_id": 1,
            "segmentation": {"size": list(self.rle["size"]), "counts": self.rle["counts"]},
            "score": float(self.score),
        }

    def to_sam(self) -> dict[str, Any]:
        """SAM automatic-mask-generator style record (``output_mode="coco_rle"``).

        ``predicted_iou``, ``stability_score`` and ``point_coords`` are ``null`` when the producer
        has nothing to compute them from (never a placeholder value): the promptable model fills
        all three, the whole-image model fills ``stability_score`` (from its mask logits), the
        divide-and-conquer pipeline and the baselines fill none. Filter on ``score`` instead.
        """
        return {
            "id": self.id,
            "segmentation": {"size": list(self.rle["size"]), "counts": self.rle["counts"]},
            "area": self.area,
            "bbox": self.bbox,
            "predicted_iou": None if self.predicted_iou is None else float(self.predicted_iou),
            "point_coords": None
            if self.point_coords is None
            else [list(p) for p in self.point_coords],
            "stability_score": None
            if self.stability_score is None
            else float(self.stability_score),
            "crop_box": list(self.crop_box)
            if self.crop_box is not None
            else [0, 0, self.image_hw[1], self.image_hw[0]],
            "score": float(self.score),
            "level": int(self.level),
            "parent_id": self.parent_id,
            "theta": self.theta,
            "source": self.source,
            "refined": self.refined,
        }

    @classmethod
    def from_coco(
        cls,
        ann: dict[str, Any],
        image_hw: tuple[int, int] | None = None,
        *,
        where: str = "annotation",
    ) -> MaskRecord:
        """Parse a COCO annotation / result / SAM record dict.

        Args:
            ann: the dict; ``segmentation`` may be polygons or (un)compressed RLE.
            image_hw: (H, W), needed when ``segmentation`` is polygons.
            where: text naming the file and position, used in error messages.

        Raises:
            ValueError: naming ``where`` and the offending field.
        """
        if not isinstance(ann, dict):
            raise ValueError(f"{where}: expected an object, found {type(ann).__name__}")
        if "segmentation" not in ann:
            raise ValueError(f'{where}: missing field "segmentation"')
        try:
            rle = normalize_rle(ann["segmentation"], image_hw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f'{where}: field "segmentation": {exc}') from None
        if image_hw is not None and tuple(rle["size"]) != tuple(int(v) for v in image_hw):
            raise ValueError(
                f'{where}: field "segmentation.size" is {rle["size"]} but the image is '
                f"{list(image_hw)} (H, W)"
            )

        def num(key: str, default: float | None) -> float | None:
            value = ann.get(key, default)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'{where}: field "{key}" must be a number, found {value!r}')
            return float(value)

        score = num("score", None)
        if score is None:  # a SAM record: rank by its predicted IoU when it has one
            score = num("predicted_iou", None)
        if score is None:
            score = 1.0
        point_coords = ann.get("point_coords")
        crop_box = ann.get("crop_box")
        image_id = ann.get("image_id", 0)
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise ValueError(f'{where}: field "image_id" must be an integer, found {image_id!r}')
        return cls(
            rle=rle,
            image_id=image_id,
            id=ann.get("id"),
            score=float(score),  # type: ignore[arg-type]
            predicted_iou=num("predicted_iou", None),
            stability_score=num("stability_score", None),
            point_coords=tuple(tuple(float(c) for c in p) for p in point_coords)
            if point_coords
            else None,  # type: ignore[misc]
            crop_box=tuple(float(c) for c in crop_box) if crop_box else None,  # type: ignore[arg-type]
            level=int(ann.get("level", 0) or 0),
            parent_id=ann.get("parent_id"),
            theta=num("theta", None),
            source=str(ann.get("source", "unknown")),
            refined=str(ann.get("refined", "none")),
        )


@dataclass(frozen=True)
class ImageRecord:
    """One image's info plus its masks (one line of a per-image JSONL work file).

    Attributes:
        id: image id (COCO ``images[].id``).
        file_name: file name relative to the image folder, or None when unknown
            (a COCO results list carries no file names).
        height, width: image size in pixels.
        masks: the image's masks, in producer order.
    """

    id: int
    file_name: str | None
    height: int
    width: int
    masks: tuple[MaskRecord, ...] = field(default_factory=tuple)

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    def with_masks(self, masks: Iterable[MaskRecord], *, assign_ids: bool = False) -> ImageRecord:
        """A copy holding ``masks``; with ``assign_ids`` every mask gets image_id and a fresh id."""
        masks = tuple(masks)
        if assign_ids:
            masks = tuple(
                m.replace(image_id=self.id, id=annotation_id(self.id, k))
                for k, m in enumerate(masks)
            )
        return dataclasses.replace(self, masks=masks)

    def info(self) -> dict[str, Any]:
        """COCO ``images[]`` entry."""
        out: dict[str, Any] = {"id": self.id, "width": self.width, "height": self.height}
        if self.file_name is not None:
            out["file_name"] = self.file_name
        return out
