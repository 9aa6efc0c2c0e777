"""Outputs other tools read directly: COCO results lists, SA-1B-style folders, binary mask PNGs.

Every folder command writes, by default, a class-agnostic COCO *dataset* JSON (images + scored
annotations + the run's settings). ``--format`` picks another form of the same masks:

* ``coco-dataset`` (default): ``{"info", "images", "annotations", "categories"}``.
* ``coco-results``: the list pycocotools' ``COCO.loadRes`` takes,
  ``[{"image_id", "category_id": 1, "segmentation", "score", "bbox"}, ...]``.
* ``sam-folder``: a folder with one SA-1B / SAM-AMG JSON per image (``{"image", "annotations"}``),
  named after the image (``photo.jpg`` → ``photo.json``; ``a/b.png`` → ``a__b.json``).

``--binary-masks DIR`` also writes every mask as a 0/255 PNG: ``DIR/<image>/<rank>.png`` (rank 0 =
best score), with ``DIR/<image>/masks.json`` listing file, id, score and level of each.
"""

from __future__ import annotations

import io as _io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from unsam.io.files import atomic_write, atomic_write_json
from unsam.records import MaskRecord

__all__ = [
    "OUTPUT_FORMATS",
    "OutputFormat",
    "distinct_stems",
    "write_dataset_as",
    "write_binary_masks",
]

OutputFormat = Literal["coco-dataset", "coco-results", "sam-folder"]
OUTPUT_FORMATS: tuple[str, ...] = ("coco-dataset", "coco-results", "sam-folder")


def distinct_stems(file_names: Sequence[str]) -> dict[str, str]:
    """A file-name stem per image: its path with "/" as "__" and no extension, or with the
    extension kept (``a.jpg``) where two images would otherwise share a stem."""
    stems = {n: Path(n).with_suffix("").as_posix().replace("/", "__") for n in file_names}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {n: (stem if counts[stem] == 1 else n.replace("/", "__")) for n, stem in stems.items()}


def _per_image(dataset: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in dataset.get("annotations", []):
        anns.setdefault(int(a["image_id"]), []).append(a)
    return [(img, anns.get(int(img["id"]), [])) for img in dataset.get("images", [])]


def write_dataset_as(
    dataset: dict[str, Any], output: str | os.PathLike[str], fmt: OutputFormat
) -> Path:
    """Write a COCO dataset dict (as built by :func:`unsam.runner.run_images`) in ``fmt``.

    Args:
        dataset: ``{"images", "annotations", ...}`` with compressed-RLE segmentations.
        output: a file (``coco-dataset``, ``coco-results``) or a folder (``sam-folder``).
        fmt: one of :data:`OUTPUT_FORMATS`.

    Returns:
        ``output``.
    """
    output = Path(output)
    if fmt == "coco-dataset":
        return atomic_write_json(output, dataset)
    if fmt == "coco-results":
        results = [
            {
                "image_id": a["image_id"],
                "category_id": 1,
                "segmentation": a["segmentation"],
                "score": a.get("score", 1.0),
                "bbox": a.get("bbox"),
            }
            for a in dataset.get("annotations", [])
        ]
        return atomic_write_json(output, results)
    if fmt == "sam-folder":
        output.mkdir(parents=True, exist_ok=True)
        images = _per_image(dataset)
        stems = distinct_stems([img.get("file_name") or str(img["id"]) for img, _ in images])
        for img, anns in images:
            name = img.get("file_name") or str(img["id"])
            info = {"image_id": img["id"], "width": img["width"], "height": img["height"]}
            if img.get("file_name") is not None:
                info["file_name"] = img["file_name"]
            sam = [MaskRecord.from_coco(a, (img["height"], img["width"])).to_sam() for a in anns]
            atomic_write_json(output / f"{stems[name]}.json", {"image": info, "annotations": sam})
        return output
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")


def write_binary_masks(dataset: dict[str, Any], folder: str | os.PathLike[str]) -> int:
    """Write every mask of ``dataset`` as a 0/255 PNG (see the module docstring); returns the count.

    One mask is decoded at a time, so memory stays at one image's size.
    """
    folder = Path(folder)
    images = _per_image(dataset)
    stems = distinct_stems([img.get("file_name") or str(img["id"]) for img, _ in images])
    n = 0
    for img, anns in images:
        sub = folder / stems[img.get("file_name") or str(img["id"])]
        sub.mkdir(parents=True, exist_ok=True)
        ranked = sorted(anns, key=lambda a: -float(a.get("score", 1.0)))
        index = []
        for rank, ann in enumerate(ranked):
            mask = MaskRecord.from_coco(ann, (img["height"], img["width"])).decode()
            buf = _io.BytesIO()
            Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG", optimize=False)
            data = buf.getvalue()
            atomic_write(sub / f"{rank:04d}.png", lambda fh, d=data: fh.write(d))
            index.append(
                {
                    "file": f"{rank:04d}.png",
                    "id": ann.get("id"),
                    "score": ann.get("score"),
                    "level": ann.get("level"),
                }
            )
            n += 1
        atomic_write_json(sub / "masks.json", {"image": img, "masks": index}, indent=1)
    return n
