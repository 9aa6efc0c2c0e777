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
    """Process group facts: ``rank`` of ``world_size`` processes, ``local_rank`` on this host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _dist_info_from_env() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def _resolve_device(config: Any, info: DistInfo) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f'device "{config.device}" requested but CUDA is not available; use --device cpu'
            )
        if info.distributed:
            device = torch.device("cuda", info.local_rank)
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
    when needed (nccl on CUDA, else gloo) and destroyed at the end; a single process gets a
    one-process :class:`DistInfo` and no group."""
    info = _dist_info_from_env()
    created_group = False
    if info.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if torch.device(device).type == "cuda" else "gloo"
            )
            created_group = True
    try:
        yield info
    finally:
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
