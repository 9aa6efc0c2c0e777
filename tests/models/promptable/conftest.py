"""The promptable tests run tiny models whose operations are small: one intra-op thread avoids the
synchronisation cost that dominates them on a busy 2-core machine (10x slower with 2 threads)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
