"""Resumable, shardable, multi-process runs of a mask producer over a folder of images.

Used by ``unsam pseudo-label`` and ``unsam baseline``. Each finished image is appended (fsync'd)
to a work file ``OUT.work.jsonl`` beside the output; a killed run restarts where it stopped: no
image is done twice, none is lost, and the final COCO JSON is identical to an uninterrupted run's
(images in sorted listing order, deterministic ids). Unreadable images are recorded as skipped with
the reason. The work file's first line records the settings and the image-id rule; resuming with
different ones is refused, so one output never mixes two configurations.

Image ids are fixed when an image is first done: a rerun over a folder that has gained images keeps
every finished image (read back from the work file, or from the finished output) with its id, and
gives the new images ids no other image has. A rerun over a folder that has *lost* images keeps
their finished masks by default (after the listed images, sorted by name) and says so
(:attr:`RunResult.removed`); ``removed="drop"`` leaves them out of the output. A lock
(``OUT.lock``) keeps two runs off one output.
Before the final file is renamed into place it is validated (unique image and annotation ids, every
annotation's image present, RLE sizes equal to their image's); the work file is then removed.

An ``engine`` (see :class:`Engine`, e.g. :class:`unsam.engines.ray_engine.RayEngine`) can process
the images left elsewhere; it appends each finished row to its own shard work files in
``OUT.work.d/`` (each headed like the work file), which a rerun reads back like the work file.

Length: resume, sharding, image ids and assembly all read and write the one work-file format, so
they change together and stay in one module; each function is short.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    validate_dataset,
)
from unsam.io.files import (
    append_line_durable,
    check_output_file,
    run_lock,
    truncate_partial_line,
)
from unsam.io.images import ImageReadError, load_image
from unsam.records import ImageRecord, MaskRecord

__all__ = [
    "Engine",
    "MaskProducer",
    "RunResult",
    "assign_image_ids",
    "id_rule",
    "parse_shard",
    "run_images",
    "shard_dir_for",
    "work_file_for",
]

logger = logging.getLogger(__name__)


class MaskProducer(Protocol):
    """What :func:`run_images` runs: picklable, loads its models lazily in ``setup``.

    ``setup`` runs once per worker process; ``__call__`` turns one RGB image into mask records
    (ids are assigned by the runner).

    A producer whose work splits into device work and host work (a network on a GPU, then RLE
    encoding on the CPU) may also have ``start(image, *, image_id)``: it launches the device work
    and returns a *finisher*, a callable that completes the image on the host and returns
    ``(records, stats)`` (``stats``: what it dropped, as ``last_stats``). With ``overlaps`` true
    the runner calls a finisher on a background thread while the next image's ``start`` runs, at
    most one image behind (see :func:`_overlapped`).
    """

    def settings(self) -> dict[str, Any]: ...

    def setup(self) -> None: ...

    def __call__(self, image: np.ndarray, *, image_id: int) -> list[MaskRecord]: ...


Finisher = Callable[[], "tuple[list[MaskRecord], dict[str, int]]"]


class Engine(Protocol):
    """Processes a run's images left (``todo``: ``(path, file_name, image_id)`` tuples) somewhere
    else than :func:`run_images`' own processes.

    It yields one row per image of ``todo``, in any order: the row :func:`_process_one` makes
    (``image_record_to_json(...)``, or ``{"skipped", "reason"}``), after appending it durably to a
    JSONL file under ``shard_dir`` whose first line is ``header`` (the work file's first line).
    """

    def __call__(
        self,
        producer: MaskProducer,
        todo: list[tuple[str, str, int]],
        *,
        shard_dir: Path,
        header: dict[str, Any],
    ) -> Iterable[dict[str, Any]]: ...


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
    dataset: dict[str, Any] | None = field(
        default=None, repr=False
    )  # what was written, as a COCO dataset
    stats: dict[str, int] = field(
        default_factory=dict
    )  # producer drop counts summed over the images
    #: finished images of earlier runs that are no longer in the listing (sorted file names)
    removed: list[str] = field(default_factory=list)
    #: what happened to them: "keep" (their masks are in the output) or "drop"
    removed_policy: str = "keep"

    @property
    def exit_code(self) -> int:
        """1 when every image of the run was unreadable (nothing was produced), else 0."""
        return 1 if self.images_total > 0 and len(self.skipped) == self.images_total else 0


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


def assign_image_ids(
    file_names: Sequence[str], ids_from: str | os.PathLike[str] | None = None
) -> dict[str, int]:
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
            raise MaskFileError(
                f'{path}: --image-ids-from needs a COCO dataset JSON with an "images" list'
            )
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


def id_rule(ids_from: str | os.PathLike[str] | None) -> dict[str, Any]:
    """How :func:`assign_image_ids` numbered a run's images, as recorded in its work file: from the
    file names, or from a COCO file (its path and a hash of its content)."""
    if ids_from is None:
        return {"rule": "file names"}
    path = Path(ids_from)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise FileNotFoundError(
            f"{path}: cannot read it (given as --image-ids-from: {exc.strerror})"
        ) from None
    return {"rule": "image ids of a COCO file", "file": str(path), "sha256": digest}


def work_file_for(output: str | os.PathLike[str]) -> Path:
    """The append-only work file of a run writing ``output``."""
    output = Path(output)
    return output.with_name(output.name + ".work.jsonl")


def shard_dir_for(output: str | os.PathLike[str]) -> Path:
    """The folder of an engine's shard work files for a run writing ``output`` (``OUT.work.d``)."""
    output = Path(output)
    return output.with_name(output.name + ".work.d")


# --- worker side -------------------------------------------------------------------------------
_WORKER_PRODUCER: Any = None
_WORKER_ERROR: BaseException | None = None


def _worker_init(producer: Any, threads: int | None) -> None:
    """Load the producer's models once per worker. A failure is kept and reported by the first
    task (raising here would make ``multiprocessing.Pool`` respawn the worker forever)."""
    global _WORKER_PRODUCER, _WORKER_ERROR
    try:
        if threads is not None:  # worker processes only; the caller's own setting is left alone
            import torch

            torch.set_num_threads(max(1, threads))
        producer.setup()
        _WORKER_PRODUCER = producer
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which re-raises it
        _WORKER_ERROR = exc


class WorkerSetupError(RuntimeError):
    """A worker could not load its models and the error could not be passed on as it was."""

    user_error = True


def _process_one(task: tuple[str, str, int]) -> dict[str, Any]:
    return _start_one(task)()


def _start_one(task: tuple[str, str, int]) -> Callable[[], dict[str, Any]]:
    """Read one image and start it; the returned callable completes it into its work-file row.

    With a producer that has ``start`` the device work is launched here and the host work (the
    producer's finisher, then the row) happens in the callable; otherwise all work happens in the
    callable."""
    if _WORKER_ERROR is not None:
        error = _WORKER_ERROR
        return lambda: {"fatal": error}
    path, file_name, image_id = task
    t0 = time.perf_counter()
    try:
        image = load_image(path)
    except ImageReadError as exc:
        reason = exc.reason
        return lambda: {"skipped": file_name, "reason": reason}
    h, w = image.shape[:2]
    oom = {"skipped": file_name, "reason": f"out of memory on a {w}x{h} image"}
    producer = _WORKER_PRODUCER
    start = getattr(producer, "start", None)
    if start is None:

        def finish() -> tuple[list[MaskRecord], dict[str, int]]:
            masks = producer(image, image_id=image_id)
            return masks, dict(getattr(producer, "last_stats", None) or {})

    else:
        try:
            finish = start(image, image_id=image_id)
        except MemoryError:
            return lambda: oom

    def complete() -> dict[str, Any]:
        try:
            masks, stats = finish()
        except MemoryError:
            return oom
        # producers that link masks (parent_id) assign ids themselves; the rest get them here
        record = ImageRecord(id=image_id, file_name=file_name, height=h, width=w).with_masks(
            masks, assign_ids=any(m.id is None or m.image_id != image_id for m in masks)
        )
        extra: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 4)}
        if stats:  # what the producer dropped and why (summed in the run summary)
            extra["stats"] = {k: int(v) for k, v in stats.items() if v}
        return image_record_to_json(record, **extra)

    complete.started = True  # type: ignore[attr-defined]
    return complete


def _overlapped(tasks: list[tuple[str, str, int]]) -> Iterator[dict[str, Any]]:
    """Rows of ``tasks`` in order, each image's host work (RLE encoding, the row) on a background
    thread while the next image is read and its device work launched. At most one image waits to
    be finished, so memory holds at most two images' results."""
    from concurrent.futures import Future, ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="unsam-finish") as pool:
        pending: Future[dict[str, Any]] | None = None
        for task in tasks:
            complete = _start_one(task)
            if not getattr(complete, "started", False):  # unreadable: its row is ready now
                yield complete()
                continue
            if pending is not None:
                yield pending.result()
            pending = pool.submit(complete)
        if pending is not None:
            yield pending.result()


def _results(
    producer: Any, tasks: list[tuple[str, str, int]], workers: int
) -> Iterator[dict[str, Any]]:
    if workers <= 1 or len(tasks) <= 1:
        _worker_init(producer, None)
        if getattr(producer, "overlaps", False) and _WORKER_ERROR is None:
            yield from _overlapped(tasks)
            return
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
def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of the settings that differ between two (nested) settings dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _describe(old: dict[str, Any], header: dict[str, Any]) -> str:
    diff = _differences(
        {k: old.get(k) for k in ("settings", "shard", "image_ids")},
        {k: header[k] for k in ("settings", "shard", "image_ids")},
    )
    return ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")


def _rows_from_work_file(work: Path, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Finished rows of an interrupted run (file name -> row); refuses other settings."""
    if truncate_partial_line(work):
        logger.warning("%s: dropped an incomplete last line left by an interrupted run", work)
    rows = read_jsonl(work)
    if not rows or rows[0].get("unsam_work_file") not in (1, 2):
        raise ValueError(f"{work}: not an unsam work file; move it away or choose another output")
    if any(rows[0].get(k) != header[k] for k in ("settings", "shard", "image_ids")):
        raise ValueError(
            f"{work}: an unfinished run with other settings ({_describe(rows[0], header)}) is in "
            "this work file; rerun with the same options to resume, or pass --overwrite to start "
            "over"
        )
    done: dict[str, dict[str, Any]] = {}
    for row in rows[1:]:
        key = row.get("skipped") or row.get("image", {}).get("file_name")
        if key is not None:
            done[key] = row
    return done


def _rows_from_output(output: Path, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of a finished output written by the same command, so a rerun over a folder that has
    gained images does only the new ones; refuses a file written otherwise."""
    try:
        data = json.loads(output.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{output}: exists and is not a finished unsam output ({exc}); choose another "
            "-o or pass --overwrite to replace it"
        ) from None
    info = data.get("info") if isinstance(data, dict) else None
    if not isinstance(info, dict) or "settings" not in info:
        raise ValueError(
            f"{output}: exists and was not written by this command; choose another -o or "
            "pass --overwrite to replace it"
        )
    if any(info.get(k) != header[k] for k in ("settings", "shard", "image_ids")):
        raise ValueError(
            f"{output}: a finished run with other settings ({_describe(info, header)}) wrote this "
            "file; choose another -o, or pass --overwrite to replace it"
        )
    per_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data.get("annotations", []):
        per_image.setdefault(int(ann["image_id"]), []).append(ann)
    done: dict[str, dict[str, Any]] = {}
    for img in data.get("images", []):
        done[img["file_name"]] = {"image": img, "annotations": per_image.get(int(img["id"]), [])}
    for s in info.get("skipped", []):
        done[s["file_name"]] = {"skipped": s["file_name"], "reason": s["reason"]}
    return done


def _fixed_ids(
    names: Sequence[str], base: dict[str, int], done: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """Final ids: a finished image keeps its id; a new one takes its ``base`` id unless another
    image holds it, else the next id above all others (in listing order)."""
    ids = {n: int(r["image"]["id"]) for n, r in done.items() if "image" in r}
    used = set(ids.values())
    next_id = max([0, *used, *base.values()]) + 1
    for name in names:
        if name in ids:
            continue
        if base[name] in used:
            ids[name], next_id = next_id, next_id + 1
        else:
            ids[name] = base[name]
        used.add(ids[name])
    return ids


def run_images(
    producer: MaskProducer,
    images: Sequence[Path],
    root: Path,
    output: str | os.PathLike[str],
    *,
    image_ids: dict[str, int] | None = None,
    ids_rule: dict[str, Any] | None = None,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    progress: Callable[[int, int], Any] | None = None,
    info: dict[str, Any] | None = None,
    overwrite: bool = False,
    output_format: str = "coco-dataset",
    engine: Engine | None = None,
    removed: str = "keep",
) -> RunResult:
    """Run ``producer`` over ``images`` and write a class-agnostic COCO dataset JSON to ``output``.

    Args:
        producer: see :class:`MaskProducer`; its ``settings()`` are stored in the work file and the
            output's ``info`` and must match when resuming. Its ``setup()`` runs here first, so a
            missing model fails before any worker starts.
        images: image paths in listing order (sorted).
        root: folder the ``file_name`` fields are relative to.
        output: COCO dataset JSON to write (atomically, at the end).
        image_ids: file_name → image id for images not done before (default
            :func:`assign_image_ids`); images already done keep the id they were given.
        ids_rule: how ``image_ids`` were made (:func:`id_rule`), checked when resuming.
        shard: (I, N): this run does images[I::N] of the listing.
        workers: processes; each loads the producer's models once and gets cores/workers threads.
        progress: called as ``progress(done, total)`` after each image (the CLI passes a tqdm
            update).
        info: extra fields for the output's ``info``.
        overwrite: start over even if an unfinished or finished run with other settings exists.
        output_format: ``coco-dataset`` (default), ``coco-results`` or ``sam-folder`` (``output``
            is then a folder); see :mod:`unsam.io.export`. The last two cannot carry the run's
            settings, so their work file is kept after success: a rerun resumes from it.
        engine: processes the images left instead of ``workers`` local processes (see
            :class:`Engine`); the output is the same.
        removed: finished images of an earlier run that are no longer in ``images``: ``"keep"``
            their masks (after the listed images, sorted by name; the default: finished work is
            never thrown away silently) or ``"drop"`` them. Either way they are named in
            :attr:`RunResult.removed` and in the output's ``info.removed_images``.

    Returns:
        A :class:`RunResult`.

    Raises:
        ValueError: the work file or the existing output was written with other settings.
        unsam.io.files.RunLockedError: another run is writing the same output.
    """
    from unsam.io.export import OUTPUT_FORMATS, write_dataset_as

    if output_format not in OUTPUT_FORMATS:
        raise ValueError(
            f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}"
        )
    if removed not in ("keep", "drop"):
        raise ValueError(f"removed must be 'keep' or 'drop', got {removed!r}")
    if output_format == "sam-folder":
        output = Path(output)
        if output.is_file():
            raise NotADirectoryError(f"-o {output}: is a file; --format sam-folder writes a folder")
    else:
        output = check_output_file(output, "-o")
    names = [p.relative_to(root).as_posix() for p in images]
    base_ids = image_ids or assign_image_ids(names)
    settings = json.loads(json.dumps(producer.settings(), default=str))
    header = {
        "unsam_work_file": 2,
        "settings": settings,
        "shard": list(shard),
        "image_ids": ids_rule or {"rule": "given" if image_ids else "file names"},
    }
    producer.setup()  # a missing model fails here, once, before any work or worker
    with run_lock(output):
        work = work_file_for(output)
        done = _previous_rows(work, output, header, overwrite, output_format)
        ids = _fixed_ids(names, base_ids, done)
        i_shard, n_shard = shard
        mine = [
            (str(p), n, ids[n])
            for k, (p, n) in enumerate(zip(images, names))
            if k % n_shard == i_shard
        ]
        todo = [t for t in mine if t[1] not in done]
        resumed = len(mine) - len(todo)
        if resumed:
            logger.info("%s: %d of %d image(s) already done", output, resumed, len(mine))
        rows = (
            _results(producer, todo, workers)
            if engine is None
            else engine(producer, todo, shard_dir=shard_dir_for(output), header=header)
        )
        seconds = _process(
            rows, work if engine is None else None, done, resumed, len(mine), progress
        )
        listed = set(names)
        gone = sorted(n for n, row in done.items() if n not in listed and "image" in row)
        if gone:
            logger.info(  # the CLI's summary warns (RunResult.removed)
                "%d finished image(s) are no longer in the listing; %s: %s",
                len(gone),
                "their masks are kept" if removed == "keep" else "their masks are dropped",
                ", ".join(gone[:5]) + (" ..." if len(gone) > 5 else ""),
            )
        kept = gone if removed == "keep" else []
        extra_info = {**(info or {})}
        if gone:
            extra_info["removed_images"] = {"policy": removed, "file_names": gone}
        dataset, skipped = _assemble(
            [*mine, *(("", n, 0) for n in kept)], done, header, extra_info, work
        )
        validate_dataset(dataset, where=f"refusing to write {output}")
        if gone and removed == "drop":
            _forget(gone, done, work, header, output, output_format)
        write_dataset_as(dataset, output, output_format)  # type: ignore[arg-type]
        if output_format == "coco-dataset":  # the output itself carries everything a rerun needs
            work.unlink(missing_ok=True)
            shutil.rmtree(shard_dir_for(output), ignore_errors=True)
    n_masks = len(dataset["annotations"])
    logger.info(
        "wrote %s: %d images, %d masks, %d skipped",
        output,
        len(dataset["images"]),
        n_masks,
        len(skipped),
    )
    totals: dict[str, int] = {}
    for _, name, _ in mine:
        for key, value in done[name].get("stats", {}).items():
            totals[key] = totals.get(key, 0) + int(value)
    return RunResult(
        output,
        len(mine),
        len(todo),
        resumed,
        n_masks,
        skipped,
        seconds,
        dataset,
        totals,
        gone,
        removed,
    )


def _forget(
    gone: list[str],
    done: dict[str, dict[str, Any]],
    work: Path,
    header: dict[str, Any],
    output: Path,
    output_format: str,
) -> None:
    """Drop the rows of removed images from the run's state, so a later rerun does not bring them
    back: the work file is rewritten without them (engine shard files are folded into it), and a
    SAM folder loses their JSON files."""
    from unsam.io.export import distinct_stems
    from unsam.io.files import atomic_write

    lines = [json.dumps(header)] + [
        json.dumps(row, separators=(",", ":")) for n, row in done.items() if n not in gone
    ]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    atomic_write(work, lambda fh: fh.write(data))
    shutil.rmtree(shard_dir_for(output), ignore_errors=True)
    if output_format == "sam-folder":
        stems = distinct_stems([n for n, row in done.items() if "image" in row])
        for name in gone:
            (output / f"{stems[name]}.json").unlink(missing_ok=True)


def _previous_rows(
    work: Path, output: Path, header: dict[str, Any], overwrite: bool, output_format: str
) -> dict[str, dict[str, Any]]:
    """What earlier runs finished (from the work file, else the finished output, plus an engine's
    shard work files); starts the work file."""
    shards = shard_dir_for(output)
    if overwrite:
        work.unlink(missing_ok=True)
        shutil.rmtree(shards, ignore_errors=True)
        done: dict[str, dict[str, Any]] = {}
    elif work.exists():
        return {**_rows_from_work_file(work, header), **_rows_from_shards(shards, header)}
    elif output_format != "coco-dataset":  # these outputs cannot be read back as a run's state
        if output.is_file() or (output.is_dir() and any(output.iterdir())):
            raise ValueError(
                f"{output}: exists and its work file {work.name} is gone, so what it holds "
                "cannot be checked; choose another -o or pass --overwrite to replace it"
            )
        done = {}
    else:
        done = _rows_from_output(output, header) if output.exists() else {}
    done.update(_rows_from_shards(shards, header))
    output.parent.mkdir(parents=True, exist_ok=True)
    append_line_durable(work, json.dumps(header))
    for row in done.values():  # a finished output's rows: the work file stands alone if killed
        append_line_durable(work, json.dumps(row, separators=(",", ":")))
    return done


def _rows_from_shards(shards: Path, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Finished rows of an engine's shard work files (file name -> row); refuses other settings.
    A shard cut before its header was written holds nothing and is ignored."""
    done: dict[str, dict[str, Any]] = {}
    for shard in sorted(shards.glob("*.jsonl")) if shards.is_dir() else ():
        if truncate_partial_line(shard):
            logger.warning("%s: dropped an incomplete last line left by an interrupted run", shard)
        if shard.stat().st_size > 0:
            done.update(_rows_from_work_file(shard, header))
    return done


def _process(
    rows: Iterable[dict[str, Any]],
    work: Path | None,
    done: dict[str, dict[str, Any]],
    finished: int,
    total: int,
    progress: Callable[[int, int], Any] | None,
) -> list[float]:
    """Collect the rows of the images left, appending each to the work file (unless ``work`` is
    None: an engine has stored them already); seconds per image."""
    seconds: list[float] = []
    if progress is not None:
        progress(finished, total)
    for row in rows:
        if "fatal" in row:
            exc = row["fatal"]
            raise exc if isinstance(exc, BaseException) else WorkerSetupError(str(exc))
        if work is not None:
            append_line_durable(work, json.dumps(row, separators=(",", ":")))
        key = row.get("skipped") or row["image"]["file_name"]
        done[key] = row
        if "skipped" in row:
            logger.info("skipped %s: %s", row["skipped"], row["reason"])
        else:
            seconds.append(float(row.get("seconds", 0.0)))
        finished += 1
        if progress is not None:
            progress(finished, total)
    return seconds


def _assemble(
    mine: list[tuple[str, str, int]],
    done: dict[str, dict[str, Any]],
    header: dict[str, Any],
    info: dict[str, Any] | None,
    work: Path,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The final COCO dataset dict, images in listing order, and the skipped files."""
    records: list[ImageRecord] = []
    skipped: list[dict[str, str]] = []
    for _, name, _ in mine:
        row = done[name]
        if "skipped" in row:
            skipped.append({"file_name": name, "reason": row["reason"]})
        else:
            records.append(image_record_from_json(row, where=f"{work}: {name}"))
    dataset = {
        "info": {
            "description": "unsam masks",
            "settings": header["settings"],
            "shard": header["shard"],
            "image_ids": header["image_ids"],
            "skipped": skipped,
            **(info or {}),
        },
        "images": [r.info() for r in records],
        "annotations": [m.to_coco() for r in records for m in r.masks],
        "categories": CATEGORIES,
    }
    return dataset, skipped
