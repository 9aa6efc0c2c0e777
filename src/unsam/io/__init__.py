"""Image reading, mask-set file formats, overlays and atomic writes."""

from unsam.io.coco import (
    MaskFileError,
    load_coco_dataset,
    load_coco_results,
    load_mask_sets,
    load_sam_json,
    write_coco_dataset,
    write_coco_results,
    write_sam_json,
)
from unsam.io.files import atomic_write, atomic_write_json, atomic_write_text
from unsam.io.images import IMAGE_EXTENSIONS, ImageReadError, list_images, load_image
from unsam.io.overlay import draw_overlay, write_overlay

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "MaskFileError",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "draw_overlay",
    "list_images",
    "load_coco_dataset",
    "load_coco_results",
    "load_image",
    "load_mask_sets",
    "load_sam_json",
    "write_coco_dataset",
    "write_coco_results",
    "write_overlay",
    "write_sam_json",
]
