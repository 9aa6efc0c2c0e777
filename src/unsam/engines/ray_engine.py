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

Stopping: when the driver stops before the end (Ctrl-C, an exception, or the caller closing the
row iterator), the engine kills the run's actors and waits (up to 30 s) until they are gone before
it returns, so no image is still being worked on, and no row is appended to a shard work file,
after the call ends, even in a Ray cluster that outlives the call (a notebook, a long-lived
cluster). Every actor registers itself with a small per-run registry actor for this.

Ray is imported only when a :class:`RayEngine` is made (the ``[ray]`` extra:
``pip install "unsam[ray]"``). On a multi-node cluster, unsam must be installed on every node
(same version), and every node must read the images at the paths the driver lists. The output's
folder should be on a file system every node sees at the same path: the actors write their shard
work files there. Where the driver cannot see an actor's shard file (no shared file system, e.g.
through Ray Client), it stores that actor's rows in its own shard file too, so a rerun still finds
every row that reached the driver.
"""

from __future__ import annotations

import functools
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


class _QuietRay:
    """Ray's terminal output turned down for one run, and restored after it: its start-up notices,
    the C++ side's log level (``RAY_BACKEND_LOG_LEVEL``, read when Ray starts, unless the user set
    it) and Ray Data's console handler (its file log keeps everything)."""

    def __init__(self) -> None:
        self._env: str | None = None
        self._set_env = False
        self._handlers: list[tuple[logging.Handler, int]] = []

    def init(self, init: Any) -> None:
        """Run ``init()`` (``ray.init``) with the C++ log level raised and the process's stderr
        (file descriptor 2, which Ray's C++ side and its start-up notices write to) caught in a
        temporary file; what was caught is shown only when ``init`` fails."""
        import sys
        import tempfile

        if "RAY_BACKEND_LOG_LEVEL" not in os.environ:
            os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
            self._set_env = True
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                init()
            except BaseException:
                os.dup2(saved, 2)
                caught.seek(0)
                sys.stderr.write(caught.read().decode("utf-8", "replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)

    def silence_ray_data(self) -> None:
        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.FileHandler) or type(handler).__name__.endswith(
                "FileHandler"
            ):
                continue
            self._handlers.append((handler, handler.level))
            handler.setLevel(logging.ERROR)

    def restore(self) -> None:
        for handler, level in self._handlers:
            handler.setLevel(level)
        self._handlers.clear()
        if self._set_env:
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
            self._set_env = False


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
        quiet: keep Ray's own log lines (start-up notices, Ray Data's per-dataset messages, the
            core worker's C++ warnings) off the terminal; errors still show, and Ray's log files
            are written as usual. The CLI sets it unless ``-v`` is given.

    Raises:
        RayNotInstalledError: Ray Data is not installed.
        ValueError: a setting is out of range.
    """

    address: str | None = None
    num_workers: int | None = None
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    attempts: int = 3
    quiet: bool = True

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
        quiet = _QuietRay() if self.quiet else None
        if started:
            t0 = time.perf_counter()
            init = functools.partial(
                ray.init,
                address=self.address,
                include_dashboard=False,
                logging_level=logging.ERROR if self.quiet else logging.WARNING,
                log_to_driver=not self.quiet,  # the actors' own output stays in Ray's log files
            )
            if quiet is not None:
                quiet.init(init)
            else:
                init()
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
        registry = ray.remote(num_cpus=0)(_ActorRegistry).remote()
        finished = False
        rows_iter: Iterator[dict[str, Any]] | None = None
        try:
            Path(shard_dir).mkdir(parents=True, exist_ok=True)
            workers = self._workers(ray, len(todo))
            logger.info("processing %d image(s) with %d Ray actor(s)", len(todo), workers)
            # the CLI draws its own progress bar; an image whose actor died `attempts` times drops
            # its one-image block, and is recorded below instead of failing the whole run
            if quiet is not None:
                quiet.silence_ray_data()
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
                        "registry": registry,
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
            rows_iter = iter(rows.iter_rows())
            yield from _collect(
                rows_iter, todo, self.attempts, _DriverShard(Path(shard_dir), header)
            )
            finished = True
        finally:
            if not finished:
                if rows_iter is not None and hasattr(rows_iter, "close"):
                    rows_iter.close()  # Ray Data stops scheduling (it does not stop running work)
                _stop_actors(ray, registry)
            ray.kill(registry)
            (
                context.enable_progress_bars,
                context.max_errored_blocks,
                context.print_on_execution_start,
            ) = saved
            if started:
                ray.shutdown()
            if quiet is not None:
                quiet.restore()

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


class _ActorRegistry:
    """The actors of one run (a Ray actor, ``num_cpus=0``): each :class:`_RayWorker` adds itself
    (its handle, host name and process id) when it starts, so the driver can kill them all when it
    stops before the end."""

    def __init__(self) -> None:
        self._actors: dict[str, tuple[Any, str, int]] = {}

    def add(self, actor_id: str, handle: Any, host: str, pid: int) -> None:
        self._actors[actor_id] = (handle, host, pid)

    def actors(self) -> list[tuple[Any, str, int]]:
        return list(self._actors.values())


def _register(registry: Any) -> None:
    """Add the calling Ray actor to ``registry`` (waits, so it is listed before any work)."""
    import ray

    context = ray.get_runtime_context()
    ray.get(
        registry.add.remote(
            context.get_actor_id(), context.current_actor, socket.gethostname(), os.getpid()
        )
    )


def _stop_actors(ray: Any, registry: Any, timeout: float = 30.0) -> None:
    """Kill the actors ``registry`` holds and wait (≤ ``timeout`` s) until each is gone.

    Ray reports an actor dead a moment before its process ends, so the processes on this host are
    also waited for until they have exited; on other nodes Ray's report is all there is.
    """
    try:
        actors = ray.get(registry.actors.remote(), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - stopping is best effort; the caller's error goes on
        logger.warning("could not list this run's Ray actors to stop them: %s", exc)
        return
    deadline = time.monotonic() + timeout
    for handle, _, _ in actors:
        ray.kill(handle, no_restart=True)
    gone = [handle.__ray_ready__.remote() for handle, _, _ in actors]  # fail once dead
    _, alive = ray.wait(gone, num_returns=len(gone), timeout=timeout)
    here = socket.gethostname()
    pids = {pid for _, host, pid in actors if host == here and pid != os.getpid()}
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if _process_exists(pid)}
        if pids:
            time.sleep(0.01)
    if alive or pids:
        logger.warning(
            "%d Ray actor(s) still alive %.0f s after being killed",
            max(len(alive), len(pids)),
            timeout,
        )
    else:
        logger.info("stopped %d Ray actor(s)", len(actors))


def _process_exists(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # it ended just now, or there is no /proc (macOS): os.kill decides
        return not os.path.isdir("/proc/self")
    except OSError:
        return True


def _shard_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class _RayWorker:
    """One Ray actor: the producer's models, loaded once, and this actor's shard work file."""

    def __init__(
        self,
        producer: Any,
        shard_dir: str,
        header: dict[str, Any],
        attempts: int,
        threads: int,
        registry: Any,
    ) -> None:
        from unsam import runner

        _register(registry)

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
