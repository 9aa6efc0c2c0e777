"""A downscaled subset of the shared COCO images with their ground-truth masks (for the learning
test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unsam.io.coco import write_coco_dataset
from unsam.io.images import load_image
from unsam.masks import resize_image, resize_mask
from unsam.records import ImageRecord, MaskRecord, normalize_rle


def write_coco_subset(
    gt_json: Path,
    image_dir: Path,
    out: Path,
    *,
    num_images: int = 6,
    max_side: int = 256,
    min_masks: int = 3,
    max_masks: int = 8,
    min_area: int = 32,
) -> tuple[Path, Path]:
    """Take the first ``num_images`` images (sorted by file name) with ``min_masks..max_masks``
    non-crowd instances and no crowd region, shrink them to ``max_side`` pixels (longer side) and
    write them with their masks (resized like the original resizes masks; masks under ``min_area``
    pixels after shrinking are left out).

    Returns:
        (COCO dataset JSON, image folder).
    """
    data = json.loads(gt_json.read_text())
    anns: dict[int, list[dict]] = {}
    crowd: set[int] = set()
    for a in data["annotations"]:
        if a.get("iscrowd"):
            crowd.add(a["image_id"])
        else:
            anns.setdefault(a["image_id"], []).append(a)
    chosen = [
        img
        for img in sorted(data["images"], key=lambda i: i["file_name"])
        if img["id"] not in crowd and min_masks <= len(anns.get(img["id"], [])) <= max_masks
    ][:num_images]
    img_out = out / "images"
    img_out.mkdir(parents=True, exist_ok=True)
    records = []
    for img in chosen:
        h, w = img["height"], img["width"]
        scale = max_side / max(h, w)
        hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = resize_image(load_image(image_dir / img["file_name"]), hw)
        name = Path(img["file_name"]).with_suffix(".png").name
        from PIL import Image

        Image.fromarray(image).save(img_out / name)
        masks = []
        for a in anns[img["id"]]:
            full = MaskRecord(rle=normalize_rle(a["segmentation"], (h, w))).decode()
            small = resize_mask(full, hw)
            if small.sum() >= min_area:
                masks.append(small)
        recs = MaskRecord.from_masks(np.array(masks, dtype=bool).reshape(-1, *hw), source="gt")
        records.append(ImageRecord(img["id"], name, hw[0], hw[1]).with_masks(recs, assign_ids=True))
    ann = out / "gt.json"
    write_coco_dataset(ann, records)
    return ann, img_out
