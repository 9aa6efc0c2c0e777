"""Overlay pictures: every mask in a distinct colour with an outline, large masks drawn first."""

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

__all__ = ["mask_colors", "draw_overlay", "write_overlay", "write_png"]


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
    alpha: float = 0.5,
    outline: bool = True,
    outline_px: int = 1,
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

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    h, w = image.shape[:2]
    if isinstance(masks, np.ndarray):
        dense = [m.astype(bool) for m in masks]
    else:
        dense = [m.decode() for m in masks]
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
    """Draw an overlay (see :func:`draw_overlay`) and write it atomically as PNG."""
    return write_png(path, draw_overlay(image, masks, **kwargs))  # type: ignore[arg-type]
