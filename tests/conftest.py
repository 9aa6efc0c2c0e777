"""Shared fixtures. Data-heavy tests use ``shared_data`` and skip with a reason without ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SHARED_DATA = Path(os.environ.get("UNSAM_SHARED_DATA", REPO.parent / "shared" / "data"))


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
