"""Loading of whole-image models: a save_pretrained folder, a training run folder, an official
detectron2 checkpoint (converted on the fly) or the Hugging Face hub id :data:`HUB_ID`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "HUB_ID",
    "resolve_model_folder",
]

logger = logging.getLogger(__name__)


#: The released UnSAM whole-image checkpoint on the Hugging Face hub (official detectron2 format).
HUB_ID = "yujunwei04/unsam-whole-image-segmentation"


_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt")


def _step_of(path: Path) -> int:
    digits = re.findall(r"\d+", path.name)
    return int(digits[-1]) if digits else -1


def resolve_model_folder(path: str | os.PathLike[str]) -> Path:
    """The ``save_pretrained`` folder inside ``path`` (a model folder or a training run folder).

    Looks for ``config.json`` in ``path``, then ``path/model`` (a finished run's final model),
    then the newest ``path/checkpoints/<step>/model`` (or ``<step>/``) by step number, preferring
    complete checkpoints (``training_state.pt`` written beside the model).

    Raises:
        FileNotFoundError: no model folder found, naming what was looked for.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    ckpt_root = path / "checkpoints"
    if ckpt_root.is_dir():
        candidates = [
            c / "model" if (c / "model" / "config.json").is_file() else c
            for c in ckpt_root.iterdir()
            if c.is_dir()
            and ((c / "model" / "config.json").is_file() or (c / "config.json").is_file())
        ]
        if candidates:
            # a checkpoint is complete once its training state is written beside the model
            complete = [c for c in candidates if (c.parent / "training_state.pt").is_file()]
            best = max(
                complete or candidates,
                key=lambda c: (_step_of(c if c.name != "model" else c.parent), c.stat().st_mtime),
            )
            logger.info("%s: no final model yet, using the latest checkpoint %s", path, best)
            return best
    raise FileNotFoundError(
        f"{path}: no model found (looked for config.json, model/config.json and "
        "checkpoints/*/model/config.json); "
        "pass a folder written by save_pretrained / unsam train, or an official UnSAM .pth"
    )


def _load_transformers_folder(folder: Path) -> Any:
    from transformers import Mask2FormerForUniversalSegmentation

    from unsam.io.checkpoints import check_safetensors_file

    for weights in folder.glob("*.safetensors"):
        check_safetensors_file(weights)  # a truncated file is named here, not deep in transformers
    tf_logger = logging.getLogger("transformers.models.mask2former.configuration_mask2former")
    previous = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        from unsam.hub import quiet_loading

        with quiet_loading():
            model, info = Mask2FormerForUniversalSegmentation.from_pretrained(
                folder, output_loading_info=True
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{folder}: cannot load a Mask2Former model ({str(exc).splitlines()[0]})"
        ) from None
    finally:
        tf_logger.setLevel(previous)
    if int(model.config.num_labels) != 1:
        raise ValueError(
            f"{folder}: the model has {model.config.num_labels} classes; unsam's whole-image "
            "segmenter expects a "
            "class-agnostic model (num_labels=1, as built by unsam.models.whole_image.build_model)"
        )
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("num_batches_tracked")]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{folder}: weights do not match its config.json: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, "
            f"{len(mismatched)} mismatched (e.g. "
            f"{(missing + unexpected + [str(m) for m in mismatched])[:3]})"
        )
    return model


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id,
            allow_patterns=[
                "*.json",
                "*.safetensors",
                "*.bin",
                *(f"*{s}" for s in _CHECKPOINT_SUFFIXES),
            ],
        )
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, auth: all end in the same advice
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.split(". ")[0]
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        from unsam.features.base import MissingWeightsError

        raise MissingWeightsError(
            f"{repo_id} is no local file or folder, and cannot be downloaded from the Hugging "
            f"Face hub ({reason}); "
            "if it is a hub id, download its checkpoint file "
            f"from https://huggingface.co/{repo_id} and pass the local file's path as the model "
            "(an official .pth "
            "is converted on the fly, or once with: unsam convert-checkpoint FILE.pth -o DIR)"
        ) from None
    return Path(folder)


def _load_any(path_or_hub_id: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], str]:
    """(model, preprocessing dict, description) for a folder, run folder, .pth file or hub id."""
    from unsam.io.checkpoints import missing_weights
    from unsam.models.whole_image.convert import (
        convert_to_model,
        load_official_state_dict,
        read_preprocessor_config,
    )

    text = os.fspath(path_or_hub_id)
    path = Path(text).expanduser()
    if not path.exists() and path.parent != Path(".") and path.parent.is_dir():
        # "runs/typo" where runs/ exists: a local path, not a hub id
        raise missing_weights("whole-image", text)
    if not path.exists():
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.endswith(
            _CHECKPOINT_SUFFIXES
        ):
            path = _download_from_hub(
                text
            )  # a typo'd local path also lands here; the error names both
            if not (path / "config.json").is_file():
                found = sorted(p for p in path.rglob("*") if p.suffix in _CHECKPOINT_SUFFIXES)
                if len(found) != 1:
                    raise ValueError(
                        f"{text}: expected one checkpoint file in the hub repository, found "
                        f"{[p.name for p in found] or 'none'}; download the one you want and pass "
                        "its path"
                    )
                path = found[0]
        else:
            raise missing_weights("whole-image", text)
    if path.is_file():
        state_dict = load_official_state_dict(path)
        model = convert_to_model(state_dict, where=str(path))
        prep = read_preprocessor_config(None)
        if "pixel_mean" in state_dict and "pixel_std" in state_dict:
            prep["mean"] = tuple(float(v) for v in state_dict["pixel_mean"].flatten())
            prep["std"] = tuple(float(v) for v in state_dict["pixel_std"].flatten())
        return model, prep, f"{path} (official checkpoint, converted)"
    folder = resolve_model_folder(path)
    return _load_transformers_folder(folder), read_preprocessor_config(folder), str(folder)
