"""Style gates that the guide asks for: ruff clean, mypy --strict clean on typed packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Packages and modules held to mypy --strict (pyproject's [tool.mypy] settings).
STRICT = ["domain", "imaging", "scrubin", "mentor", "headset_bridge", "registration", "slicer_link"]
LINTED = ["domain", "imaging", "scrubin", "registration", "headset_bridge", "mentor", "slicer_link", "tests", "bench"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def test_ruff_clean() -> None:
    result = _run("ruff", "check", *LINTED)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.slow
def test_mypy_strict_clean() -> None:
    result = _run("mypy", *STRICT)
    assert result.returncode == 0, result.stdout[-3000:]
