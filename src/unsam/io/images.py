"""Robust image reading: any image file -> RGB uint8, EXIF orientation applied, clear errors.

Every stage reads images through :func:`load_image` (RGB once, at the edge; the original fed BGR
OpenCV arrays to DINO and CascadePSP, spec §10 bug 9).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "load_image",
    "list_images",
    "ImageListing",
    "image_size",
    "list_image_inputs",
]

logger = logging.getLogger(__name__)

#: File extensions treated as images when a folder is listed (lower case).
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".tif",
        ".tiff",
        ".webp",
        ".gif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".jfif",
    }
)

# Never silently accept truncated files: a truncated JPEG must be an error, not a grey band.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Allow large SA-1B-style photos but still refuse decompression bombs far beyond them.
Image.MAX_IMAGE_PIXELS = 40_000 * 40_000


class ImageReadError(ValueError):
    """An image file could not be read. ``str(err)`` is one line naming the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: cannot read image: {reason}")


def _to_rgb_uint8(img: Image.Image) -> npt.NDArray[np.uint8]:
    mode = img.mode
    if mode in ("RGB",):
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode == "F":
            hi = float(np.nanmax(arr)) if arr.size else 0.0
            arr = arr * 255.0 if hi <= 1.0 else arr
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0  # 16-bit range -> 8-bit
        gray = np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    """Read an image file as RGB.

    Handles RGB, RGBA/LA (composited on white), grayscale, 1-bit, palette, 16-bit and 32-bit
    integer / float grayscale (scaled to 8 bit), CMYK and YCbCr; EXIF orientation is applied.
    Multi-frame files (GIF, TIFF) give their first frame.

    Args:
        path: image file.

    Returns:
        (H, W, 3) uint8 array, RGB.

    Raises:
        ImageReadError: missing, empty, corrupt, truncated or non-image file; the message is one
            line naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data", palette transparency notes
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                arr = _to_rgb_uint8(img)
    except UnidentifiedImageError:
        raise ImageReadError(
            path, "not an image file, or an image format Pillow cannot decode"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"file is truncated or corrupt ({reason})"
        raise ImageReadError(path, reason.splitlines()[0]) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(path, f"decoded to an unexpected shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()  # PIL-backed arrays are read-only


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(H, W) after EXIF orientation, read from the header only (fast; does not validate pixels)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ) from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


@dataclass(frozen=True)
class ImageListing:
    """Result of listing a folder: image paths in sorted order plus the files that were skipped."""

    root: Path
    images: tuple[Path, ...]
    skipped: tuple[Path, ...]

    def relative(self, path: Path) -> str:
        """File name of ``path`` relative to the listed folder, with forward slashes."""
        return path.relative_to(self.root).as_posix()


def list_images(root: str | os.PathLike[str], *, recursive: bool = False) -> ImageListing:
    """List image files of a folder in sorted order (by relative POSIX path).

    Files whose extension is not in :data:`IMAGE_EXTENSIONS` are skipped and reported (logged at
    INFO and returned in ``skipped``); hidden files (starting with ".") are ignored. Sorting makes
    shards reproducible across machines (the original used unsorted ``os.scandir``, spec §10 bug 3).

    Args:
        root: a folder, or a single image file (then the listing holds just that file).
        recursive: also descend into sub-folders.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if root.is_file():
        return ImageListing(root.parent, (root,), ())
    candidates = root.rglob("*") if recursive else root.iterdir()
    images: list[Path] = []
    skipped: list[Path] = []
    for p in candidates:
        rel_parts = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel_parts) or p.is_dir():
            continue
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(p)
    images.sort(key=lambda p: p.relative_to(root).as_posix())
    skipped.sort()
    if skipped:
        logger.info(
            "%s: skipped %d non-image file(s): %s",
            root,
            len(skipped),
            ", ".join(p.name for p in skipped[:5]),
        )
    return ImageListing(root, tuple(images), tuple(skipped))


def list_image_inputs(
    inputs: Sequence[str | os.PathLike[str]], *, recursive: bool = False
) -> ImageListing:
    """One listing for every command: image files and/or folders, merged, de-duplicated and sorted.

    The root is the deepest folder holding every input; file names are relative to it. Paths are
    made absolute but symbolic links are *not* resolved, so a link inside a folder that points
    elsewhere is listed under the folder like any other file.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    listings = [list_images(p, recursive=recursive) for p in inputs]
    if len(listings) == 1:
        return listings[0]
    roots = [os.path.abspath(listing.root) for listing in listings]
    root = Path(os.path.commonpath(roots))
    seen: dict[str, Path] = {}
    for listing in listings:
        for p in listing.images:
            absolute = Path(os.path.abspath(p))
            seen.setdefault(absolute.relative_to(root).as_posix(), absolute)
    images = tuple(seen[k] for k in sorted(seen))
    skipped = tuple(sorted({q for listing in listings for q in listing.skipped}))
    return ImageListing(root, images, skipped)
