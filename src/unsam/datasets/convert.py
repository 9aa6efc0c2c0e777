"""Convert the seven evaluation datasets of the paper into class-agnostic COCO ground truth.

Every converter reads a dataset in its native format and returns (never writes) a COCO dataset
dict: ``images`` with ``id``, ``file_name``, ``height``, ``width``; ``annotations`` with
``category_id`` 1, ``iscrowd`` as the source says (0 when it has no such field), ``area`` and
``bbox`` (XYWH) computed from the mask, and ``segmentation`` as polygons when the source gives
polygons, else compressed RLE (uncompressed RLE, e.g. COCO's crowd regions, is compressed); one
category ``{"id": 1, "name": "object"}``; and ``info`` recording the rule that was applied.

Rules common to all datasets (all deterministic, so two runs give byte-identical files):

* Images are sorted by image id; the annotations of an image keep the source's order (by
  source annotation id where it has one). Annotation ids are ``image_id * 10**6 + k``
  (:func:`unsam.records.annotation_id`), k = position in that order.
* Annotations whose mask is empty (e.g. PartImageNet's ``"segmentation": []``) are dropped: an
  empty ground-truth mask can never be matched and would only lower recall. Their number is in
  ``info["dropped_empty_masks"]``. Images without annotations are kept.
* ``images_dir``: keep only images whose file exists there, matched by the file name as the
  source gives it, else by base name anywhere below the folder (an ambiguous base name is an
  error); ``file_name`` becomes the path relative to that folder. Missing images are counted
  in ``info["missing_images"]``.
* ``max_images``: after that, keep the first N images in image-id order.

Per dataset (spec §8.1 gives the file names; the conversions are not published, issue #25):

* ``coco``: ``instances_val2017.json``; every annotation, ``iscrowd`` kept (crowd regions stay in
  the file and are ignored-when-matched by COCOeval, as in the COCO protocol).
* ``lvis``: ``lvis_v1_val.json``; every annotation (LVIS has no crowd regions). LVIS images have
  no ``file_name``: it is the last two parts of ``coco_url`` (``val2017/000000397133.jpg``); the
  LVIS val images come from COCO train2017 and val2017.
* ``entityseg``: ``entityseg_val.json`` (or ``entityseg_val_lr.json``, low resolution, with its
  ``images_lr`` folder) of adobe-research/EntitySeg-Dataset; every entity (thing and stuff) mask.
* ``partimagenet``: the part annotation JSON of PartImageNet (``PartImageNet/annotations/val.json``
  with 40 part categories such as "Quadruped Head"); every part mask, no whole-object masks.
* ``paco``: ``paco_lvis_v1_val.json`` (PACO-LVIS; ``paco_ego4d_v1_val.json`` converts the same
  way). Object and part annotations share one list; a part annotation is one whose ``id``
  differs from its ``obj_ann_id``. Default ``annotations="parts"``: only part masks are
  evaluated, since PACO is the paper's part-level benchmark next to PartImageNet; ``"objects"``
  keeps the 75-class object masks, ``"all"`` both. (Issue #25's all-zero PACO metrics come from
  image ids parsed from file names; here images keep the JSON's ids and ``unsam eval`` matches
  by file name.)
* ``ade20k``: the instance annotations of the ADE20K scene-parsing challenge,
  ``ADEChallengeData2016/annotations_instance/validation/ADE_val_*.png`` (SRC may be that folder
  or the ``ADEChallengeData2016`` folder). In each PNG the R channel is the class and the G
  channel the instance id; one mask per G value > 0 (all pixels with that G), exactly the masks
  of Mask2Former's ``prepare_ade20k_ins_seg.py``. Image id = the number in the name
  (``ADE_val_00000001`` → 1); ``file_name`` = ``<stem>.jpg``; size = the PNG's.
* ``sa1b``: a folder of SA-1B per-image JSONs ``sa_<id>.json`` (the jpgs may sit beside them).
  SA-1B has no validation split; the rule is: the JSONs of the given folder (use an SA-1B tar
  that was not used for training), sorted by the numeric id, the first ``max_images`` of them
  (the suite's documented choice is 1000). Image id = ``<id>``; ``file_name`` = ``sa_<id>.jpg``.

Length: the seven converters share the common rules and helpers at the top (entry listing, file
lookup, selection, COCO building); each converter is under 50 lines, and one file keeps the rules
next to every use.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np

from unsam.io.coco import MaskFileError, coco_dataset_dict, load_sam_json, validate_dataset
from unsam.records import ImageRecord, MaskRecord, check_rles, encode_mask

__all__ = [
    "CONVERSION_RULES",
    "CONVERTERS",
    "DATASET_NAMES",
    "PacoAnnotations",
    "convert_ade20k",
    "convert_coco",
    "convert_dataset",
    "convert_entityseg",
    "convert_lvis",
    "convert_paco",
    "convert_partimagenet",
    "convert_sa1b",
]

logger = logging.getLogger(__name__)

#: The seven datasets, in the column order of the paper's table (spec §8.3).
DATASET_NAMES = ("coco", "lvis", "ade20k", "entityseg", "sa1b", "partimagenet", "paco")

#: One line per dataset: what is read and which masks are kept (recorded in ``info``).
CONVERSION_RULES: dict[str, str] = {
    "coco": "COCO instances JSON (instances_val2017.json): every annotation, iscrowd kept",
    "lvis": "LVIS JSON (lvis_v1_val.json): every annotation; file_name = last two parts of "
    "coco_url",
    "ade20k": "ADEChallengeData2016 annotations_instance/validation PNGs: one mask per G-channel "
    "instance id > 0 (as Mask2Former's prepare_ade20k_ins_seg.py); id from ADE_val_<id>",
    "entityseg": "EntitySeg JSON (entityseg_val.json / entityseg_val_lr.json): every entity mask",
    "sa1b": "folder of SA-1B sa_<id>.json files: sorted by id, first --max-images "
    "(suite choice: 1000 from a tar not used for training)",
    "partimagenet": "PartImageNet part JSON (annotations/val.json): every part mask, no object "
    "masks",
    "paco": "PACO JSON (paco_lvis_v1_val.json): part masks (id != obj_ann_id) by default; "
    "objects or all on request",
}

PacoAnnotations = Literal["parts", "objects", "all"]
Progress = Callable[[int, int], Any]


@dataclass(frozen=True)
class _Ann:
    """One source annotation: its segmentation as given (polygons or RLE) and its crowd flag."""

    segmentation: Any
    iscrowd: int


@dataclass(frozen=True)
class _Entry:
    """One source image; ``load()`` returns ``(height, width, annotations)`` when it is kept."""

    image_id: int
    file_name: str
    load: Callable[[], tuple[int, int, list[_Ann]]]
    where: str


# ---------------------------------------------------------------------------------------------
# reading helpers
# ---------------------------------------------------------------------------------------------
def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected {what})")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; expected {what}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise MaskFileError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise MaskFileError(f"{path}: not a UTF-8 JSON file (expected {what})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise MaskFileError(f'{path}: expected {what}: an object with an "images" list')
    if not isinstance(data.get("annotations", []), list):
        raise MaskFileError(f'{path}: field "annotations" must be a list')
    return data


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        found = "missing" if key not in obj else f"{value!r}"
        raise MaskFileError(f'{where}: field "{key}" must be an integer, found {found}')
    return value


def _json_entries(
    path: Path,
    data: dict[str, Any],
    *,
    file_name: Callable[[dict[str, Any], str], str],
    keep: Callable[[dict[str, Any]], bool] = lambda ann: True,
) -> list[_Entry]:
    """Entries of a COCO-style JSON (COCO, LVIS, EntitySeg, PartImageNet, PACO)."""
    infos: dict[int, tuple[str, int, int]] = {}
    for i, img in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(img, dict):
            raise MaskFileError(f"{where}: expected an object")
        image_id = _int(img, "id", where)
        if image_id in infos:
            raise MaskFileError(f"{where}: duplicate image id {image_id}")
        infos[image_id] = (
            file_name(img, where),
            _int(img, "height", where),
            _int(img, "width", where),
        )
    per_image: dict[int, list[tuple[int, int, dict[str, Any]]]] = {k: [] for k in infos}
    for i, ann in enumerate(data.get("annotations", [])):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise MaskFileError(f"{where}: expected an object")
        image_id = _int(ann, "image_id", where)
        if image_id not in infos:
            raise MaskFileError(f'{where}: image_id {image_id} is not in "images"')
        if "segmentation" not in ann:
            raise MaskFileError(f'{where}: missing field "segmentation"')
        if keep(ann):
            ann_id = _int(ann, "id", where) if "id" in ann else i
            per_image[image_id].append((ann_id, i, ann))

    def loader(image_id: int) -> Callable[[], tuple[int, int, list[_Ann]]]:
        def load() -> tuple[int, int, list[_Ann]]:
            _, h, w = infos[image_id]
            anns = sorted(per_image[image_id], key=lambda t: (t[0], t[1]))
            return (
                h,
                w,
                [_Ann(a["segmentation"], int(bool(a.get("iscrowd", 0)))) for _, _, a in anns],
            )

        return load

    return [_Entry(k, infos[k][0], loader(k), f"{path}: image id {k}") for k in sorted(infos)]


def _given_file_name(img: dict[str, Any], where: str) -> str:
    name = img.get("file_name")
    if not isinstance(name, str) or not name:
        raise MaskFileError(f'{where}: missing string field "file_name"')
    return name


# ---------------------------------------------------------------------------------------------
# selection and output
# ---------------------------------------------------------------------------------------------
def _index_folder(images_dir: Path) -> tuple[set[str], dict[str, list[str]]]:
    if not images_dir.is_dir():
        raise NotADirectoryError(f"{images_dir}: no such folder (given as the images folder)")
    rel = sorted(
        p.relative_to(images_dir).as_posix()
        for p in images_dir.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    by_base: dict[str, list[str]] = {}
    for r in rel:
        by_base.setdefault(Path(r).name, []).append(r)
    return set(rel), by_base


def _select(
    entries: Sequence[_Entry], images_dir: str | os.PathLike[str] | None, max_images: int | None
) -> tuple[list[tuple[_Entry, str]], int]:
    """(entry, file name relative to images_dir) of the kept images, and the number missing."""
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    kept: list[tuple[_Entry, str]] = []
    missing = 0
    if images_dir is None:
        kept = [(e, e.file_name) for e in entries]
    else:
        folder = Path(images_dir)
        exact, by_base = _index_folder(folder)
        for e in entries:
            if e.file_name in exact:
                kept.append((e, e.file_name))
                continue
            found = by_base.get(Path(e.file_name).name, [])
            if len(found) > 1:
                raise ValueError(
                    f"{folder}: {e.where} ({e.file_name}) matches {len(found)} files by "
                    f"name ({found[0]}, {found[1]}); keep one, or give the exact folder"
                )
            if found:
                kept.append((e, found[0]))
            else:
                missing += 1
        if entries and not kept:
            raise FileNotFoundError(
                f"{folder}: none of the {len(entries)} images is there (first: "
                f"{entries[0].file_name}); is this the dataset's image folder?"
            )
        if missing:
            logger.warning(
                "%s: %d of %d images are missing there; they are left out",
                folder,
                missing,
                len(entries),
            )
    if max_images is not None:
        kept = kept[:max_images]
    return kept, missing


def _segmentation_out(seg: Any, rle: dict[str, Any]) -> Any:
    """Polygons as the source gave them (degenerate rings removed), anything else as compressed
    RLE."""
    if isinstance(seg, list):
        return [list(p) for p in seg if len(p) >= 6]
    return {"size": list(rle["size"]), "counts": rle["counts"]}


def _build(
    name: str,
    src: Path,
    entries: Sequence[_Entry],
    *,
    images_dir: str | os.PathLike[str] | None,
    max_images: int | None,
    progress: Progress | None,
    rule: str | None = None,
) -> dict[str, Any]:
    selected, missing = _select(entries, images_dir, max_images)
    records: list[ImageRecord] = []
    kept_anns: list[_Ann] = []
    dropped = 0
    for n, (entry, file_name) in enumerate(selected):
        h, w, anns = entry.load()
        masks: list[MaskRecord] = []
        for k, ann in enumerate(anns):
            where = f"{entry.where}, annotation {k}"
            try:
                mask = MaskRecord.from_coco(
                    {"segmentation": ann.segmentation, "image_id": entry.image_id},
                    (h, w),
                    where=where,
                ).replace(source="gt")
            except ValueError as exc:
                raise MaskFileError(str(exc)) from None
            if mask.area == 0:
                dropped += 1
                continue
            masks.append(mask)
            kept_anns.append(ann)
        try:
            check_rles([m.rle for m in masks], lambda i, e=entry: f"{e.where}, kept annotation {i}")
        except ValueError as exc:
            raise MaskFileError(str(exc)) from None
        records.append(
            ImageRecord(
                id=entry.image_id, file_name=file_name, height=h, width=w, masks=tuple(masks)
            )
        )
        if progress is not None:
            progress(n + 1, len(selected))
    if dropped:
        logger.info("%s: dropped %d empty mask(s)", src, dropped)
    info = {
        "description": f"unsam class-agnostic ground truth: {name}",
        "dataset": name,
        "source": src.name,
        "rule": rule or CONVERSION_RULES[name],
        "max_images": max_images,
        "missing_images": missing,
        "dropped_empty_masks": dropped,
    }
    dataset = coco_dataset_dict(records, info=info)
    annotations = []
    for ann, src_ann in zip(dataset["annotations"], kept_anns, strict=True):
        annotations.append(
            {
                "id": ann["id"],
                "image_id": ann["image_id"],
                "category_id": 1,
                "iscrowd": src_ann.iscrowd,
                "segmentation": _segmentation_out(src_ann.segmentation, ann["segmentation"]),
                "area": ann["area"],
                "bbox": ann["bbox"],
            }
        )
    dataset["annotations"] = annotations
    validate_dataset(dataset, where=f"{name} from {src}")
    logger.info("%s: %d images, %d masks", name, len(records), len(annotations))
    return dataset


# ---------------------------------------------------------------------------------------------
# one converter per dataset
# ---------------------------------------------------------------------------------------------
def convert_coco(
    src: str | os.PathLike[str],
    *,
    images_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """COCO ``instances_val2017.json`` → class-agnostic ground truth (every annotation, crowd kept).

    Args:
        src: the COCO instances JSON.
        images_dir: keep only images present there (see the module docstring).
        max_images: keep the first N images by image id.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        The COCO dataset dict (nothing is written).

    Raises:
        FileNotFoundError, MaskFileError: naming the file and the entry.
    """
    path = Path(src)
    data = _read_json_object(path, "a COCO instances JSON")
    entries = _json_entries(path, data, file_name=_given_file_name)
    return _build(
        "coco", path, entries, images_dir=images_dir, max_images=max_images, progress=progress
    )


def _lvis_file_name(img: dict[str, Any], where: str) -> str:
    if isinstance(img.get("file_name"), str) and img["file_name"]:
        return img["file_name"]
    url = img.get("coco_url")
    if not isinstance(url, str) or not url:
        raise MaskFileError(f'{where}: needs "file_name" or "coco_url" (is this an LVIS JSON?)')
    parts = [p for p in urlparse(url).path.split("/") if p]
    return "/".join(parts[-2:])


def convert_lvis(
    src: str | os.PathLike[str],
    *,
    images_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """LVIS ``lvis_v1_val.json`` → class-agnostic ground truth (every annotation).

    ``file_name`` is taken from ``coco_url`` (``val2017/000000397133.jpg``). Arguments and
    errors as :func:`convert_coco`.
    """
    path = Path(src)
    data = _read_json_object(path, "an LVIS JSON")
    entries = _json_entries(path, data, file_name=_lvis_file_name)
    return _build(
        "lvis", path, entries, images_dir=images_dir, max_images=max_images, progress=progress
    )


def convert_entityseg(
    src: str | os.PathLike[str],
    *,
    images_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """EntitySeg ``entityseg_val.json`` (or ``_lr``) → class-agnostic ground truth (every entity).

    Arguments and errors as :func:`convert_coco`.
    """
    path = Path(src)
    data = _read_json_object(path, "an EntitySeg JSON")
    entries = _json_entries(path, data, file_name=_given_file_name)
    return _build(
        "entityseg", path, entries, images_dir=images_dir, max_images=max_images, progress=progress
    )


def convert_partimagenet(
    src: str | os.PathLike[str],
    *,
    images_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """PartImageNet part JSON (``annotations/val.json``) → class-agnostic ground truth (every part).

    Its empty part annotations (``"segmentation": []``) are dropped. Arguments and errors as
    :func:`convert_coco`.
    """
    path = Path(src)
    data = _read_json_object(path, "a PartImageNet part JSON")
    entries = _json_entries(path, data, file_name=_given_file_name)
    return _build(
        "partimagenet",
        path,
        entries,
        images_dir=images_dir,
        max_images=max_images,
        progress=progress,
    )


def convert_paco(
    src: str | os.PathLike[str],
    *,
    annotations: PacoAnnotations = "parts",
    images_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """PACO ``paco_lvis_v1_val.json`` → class-agnostic ground truth.

    Args:
        annotations: "parts" (default: annotations whose ``id`` differs from ``obj_ann_id``),
            "objects" (``id == obj_ann_id``) or "all".
        Other arguments and errors as :func:`convert_coco`.

    Raises:
        MaskFileError: an annotation without ``obj_ann_id`` (not a PACO file).
    """
    if annotations not in ("parts", "objects", "all"):
        raise ValueError(f'annotations must be "parts", "objects" or "all", got {annotations!r}')
    path = Path(src)
    data = _read_json_object(path, "a PACO JSON")
    for i, ann in enumerate(data.get("annotations", [])):
        if isinstance(ann, dict) and "obj_ann_id" not in ann:
            raise MaskFileError(
                f'{path}: annotations[{i}]: missing field "obj_ann_id" (is this a PACO '
                "JSON? PACO marks part annotations by id != obj_ann_id)"
            )

    def keep(ann: dict[str, Any]) -> bool:
        is_part = ann.get("id") != ann["obj_ann_id"]
        return annotations == "all" or is_part == (annotations == "parts")

    entries = _json_entries(path, data, file_name=_given_file_name, keep=keep)
    rule = CONVERSION_RULES["paco"] + f" [annotations={annotations}]"
    return _build(
        "paco",
        path,
        entries,
        images_dir=images_dir,
        max_images=max_images,
        progress=progress,
        rule=rule,
    )


def _ade20k_masks(png: Path) -> tuple[int, int, list[_Ann]]:
    from PIL import Image

    try:
        with Image.open(png) as im:
            mode = im.mode
            arr = np.asarray(im)
    except OSError as exc:
        raise MaskFileError(f"{png}: cannot read the instance PNG ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] < 2 or arr.dtype != np.uint8:
        raise MaskFileError(
            f"{png}: expected an RGB uint8 instance PNG (R = class, G = instance id), "
            f"found mode {mode} with shape {arr.shape}"
        )
    instances = arr[:, :, 1]
    anns = [_Ann(encode_mask(instances == g), 0) for g in np.unique(instances) if g != 0]
    return int(arr.shape[0]), int(arr.shape[1]), anns


def convert_ade20k(
    src: str | os.PathLike[str],
    *,
    images_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """ADE20K instance PNGs (``ADEChallengeData2016/annotations_instance/validation``) → ground
    truth.

    One mask per G-channel instance id > 0, in increasing id order. ``src`` may be the PNG folder
    or the ``ADEChallengeData2016`` folder. Other arguments and errors as :func:`convert_coco`.
    """
    folder = Path(src)
    if (folder / "annotations_instance" / "validation").is_dir():
        folder = folder / "annotations_instance" / "validation"
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{folder}: no such folder (expected ADE20K's "
            "annotations_instance/validation folder of instance PNGs)"
        )
    pngs = sorted(
        p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")
    )
    if not pngs:
        raise FileNotFoundError(
            f"{folder}: no .png files (expected ADE20K instance PNGs ADE_val_*.png)"
        )
    entries: dict[int, _Entry] = {}
    for png in pngs:
        m = re.search(r"(\d+)$", png.stem)
        if m is None:
            raise MaskFileError(
                f"{png}: no image number at the end of the name (expected ADE_val_<id>.png)"
            )
        image_id = int(m.group(1))
        if image_id in entries:
            raise MaskFileError(
                f"{png}: image id {image_id} is also that of {entries[image_id].where}"
            )
        entries[image_id] = _Entry(
            image_id, png.stem + ".jpg", lambda p=png: _ade20k_masks(p), str(png)
        )
    ordered = [entries[k] for k in sorted(entries)]
    return _build(
        "ade20k", folder, ordered, images_dir=images_dir, max_images=max_images, progress=progress
    )


def _sa1b_masks(path: Path) -> tuple[int, int, list[_Ann]]:
    record = load_sam_json(path)
    return record.height, record.width, [_Ann(m.rle, 0) for m in record.masks]


def convert_sa1b(
    src: str | os.PathLike[str],
    *,
    images_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """A folder of SA-1B ``sa_<id>.json`` files → ground truth of the first ``max_images`` by id.

    Only the selected JSONs are read. Other arguments and errors as :func:`convert_coco`.
    """
    folder = Path(src)
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{folder}: no such folder (expected a folder of SA-1B sa_<id>.json files)"
        )
    entries: list[_Entry] = []
    for p in folder.iterdir():
        if p.suffix.lower() != ".json" or p.name.startswith("."):
            continue
        m = re.fullmatch(r"sa_(\d+)", p.stem)
        if m is None:
            raise MaskFileError(f"{p}: not an SA-1B per-image JSON name (expected sa_<id>.json)")
        entries.append(_Entry(int(m.group(1)), p.stem + ".jpg", lambda q=p: _sa1b_masks(q), str(p)))
    if not entries:
        raise FileNotFoundError(f"{folder}: no sa_<id>.json files (expected SA-1B per-image JSONs)")
    entries.sort(key=lambda e: e.image_id)
    return _build(
        "sa1b", folder, entries, images_dir=images_dir, max_images=max_images, progress=progress
    )


#: dataset name → converter; every converter takes ``(src, *, images_dir, max_images, progress)``.
CONVERTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "coco": convert_coco,
    "lvis": convert_lvis,
    "ade20k": convert_ade20k,
    "entityseg": convert_entityseg,
    "sa1b": convert_sa1b,
    "partimagenet": convert_partimagenet,
    "paco": convert_paco,
}


def convert_dataset(
    name: str,
    src: str | os.PathLike[str],
    *,
    images_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    paco_annotations: PacoAnnotations = "parts",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the converter of ``name`` (one of :data:`DATASET_NAMES`) on ``src``.

    ``paco_annotations`` is passed to :func:`convert_paco` only; other arguments as
    :func:`convert_coco`.

    Raises:
        ValueError: an unknown name, naming the known ones.
    """
    if name not in CONVERTERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name == "paco":
        return convert_paco(
            src,
            annotations=paco_annotations,
            images_dir=images_dir,
            max_images=max_images,
            progress=progress,
        )
    return CONVERTERS[name](src, images_dir=images_dir, max_images=max_images, progress=progress)
