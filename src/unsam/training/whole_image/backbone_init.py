"""Initialise the whole-image model's ResNet-50 backbone from a self-supervised checkpoint
(spec §6.1).

The paper initialises the backbone with DINO's ResNet-50, as CutLER ships it:
``dino_RN50_pretrain_d2_format.pkl``, a detectron2 pickle
``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": True}`` with detectron2
names (``stem.conv1.weight``, ``stem.conv1.norm.*``, ``res2.0.conv1.weight``,
``res2.0.conv1.norm.*``, ``res2.0.shortcut.weight``, ...). :func:`load_backbone_init` also reads a
torchvision-style ``.pth`` (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, ...; DINO's ``dino_resnet50_pretrain.pth``) and ``.safetensors``
files with either naming.

Safety: a ``.pkl`` is read by :class:`RestrictedUnpickler`, which can only rebuild numpy arrays,
dtypes and scalars and plain containers. Any other global (``os.system``, ``builtins.eval``,
``subprocess.Popen``...) is refused *before* it is called, with :class:`UnsafePickleError` naming
the file and the global. ``.pth`` files go through ``torch.load(weights_only=True)``.

Names: torchvision names are first renamed to detectron2's (the rename of detectron2's
``convert-torchvision-to-d2.py``, :func:`torchvision_to_d2_name`), then every detectron2 name is
mapped to transformers by the backbone rows of the official-checkpoint converter
(:data:`unsam.models.whole_image.convert.RULES`), so there is one detectron2 → transformers table.
Loading is strict: every backbone tensor except BatchNorm's ``num_batches_tracked`` must be filled
with the right shape, and any other key is an error; classifier weights (``fc.*``, which
detectron2's converter renames ``stem.fc.*``) and DINO's projection head (``head.*``) are ignored.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unsam.io.checkpoints import key_mismatch, load_safetensors, load_torch_file, missing_weights
from unsam.models.whole_image.config import backbone_module
from unsam.models.whole_image.convert import official_target_names

__all__ = [
    "RestrictedUnpickler",
    "UnsafePickleError",
    "backbone_d2_to_hf",
    "load_backbone_init",
    "load_restricted_pickle",
    "read_backbone_state_dict",
    "torchvision_to_d2_name",
]

logger = logging.getLogger(__name__)

#: transformers prefix of the backbone inside Mask2FormerForUniversalSegmentation (spec App. C).
_HF_BACKBONE_PREFIX = "model.pixel_level_module.encoder."

#: Keys of a ResNet checkpoint that are not backbone weights and are skipped on purpose.
_IGNORED = re.compile(r"(stem\.)?fc\.|head\.")


class UnsafePickleError(ValueError):
    """A pickle asked for a global outside the numpy-array / plain-container allow-list."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (latin-1 only)."""
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(
            f"_codecs.encode with encoding {encoding!r} (only latin1 is allowed)"
        )
    return text.encode("latin1")


#: (module, name) -> object a pickle may reference. numpy < 2 uses ``numpy.core``, numpy 2
#: ``numpy._core``.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_mod, "_reconstruct")] = np._core.multiarray._reconstruct  # type: ignore[attr-defined]
    _ALLOWED_GLOBALS[(_mod, "scalar")] = np._core.multiarray.scalar  # type: ignore[attr-defined]
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED_GLOBALS[(_mod, "_frombuffer")] = np._core.numeric._frombuffer  # type: ignore[attr-defined]
for _name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_"):
    _ALLOWED_GLOBALS[("numpy", _name)] = getattr(
        np, _name
    )  # dtype classes in numpy >= 1.25 pickles


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only numpy arrays / dtypes / scalars and plain containers.

    dict, list, tuple, str, bytes, int, float, bool and None need no global; ``OrderedDict``,
    ``numpy.ndarray``, ``numpy.dtype``, ``numpy.core.multiarray._reconstruct`` / ``scalar`` (also
    under ``numpy._core``), ``numpy.core.numeric._frombuffer`` and latin-1 ``_codecs.encode`` are
    allowed. Everything else raises :class:`UnsafePickleError` without being imported or called.

    Args:
        file: binary file object.
        path: the file's path, for error messages.
    """

    def __init__(self, file: Any, path: str | os.PathLike[str]) -> None:
        super().__init__(
            file, encoding="latin1"
        )  # latin1: Python 2 pickles, as detectron2 reads them
        self.path = Path(path)

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self.path}: refused to load the global {module}.{name}; this pickle holds "
                "more than numpy arrays and plain containers and may run code when loaded. Use "
                "the official dino_RN50_pretrain_d2_format.pkl, or convert the weights to "
                ".safetensors"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.path}: refused a persistent id ({type(pid).__name__}); not a plain pickle"
        )


def load_restricted_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a pickle with :class:`RestrictedUnpickler`.

    Raises:
        MissingWeightsError: no such file (says what to download).
        UnsafePickleError: the pickle references a refused global (nothing of it was run).
        ValueError: not a readable pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_weights("backbone-init", path)
    with path.open("rb") as f:
        try:
            return RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # noqa: BLE001 - pickle raises many error types
            raise ValueError(
                f"{path}: not a readable pickle ({type(exc).__name__}: {exc})"
            ) from None


def torchvision_to_d2_name(key: str) -> str:
    """A torchvision ResNet name in detectron2's naming
    (detectron2 ``convert-torchvision-to-d2.py``).

    ``conv1.weight`` → ``stem.conv1.weight``; ``bn1.X`` → ``stem.conv1.norm.X``;
    ``layer{s}.{j}.conv{c}.weight`` → ``res{s+1}.{j}.conv{c}.weight``;
    ``layer{s}.{j}.bn{c}.X`` → ``res{s+1}.{j}.conv{c}.norm.X``;
    ``layer{s}.0.downsample.0.weight`` → ``res{s+1}.0.shortcut.weight``;
    ``layer{s}.0.downsample.1.X`` → ``res{s+1}.0.shortcut.norm.X``. Other names are returned
    unchanged.
    """
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key)
    if m is None:
        if key == "conv1.weight":
            return "stem.conv1.weight"
        if key.startswith("bn1."):
            return "stem.conv1.norm." + key[len("bn1.") :]
        return key
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return f"res{stage + 1}.{block}.{rest}"


def backbone_d2_to_hf(key: str) -> str | None:
    """The ``ResNetBackbone`` name (relative to the Mask2Former backbone) of a detectron2 name,
    or None.

    Uses the backbone rows of :data:`unsam.models.whole_image.convert.RULES` (prefix ``backbone.``).
    """
    targets = official_target_names("backbone." + key)
    if targets is None or len(targets) != 1 or not targets[0].startswith(_HF_BACKBONE_PREFIX):
        return None
    return targets[0][len(_HF_BACKBONE_PREFIX) :]


def _as_tensor(value: Any, key: str, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(
        f"{path}: {key} is a {type(value).__name__} ({getattr(value, 'dtype', '')}), "
        "not a numeric array"
    )


def read_backbone_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a ResNet-50 checkpoint and return its tensors under detectron2 names.

    Formats, by extension: ``.pkl`` / ``.pickle`` (detectron2: ``{"model": {...}}`` or a plain
    dict of numpy arrays; :class:`RestrictedUnpickler`), ``.safetensors``, anything else a torch
    file (``torch.load(weights_only=True)``; a state dict, or one under ``state_dict`` / ``model``
    / ``teacher``). ``module.`` and ``backbone.`` prefixes are stripped; torchvision names are
    renamed with :func:`torchvision_to_d2_name`.

    Returns:
        detectron2 name -> tensor (CPU, dtype as stored), including the ignored ``fc`` /
        ``head`` keys.

    Raises:
        FileNotFoundError, UnsafePickleError, ValueError: naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_weights("backbone-init", path)
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        obj = load_restricted_pickle(path)
    elif suffix == ".safetensors":
        obj = load_safetensors(path, kind="backbone-init")
    else:
        obj = load_torch_file(path, "ResNet-50 checkpoint", kind="backbone-init")
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict", "teacher"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: no dict of weights found; expected a ResNet-50 checkpoint")
    out: dict[str, torch.Tensor] = {}
    for raw_key, value in obj.items():
        key = re.sub(r"^(module\.)?(backbone\.)?", "", str(raw_key))
        key = torchvision_to_d2_name(key)
        if key in out:
            raise ValueError(f"{path}: two keys map to {key} (one of them {raw_key})")
        out[key] = _as_tensor(value, str(raw_key), path)
    return out


def load_backbone_init(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Fill the ResNet backbone of a whole-image Mask2Former from a checkpoint, strictly.

    Args:
        model: a ``Mask2FormerForUniversalSegmentation`` with a ResNet backbone
            (:func:`unsam.models.whole_image.build_model`).
        path: ``dino_RN50_pretrain_d2_format.pkl`` (detectron2), a torchvision-style ``.pth``, or
            a ``.safetensors`` file (see :func:`read_backbone_state_dict`).

    Returns:
        The number of backbone tensors written.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: a ``.pkl`` that references anything but numpy arrays and containers.
        ValueError: missing, unexpected or wrong-shape keys (named, with the file).
    """
    path = Path(path)
    source = read_backbone_state_dict(path)
    backbone = backbone_module(model)
    target = backbone.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    bad_shape: list[str] = []
    wrong: set[str] = set()  # targets found with a wrong shape (reported as such, not as missing)
    ignored = 0
    for key, value in source.items():
        if _IGNORED.match(key):
            ignored += 1
            continue
        dst = backbone_d2_to_hf(key)
        if dst is None or dst not in target:
            unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(target[dst].shape):
            bad_shape.append(f"{key} {tuple(value.shape)} (model: {tuple(target[dst].shape)})")
            wrong.add(dst)
            continue
        mapped[dst] = value.to(target[dst].dtype)
    missing = [
        k
        for k in target
        if k not in mapped and k not in wrong and not k.endswith("num_batches_tracked")
    ]
    problems = key_mismatch(missing, unexpected, bad_shape)
    if problems:
        raise ValueError(
            f"{path}: does not fit the model's ResNet backbone: {problems}; "
            "expected a ResNet-50 (dino_RN50_pretrain_d2_format.pkl, or torchvision names "
            "conv1.weight, bn1.*, layer1.0.conv1.weight, ...)"
        )
    backbone.load_state_dict(mapped, strict=False)
    logger.info(
        "backbone initialised from %s: %d tensors (%d classifier/head tensors ignored)",
        path,
        len(mapped),
        ignored,
    )
    return len(mapped)
