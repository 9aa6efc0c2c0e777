"""Process-group helpers of a training run: :class:`DistInfo` from the ``torchrun`` environment, the
process group's lifetime (:func:`distributed_session`), the device of each process, barriers and
object gathering.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DistInfo",
    "distributed_session",
]


@dataclass(frozen=True)
class DistInfo:
    """Process group facts: ``rank`` of ``world_size`` processes, ``local_rank`` on this host;
    ``launched``: started by ``torchrun`` (a process group is made even for one process, so that
    a one-GPU ``torchrun`` runs the same NCCL code as several); ``backend``: the process group's
    (``"nccl"``, ``"gloo"``) once it exists, else ``""``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.launched


def _dist_info_from_env() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    # torchrun (torch.distributed.run) sets these; a plain process has none of them
    launched = "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_ADDR" in os.environ
    return DistInfo(rank=rank, world_size=world, local_rank=local, launched=launched)


def _resolve_device(config: Any, info: DistInfo) -> torch.device:
    """The device of this process: ``config.device`` through :func:`unsam.runtime.resolve_device`
    (``auto`` = CUDA when present); a CUDA process under ``torchrun`` uses ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: CUDA asked for where there is none (the message names the devices).
    """
    from unsam.runtime import resolve_device

    device = resolve_device(config.device)
    if device.type == "cuda":
        if info.distributed:
            device = resolve_device(f"cuda:{info.local_rank}")
        torch.cuda.set_device(device)
    return device


def _gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def distributed_session(device: str) -> Iterator[DistInfo]:
    """The process group of a training run: read from the ``torchrun`` environment, created here
    when needed (nccl on CUDA, else gloo; ``device`` as ``--device``, ``auto`` resolved) and
    destroyed at the end; a single process outside ``torchrun`` gets a one-process
    :class:`DistInfo` and no group."""
    import dataclasses

    info = _dist_info_from_env()
    created_group = False
    if info.distributed:
        import torch.distributed as dist

        from unsam.runtime import resolve_device

        if not dist.is_initialized():
            cuda = resolve_device(device).type == "cuda"
            if cuda:  # NCCL binds each process to its GPU
                torch.cuda.set_device(info.local_rank)
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            created_group = True
        info = dataclasses.replace(info, backend=str(dist.get_backend()))
    try:
        yield info
    finally:
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
