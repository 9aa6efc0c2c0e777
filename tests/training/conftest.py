"""Training tests run torch on one thread.

The suite runs on 2 shared cores; a two-thread OpenMP pool that competes with other processes
spins and waits (a tiny Mask2Former step measured 1.28 s with 2 threads vs 0.15 s with 1 under
load). One thread is also what makes the exact-resume comparison deterministic by construction.
The count is re-set before every test because code under test may change it (unsam.runner sets
it to the core count when it runs a producer in-process, e.g. in ``unsam self-train``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _restore_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # also for module-scoped fixtures, which start before per-test ones
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_torch_thread(_restore_torch_threads: None) -> None:
    torch.set_num_threads(1)
