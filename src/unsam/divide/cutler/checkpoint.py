"""Load CutLER's ``cutler_cascade_final.pth`` into :class:`CascadeMaskRCNN`, strictly.

Accepted layouts (spec ``CUTLER_DETECTOR.md`` §3.1, what detectron2's ``DetectionCheckpointer``
accepts): a training checkpoint ``{"model": state_dict, "trainer": …, "iteration": …}``, a
stripped ``{"model": state_dict}``, or a bare state dict; values may be tensors or numpy arrays;
a leading ``module.`` is stripped. A ``.safetensors`` file holding the state dict also works.

Reading is safe: ``torch.load(weights_only=True)``, with numpy's array-reconstruction functions
and dtypes allowed (and nothing else) so that checkpoints holding numpy arrays load without
full unpickling.

Unlike the original (which warns and leaves random layers), any missing, unexpected or
mis-shaped tensor is an error naming the file and the keys. Ignored, as detectron2 ignores them:
``*.num_batches_tracked``, ``pixel_mean``, ``pixel_std``, ``…anchor_generator.cell_anchors.*``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unsam.divide.cutler.model import CascadeMaskRCNN

__all__ = [
    "IGNORED_KEYS",
    "KEY_RULES",
    "load_cutler_state_dict",
    "map_official_key",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

#: (official detectron2 prefix, our prefix), first match wins. Everything after the prefix is
#: kept (``res2.0.conv1.norm.running_var``, ``2.fc1.weight``, ``mask_fcn3.bias``, …).
KEY_RULES: tuple[tuple[str, str], ...] = (
    ("backbone.bottom_up.", "resnet."),  # stem.conv1{,.norm}.*, res{2..5}.{i}.{conv1..3,shortcut}
    ("backbone.fpn_lateral", "fpn.lateral."),  # fpn_lateral{2..5}{,.norm}.*
    ("backbone.fpn_output", "fpn.output."),  # fpn_output{2..5}{,.norm}.*
    ("proposal_generator.rpn_head.", "rpn."),  # conv, objectness_logits, anchor_deltas
    ("roi_heads.box_head.", "box_heads."),  # {0,1,2}.fc{1,2}.*
    ("roi_heads.box_predictor.", "box_predictors."),  # {0,1,2}.{cls_score,bbox_pred}.*
    ("roi_heads.mask_head.", "mask_head."),  # mask_fcn{1..4}, deconv, predictor
)

#: Official keys that carry nothing the model needs: (kind, pattern).
IGNORED_KEYS: tuple[tuple[str, str], ...] = (
    ("suffix", ".num_batches_tracked"),
    ("exact", "pixel_mean"),
    ("exact", "pixel_std"),
    ("prefix", "proposal_generator.anchor_generator.cell_anchors."),
)


def _numpy_safe_globals() -> list[Any]:
    """The globals a pickled numpy array or scalar needs: reconstruct functions and dtypes only."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    numeric = (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
    )
    dtypes = [type(np.dtype(t)) for t in numeric]  # no object dtype: it would unpickle anything
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The official-named state dict stored in ``path`` (layouts in the module docstring).

    Returns:
        key → float/int tensor, ``module.`` stripped, numpy arrays converted.

    Raises:
        MissingWeightsError: ``path`` does not exist (says what to download).
        CheckpointFileError: truncated, corrupt, a pickle asking for code (never run), or no state
            dict of tensors; one line naming the file.
    """
    from unsam.io.checkpoints import CheckpointFileError, load_safetensors, load_torch_file

    path = Path(path)
    what = "CutLER checkpoint"
    if path.suffix == ".safetensors":
        obj: Any = load_safetensors(path, kind="cutler")
    else:
        obj = load_torch_file(path, what, kind="cutler", safe_globals=_numpy_safe_globals())
    if isinstance(obj, Mapping) and "model" in obj:
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointFileError(
            f"{path}: expected a state dict or {{'model': state_dict}}, got {type(obj).__name__}; "
            "is it cutler_cascade_final.pth?"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointFileError(f"{path}: state-dict key {key!r} is not a string")
        name = key.removeprefix("module.")
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, (np.generic, int, float)):
            value = torch.as_tensor(value)
        if not isinstance(value, torch.Tensor):
            raise CheckpointFileError(
                f"{path}: {key!r} holds a {type(value).__name__}, not a tensor"
            )
        state[name] = value
    return state


def _ignored(key: str) -> bool:
    for kind, pattern in IGNORED_KEYS:
        if (
            (kind == "suffix" and key.endswith(pattern))
            or (kind == "exact" and key == pattern)
            or (kind == "prefix" and key.startswith(pattern))
        ):
            return True
    return False


def map_official_key(key: str) -> str | None:
    """Our parameter/buffer name for an official key; None when the key is ignored or unknown."""
    if _ignored(key):
        return None
    for official, ours in KEY_RULES:
        if key.startswith(official):
            return ours + key[len(official) :]
    return None


def _short_list(keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_cutler_state_dict(
    model: CascadeMaskRCNN, state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Copy an official-named state dict into ``model`` in place, strictly.

    Args:
        model: the detector modules.
        state: official key → tensor (see :func:`read_checkpoint`).
        source: file name used in error messages.

    Raises:
        ValueError: an unexpected key (not mapped by :data:`KEY_RULES` nor ignored), a missing
            model tensor, or a shape mismatch; the message names ``source`` and the keys.
    """
    targets = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        name = map_official_key(key)
        if name is None:
            if not _ignored(key):
                unexpected.append(key)
            continue
        if name not in targets:
            unexpected.append(key)
            continue
        mapped[name] = value
    missing = [
        official for official, ours in _official_names(targets).items() if ours not in mapped
    ]
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_short_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_short_list(unexpected)}")
        raise ValueError(
            f"{source}: not a CutLER Cascade Mask R-CNN (R50-FPN) checkpoint; " + "; ".join(parts)
        )
    bad = [
        f"{key} {tuple(value.shape)} != {tuple(targets[map_official_key(key)].shape)}"
        for key, value in state.items()
        if map_official_key(key) in mapped and value.shape != targets[map_official_key(key)].shape
    ]
    if bad:
        raise ValueError(f"{source}: {len(bad)} tensors have the wrong shape: {_short_list(bad)}")
    with torch.no_grad():
        for name, value in mapped.items():
            targets[name].copy_(value.to(targets[name].dtype))
    logger.info("loaded %d CutLER tensors from %s", len(mapped), source)


def _official_names(targets: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Official key for each of our names (the inverse of :data:`KEY_RULES`)."""
    out = {}
    for name in targets:
        for official, ours in KEY_RULES:
            if name.startswith(ours):
                out[official + name[len(ours) :]] = name
                break
        else:
            raise ValueError(f"model tensor {name!r} is not covered by KEY_RULES")
    return out
