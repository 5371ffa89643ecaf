"""A child process that reports JSON events on stdout and takes commands on stdin (tests)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class EventProcess:
    """Lines of stdout that are JSON objects become events; everything else is ignored."""

    def __init__(self, cmd: list[str], timeout_s: float = 20.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.timeout_s = timeout_s
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def next_event(self, name: str, timeout_s: float | None = None) -> dict[str, Any]:
        while True:
            event = self.events.get(timeout=timeout_s or self.timeout_s)  # queue.Empty: the test fails
            if event["event"] == name:
                return event

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10.0)
