"""The run directory of a training run (layout: :mod:`unsam.training.engine`): checkpoint folders,
``train_config.json``, the loss CSV and its plot, and the settings of a new or resumed run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unsam.config import config_hash, config_to_dict
from unsam.io.files import atomic_write, atomic_write_json, atomic_write_text
from unsam.training.engine.distributed import DistInfo

__all__ = [
    "LOSS_CSV_HEADER",
    "checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "read_loss_csv",
    "read_train_config",
    "resolve_training_run",
    "upgrade_train_values",
    "write_loss_plot",
]


LOSS_CSV_HEADER = ("step", "loss", "lr", "seconds_per_step")


_STEP_PREFIX = "step_"


def checkpoint_dir(run_dir: str | os.PathLike[str], step: int) -> Path:
    """``RUN_DIR/checkpoints/step_0000500`` for step 500."""
    return Path(run_dir) / "checkpoints" / f"{_STEP_PREFIX}{step:07d}"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, ``[(step, path), ...]`` by ascending step."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if not p.name.startswith(_STEP_PREFIX) or not p.is_dir():
            continue
        try:
            step = int(p.name[len(_STEP_PREFIX) :])
        except ValueError:
            continue
        if (p / "training_state.pt").is_file() and (p / "model" / "config.json").is_file():
            out.append((step, p))
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Newest complete checkpoint folder of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def upgrade_train_values(values: dict[str, Any]) -> dict[str, Any]:
    """A stored training config (``train_config.json``'s ``"train"``, a checkpoint's ``"config"``)
    in today's field names: ``bf16: true / false`` (before ``--dtype``) becomes ``dtype:
    "bfloat16" / "float32"``, so runs written before keep resuming."""
    values = dict(values)
    if "bf16" in values:
        legacy = values.pop("bf16")
        values.setdefault("dtype", "bfloat16" if legacy else "float32")
    return values


def read_train_config(
    run_dir: str | os.PathLike[str], config_cls: type, command: str
) -> tuple[Any, dict[str, Any]]:
    """The training config (``config_cls``) and the whole record stored in
    ``RUN_DIR/train_config.json`` by ``command``.

    Raises:
        FileNotFoundError / ValueError: missing or malformed file, naming it.
    """
    path = Path(run_dir) / "train_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; is {run_dir} an `{command}` run directory?")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        values = dict(record["train"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid train_config.json ({exc})") from None
    values = upgrade_train_values(values)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"{path}: unknown {config_cls.__name__} fields {unknown}; written by a newer unsam?"
        )
    if isinstance(values.get("lr_steps"), list):
        values["lr_steps"] = tuple(values["lr_steps"])
    return config_cls(**values), record


def read_loss_csv(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Rows of a ``loss.csv`` as dicts of floats (``step`` as an integer-valued float)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        try:
            out.append({k: float(row[k]) for k in LOSS_CSV_HEADER})
        except (KeyError, TypeError, ValueError):
            break  # a partial last line of an interrupted run
    return out


def write_loss_plot(
    csv_path: str | os.PathLike[str], png_path: str | os.PathLike[str]
) -> Path | None:
    """Plot loss (and a moving average) against step into a PNG; None when there is no row yet."""
    rows = read_loss_csv(csv_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    window = max(1, min(len(loss) // 20, 200))
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (all decoder layers)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    return atomic_write(png_path, lambda fh: fh.write(data))


def _truncate_loss_csv(path: Path, last_step: int) -> None:
    """Keep the header and the complete rows with step <= last_step (later rows are redone)."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    kept = [",".join(LOSS_CSV_HEADER)]
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) != len(LOSS_CSV_HEADER):
            break  # an empty or partial last line
        try:
            if int(fields[0]) > last_step:
                break
            [float(v) for v in fields]
        except ValueError:
            break
        kept.append(line)
    atomic_write_text(path, "\n".join(kept) + "\n")


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir}: exists and is not a folder; choose another --output")
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise ValueError(
            f"{run_dir}: run folder exists and is not empty; pass --resume to continue that run, "
            "or choose a new --output"
        )


def _versions() -> dict[str, str]:
    import transformers

    import unsam

    return {
        "unsam": unsam.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _write_run_files(
    run_dir: Path,
    config: Any,
    annotations: Path,
    images: Path,
    info: DistInfo,
    num_images: int,
    bad: list[tuple[str, str]],
    start_step: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """train_config.json (plus ``extra`` fields), skipped_images.txt and the loss CSV (cut back
    to ``start_step``); rank 0."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        run_dir / "train_config.json",
        {
            **(extra or {}),
            "train": config_to_dict(config),
            "config_hash": config_hash(config),
            "annotations": str(annotations.resolve()),
            "images": str(images.resolve()),
            "world_size": info.world_size,
            "num_images": num_images,
            "versions": _versions(),
        },
        indent=2,
    )
    if bad:
        atomic_write_text(run_dir / "skipped_images.txt", "".join(f"{p}\t{r}\n" for p, r in bad))
    csv_path = run_dir / "loss.csv"
    if csv_path.exists():
        _truncate_loss_csv(csv_path, start_step)
    else:
        atomic_write_text(csv_path, ",".join(LOSS_CSV_HEADER) + "\n")


def resolve_training_run(
    run_dir: str | os.PathLike[str],
    overrides: dict[str, Any],
    annotations: str | None,
    images: str | None,
    *,
    resume: bool,
    load: Callable[[Path], tuple[Any, dict[str, Any]]],
    new: Callable[[dict[str, Any]], Any],
) -> tuple[Any, str, str]:
    """The settings and data of a run: on ``resume`` of an existing run, its stored settings
    (``load(run_dir)``) with ``overrides`` applied and its stored data paths unless given; else
    ``new(overrides)``. Shared by both trainers' CLIs.

    Raises:
        ValueError: no annotations / images for a new run.
    """
    run_dir = Path(run_dir)
    if resume and (run_dir / "train_config.json").is_file():
        saved, record = load(run_dir)
        config = dataclasses.replace(saved, **overrides)
        annotations = annotations or record.get("annotations")
        images = images or record.get("images")
    else:
        config = new(dict(overrides))
    if not annotations or not images:
        raise ValueError(
            "--annotations PSEUDO.json and --images DIR are required "
            "(except with --resume of a run)"
        )
    return config, annotations, images
