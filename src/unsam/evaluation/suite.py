"""The paper's evaluation suite: class-agnostic AR@1000 on seven datasets (spec §8.1, §8.3).

Layout of a data root (``unsam datasets convert`` writes the ``gt.json`` files)::

    ROOT/<name>/gt.json                 class-agnostic COCO ground truth
    ROOT/<name>/images/                 the images; gt.json's file_name is relative to this folder
    ROOT/<name>/pred_<model>.json       predictions of a model (written by the suite, resumable)

with ``<name>`` one of ``coco lvis ade20k entityseg sa1b partimagenet paco``. A dataset whose
``gt.json`` is absent is reported as "not present" (a column of "–"), never estimated.
Predictions come either from a folder (``PRED_DIR/<name>.json``: a COCO results list or dataset
JSON, matched to the ground truth by file name) or from a whole-image model run over each
dataset's images with the ``unsam segment`` machinery (:func:`predict_dataset`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unsam.evaluation.ar import evaluate
from unsam.io.coco import MaskFileError

__all__ = [
    "COLUMN_TITLES",
    "DATASET_ORDER",
    "PAPER_AR1000",
    "PAPER_SOURCE",
    "SuiteEntry",
    "dataset_images",
    "dataset_paths",
    "evaluate_suite",
    "format_suite_table",
    "model_tag",
    "parse_dataset_names",
    "predict_dataset",
    "suite_average",
    "suite_to_json",
]

logger = logging.getLogger(__name__)

#: Dataset folder names, in the paper's column order.
DATASET_ORDER = ("coco", "lvis", "ade20k", "entityseg", "sa1b", "partimagenet", "paco")

#: Column title of each dataset in the paper's table.
COLUMN_TITLES = {
    "coco": "COCO",
    "lvis": "LVIS",
    "ade20k": "ADE20K",
    "entityseg": "Entity",
    "sa1b": "SA-1B",
    "partimagenet": "PtIn",
    "paco": "PACO",
}

_ALIASES = {"entity": "entityseg", "ptin": "partimagenet", "sa-1b": "sa1b", "ade": "ade20k"}

#: Where the reported numbers come from.
PAPER_SOURCE = (
    "the model-zoo tables of the UnSAM README, https://github.com/frank-xwang/UnSAM (the headline "
    "numbers of arXiv:2406.20081): class-agnostic AR@1000 in %, as reported, not reproduced here"
)

#: Reported AR@1000 (%) per method: (label, {"avg" and each dataset: value}). Source: PAPER_SOURCE.
PAPER_AR1000: tuple[tuple[str, dict[str, float]], ...] = (
    # UNSAM_SPEC.md:678 | Prev. unsup. SOTA (SOHES) | ViT-B | 0.2M | 30.1 | 30.5 | 29.1 | ...
    (
        "SOHES ViT-B 0.2M",
        {
            "avg": 30.1,
            "coco": 30.5,
            "lvis": 29.1,
            "ade20k": 31.1,
            "entityseg": 33.5,
            "sa1b": 33.3,
            "partimagenet": 36.0,
            "paco": 17.1,
        },
    ),
    # UNSAM_SPEC.md:679 | UnSAM | R-50 | 0.1M | 39.2 | ...
    (
        "UnSAM R-50 0.1M",
        {
            "avg": 39.2,
            "coco": 40.5,
            "lvis": 37.7,
            "ade20k": 35.7,
            "entityseg": 39.6,
            "sa1b": 41.9,
            "partimagenet": 51.6,
            "paco": 27.5,
        },
    ),
    # UNSAM_SPEC.md:680 | UnSAM | R-50 | 0.4M | 41.1 | ...
    (
        "UnSAM R-50 0.4M",
        {
            "avg": 41.1,
            "coco": 42.0,
            "lvis": 40.5,
            "ade20k": 37.5,
            "entityseg": 41.0,
            "sa1b": 44.5,
            "partimagenet": 52.7,
            "paco": 29.7,
        },
    ),
    # UNSAM_SPEC.md:686 | SAM | ViT-B | 11M | 42.1 | ...
    (
        "SAM ViT-B 11M (supervised)",
        {
            "avg": 42.1,
            "coco": 49.6,
            "lvis": 46.1,
            "ade20k": 45.8,
            "entityseg": 45.9,
            "sa1b": 60.8,
            "partimagenet": 28.3,
            "paco": 18.1,
        },
    ),
    # UNSAM_SPEC.md:687 | UnSAM+ | R-50 | 0.1M | 48.8 | ...
    (
        "UnSAM+ R-50 0.1M",
        {
            "avg": 48.8,
            "coco": 52.2,
            "lvis": 50.8,
            "ade20k": 45.3,
            "entityseg": 49.8,
            "sa1b": 64.8,
            "partimagenet": 46.0,
            "paco": 32.3,
        },
    ),
)

Status = Literal["ok", "not present", "no predictions"]
DASH = "–"


@dataclass(frozen=True)
class SuiteEntry:
    """One dataset's outcome.

    Attributes:
        name: dataset folder name (one of :data:`DATASET_ORDER`).
        status: "ok" (evaluated), "not present" (no ``gt.json``) or "no predictions".
        gt: the ground-truth path looked at.
        pred: the predictions path looked at (None when the dataset is not present).
        metrics: :func:`unsam.evaluate`'s dict (fractions in [0, 1]) when status is "ok".
    """

    name: str
    status: Status
    gt: Path
    pred: Path | None = None
    metrics: dict[str, Any] | None = None


def parse_dataset_names(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"coco,lvis"`` (or a list) → names in the paper's column order; None → all seven.

    Accepts the table titles as aliases (``entity``, ``ptin``, ``sa-1b``), case-insensitively.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if text is None:
        return DATASET_ORDER
    items = text.split(",") if isinstance(text, str) else list(text)
    chosen = set()
    for item in items:
        key = item.strip().lower()
        if not key:
            continue
        key = _ALIASES.get(key, key)
        if key not in DATASET_ORDER:
            raise ValueError(
                f"unknown dataset {item.strip()!r}; choose from {', '.join(DATASET_ORDER)}"
            )
        chosen.add(key)
    if not chosen:
        raise ValueError(f"no dataset named; choose from {', '.join(DATASET_ORDER)}")
    return tuple(n for n in DATASET_ORDER if n in chosen)


def dataset_paths(root: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """``(ROOT/<name>/gt.json, ROOT/<name>/images)``."""
    folder = Path(root) / name
    return folder / "gt.json", folder / "images"


def model_tag(model: str | os.PathLike[str]) -> str:
    """A file-name-safe name of a model: the folder or file name (``runs/r50`` → ``r50``,
    ``ckpt.pth`` → ``ckpt``, ``org/model`` hub ids → ``org_model``); predictions of model M are
    ``ROOT/<name>/pred_<tag>.json``."""
    text = os.fspath(model).rstrip("/\\")
    path = Path(text)
    if path.exists():
        base = path.stem if path.is_file() else path.name
        if base == "model" and path.is_dir():  # RUN_DIR/model: name it after the run
            base = path.resolve().parent.name
    else:
        base = text.removeprefix("promptable:")
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
    if not tag:
        raise ValueError(f"cannot make a file name from the model name {os.fspath(model)!r}")
    return tag


def predict_dataset(
    producer: Any,
    root: str | os.PathLike[str],
    name: str,
    output: str | os.PathLike[str],
    *,
    workers: int = 1,
    progress: Callable[[int, int], Any] | None = None,
    overwrite: bool = False,
) -> Any:
    """Run a mask producer (e.g. :class:`unsam.models.whole_image.producer.SegmenterProducer`)
    over the images of ``ROOT/<name>/gt.json`` and write its predictions to ``output``.

    The images are those listed in ``gt.json`` (sorted by file name) and keep its image ids, so
    the output matches the ground truth by id and by file name. The run is resumable (rerun to
    continue) through :func:`unsam.runner.run_images`.

    Returns:
        :class:`unsam.runner.RunResult`.

    Raises:
        FileNotFoundError: ``gt.json`` absent, or images it lists are not in ``images/``.
    """
    from unsam.runner import id_rule, run_images

    gt, images_dir = dataset_paths(root, name)
    ids = dataset_images(root, name)
    return run_images(
        producer,
        [images_dir / n for n in ids],
        images_dir,
        output,
        image_ids=ids,
        ids_rule=id_rule(gt),
        workers=workers,
        progress=progress,
        info={"dataset": name},
        overwrite=overwrite,
    )


def dataset_images(root: str | os.PathLike[str], name: str) -> dict[str, int]:
    """File name → image id of ``ROOT/<name>/gt.json``'s images, sorted by file name, checked to
    be in ``ROOT/<name>/images/`` (only the ``images`` list is read, not the masks).

    Raises:
        FileNotFoundError: gt.json absent, or images it lists are not in ``images/`` (naming the
            first one).
        MaskFileError: gt.json is not a COCO dataset JSON, or an image has no file name or id.
    """
    gt, images_dir = dataset_paths(root, name)
    if not gt.is_file():
        raise FileNotFoundError(f"{gt}: no such file (prepare it with unsam datasets convert)")
    try:
        data = json.loads(gt.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MaskFileError(f"{gt}: not a valid JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise MaskFileError(f'{gt}: expected a COCO dataset JSON with an "images" list')
    out: dict[str, int] = {}
    for i, img in enumerate(data["images"]):
        if (
            not isinstance(img, dict)
            or not isinstance(img.get("file_name"), str)
            or not isinstance(img.get("id"), int)
        ):
            raise MaskFileError(
                f'{gt}: images[{i}] needs an integer "id" and a "file_name" (the path '
                f"of the image inside {images_dir})"
            )
        out[img["file_name"]] = img["id"]
    names = sorted(out)
    missing = [n for n in names if not (images_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{images_dir / missing[0]}: missing ({len(missing)} of the {len(names)} images of "
            f"{gt} are not there); add them, or convert again with --images-dir to keep only the "
            "images you have"
        )
    return {n: out[n] for n in names}


def evaluate_suite(
    root: str | os.PathLike[str],
    predictions: Mapping[str, str | os.PathLike[str]],
    names: Sequence[str] = DATASET_ORDER,
    *,
    max_dets: Sequence[int] = (1, 10, 100, 1000),
) -> list[SuiteEntry]:
    """Evaluate each dataset of ``names`` present under ``root`` against its predictions.

    Args:
        root: the data root (layout in the module docstring).
        predictions: dataset name → predictions file; a dataset missing here or whose file
            does not exist gets status "no predictions".
        names: datasets to report, in this order.
        max_dets: passed to :func:`unsam.evaluate`.

    Returns:
        One :class:`SuiteEntry` per name.
    """
    entries = []
    for name in names:
        gt, _ = dataset_paths(root, name)
        if not gt.is_file():
            entries.append(SuiteEntry(name, "not present", gt))
            continue
        pred = predictions.get(name)
        if pred is None or not Path(pred).exists():
            entries.append(
                SuiteEntry(name, "no predictions", gt, Path(pred) if pred is not None else None)
            )
            continue
        logger.info("evaluating %s: %s vs %s", name, pred, gt)
        metrics = evaluate(gt, pred, max_dets=max_dets)
        entries.append(SuiteEntry(name, "ok", gt, Path(pred), metrics))
    return entries


def suite_average(entries: Sequence[SuiteEntry], metric: str = "AR@1000") -> float | None:
    """Mean of ``metric`` over the evaluated datasets (None when none was, or one is undefined)."""
    values = [e.metrics.get(metric) for e in entries if e.status == "ok" and e.metrics is not None]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values)) / len(values)  # type: ignore[arg-type]


def _cell(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


def format_suite_table(
    entries: Sequence[SuiteEntry],
    *,
    metrics: Sequence[str] = ("AR@1000", "AP"),
    paper: Sequence[tuple[str, Mapping[str, float]]] = PAPER_AR1000,
) -> str:
    """The paper's table layout: columns Avg, COCO, LVIS, ADE20K, Entity, SA-1B, PtIn, PACO; one
    row per metric of this run (in %), then the paper's reported AR@1000 rows.

    Datasets not evaluated (not present, no predictions, or not asked for) show "–". Avg is the
    mean over the evaluated datasets; when that is not all seven it is marked with "*" and a
    footnote, since the paper's Avg covers all seven.
    """
    by_name = {e.name: e for e in entries}
    evaluated = [e for e in entries if e.status == "ok"]
    partial = len(evaluated) != len(DATASET_ORDER)
    header = ["Avg", *(COLUMN_TITLES[n] for n in DATASET_ORDER)]
    rows: list[tuple[str, list[str]]] = []
    for metric in metrics:
        cells = []
        avg = suite_average(entries, metric)
        cells.append(
            _cell(None if avg is None else 100 * avg) + ("*" if partial and avg is not None else "")
        )
        for n in DATASET_ORDER:
            e = by_name.get(n)
            value = e.metrics.get(metric) if e is not None and e.metrics is not None else None
            cells.append(_cell(None if value is None else 100 * value))
        rows.append((f"this run: {metric}", cells))
    for label, values in paper:
        avg_cell = _cell(values.get("avg")) + (" " if partial else "")  # aligns with "12.3*"
        rows.append(
            (f"paper AR@1000: {label}", [avg_cell, *(_cell(values.get(n)) for n in DATASET_ORDER)])
        )
    label_w = max(len(r[0]) for r in rows)
    widths = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(header)]
    lines = [
        "class-agnostic mask metrics, % (AR@1000 = recall over IoU 0.50:0.95, 1000 masks/image)",
        " " * label_w + "  " + "  ".join(h.rjust(w) for h, w in zip(header, widths)),
    ]
    lines += [
        lbl.ljust(label_w) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths))
        for lbl, cells in rows
    ]
    if partial and evaluated:
        lines.append(
            f"* average over the {len(evaluated)} of {len(DATASET_ORDER)} datasets evaluated "
            f"({', '.join(e.name for e in evaluated)}); the paper's Avg covers all seven"
        )
    for e in entries:
        if e.status == "ok":
            m = e.metrics or {}
            lines.append(
                f"{e.name}: {m.get('images')} images, {m.get('gt_masks')} GT masks, "
                f"{m.get('pred_masks')} predicted masks ({e.pred})"
            )
        elif e.status == "not present":
            lines.append(
                f"{e.name}: not present (no {e.gt}; prepare it with unsam datasets convert)"
            )
        else:
            lines.append(f"{e.name}: no predictions ({e.pred or 'none given'})")
    lines.append(f"paper rows: {PAPER_SOURCE}")
    return "\n".join(lines)


def suite_to_json(entries: Sequence[SuiteEntry]) -> dict[str, Any]:
    """A JSON-ready summary: per dataset its status, paths and metrics (fractions in [0, 1]),
    the averages over the evaluated datasets, and the paper's rows with their source."""
    datasets: dict[str, Any] = {}
    for e in entries:
        item: dict[str, Any] = {"status": e.status, "gt": str(e.gt)}
        if e.pred is not None:
            item["pred"] = str(e.pred)
        if e.metrics is not None:
            item["metrics"] = {k: v for k, v in e.metrics.items() if k != "seconds"}
        datasets[e.name] = item
    evaluated = [e.name for e in entries if e.status == "ok"]
    return {
        "datasets": datasets,
        "average": {
            "over": evaluated,
            "AR@1000": suite_average(entries, "AR@1000"),
            "AP": suite_average(entries, "AP"),
        },
        "paper_ar1000_percent": {label: dict(values) for label, values in PAPER_AR1000},
        "paper_source": PAPER_SOURCE,
    }
