"""Shared fixtures. Data-heavy tests use ``shared_data`` and skip with a reason without ../shared.

Tests marked ``gpu`` run only where PyTorch sees CUDA and are skipped with that reason elsewhere.
Every test that uses ``shared_data`` (directly or through ``coco_gt`` / ``coco_images``) carries the
``data`` marker: written on the test, and added here at collection for any test that lacks it, so
``-m "not data"`` always deselects exactly the tests that need ../shared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SHARED_DATA = Path(os.environ.get("UNSAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = None
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            cuda = _cuda_available() if cuda is None else cuda
            if not cuda:
                item.add_marker(
                    pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
                )
        if (
            "shared_data" in getattr(item, "fixturenames", ())
            and item.get_closest_marker("data") is None
        ):
            item.add_marker(pytest.mark.data)


@pytest.fixture(scope="session")
def test_data() -> Path:
    """tests/data: small fixtures committed with the repository."""
    return TEST_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real COCO/SA-1B images); skips the test when absent (clean clone)."""
    if not (SHARED_DATA / "coco" / "instances.json").exists():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (absent in a clean clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def coco_gt(shared_data: Path) -> Path:
    return shared_data / "coco" / "instances.json"


@pytest.fixture(scope="session")
def coco_images(shared_data: Path) -> Path:
    return shared_data / "coco" / "images"
