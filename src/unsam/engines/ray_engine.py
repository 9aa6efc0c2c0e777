"""Run a mask producer over images on a Ray cluster (``--engine ray``), with Ray Data.

:class:`RayEngine` is an :class:`unsam.runner.Engine`: :func:`unsam.runner.run_images` fixes the
image ids, the images left and the settings header exactly as for a local run, and hands the
images left to the engine. The engine streams them through ``Dataset.map_batches`` with a pool of
actors (:class:`_RayWorker`, ``batch_size=1``): each actor loads the producer's models once
(``producer.setup()`` via :func:`unsam.runner._worker_init`), reads each image itself (the driver
never opens an image) and runs :func:`unsam.runner._process_one` on it, the same function the local
worker processes run. Each actor appends every finished row, fsync'd, to its own shard work file
``OUT.work.d/HOST-PID-RANDOM.jsonl`` (first line: the run's header) and returns it to the driver,
where the runner assembles the same COCO JSON as a local run. A rerun, after the driver or the
whole cluster was stopped, reads every shard work file back and does only the images left.

Failures: a Python exception on an image is retried in the actor (``attempts`` tries in all),
then the image is recorded as skipped with the reason. An actor that dies (a crash, or killed for
memory) is restarted by Ray and its image retried (``max_task_retries``); an image whose actor died
``attempts`` times is recorded as skipped too, so one bad image never stops a run.

Ray is imported only when a :class:`RayEngine` is made (the ``[ray]`` extra:
``pip install "unsam[ray]"``). On a multi-node cluster, unsam must be installed on every node
(same version), and every node must read the images at the paths the driver lists. The output's
folder should be on a file system every node sees at the same path: the actors write their shard
work files there. Where the driver cannot see an actor's shard file (no shared file system, e.g.
through Ray Client), it stores that actor's rows in its own shard file too, so a rerun still finds
every row that reached the driver.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unsam.io.files import append_line_durable

__all__ = ["RayEngine", "RayNotInstalledError", "import_ray"]

logger = logging.getLogger(__name__)

_INSTALL = 'pip install "unsam[ray]"'


class RayNotInstalledError(ImportError):
    """``--engine ray`` was chosen but Ray is not installed."""

    user_error = True


def import_ray() -> Any:
    """The ``ray`` module, with ``ray.data``; without them, a one-line error naming the install."""
    try:
        import ray
        import ray.data  # the [data] part of the extra
    except ImportError as exc:
        raise RayNotInstalledError(f"--engine ray needs Ray Data ({exc.msg}): {_INSTALL}") from None
    return ray


@dataclass(frozen=True)
class RayEngine:
    """Processes a run's images with a pool of Ray actors (see the module docstring).

    Args:
        address: the Ray cluster: ``None`` follows Ray's rule (``RAY_ADDRESS``, else a cluster
            started on this machine with ``ray start``, else a new local one), ``"local"`` always
            starts a new local one, ``"auto"`` needs a running one, ``"HOST:PORT"`` joins a head
            node as a driver, ``"ray://HOST:10001"`` connects through Ray Client. When Ray is
            already initialised in this process, it is used as it is and left running.
        num_workers: actors, each loading the models once; ``None``: as many as the cluster's CPUs
            (and GPUs, with ``num_gpus_per_worker``) hold, at most one per image.
        num_cpus_per_worker: CPUs reserved per actor (> 0); also its torch threads (at least 1).
        num_gpus_per_worker: GPUs reserved per actor (≥ 0, may be fractional); Ray sets the
            actor's ``CUDA_VISIBLE_DEVICES``; the producer's own device setting picks CUDA.
        attempts: tries per image (≥ 1) before it is recorded as skipped, both for exceptions
            and for actors that die on it.

    Raises:
        RayNotInstalledError: Ray Data is not installed.
        ValueError: a setting is out of range.
    """

    address: str | None = None
    num_workers: int | None = None
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    attempts: int = 3

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(
                f"RayEngine.num_workers must be >= 1 (or None), got {self.num_workers}"
            )
        if not self.num_cpus_per_worker > 0:
            raise ValueError(f"--num-cpus-per-worker must be > 0, got {self.num_cpus_per_worker}")
        if not self.num_gpus_per_worker >= 0:
            raise ValueError(f"--num-gpus-per-worker must be >= 0, got {self.num_gpus_per_worker}")
        if self.attempts < 1:
            raise ValueError(f"RayEngine.attempts must be >= 1, got {self.attempts}")
        import_ray()  # a missing Ray fails when the engine is chosen, before any work

    def __call__(
        self,
        producer: Any,
        todo: list[tuple[str, str, int]],
        *,
        shard_dir: Path,
        header: dict[str, Any],
    ) -> Iterator[dict[str, Any]]:
        """Yield one row per image of ``todo`` (any order), each already in a shard work file."""
        if not todo:
            return
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            t0 = time.perf_counter()
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            logger.info(
                "started Ray (%s) in %.1f s",
                self.address or "default address",
                time.perf_counter() - t0,
            )
        context = ray.data.DataContext.get_current()
        saved = (
            context.enable_progress_bars,
            context.max_errored_blocks,
            context.print_on_execution_start,
        )
        try:
            Path(shard_dir).mkdir(parents=True, exist_ok=True)
            workers = self._workers(ray, len(todo))
            logger.info("processing %d image(s) with %d Ray actor(s)", len(todo), workers)
            # the CLI draws its own progress bar; an image whose actor died `attempts` times drops
            # its one-image block, and is recorded below instead of failing the whole run
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            context.max_errored_blocks = -1
            items = [{"path": p, "file_name": n, "image_id": int(i)} for p, n, i in todo]
            with warnings.catch_warnings():
                # Ray Data retries an actor's task forever by default; Ray 2.60 (pinned) takes the
                # bound only through the deprecated **ray_remote_args
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
                rows = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                    _RayWorker,
                    fn_constructor_kwargs={
                        "producer": producer,
                        "shard_dir": str(shard_dir),
                        "header": header,
                        "attempts": self.attempts,
                        "threads": max(1, int(self.num_cpus_per_worker)),
                    },
                    batch_size=1,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(
                        size=workers, max_tasks_in_flight_per_actor=1
                    ),
                    num_cpus=self.num_cpus_per_worker,
                    num_gpus=self.num_gpus_per_worker or None,
                    max_restarts=-1,
                    max_task_retries=self.attempts - 1,
                )
            yield from _collect(
                rows.iter_rows(), todo, self.attempts, _DriverShard(Path(shard_dir), header)
            )
        finally:
            (
                context.enable_progress_bars,
                context.max_errored_blocks,
                context.print_on_execution_start,
            ) = saved
            if started:
                ray.shutdown()

    def _workers(self, ray: Any, n_images: int) -> int:
        """How many actors: ``num_workers``, else what the cluster's resources hold; ≤ images."""
        resources = ray.cluster_resources()
        fits = math.floor(resources.get("CPU", 0) / self.num_cpus_per_worker + 1e-9)
        if self.num_gpus_per_worker > 0:
            gpus = resources.get("GPU", 0)
            if gpus < self.num_gpus_per_worker:
                raise ValueError(
                    f"--num-gpus-per-worker {self.num_gpus_per_worker:g}: the Ray cluster has "
                    f"{gpus:g} GPU(s)"
                )
            fits = min(fits, math.floor(gpus / self.num_gpus_per_worker + 1e-9))
        if fits < 1:
            raise ValueError(
                f"--num-cpus-per-worker {self.num_cpus_per_worker:g}: the Ray cluster has "
                f"{resources.get('CPU', 0):g} CPU(s)"
            )
        if self.num_workers is not None and self.num_workers > fits:
            logger.warning(
                "%d Ray actors asked for, but the cluster's resources hold %d now; the rest "
                "start when resources free up",
                self.num_workers,
                fits,
            )
        return max(1, min(self.num_workers or fits, n_images))


def _collect(
    outputs: Iterable[dict[str, Any]],
    todo: list[tuple[str, str, int]],
    attempts: int,
    driver: _DriverShard,
) -> Iterator[dict[str, Any]]:
    """The rows of ``todo`` from the actors' ``outputs`` (``{"row": JSON, "shard": path}``), then a
    skipped row for each image none came back for (its actor died ``attempts`` times, or failed
    outside the producer; Ray Data logs why).

    A row whose actor shard file the driver cannot see (no file system shared with that node) and
    every skipped row made here are stored in the driver's own shard file, so a rerun finds them.
    """
    visible: dict[str, bool] = {}
    seen: set[str] = set()
    for out in outputs:
        row = json.loads(out["row"])
        shard = str(out["shard"])
        if shard not in visible:
            visible[shard] = Path(shard).is_file()
            if not visible[shard]:
                logger.warning(
                    "%s: an actor's shard work file is not visible here (no shared file "
                    "system?); its rows are stored in %s too",
                    shard,
                    driver.path,
                )
        if not visible[shard]:
            driver.append(row)
        seen.add(row.get("skipped") or row["image"]["file_name"])
        yield row
    for _, name, _ in todo:
        if name not in seen:
            row = {
                "skipped": name,
                "reason": f"no result from Ray after {attempts} tries: its worker died "
                "(a crash, or killed for memory) or failed outside the "
                "producer (see the Ray log)",
            }
            driver.append(row)
            yield row


class _DriverShard:
    """The driver's own shard work file under ``shard_dir``, started (header first) on first use."""

    def __init__(self, shard_dir: Path, header: dict[str, Any]) -> None:
        self.path = shard_dir / f"driver-{_shard_tag()}.jsonl"
        self.header = header
        self.started = False

    def append(self, row: dict[str, Any]) -> None:
        if not self.started:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_line_durable(self.path, json.dumps(self.header))
            self.started = True
        append_line_durable(self.path, json.dumps(row, separators=(",", ":")))


def _shard_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class _RayWorker:
    """One Ray actor: the producer's models, loaded once, and this actor's shard work file."""

    def __init__(
        self, producer: Any, shard_dir: str, header: dict[str, Any], attempts: int, threads: int
    ) -> None:
        from unsam import runner

        runner._worker_init(producer, threads)
        if runner._WORKER_ERROR is not None:  # Ray Data replaces the actor, then gives up
            raise runner._WORKER_ERROR
        self.attempts = attempts
        self.shard = Path(shard_dir) / f"{_shard_tag()}.jsonl"
        self.shard.parent.mkdir(parents=True, exist_ok=True)
        append_line_durable(self.shard, json.dumps(header))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        """The batch's rows (``row``: JSON) and the shard file that holds them (``shard``)."""
        from unsam.runner import _process_one

        out = []
        for path, name, image_id in zip(batch["path"], batch["file_name"], batch["image_id"]):
            task = (str(path), str(name), int(image_id))
            for attempt in range(1, self.attempts + 1):
                try:
                    row = _process_one(task)
                    break
                except Exception as exc:  # noqa: BLE001 - retried, then recorded with its reason
                    logger.warning(
                        "%s: attempt %d of %d failed: %s: %s",
                        name,
                        attempt,
                        self.attempts,
                        type(exc).__name__,
                        exc,
                    )
                    reason = f"failed {self.attempts} time(s): {type(exc).__name__}: {exc}"
            else:
                row = {"skipped": str(name), "reason": reason.splitlines()[0]}
            line = json.dumps(row, separators=(",", ":"))
            append_line_durable(self.shard, line)
            out.append(line)
        return {"row": out, "shard": [str(self.shard)] * len(out)}
