"""Where a folder command's images are processed: ``--engine local`` (the default: this machine,
``--workers`` processes, :mod:`unsam.runner`) or ``--engine ray`` (a Ray cluster, Ray Data actors,
:mod:`unsam.engines.ray_engine`, needs ``pip install "unsam[ray]"``). Every engine writes the same
output, and a run started with one engine can be resumed with the other.
"""

from __future__ import annotations

import argparse
from typing import Any

from unsam.engines.inputs import expand_image_inputs

__all__ = ["ENGINES", "add_engine_arguments", "engine_from_args", "expand_image_inputs"]

ENGINES = ("local", "ray")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--address``, ``--num-cpus-per-worker``, ``--num-gpus-per-worker``."""
    g = parser.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: --workers processes on this machine (default); ray: actors on a Ray "
        "cluster, each loading the model once, with --workers actors (default: as many "
        'as the cluster holds); needs pip install "unsam[ray]"',
    )
    g.add_argument(
        "--address",
        metavar="auto|HOST:PORT|ray://HOST:PORT",
        help="with --engine ray: the cluster to use (default: RAY_ADDRESS, else a cluster "
        "started here with `ray start`, else a new local one; local: always a new one)",
    )
    g.add_argument(
        "--num-cpus-per-worker",
        type=float,
        default=1.0,
        metavar="N",
        help="with --engine ray: CPUs per actor, also its torch threads (default: 1)",
    )
    g.add_argument(
        "--num-gpus-per-worker",
        type=float,
        default=0.0,
        metavar="G",
        help="with --engine ray: GPUs per actor, may be fractional (default: 0)",
    )


def engine_from_args(args: argparse.Namespace) -> Any:
    """The engine the flags of :func:`add_engine_arguments` ask for: ``None`` for ``local`` (the
    runner's own processes), else a :class:`unsam.engines.ray_engine.RayEngine`.

    Raises:
        ValueError: a Ray flag without ``--engine ray``, or a value out of range.
        unsam.engines.ray_engine.RayNotInstalledError: ``--engine ray`` without Ray installed.
    """
    engine = getattr(args, "engine", "local")
    if engine == "local":
        given = [
            flag
            for flag, value, default in (
                ("--address", getattr(args, "address", None), None),
                ("--num-cpus-per-worker", getattr(args, "num_cpus_per_worker", 1.0), 1.0),
                ("--num-gpus-per-worker", getattr(args, "num_gpus_per_worker", 0.0), 0.0),
            )
            if value != default
        ]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --engine ray")
        return None
    from unsam.engines.ray_engine import RayEngine

    workers = getattr(args, "workers", 1)
    return RayEngine(
        address=args.address,
        num_workers=workers if workers and workers > 1 else None,
        num_cpus_per_worker=args.num_cpus_per_worker,
        num_gpus_per_worker=args.num_gpus_per_worker,
        quiet=not getattr(args, "verbose", 0),  # Ray's own log lines only with -v
    )
