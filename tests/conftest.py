"""Shared test fixtures. Real data lives in ../shared beside the checkout (read-only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HOVERNET_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


def pytest_configure(config: pytest.Config) -> None:
    if not REFERENCE.is_dir():
        raise pytest.UsageError(
            f"test data not found at {SHARED}: the tests need the read-only shared/ folder beside "
            "the checkout (or set HOVERNET_SHARED)"
        )


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA
