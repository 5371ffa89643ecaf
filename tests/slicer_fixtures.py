"""Slicer-link test helpers: pyigtl's own client as the real peer, recording all it receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pyigtl

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 15.0) -> T:
    """Poll a condition until it holds or the deadline passes (then fail naming it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class RecordingInbox(dict[str, Any]):
    """pyigtl keeps only the newest message per device; this keeps every one, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, Any]] = []
        self.cond = threading.Condition()

    def __setitem__(self, key: str, value: Any) -> None:
        with self.cond:
            self.log.append((time.time(), value))
            self.cond.notify_all()
        super().__setitem__(key, value)

    def of(self, device: str) -> list[Any]:
        with self.cond:
            return [m for _, m in self.log if m.device_name == device]

    def wait(self, predicate: Callable[[Any], bool], what: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for _, m in reversed(self.log):
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"peer never received {what}")
                self.cond.wait(left)


class Peer:
    """pyigtl's OpenIGTLinkClient, recording everything it receives."""

    def __init__(self, port: int | None) -> None:
        assert port is not None, "the link is not listening"
        self.client = pyigtl.OpenIGTLinkClient("127.0.0.1", port, start_now=False)
        self.inbox = RecordingInbox()
        self.client.incoming_messages = self.inbox
        self.client.start()

    def send(self, message: Any) -> None:
        assert self.client.send_message(message, wait=False)

    def stop(self) -> None:
        self.client.stop()
