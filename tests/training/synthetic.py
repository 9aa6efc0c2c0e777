"""Small synthetic training sets: images of flat-coloured shapes with their exact masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unsam.io.coco import write_coco_dataset
from unsam.records import ImageRecord, MaskRecord


def make_shapes_dataset(
    root: Path,
    *,
    num_images: int = 3,
    hw: tuple[int, int] = (72, 96),
    seed: int = 0,
    empty_last: bool = False,
) -> tuple[Path, Path]:
    """Write ``root/images/*.png`` and ``root/train.json`` (rectangles and discs on a noisy
    background).

    Returns:
        (annotation JSON path, image folder).
    """
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    records = []
    for i in range(num_images):
        image = rng.integers(0, 40, size=(h, w, 3), dtype=np.uint8)
        masks = []
        n = 0 if (empty_last and i == num_images - 1) else int(rng.integers(2, 5))
        for _ in range(n):
            color = rng.integers(60, 255, size=3, dtype=np.uint8)
            if rng.random() < 0.5:
                y0, x0 = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
                m = (
                    (yy >= y0)
                    & (yy < y0 + int(rng.integers(8, 24)))
                    & (xx >= x0)
                    & (xx < x0 + int(rng.integers(8, 30)))
                )
            else:
                cy, cx, r = (
                    int(rng.integers(10, h - 10)),
                    int(rng.integers(10, w - 10)),
                    int(rng.integers(5, 14)),
                )
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            image[m] = color
            masks.append(m)
        name = f"img_{i:03d}.png"
        Image.fromarray(image).save(img_dir / name)
        recs = MaskRecord.from_masks(
            np.array(masks, dtype=bool).reshape(-1, h, w), source="conquer"
        )
        records.append(
            ImageRecord(id=i + 1, file_name=name, height=h, width=w).with_masks(
                recs, assign_ids=True
            )
        )
    ann = root / "train.json"
    write_coco_dataset(ann, records)
    return ann, img_dir
