"""The official CascadePSP weights file ``model``: one key table, strict loading with
``weights_only=True`` (CASCADEPSP.md §3.8, §4.4).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from unsam.io.checkpoints import key_mismatch
from unsam.refine.cascadepsp.modeling import RefinementModule

__all__ = [
    "CASCADEPSP_WEIGHTS_ENV",
    "CASCADEPSP_WEIGHTS_HINT",
    "load_official_weights",
    "official_key_table",
]


#: Environment variable naming the official weights file when no path is given.
CASCADEPSP_WEIGHTS_ENV = "UNSAM_CASCADEPSP_WEIGHTS"


#: What to download and where (kept for callers; the errors come from
#: :func:`unsam.io.checkpoints.missing_weights`).
CASCADEPSP_WEIGHTS_HINT = (
    "download the official CascadePSP weights file 'model' (259 MB, MD5 "
    "7478d4a9c42ab52beb6d7e9683402fe0) from "
    "https://github.com/hkchengrex/CascadePSP/releases/download/v1.0/model and pass its path as "
    f"--refine cascadepsp:PATH (or set {CASCADEPSP_WEIGHTS_ENV}=PATH)"
)


_FILE_PREFIX = "module."  # nn.DataParallel prefix of every key in the official file


def official_key_table() -> dict[str, tuple[str, tuple[int, ...]]]:
    """The key table of the official weights file: file key -> (module key, shape).

    The file stores ``RefinementModule.state_dict()`` saved from ``nn.DataParallel``, so each file
    key is ``"module." + key`` and the module names are the official ones (426 rows, equal to
    ``cascadepsp_keys.tsv``). ``num_batches_tracked`` rows (int64 scalars) are unused in eval.
    """
    with torch.device("meta"):  # shapes only, no allocation
        model = RefinementModule()
    return {_FILE_PREFIX + k: (k, tuple(v.shape)) for k, v in model.state_dict().items()}


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    from unsam.io.checkpoints import load_torch_file

    obj = load_torch_file(path, "CascadePSP weights file", kind="cascadepsp")
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise ValueError(
            f"{path}: not a state dict of tensors; expected the official CascadePSP weights file "
            "'model'"
        )
    return {str(k): v for k, v in obj.items()}


def load_official_weights(model: RefinementModule, path: str | os.PathLike[str]) -> None:
    """Load the official CascadePSP weights file into ``model``, strictly, through the key table.

    Keys may carry the ``module.`` prefix (the official file) or not. ``num_batches_tracked`` may
    be absent (it is never read in eval). Every other table row must be present with its shape,
    and the file may hold nothing else.

    Raises:
        MissingWeightsError: the file does not exist (the message says where to download it).
        ValueError: unreadable file, or missing / unexpected keys / wrong shapes (named, with the
            file).
    """
    path = Path(path)
    raw = _read_checkpoint(path)
    table = official_key_table()
    by_module_key = {key: (file_key, shape) for file_key, (key, shape) in table.items()}
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    bad_shape: list[str] = []
    present: set[str] = set()  # keys found with a wrong shape (reported as such, not as missing)
    for file_key, tensor in raw.items():
        key = file_key.removeprefix(_FILE_PREFIX)
        row = by_module_key.get(key)
        if row is None or key in loaded:
            unexpected.append(file_key)
            continue
        if tuple(tensor.shape) != row[1]:
            bad_shape.append(f"{file_key} {tuple(tensor.shape)} (expected {row[1]})")
            present.add(key)
            continue
        loaded[key] = tensor
    missing = [
        fk
        for fk, (k, _) in table.items()
        if k not in loaded and k not in present and not k.endswith("num_batches_tracked")
    ]
    problems = key_mismatch(missing, unexpected, bad_shape, examples=6)
    if problems:
        raise ValueError(
            f"{path}: does not match the CascadePSP key table ({problems}); expected the "
            "official weights file 'model' of segmentation-refinement 0.6"
        )
    # num_batches_tracked left out of the file keeps the module's value (0), as the original's
    # loader
    result = model.load_state_dict(loaded, strict=False)
    left = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if left or result.unexpected_keys:  # cannot happen when the table is the module's own names
        raise ValueError(f"{path}: internal key-table mismatch: {left} {result.unexpected_keys}")
