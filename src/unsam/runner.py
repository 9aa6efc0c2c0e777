"""Resumable, shardable, multi-process runs of a mask producer over a folder of images.

Used by ``unsam pseudo-label`` and ``unsam baseline``. Each finished image is appended (fsync'd)
to a work file ``OUT.work.jsonl`` beside the output; a killed run restarts where it stopped: no
image is done twice, none is lost, and the final COCO JSON is identical to an uninterrupted run's
(images in sorted listing order, deterministic ids). Unreadable images are recorded as skipped with
the reason. The work file's first line records the settings; resuming with different settings is
refused, so one output never mixes two configurations.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from unsam.io.coco import (
    CATEGORIES,
    MaskFileError,
    image_record_from_json,
    image_record_to_json,
    read_jsonl,
)
from unsam.io.files import append_line_durable, atomic_write_json, truncate_partial_line
from unsam.io.images import ImageReadError, load_image
from unsam.records import ImageRecord, MaskRecord

__all__ = [
    "MaskProducer",
    "RunResult",
    "assign_image_ids",
    "parse_shard",
    "run_images",
    "work_file_for",
]

logger = logging.getLogger(__name__)


class MaskProducer(Protocol):
    """What :func:`run_images` runs: picklable, loads its models lazily in ``setup``.

    ``setup`` runs once per worker process; ``__call__`` turns one RGB image into mask records
    (ids are assigned by the runner).
    """

    def settings(self) -> dict[str, Any]: ...

    def setup(self) -> None: ...

    def __call__(self, image: np.ndarray, *, image_id: int) -> list[MaskRecord]: ...


@dataclass
class RunResult:
    """What a run produced: counts, per-image seconds, skipped files and the output path."""

    output: Path
    images_total: int
    images_done_now: int
    images_resumed: int
    masks: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds_per_image: list[float] = field(default_factory=list)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 ≤ I < N; None → (0, 1)."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f'--shard must be "I/N" with 0 <= I < N (e.g. 0/4), got {text!r}')
    return int(m.group(1)), int(m.group(2))


def _id_from_name(name: str) -> int | None:
    stem = Path(name).stem
    if stem.isdigit():
        return int(stem)
    m = re.fullmatch(r"sa_(\d+)", stem)
    return int(m.group(1)) if m else None


def assign_image_ids(file_names: Sequence[str], ids_from: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Deterministic image ids for files of a listing.

    With ``ids_from`` (a COCO dataset JSON, e.g. the ground truth) each file takes the id of the
    image with the same ``file_name`` (exact, else same base name); files it lacks get ids above
    its maximum, in listing order. Without it, ids are parsed from names (COCO ``000000000139.jpg``
    → 139, SA-1B ``sa_123.jpg`` → 123) when every name parses and no two collide; otherwise they
    are 1..N in listing order. Unlike the original (spec §10 bugs 12, 25) any file name works.
    """
    names = list(file_names)
    if ids_from is not None:
        path = Path(ids_from)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file (given as --image-ids-from)") from None
        except json.JSONDecodeError as exc:
            raise MaskFileError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise MaskFileError(f'{path}: --image-ids-from needs a COCO dataset JSON with an "images" list')
        exact: dict[str, int] = {}
        base: dict[str, int] = {}
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise MaskFileError(f'{path}: images[{i}] needs "id" and "file_name"')
            exact[str(img["file_name"])] = int(img["id"])
            base.setdefault(Path(str(img["file_name"])).name, int(img["id"]))
        next_id = max([0, *exact.values()]) + 1
        out: dict[str, int] = {}
        missing = 0
        for name in names:
            found = exact.get(name, base.get(Path(name).name))
            if found is None:
                found, next_id, missing = next_id, next_id + 1, missing + 1
            out[name] = found
        if missing:
            logger.warning("%s: %d image(s) are not listed there; they got new ids", path, missing)
        return out
    parsed = [_id_from_name(n) for n in names]
    if all(p is not None for p in parsed) and len(set(parsed)) == len(parsed):
        return dict(zip(names, parsed))  # type: ignore[arg-type]
    return {name: i + 1 for i, name in enumerate(names)}


def work_file_for(output: str | os.PathLike[str]) -> Path:
    """The append-only work file of a run writing ``output``."""
    output = Path(output)
    return output.with_name(output.name + ".work.jsonl")


# --- worker side -------------------------------------------------------------------------------
_WORKER_PRODUCER: Any = None


def _worker_init(producer: Any, threads: int | None) -> None:
    global _WORKER_PRODUCER
    if threads is not None:  # worker processes only; the caller's own setting is left alone
        import torch

        torch.set_num_threads(max(1, threads))
    producer.setup()
    _WORKER_PRODUCER = producer


def _process_one(task: tuple[str, str, int]) -> dict[str, Any]:
    path, file_name, image_id = task
    t0 = time.perf_counter()
    try:
        image = load_image(path)
    except ImageReadError as exc:
        return {"skipped": file_name, "reason": exc.reason}
    h, w = image.shape[:2]
    masks = _WORKER_PRODUCER(image, image_id=image_id)
    # producers that link masks (parent_id) assign ids themselves; the rest get them here
    record = ImageRecord(id=image_id, file_name=file_name, height=h, width=w).with_masks(
        masks, assign_ids=any(m.id is None or m.image_id != image_id for m in masks)
    )
    return image_record_to_json(record, seconds=round(time.perf_counter() - t0, 4))


def _results(producer: Any, tasks: list[tuple[str, str, int]], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1 or len(tasks) <= 1:
        _worker_init(producer, None)
        for t in tasks:
            yield _process_one(t)
        return
    threads = max(1, _cpu_count() // workers)
    # BLAS pools must be sized before a worker starts: oversubscribed OpenBLAS threads slow
    # eigen-solvers down by orders of magnitude. Spawned workers inherit this environment.
    blas_vars = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {v: os.environ.get(v) for v in blas_vars}
    os.environ.update({v: str(threads) for v in blas_vars})
    try:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init, initargs=(producer, threads)) as pool:
            yield from pool.imap_unordered(_process_one, tasks, chunksize=1)
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# --- driver --------------------------------------------------------------------------------------
def run_images(
    producer: MaskProducer,
    images: Sequence[Path],
    root: Path,
    output: str | os.PathLike[str],
    *,
    image_ids: dict[str, int] | None = None,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    progress: Callable[[int, int], Any] | None = None,
    info: dict[str, Any] | None = None,
) -> RunResult:
    """Run ``producer`` over ``images`` and write a class-agnostic COCO dataset JSON to ``output``.

    Args:
        producer: see :class:`MaskProducer`; its ``settings()`` are stored in the work file and the
            output's ``info`` and must match when resuming.
        images: image paths in listing order (sorted).
        root: folder the ``file_name`` fields are relative to.
        output: COCO dataset JSON to write (atomically, at the end).
        image_ids: file_name → image id (default :func:`assign_image_ids`).
        shard: (I, N): this run does images[I::N] of the listing.
        workers: processes; each loads the producer's models once and gets cores/workers threads.
        progress: called as ``progress(done, total)`` after each image (the CLI passes a tqdm update).
        info: extra fields for the output's ``info``.

    Returns:
        A :class:`RunResult`.

    Raises:
        ValueError: the work file was written with different settings.
    """
    output = Path(output)
    names = [p.relative_to(root).as_posix() for p in images]
    ids = image_ids or assign_image_ids(names)
    i_shard, n_shard = shard
    mine = [(str(p), n, ids[n]) for k, (p, n) in enumerate(zip(images, names)) if k % n_shard == i_shard]
    settings = json.loads(json.dumps(producer.settings(), default=str))
    header = {"unsam_work_file": 1, "settings": settings, "shard": [i_shard, n_shard]}

    work = work_file_for(output)
    done: dict[str, dict[str, Any]] = {}
    if work.exists():
        if truncate_partial_line(work):
            logger.warning("%s: dropped an incomplete last line left by an interrupted run", work)
        rows = read_jsonl(work)
        if not rows or rows[0].get("unsam_work_file") != 1:
            raise ValueError(f"{work}: not an unsam work file; move it away or choose another output")
        old = rows[0]
        if old.get("settings") != settings or old.get("shard") != [i_shard, n_shard]:
            raise ValueError(
                f"{work}: this unfinished run used other settings; rerun with the same options to resume, "
                f"or delete {work.name} to start over"
            )
        for row in rows[1:]:
            key = row.get("skipped") or row.get("image", {}).get("file_name")
            if key is not None:
                done[key] = row
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        append_line_durable(work, json.dumps(header))
    todo = [t for t in mine if t[1] not in done]
    resumed = len(mine) - len(todo)
    if resumed:
        logger.info("%s: resuming, %d of %d image(s) already done", work, resumed, len(mine))
    seconds: list[float] = []
    if progress is not None:
        progress(resumed, len(mine))
    finished = resumed
    for row in _results(producer, todo, workers):
        append_line_durable(work, json.dumps(row, separators=(",", ":")))
        key = row.get("skipped") or row["image"]["file_name"]
        done[key] = row
        if "skipped" in row:
            logger.warning("skipped %s: %s", row["skipped"], row["reason"])
        else:
            seconds.append(float(row.get("seconds", 0.0)))
        finished += 1
        if progress is not None:
            progress(finished, len(mine))

    records: list[ImageRecord] = []
    skipped: list[dict[str, str]] = []
    for _, name, _ in mine:
        row = done[name]
        if "skipped" in row:
            skipped.append({"file_name": name, "reason": row["reason"]})
        else:
            records.append(image_record_from_json(row, where=f"{work}: {name}"))
    dataset = {
        "info": {"description": "unsam masks", "settings": settings, "shard": [i_shard, n_shard],
                 "skipped": skipped, **(info or {})},
        "images": [r.info() for r in records],
        "annotations": [m.to_coco() for r in records for m in r.masks],
        "categories": CATEGORIES,
    }
    atomic_write_json(output, dataset)
    n_masks = len(dataset["annotations"])
    logger.info("wrote %s: %d images, %d masks, %d skipped", output, len(records), n_masks, len(skipped))
    return RunResult(output, len(mine), len(todo), resumed, n_masks, skipped, seconds)
