"""Waiting on a condition in tests: poll with a deadline (never a bare sleep)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def until(predicate: Callable[[], Any], timeout_s: float = 10.0, tick_s: float = 0.02) -> bool:
    """True once ``predicate()`` holds; False when the deadline passes first."""
    deadline, tick = time.monotonic() + timeout_s, threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(tick_s)
    return True
