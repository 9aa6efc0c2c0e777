"""Reading weight files safely, with errors that name the file and the cause.

``torch.load`` always runs with ``weights_only=True`` (no arbitrary unpickling); safetensors files
are checked against their own header first, so a truncated download says so instead of failing
deep inside a loader with ``[Errno 22]`` or a traceback.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointFileError",
    "check_safetensors_file",
    "key_mismatch",
    "load_safetensors",
    "load_torch_file",
]


class CheckpointFileError(ValueError):
    """A weights / state file is missing, truncated or not what it should be; ``str`` names it."""


def check_safetensors_file(path: str | os.PathLike[str]) -> Path:
    """Verify that a ``.safetensors`` file is complete: its header parses and the tensor data it
    describes ends exactly at the end of the file. Reads only the header.

    Raises:
        FileNotFoundError: no such file.
        CheckpointFileError: truncated or corrupt, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointFileError(
                    f"{path}: truncated safetensors file ({size} bytes); copy or download it again"
                )
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointFileError(
                    f"{path}: truncated safetensors file (the header alone needs {n} bytes, the "
                    f"file has {size}); copy or download it again"
                )
            header = json.loads(fh.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFileError(
            f"{path}: not a readable safetensors file ({exc}); copy or download it again"
        ) from None
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise CheckpointFileError(
            f"{path}: truncated safetensors file ({size} of {expected} bytes); copy or download it "
            "again"
        )
    return path


def load_safetensors(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, Any]:
    """``safetensors.torch.load_file`` after :func:`check_safetensors_file`; errors name the
    file."""
    from safetensors.torch import load_file

    path = check_safetensors_file(path)
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointFileError(
            f"{path}: cannot read the weights ({exc}); copy or download it again"
        ) from None


def load_torch_file(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Raises:
        FileNotFoundError: no such file (or a folder was given).
        CheckpointFileError: truncated, corrupt, or holding objects ``weights_only`` refuses.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointFileError(f"{path}: is a folder; give the {what} file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in cause or "Unsupported global" in cause:
            raise CheckpointFileError(
                f"{path}: refused to load it: the {what} holds Python objects beyond tensors and "
                f"plain containers ({cause[:200]})"
            ) from None
        raise CheckpointFileError(
            f"{path}: cannot read the {what} ({cause[:200]}); the file is truncated or corrupt, "
            "copy it again"
        ) from None
    except pickle.UnpicklingError as exc:
        raise CheckpointFileError(
            f"{path}: refused to load it: the {what} holds Python objects beyond tensors and plain "
            f"containers ({str(exc).splitlines()[0][:200] if str(exc) else 'unpickling error'})"
        ) from None


def key_mismatch(
    missing: list[str], unexpected: list[str], wrong_shape: list[str], examples: int = 3
) -> str | None:
    """``"2 missing (e.g. a, b); 1 unexpected (e.g. c)"`` for a strict key-table load, or None
    when nothing is wrong. Every strict loader words its error with it."""
    parts = []
    for name, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong_shape),
    ):
        if items:
            more = ", ..." if len(items) > examples else ""
            parts.append(f"{len(items)} {name} (e.g. {', '.join(items[:examples])}{more})")
    return "; ".join(parts) or None
