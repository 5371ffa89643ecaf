"""Shared fixtures: where the real scans live, and skipping cleanly without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR_ENV = "SCRUBIN_DATA_DIR"


def _data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-scan folder (../shared/data), or a skip naming the variable to set."""
    path = _data_dir()
    if path is None:
        pytest.skip(f"real scans absent: set {DATA_DIR_ENV} to the shared data folder")
    return path


def real_data(relative: str) -> Path:
    """Path of one real dataset below SCRUBIN_DATA_DIR; skips the test when it is missing."""
    root = _data_dir()
    if root is None:
        pytest.skip(f"real scans absent: set {DATA_DIR_ENV} to the shared data folder")
    path = root / relative
    if not path.exists():
        pytest.skip(f"real scan {relative} not found under {root}")
    return path
