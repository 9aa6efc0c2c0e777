"""Image inputs given as list files or glob patterns, expanded to the files and folders they name.

A folder command's inputs (``unsam pseudo-label|segment|baseline INPUT...``) may be, besides image
files and folders:

- a **list file** (``.txt``, ``.lst`` or ``.list``): one image file or folder per line; relative
  lines are relative to the list file's folder; blank lines and lines starting with ``#`` are
  ignored;
- a **glob pattern** that names no existing file (``'images/*.jpg'``, ``'data/**/*.png'``; quote it
  so the shell leaves it alone): the files and folders it matches, sorted.

Nothing is read here but the list files: images are opened later, one at a time, by whichever
process (or Ray actor) segments them.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["LIST_FILE_EXTENSIONS", "expand_image_inputs"]

logger = logging.getLogger(__name__)

LIST_FILE_EXTENSIONS = (".txt", ".lst", ".list")
_GLOB_CHARS = frozenset("*?[")


def expand_image_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[str]:
    """Replace list files and glob patterns among ``inputs`` by the paths they name.

    Args:
        inputs: image files, folders, list files and/or glob patterns.

    Returns:
        The inputs in their order, each list file and pattern replaced by its paths (other inputs
        are returned unchanged, existing or not: the listing reports missing ones).

    Raises:
        FileNotFoundError: a pattern matches nothing, or a list file is empty or names a path that
            does not exist (the message gives the list file and line).
    """
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: list[str] = []
    for item in given:
        text = os.fspath(item)
        path = Path(text)
        if path.is_file() and path.suffix.lower() in LIST_FILE_EXTENSIONS:
            out += _read_list_file(path)
        elif not path.exists() and _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{text}: the pattern matches no file or folder")
            logger.info("%s: %d match(es)", text, len(matches))
            out += matches
        else:
            out.append(text)
    return out


def _read_list_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(
            f"{path}: a list file must be UTF-8 text, one image path per line"
        ) from None
    out: list[str] = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if not target.exists():
            raise FileNotFoundError(f"{path} line {number}: {entry}: no such file or folder")
        out.append(os.fspath(target))
    if not out:
        raise FileNotFoundError(f"{path}: the list file names no image (one path per line)")
    logger.info("%s: %d path(s)", path, len(out))
    return out
