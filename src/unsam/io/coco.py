"""Reading and writing mask sets: COCO dataset JSON, COCO results JSON, SAM/SA-1B per-image JSON,
and per-image JSON Lines work files. Every writer is atomic.

Formats:
    * COCO dataset: ``{"images": [...], "annotations": [...], "categories": [{"id": 1, "name":
      "object"}]}`` (class-agnostic; unsam's annotations also carry score, level, parent_id, theta,
      source, refined).
    * COCO results: ``[{"image_id", "category_id", "segmentation", "score"}, ...]``.
    * SAM / SA-1B per-image: ``{"image": {"image_id", "file_name", "width", "height"},
      "annotations": [{"id", "segmentation", "area", "bbox", "predicted_iou", "point_coords",
      "stability_score", "crop_box", ...}]}``.
    * JSONL work file: one :class:`ImageRecord` per line (``image_record_to_json``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from unsam.io.files import atomic_write_json
from unsam.records import ImageRecord, MaskRecord, check_rles

__all__ = [
    "CATEGORIES",
    "MaskFileError",
    "coco_dataset_dict",
    "write_coco_dataset",
    "load_coco_dataset",
    "parse_coco_dataset",
    "write_coco_results",
    "load_coco_results",
    "write_sam_json",
    "load_sam_json",
    "load_sa1b_folder",
    "load_mask_sets",
    "image_record_to_json",
    "image_record_from_json",
    "read_jsonl",
    "validate_dataset",
    "load_json",
    "int_field",
]

logger = logging.getLogger(__name__)

#: The single class-agnostic category every unsam file uses.
CATEGORIES = [{"id": 1, "name": "object", "supercategory": "object"}]


class MaskFileError(ValueError):
    """A mask file is malformed; the message names the file, the position and the field."""


def load_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file (orjson when installed: ~3x faster on large files, same values);
    errors name the file, the line and the column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        import orjson

        return orjson.loads(path.read_bytes())
    except ImportError:
        pass
    except ValueError:  # invalid, NaN, huge ints: json gives the same errors or values as before
        pass
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise MaskFileError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except UnicodeDecodeError:
        raise MaskFileError(f"{path}: not a UTF-8 text file (is it a JSON file?)") from None


def _check_rles(masks: Sequence[MaskRecord], where: Any) -> None:
    """MaskFileError naming ``where(i)`` for the first malformed RLE of ``masks``."""
    try:
        check_rles([m.rle for m in masks], where)
    except ValueError as exc:
        raise MaskFileError(str(exc)) from None


def int_field(obj: dict[str, Any], key: str, where: str) -> int:
    """``obj[key]`` as an int (integral floats accepted), or MaskFileError naming ``where``."""
    if key not in obj:
        raise MaskFileError(f'{where}: missing field "{key}"')
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise MaskFileError(f'{where}: field "{key}" must be an integer, found {value!r}')
    return value


# ---------------------------------------------------------------------------------------------
# COCO dataset JSON
# ---------------------------------------------------------------------------------------------
def coco_dataset_dict(
    images: Sequence[ImageRecord], *, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build a class-agnostic COCO dataset dict; missing annotation ids are assigned
    deterministically.

    Raises:
        ValueError: duplicate image ids or annotation ids.
    """
    seen_images: set[int] = set()
    seen_anns: set[int] = set()
    out_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image in images:
        if image.id in seen_images:
            raise ValueError(f"duplicate image id {image.id} ({image.file_name})")
        seen_images.add(image.id)
        out_images.append(image.info())
        needs_ids = any(m.id is None for m in image.masks)
        masks = image.with_masks(image.masks, assign_ids=True).masks if needs_ids else image.masks
        for m in masks:
            if m.id in seen_anns:
                raise ValueError(f"duplicate annotation id {m.id} (image {image.id})")
            seen_anns.add(m.id)  # type: ignore[arg-type]
            ann = m.to_coco()
            ann["image_id"] = image.id
            annotations.append(ann)
    out: dict[str, Any] = {
        "images": out_images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    if info is not None:
        out["info"] = info
    return out


def validate_dataset(dataset: dict[str, Any], *, where: str) -> None:
    """Check a COCO dataset dict before it is written: unique image ids, unique annotation ids,
    every annotation's image present, and every RLE's size equal to its image's (H, W).

    Raises:
        ValueError: ``"{where}: <the first problem>"``.
    """
    sizes: dict[int, tuple[int, int]] = {}
    names: dict[int, Any] = {}
    for img in dataset.get("images", []):
        if img["id"] in sizes:
            raise ValueError(
                f"{where}: image id {img['id']} is given to both {names[img['id']]} and "
                f"{img.get('file_name')}"
            )
        sizes[img["id"]] = (int(img["height"]), int(img["width"]))
        names[img["id"]] = img.get("file_name")
    seen: set[int] = set()
    for i, ann in enumerate(dataset.get("annotations", [])):
        if ann["image_id"] not in sizes:
            raise ValueError(
                f"{where}: annotations[{i}] belongs to image id {ann['image_id']}, which is not "
                "in the file"
            )
        if ann["id"] in seen:
            raise ValueError(f"{where}: annotation id {ann['id']} is used twice (annotations[{i}])")
        seen.add(ann["id"])
        seg = ann.get("segmentation")
        if isinstance(seg, dict) and tuple(int(v) for v in seg["size"]) != sizes[ann["image_id"]]:
            raise ValueError(
                f"{where}: annotations[{i}] has an RLE of size {seg['size']} but image "
                f"{ann['image_id']} ({names[ann['image_id']]}) is {list(sizes[ann['image_id']])}"
            )


def write_coco_dataset(
    path: str | os.PathLike[str],
    images: Sequence[ImageRecord],
    *,
    info: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a class-agnostic COCO dataset JSON (see :func:`coco_dataset_dict`)."""
    return atomic_write_json(path, coco_dataset_dict(images, info=info))


def parse_coco_dataset(data: dict[str, Any], where: str) -> list[ImageRecord]:
    """Image records of a loaded COCO dataset dict (``where`` names it in errors)."""
    return _parse_coco_dataset(data, where)


def _parse_coco_dataset(data: dict[str, Any], where: str) -> list[ImageRecord]:
    if not isinstance(data.get("images"), list):
        raise MaskFileError(f'{where}: missing list field "images" (is this a COCO dataset JSON?)')
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise MaskFileError(f'{where}: field "annotations" must be a list')
    infos: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        w = f"{where}: images[{i}]"
        if not isinstance(img, dict):
            raise MaskFileError(f"{w}: expected an object")
        image_id = int_field(img, "id", w)
        if image_id in infos:
            raise MaskFileError(f"{w}: duplicate image id {image_id}")
        int_field(img, "height", w)
        int_field(img, "width", w)
        infos[image_id] = img
    per_image: dict[int, list[MaskRecord]] = {k: [] for k in infos}
    parsed: list[MaskRecord] = []
    for i, ann in enumerate(anns):
        w = f"{where}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise MaskFileError(f"{w}: expected an object")
        image_id = int_field(ann, "image_id", w)
        if image_id not in infos:
            raise MaskFileError(f'{w}: image_id {image_id} is not in "images"')
        img = infos[image_id]
        try:
            rec = MaskRecord.from_coco(ann, (int(img["height"]), int(img["width"])), where=w)
        except ValueError as exc:
            raise MaskFileError(str(exc)) from None
        per_image[image_id].append(rec)
        parsed.append(rec)
    _check_rles(parsed, lambda i: f"{where}: annotations[{i}]")
    return [
        ImageRecord(
            id=k,
            file_name=infos[k].get("file_name"),
            height=int(infos[k]["height"]),
            width=int(infos[k]["width"]),
            masks=tuple(per_image[k]),
        )
        for k in infos
    ]


def load_coco_dataset(path: str | os.PathLike[str]) -> list[ImageRecord]:
    """Read a COCO dataset JSON (COCO, LVIS, Entity, PACO, PartImageNet, unsam pseudo-labels).

    Categories are ignored (class-agnostic). Polygons and uncompressed RLE become compressed RLE.
    Crowd annotations keep ``source="gt"`` only when they say so; their ``iscrowd`` flag is not a
    MaskRecord field, so evaluation reads crowd flags from the raw JSON (see unsam.evaluation).

    Raises:
        MaskFileError: naming the file, the list index and the field.
    """
    data = load_json(path)
    if not isinstance(data, dict):
        raise MaskFileError(
            f"{path}: expected a COCO dataset object, found a {type(data).__name__}"
        )
    return _parse_coco_dataset(data, str(path))


# ---------------------------------------------------------------------------------------------
# COCO results JSON
# ---------------------------------------------------------------------------------------------
def write_coco_results(path: str | os.PathLike[str], masks: Iterable[MaskRecord]) -> Path:
    """Atomically write a COCO results list ``[{image_id, category_id: 1, segmentation,
    score}]``."""
    return atomic_write_json(path, [m.to_result() for m in masks])


def _parse_results(data: list[Any], where: str) -> list[MaskRecord]:
    out = []
    for i, ann in enumerate(data):
        w = f"{where}: [{i}]"
        if not isinstance(ann, dict):
            raise MaskFileError(f"{w}: expected an object, found {type(ann).__name__}")
        int_field(ann, "image_id", w)
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            raise MaskFileError(
                f'{w}: field "segmentation" is a polygon; results need RLE with a "size"'
            )
        if "score" not in ann:
            raise MaskFileError(f'{w}: missing field "score"')
        try:
            out.append(MaskRecord.from_coco(ann, None, where=w))
        except ValueError as exc:
            raise MaskFileError(str(exc)) from None
    _check_rles(out, lambda i: f"{where}: [{i}]")
    return out


def load_coco_results(path: str | os.PathLike[str]) -> list[MaskRecord]:
    """Read a COCO results list (RLE segmentations with scores)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise MaskFileError(f"{path}: expected a COCO results list, found a {type(data).__name__}")
    return _parse_results(data, str(path))


# ---------------------------------------------------------------------------------------------
# SAM / SA-1B per-image JSON
# ---------------------------------------------------------------------------------------------
def write_sam_json(path: str | os.PathLike[str], image: ImageRecord) -> Path:
    """Atomically write one image's masks in SA-1B / SAM-AMG form (``image`` + ``annotations``)."""
    info = {"image_id": image.id, "width": image.width, "height": image.height}
    if image.file_name is not None:
        info["file_name"] = image.file_name
    masks = (
        image.with_masks(image.masks, assign_ids=True).masks
        if any(m.id is None for m in image.masks)
        else image.masks
    )
    return atomic_write_json(path, {"image": info, "annotations": [m.to_sam() for m in masks]})


def _parse_sam(data: dict[str, Any], where: str) -> ImageRecord:
    img = data.get("image")
    if not isinstance(img, dict):
        raise MaskFileError(f'{where}: missing object field "image" (is this an SA-1B / SAM JSON?)')
    key = "image_id" if "image_id" in img else "id"
    image_id = int_field(img, key, f"{where}: image")
    h = int_field(img, "height", f"{where}: image")
    w = int_field(img, "width", f"{where}: image")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise MaskFileError(f'{where}: field "annotations" must be a list')
    masks = []
    for i, ann in enumerate(anns):
        wh = f"{where}: annotations[{i}]"
        if isinstance(ann, dict):
            ann = {**ann, "image_id": image_id}
        try:
            masks.append(MaskRecord.from_coco(ann, (h, w), where=wh))
        except ValueError as exc:
            raise MaskFileError(str(exc)) from None
    _check_rles(masks, lambda i: f"{where}: annotations[{i}]")
    return ImageRecord(
        id=image_id, file_name=img.get("file_name"), height=h, width=w, masks=tuple(masks)
    )


def load_sam_json(path: str | os.PathLike[str]) -> ImageRecord:
    """Read one SA-1B / SAM-AMG per-image JSON."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise MaskFileError(f'{path}: expected an object with "image" and "annotations"')
    return _parse_sam(data, str(path))


def load_sa1b_folder(folder: str | os.PathLike[str]) -> list[ImageRecord]:
    """Read every ``*.json`` of a folder of SA-1B per-image JSONs, in sorted order."""
    folder = Path(folder)
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() == ".json" and not p.name.startswith(".")
    )
    if not files:
        raise MaskFileError(
            f"{folder}: no .json files in this folder (expected SA-1B per-image JSONs)"
        )
    return [load_sam_json(p) for p in files]


# ---------------------------------------------------------------------------------------------
# Any of the above
# ---------------------------------------------------------------------------------------------
def load_mask_sets(path: str | os.PathLike[str]) -> list[ImageRecord]:
    """Read masks from any supported form, detected from the content.

    * a folder → SA-1B per-image JSONs;
    * a JSON object with ``images`` → COCO dataset; with ``image`` → one SA-1B/SAM JSON;
    * a JSON list → COCO results (image records then have ``file_name=None`` and their size
      taken from the RLE);
    * a ``.jsonl`` file → unsam work file (one image record per line).
    """
    path = Path(path)
    if path.is_dir():
        return load_sa1b_folder(path)
    if path.suffix.lower() == ".jsonl":
        return [
            image_record_from_json(d, where=f"{path}: line {i + 1}")
            for i, d in enumerate(read_jsonl(path))
        ]
    data = load_json(path)
    if isinstance(data, list):
        grouped: dict[int, list[MaskRecord]] = {}
        for m in _parse_results(data, str(path)):
            grouped.setdefault(m.image_id, []).append(m)
        return [
            ImageRecord(
                id=k,
                file_name=None,
                height=v[0].image_hw[0],
                width=v[0].image_hw[1],
                masks=tuple(v),
            )
            for k, v in grouped.items()
        ]
    if isinstance(data, dict) and "images" in data:
        return _parse_coco_dataset(data, str(path))
    if isinstance(data, dict) and "image" in data:
        return [_parse_sam(data, str(path))]
    raise MaskFileError(
        f'{path}: not a COCO dataset (needs "images"), COCO results list or SA-1B JSON (needs '
        '"image")'
    )


# ---------------------------------------------------------------------------------------------
# JSON Lines work files
# ---------------------------------------------------------------------------------------------
def image_record_to_json(image: ImageRecord, **extra: Any) -> dict[str, Any]:
    """One JSONL line: ``{"image": {...}, "annotations": [...], **extra}`` (ids must be
    assigned)."""
    return {"image": image.info(), "annotations": [m.to_coco() for m in image.masks], **extra}


def image_record_from_json(data: dict[str, Any], *, where: str = "record") -> ImageRecord:
    """Inverse of :func:`image_record_to_json`."""
    if not isinstance(data, dict) or not isinstance(data.get("image"), dict):
        raise MaskFileError(f'{where}: missing object field "image"')
    img = data["image"]
    image_id = int_field(img, "id", f"{where}: image")
    h = int_field(img, "height", f"{where}: image")
    w = int_field(img, "width", f"{where}: image")
    masks = []
    for i, ann in enumerate(data.get("annotations", [])):
        try:
            masks.append(MaskRecord.from_coco(ann, (h, w), where=f"{where}: annotations[{i}]"))
        except ValueError as exc:
            raise MaskFileError(str(exc)) from None
    _check_rles(masks, lambda i: f"{where}: annotations[{i}]")
    return ImageRecord(
        id=image_id, file_name=img.get("file_name"), height=h, width=w, masks=tuple(masks)
    )


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON Lines file; a malformed *last* line (a write cut by a crash) is ignored with a
    warning, a malformed line elsewhere is an error naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                logger.warning("%s: ignoring an incomplete last line (an interrupted write)", path)
                break
            raise MaskFileError(f"{path}: line {i + 1} is not valid JSON ({exc.msg})") from None
    return out
