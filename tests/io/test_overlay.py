"""Overlays a person can read: the photo survives the drawing, and every drawn mask shows.

Readability is measured on the README's first picture: the 30 masks that ``unsam pseudo-label
examples/coco/images --features classic --overlay-dir out/overlays`` draws on
``000000229358.jpg`` (frozen in ``tests/data/overlay_000000229358_top30.json``). The old drawing
(30 masks stacked at alpha 0.4, SAM ``show_anns``-like) kept a grayscale SSIM of 0.50 with the
photo and 42 % of its Canny edges; the thresholds below fail it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from unsam.io.images import load_image
from unsam.io.overlay import OUTLINE_SHADE, draw_overlay, mask_colors
from unsam.records import MaskRecord

REPO = Path(__file__).resolve().parents[2]
MIN_SSIM = 0.75
MIN_EDGES_KEPT = 0.8


@pytest.fixture(scope="module")
def readme_case() -> tuple[np.ndarray, list[MaskRecord]]:
    image = load_image(REPO / "examples/coco/images/000000229358.jpg")
    anns = json.loads((REPO / "tests/data/overlay_000000229358_top30.json").read_text())
    return image, [MaskRecord.from_coco(a) for a in anns]


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def photo_ssim(photo: np.ndarray, overlay: np.ndarray) -> float:
    """Grayscale structural similarity of the overlay with the photo (1: identical)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_gray(photo), _gray(overlay), data_range=255))


def edges_kept(photo: np.ndarray, overlay: np.ndarray) -> float:
    """Fraction of the photo's Canny edges (thresholds 100/200) the overlay keeps within 1 px."""
    before = cv2.Canny(_gray(photo), 100, 200) > 0
    after = cv2.dilate((cv2.Canny(_gray(overlay), 100, 200) > 0).astype(np.uint8), np.ones((3, 3)))
    return float((before & (after > 0)).sum() / max(1, before.sum()))


def _stacked_alpha(image: np.ndarray, dense: list[np.ndarray], alpha: float = 0.4) -> np.ndarray:
    """The old drawing: every mask filled at ``alpha`` over the previous ones, largest first."""
    out = image.astype(np.float32)
    colors = mask_colors(len(dense)).astype(np.float32)
    for rank, m in enumerate(sorted(dense, key=lambda m: -int(m.sum()))):
        out[m] = (1 - alpha) * out[m] + alpha * colors[rank]
    return out.astype(np.uint8)


def test_overlay_keeps_the_photo_readable(readme_case) -> None:
    image, records = readme_case
    assert len(records) == 30
    out = draw_overlay(image, records)
    ssim, edges = photo_ssim(image, out), edges_kept(image, out)
    assert ssim >= MIN_SSIM, f"SSIM with the photo {ssim:.3f} < {MIN_SSIM}"
    assert edges >= MIN_EDGES_KEPT, f"edges kept {edges:.3f} < {MIN_EDGES_KEPT}"
    # the measure separates the two drawings: stacking the same masks at alpha fails it
    old = _stacked_alpha(image, [r.decode() for r in records])
    assert photo_ssim(image, old) < MIN_SSIM and edges_kept(image, old) < MIN_EDGES_KEPT


def _visible(image: np.ndarray, dense: list[np.ndarray], out: np.ndarray) -> list[int]:
    """Indices of the masks that show in ``out``: a pixel where the mask is the smallest that holds
    it and which is tinted, or a pixel of the mask in its outline colour."""
    areas = [int(m.sum()) for m in dense]
    order = sorted(range(len(dense)), key=lambda i: -areas[i])
    colors = mask_colors(len(dense)).astype(np.float32)
    shown = []
    for rank, i in enumerate(order):
        own = dense[i].copy()
        for j in order[rank + 1 :]:
            own &= ~dense[j]
        tinted = (out[own] != image[own]).any(axis=1).any()
        outline_color = np.floor(colors[rank] * OUTLINE_SHADE).astype(np.uint8)
        outlined = (out[dense[i]] == outline_color).all(axis=1).any()
        if tinted or outlined:
            shown.append(i)
    return sorted(shown)


def test_every_drawn_mask_is_visible(readme_case) -> None:
    image, records = readme_case
    dense = [r.decode() for r in records]
    out = draw_overlay(image, records)
    assert _visible(image, dense, out) == list(range(len(dense)))


def test_a_whole_made_of_its_parts_keeps_its_outline() -> None:
    """A mask that is exactly the union of two drawn parts has no pixel of its own to tint: its
    outline must still show (outlines are drawn small to large, the larger wins)."""
    image = np.full((20, 30, 3), 120, np.uint8)
    left, right = np.zeros((20, 30), bool), np.zeros((20, 30), bool)
    left[4:16, 3:14], right[4:16, 14:26] = True, True
    dense = [left | right, left, right]
    out = draw_overlay(image, np.stack(dense))
    assert _visible(image, dense, out) == [0, 1, 2]


def test_tint_keeps_luminance_and_smallest_mask_wins() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(90, 166, size=(24, 32, 3), dtype=np.uint8)  # no clipping
    big = np.ones((24, 32), bool)
    small = np.zeros((24, 32), bool)
    small[8:16, 8:16] = True
    out = draw_overlay(image, np.stack([small, big]), outline=False)
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(out @ luma - image @ luma).max() <= 1.0  # brightness kept (up to rounding)
    colors = mask_colors(2).astype(float)  # rank 0: big, rank 1: small
    mixed = 0.55 * image[10, 10] + 0.45 * colors[1]
    mixed += (image[10, 10] - mixed) @ luma
    np.testing.assert_allclose(out[10, 10], mixed, atol=1)  # small's colour, tinted once
    np.testing.assert_array_equal(draw_overlay(image, np.zeros((0, 24, 32), bool)), image)
    with pytest.raises(ValueError, match="alpha"):
        draw_overlay(image, np.stack([small]), alpha=1.5)
