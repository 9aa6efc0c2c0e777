"""RNG state of a training run, stored in checkpoints so that a resumed run is bit-identical to an
uninterrupted one: python, numpy and torch (CPU and CUDA) states as ``weights_only``-loadable
values.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from unsam.training.engine.distributed import DistInfo

logger = logging.getLogger(__name__)


def _rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _restore_rng(
    state: dict[str, Any] | None, config: Any, start_step: int, info: DistInfo
) -> None:
    """The checkpoint's RNG states (bit-identical resume), else a seed derived from the step."""
    if state is not None and len(state["rng"]) == info.world_size:
        _set_rng_state(state["rng"][info.rank])
        return
    if state is not None:
        logger.warning(
            "checkpoint was written by %d process(es), this run has %d: RNG states are re-seeded, "
            "so the resumed run is not bit-identical to an uninterrupted one",
            len(state["rng"]),
            info.world_size,
        )
    _seed_all(config.seed * 1_000_003 + start_step * 7919 + info.rank)
