"""Overlay pictures a person can read.

An image has up to ~1000 nested masks; painting them all hides the photo under a mosaic. So
overlays draw only the ``top_k`` best-scoring masks (30 by default, as SAM's ``show_anns``
pictures look), each in a distinct colour at a light alpha with a thin outline, largest first so
that parts stay visible over their wholes. :func:`draw_level_panels` shows the hierarchy instead:
one panel per granularity (divide masks, coarse parts, fine parts), as in the paper's figure.
"""

from __future__ import annotations

import colorsys
import io as _io
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from unsam.io.files import atomic_write
from unsam.records import MaskRecord

__all__ = [
    "OVERLAY_TOP_K",
    "mask_colors",
    "select_for_overlay",
    "draw_overlay",
    "draw_level_panels",
    "write_overlay",
    "write_png",
]

#: Masks drawn in an overlay by default (the best-scoring ones).
OVERLAY_TOP_K = 30


def select_for_overlay(
    masks: Sequence[MaskRecord], top_k: int | None = OVERLAY_TOP_K, min_score: float = 0.0
) -> list[MaskRecord]:
    """The masks an overlay draws: scoring at least ``min_score``, then the ``top_k`` best
    (ties keep the input order; ``top_k=None``: all)."""
    kept = [m for m in masks if m.score >= min_score]
    if top_k is not None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {top_k}")
        order = sorted(range(len(kept)), key=lambda i: -kept[i].score)[:top_k]
        kept = [kept[i] for i in sorted(order)]
    return kept


def mask_colors(n: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """``n`` well-separated RGB colours (golden-ratio hue steps), (n, 3) uint8."""
    out = np.zeros((n, 3), dtype=np.uint8)
    hue = (seed * 0.137) % 1.0
    for i in range(n):
        hue = (hue + 0.6180339887) % 1.0
        sat = 0.65 + 0.35 * ((i * 7) % 3) / 2
        val = 0.75 + 0.25 * ((i * 5) % 2)
        out[i] = [int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, sat, val)]
    return out


def draw_overlay(
    image: npt.NDArray[np.uint8],
    masks: Sequence[MaskRecord] | npt.NDArray[np.bool_],
    *,
    alpha: float = 0.4,
    outline: bool = True,
    outline_px: int = 1,
    top_k: int | None = None,
    min_score: float = 0.0,
) -> npt.NDArray[np.uint8]:
    """Draw masks over an image; returns a new array, the input is not changed.

    Masks are drawn from largest to smallest so small parts stay visible over their wholes
    (the mask hierarchy overlaps by design).

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: records of this image, or an (N, H, W) bool array.
        alpha: fill opacity in [0, 1].
        outline: draw each mask's contour in its colour (darkened).
        outline_px: outline thickness in pixels.
        top_k: with records, draw only the ``top_k`` best-scoring (see :func:`select_for_overlay`).
        min_score: with records, draw only masks scoring at least this.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    h, w = image.shape[:2]
    if isinstance(masks, np.ndarray):
        dense = [m.astype(bool) for m in masks]
    else:
        dense = [m.decode() for m in select_for_overlay(masks, top_k, min_score)]
    for i, m in enumerate(dense):
        if m.shape != (h, w):
            raise ValueError(f"mask {i} has shape {m.shape}, image is {(h, w)}")
    order = sorted(range(len(dense)), key=lambda i: -int(dense[i].sum()))
    colors = mask_colors(len(dense))
    out = image.astype(np.float32)
    for rank, i in enumerate(order):
        m = dense[i]
        if not m.any():
            continue
        color = colors[rank].astype(np.float32)
        out[m] = (1.0 - alpha) * out[m] + alpha * color
        if outline:
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            edge = np.zeros((h, w), dtype=np.uint8)
            cv2.drawContours(edge, contours, -1, 1, thickness=outline_px)
            out[edge.astype(bool)] = color * 0.6
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_level_panels(
    image: npt.NDArray[np.uint8],
    masks: Sequence[MaskRecord],
    *,
    top_k: int | None = OVERLAY_TOP_K,
    panel_width: int = 480,
) -> npt.NDArray[np.uint8]:
    """The hierarchy side by side: the photo, the divide masks (level 0), the coarser half of
    the part levels and the finer half, each panel drawing its ``top_k`` best masks.

    Returns:
        (h, 4 * panel_width + 3 * 8, 3) uint8 RGB, panels resized to ``panel_width`` wide.
    """
    levels = sorted({m.level for m in masks if m.level > 0})
    half = len(levels) // 2
    fine, coarse = set(levels[:half]), set(levels[half:])
    groups = [
        [],
        [m for m in masks if m.level == 0],
        [m for m in masks if m.level in coarse],
        [m for m in masks if m.level in fine],
    ]
    scale = panel_width / image.shape[1]
    ph = max(1, round(image.shape[0] * scale))
    panels = []
    for group in groups:
        drawn = draw_overlay(image, group, top_k=top_k) if group else image
        panels.append(np.asarray(Image.fromarray(drawn).resize((panel_width, ph), Image.BILINEAR)))
    gap = np.full((ph, 8, 3), 255, dtype=np.uint8)
    row: list[npt.NDArray[np.uint8]] = []
    for p in panels:
        row += [p, gap]
    return np.concatenate(row[:-1], axis=1)


def write_png(path: str | os.PathLike[str], image: npt.NDArray[np.uint8]) -> Path:
    """Atomically write an (H, W, 3) uint8 RGB array as PNG."""
    buf = _io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    data = buf.getvalue()
    return atomic_write(path, lambda fh: fh.write(data))


def write_overlay(
    path: str | os.PathLike[str],
    image: npt.NDArray[np.uint8],
    masks: Sequence[MaskRecord] | npt.NDArray[np.bool_],
    **kwargs: float | bool | int,
) -> Path:
    """Draw an overlay (see :func:`draw_overlay`: pass ``top_k`` to draw only the best masks)
    and write it atomically as PNG."""
    return write_png(path, draw_overlay(image, masks, **kwargs))  # type: ignore[arg-type]
