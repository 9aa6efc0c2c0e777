"""The per-image conquer driver (spec §3.1, §3.3) rebuilt from the naive references, with no unsam
code.

For every divide region: crop its tight box (last row and column included), resize the crop to
``crop_size``² with PIL bicubic, extract patch features, merge them with :func:`merge_naive`,
resize every emitted cluster back to the box with PIL bicubic on a 0/255 image binarised at half
its maximum (spec §2.2 step 11, as the original), keep clusters more than ``coverage_thresh``
inside the divide mask, and run :func:`nms_loop` over the region's candidates (by area).

``cfg`` is any object with the fields crop_size, thetas, min_size, coverage_thresh,
nms_iou_thresh, full_nms and nms_window (e.g. unsam's ConquerConfig, passed in by the test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from tests.reference.merge_naive import merge_naive
from tests.reference.nms_loop import nms_loop


def pil_resize_image(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8, PIL bicubic; unchanged when the size already matches."""
    if image.shape[:2] == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((w, h), Image.BICUBIC))


def pil_resize_mask(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W) bool -> (h, w) bool: 0/255 uint8, PIL bicubic, then > half of the maximum (all False
    if 0)."""
    if mask.shape == (h, w):
        return mask.astype(bool)
    arr = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BICUBIC))
    top = int(arr.max())
    return arr > top / 2.0 if top > 0 else np.zeros((h, w), bool)


def conquer_naive(
    image: np.ndarray, divide: list[np.ndarray], extractor: Callable[[np.ndarray], Any], cfg: Any
) -> list[tuple]:
    """One ``(parent, level, theta, (x0, y0, x1, y1), mask)`` per kept part, in output order."""
    out = []
    for parent, dmask in enumerate(divide):
        ys, xs = np.nonzero(dmask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        crop = pil_resize_image(image[y0:y1, x0:x1], cfg.crop_size, cfg.crop_size)
        feats = np.asarray(extractor(crop[None])[0])
        candidates = []
        for theta, level, labels, emitted in merge_naive(feats, cfg.thetas, cfg.min_size):
            for cid in emitted:
                m = pil_resize_mask(labels == cid, y1 - y0, x1 - x0)
                area = m.sum()
                if area and (m & dmask[y0:y1, x0:x1]).sum() / area > cfg.coverage_thresh:
                    candidates.append((level, theta, (x0, y0, x1, y1), m))
        kept = nms_loop(
            [c[3] for c in candidates],
            [c[3].sum() for c in candidates],
            cfg.nms_iou_thresh,
            None if cfg.full_nms else cfg.nms_window,
        )
        out.extend((parent, *candidates[i]) for i in sorted(kept))
    return out
