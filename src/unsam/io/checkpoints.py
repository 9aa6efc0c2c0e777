"""Reading weight files safely, with errors that name the file and the cause.

``torch.load`` always runs with ``weights_only=True`` (no arbitrary unpickling); safetensors files
are checked against their own header first, so a truncated download says so instead of failing
deep inside a loader with ``[Errno 22]`` or a traceback.

Every weights option words its errors here, so they all read the same:

- a missing file: :func:`missing_weights` (one sentence: which file to download, from where, and
  the option that takes its path), from the table :data:`WEIGHTS_SOURCES`;
- a bad file (truncated, random bytes, a pickle asking for code): :func:`load_torch_file` /
  :func:`load_safetensors` raise :class:`CheckpointFileError`, one line naming the file and the
  problem. torch's own advice to retry with ``weights_only=False`` is never repeated: for a file
  that asks for code, that would run it.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "WEIGHTS_SOURCES",
    "CheckpointFileError",
    "MissingWeightsError",
    "WeightsSource",
    "check_safetensors_file",
    "key_mismatch",
    "load_safetensors",
    "load_torch_file",
    "missing_weights",
    "missing_weights_message",
]


class CheckpointFileError(ValueError):
    """A weights / state file is missing, truncated or not what it should be; ``str`` names it."""


class MissingWeightsError(FileNotFoundError):
    """Model weights are neither on disk nor in the Hugging Face cache (and cannot be downloaded).

    ``str(err)`` is one sentence naming the file to download, where to put it and the option that
    points at it (see :func:`missing_weights_message`).
    """


@dataclass(frozen=True)
class WeightsSource:
    """Where a kind of weights comes from, for the one-sentence "download X" messages.

    Attributes:
        what: the weights in words ("CutLER detector weights").
        file: the file to download.
        url: where to download it.
        option: the option that takes its path.
        env: an environment variable that also does, or None.
    """

    what: str
    file: str
    url: str
    option: str
    env: str | None = None


_UNSAM_ZOO = "https://github.com/frank-xwang/UnSAM (its model zoo)"

#: kind -> :class:`WeightsSource`, one row per weights option.
WEIGHTS_SOURCES: dict[str, WeightsSource] = {
    "dino": WeightsSource(
        "DINO feature weights",
        "dino_vitbase8_pretrain.pth (or config.json + model.safetensors of facebook/dino-vitb8)",
        "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth "
        "(or https://huggingface.co/facebook/dino-vitb8)",
        "--features PATH",
    ),
    "cutler": WeightsSource(
        "CutLER detector weights",
        "cutler_cascade_final.pth",
        "http://dl.fbaipublicfiles.com/cutler/checkpoints/cutler_cascade_final.pth "
        "(https://github.com/facebookresearch/CutLER#model-zoo)",
        "--divide cutler:PATH",
        "UNSAM_CUTLER_WEIGHTS",
    ),
    "cascadepsp": WeightsSource(
        "CascadePSP refinement weights",
        "'model' (259 MB, MD5 7478d4a9c42ab52beb6d7e9683402fe0)",
        "https://github.com/hkchengrex/CascadePSP/releases/download/v1.0/model",
        "--refine cascadepsp:PATH",
        "UNSAM_CASCADEPSP_WEIGHTS",
    ),
    "backbone-init": WeightsSource(
        "whole-image backbone weights",
        "dino_RN50_pretrain_d2_format.pkl",
        "http://dl.fbaipublicfiles.com/cutler/checkpoints/dino_RN50_pretrain_d2_format.pkl "
        "(the CutLER release)",
        "`unsam train --backbone-init PATH`",
    ),
    "swin-init": WeightsSource(
        "promptable backbone weights",
        "swin_tiny_patch4_window7_224.pth",
        "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
        "swin_tiny_patch4_window7_224.pth",
        "`unsam train-promptable --backbone-init PATH`",
    ),
    "whole-image": WeightsSource(
        "UnSAM whole-image model",
        "an official UnSAM whole-image checkpoint (.pth)",
        _UNSAM_ZOO,
        "`--model PATH` (segment; demo --whole-image) or to `unsam convert-checkpoint`; a folder "
        "it wrote, a `unsam train` run folder or the hub id "
        "yujunwei04/unsam-whole-image-segmentation works too",
    ),
    "promptable": WeightsSource(
        "UnSAM promptable model",
        "an official UnSAM promptable checkpoint (.pth)",
        _UNSAM_ZOO,
        "`--model PATH` (prompt, eval-points, demo, segment promptable:PATH) or to "
        "`unsam convert-checkpoint --kind promptable`; a folder it wrote or a "
        "`unsam train-promptable` run folder works too",
    ),
}


def missing_weights_message(
    kind: str,
    path: str | os.PathLike[str] | None,
    problem: str | None = None,
    *,
    file: str | None = None,
    url: str | None = None,
) -> str:
    """One sentence for weights that are not there: ``"<what> not found: <path> does not exist;
    download <file> from <url> and pass its path as <option> (or set <env>=PATH)."``

    Args:
        kind: a key of :data:`WEIGHTS_SOURCES`.
        path: the path that was given (None: none was).
        problem: what is wrong instead of "<path> does not exist" (e.g. "no path given").
        file, url: a more precise file / source than the table's (e.g. the DINO size asked for).
    """
    src = WEIGHTS_SOURCES[kind]
    if problem is None:
        problem = f"{path} does not exist" if path is not None else "no path given"
    env = f" (or set {src.env}=PATH)" if src.env else ""
    return (
        f"{src.what} not found: {problem}; download {file or src.file} from {url or src.url} and "
        f"pass its path as {src.option}{env}."
    )


def missing_weights(
    kind: str,
    path: str | os.PathLike[str] | None,
    problem: str | None = None,
    *,
    file: str | None = None,
    url: str | None = None,
) -> MissingWeightsError:
    """:class:`MissingWeightsError` with :func:`missing_weights_message` (raise it)."""
    return MissingWeightsError(missing_weights_message(kind, path, problem, file=file, url=url))


def _again(kind: str | None) -> str:
    if kind is None:
        return "copy or download it again"
    src = WEIGHTS_SOURCES[kind]
    return f"download {src.file} again from {src.url}"


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


def load_safetensors(
    path: str | os.PathLike[str], device: str = "cpu", *, kind: str | None = None
) -> dict[str, Any]:
    """``safetensors.torch.load_file`` after :func:`check_safetensors_file`; errors name the
    file (``kind``: a key of :data:`WEIGHTS_SOURCES`, so a missing file says what to download)."""
    from safetensors.torch import load_file

    if kind is not None and not Path(path).is_file():
        raise missing_weights(kind, path)
    path = check_safetensors_file(path)
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointFileError(
            f"{path}: cannot read the weights ({exc}); copy or download it again"
        ) from None


_TORCH_NOISE = (
    "weights_only",
    "will likely succeed",
    "check the documentation",
    "please file an issue",
    "in pytorch 2.6",
)


def _load_problem(exc: BaseException, what: str) -> str:
    """What a failed ``torch.load(weights_only=True)`` means, without torch's advice to retry
    unsafely."""
    text = str(exc)
    wanted = re.search(r"GLOBAL ([\w.]+)", text)  # "Unsupported global: GLOBAL os.system"
    if wanted:
        return (
            f"refused to load it: the {what} asks for the Python object {wanted.group(1)}, not "
            "only tensors and plain containers (nothing of it was run)"
        )
    lines = [
        ln.strip(" :")
        for ln in text.splitlines()
        if ln.strip(" :") and not any(n in ln.lower() for n in _TORCH_NOISE)
    ]
    cause = lines[-1].split(". ")[0][:160] if lines else type(exc).__name__
    return f"cannot read the {what}: the file is truncated or corrupt ({cause})"


def load_torch_file(
    path: str | os.PathLike[str],
    what: str = "checkpoint",
    *,
    kind: str | None = None,
    safe_globals: Iterable[Any] = (),
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Args:
        path: the file.
        what: the file in words, for messages ("CutLER checkpoint").
        kind: a key of :data:`WEIGHTS_SOURCES`: a missing file then says what to download.
        safe_globals: extra globals the unpickler may rebuild (e.g. numpy's array functions).

    Raises:
        MissingWeightsError: no such file (``kind`` given); else FileNotFoundError.
        CheckpointFileError: a folder, truncated, corrupt, or holding objects ``weights_only``
            refuses (nothing of them is run). One line, naming the file.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointFileError(f"{path}: is a folder; give the {what} file itself")
    if not path.is_file():
        if kind is not None:
            raise missing_weights(kind, path)
        raise FileNotFoundError(f"{path}: no such file ({what})")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(list(safe_globals)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
        raise CheckpointFileError(f"{path}: {_load_problem(exc, what)}; {_again(kind)}") from None


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
