"""Atomic file writes: finished work is never lost or left half-written (temp file + rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "append_line_durable", "truncate_partial_line"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(fh)`` into a temp file beside ``path``, then rename it.

    A crash mid-write leaves the previous file (or none) in place, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = None) -> Path:
    """Atomically write ``obj`` as JSON (compact unless ``indent`` is given)."""
    separators = (",", ":") if indent is None else None
    return atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators) + "\n")


def append_line_durable(path: str | os.PathLike[str], line: str) -> None:
    """Append one line and fsync, for append-only work files of resumable runs.

    A crash can at worst leave a partial last line; readers of such files must ignore a final
    line that is not valid JSON (see :func:`unsam.io.coco.read_jsonl`).
    """
    if "\n" in line:
        raise ValueError("a work-file line must not contain a newline")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def truncate_partial_line(path: str | os.PathLike[str]) -> bool:
    """Cut an append-only work file back to its last complete line (after a crash mid-append).

    Returns True when something was cut. Call before appending to a file a killed run left behind.
    """
    path = Path(path)
    if not path.exists():
        return False
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return False
        keep = data.rfind(b"\n") + 1
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return True
