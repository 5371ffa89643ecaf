"""A headset killed and restarted mid-stream ends equal to the server: nothing lost or doubled."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from bridge_fixtures import Bridge, ann, pose, ready, running_bridge

from headset_bridge.annotations import state_digest
from headset_bridge.client import HeadsetClient
from headset_bridge.keys import write_keypair
from headset_bridge.server import BridgeServer

bridge = pytest.fixture(name="bridge")(running_bridge)


class Churn:
    """A background mentor + registration loop: annotation ops and poses, non-stop."""

    def __init__(self, server: BridgeServer) -> None:
        self.server, self.stop, self.n = server, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.002):  # paces the producer; nothing waits on it
            i = self.n = self.n + 1
            self.server.publish_pose(pose(i))
            ids = sorted(self.server.annotations[1])
            if i % 7 == 0 and ids:
                self.server.annotate("delete", ids[0])
            elif i % 3 == 0 and ids:
                self.server.annotate("update", ann(ids[-1][1:], f"rev at {i}"))
            else:
                self.server.annotate("add", ann(i))

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2.0)


def _server_seq(b: Bridge) -> int:
    return b.server.annotations[0]


def test_abrupt_close_and_resume_gets_exactly_the_missed_ops(bridge: Bridge) -> None:
    first = bridge.client("hl-a")
    with Churn(bridge.server):
        assert first.wait_for(lambda: first.annotations.seq >= 30, 5.0)
        saved = first.resume_state()
        bridge.close_client(first)  # linger 0: whatever was queued is lost, like a crash
        assert saved is not None
        assert bridge.server.wait_for(lambda: _server_seq(bridge) >= saved.seq + 40, 5.0)  # missed ops pile up
        second = HeadsetClient(bridge.headset_keys["hl-a"], bridge.config(), resume=saved)
        bridge.clients.append(second)
        assert second.wait_for(lambda: second.annotations.seq >= saved.seq + 60, 5.0)
    seq, state = bridge.server.annotations
    assert second.wait_for(lambda: second.annotations.seq == seq, 3.0)
    assert second.annotations.applied == list(range(saved.seq + 1, seq + 1))  # each op once, in order
    assert state_digest(second.annotations.state) == state_digest(state)


def _reader(proc: subprocess.Popen[str]) -> queue.Queue[dict[str, Any]]:
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _spawn(b: Bridge, keydir: Path, state: Path) -> tuple[subprocess.Popen[str], queue.Queue[dict[str, Any]]]:
    cmd = [
        sys.executable,
        "-m",
        "headset_bridge.refclient",
        "--pub",
        b.server.pub_endpoint,
        "--ctl",
        b.server.ctl_endpoint,
        "--server-key",
        str(keydir / "server.key"),
        "--key",
        str(keydir / "hl-a.key_secret"),
        "--state",
        str(state),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    return proc, _reader(proc)


def _until(lines: queue.Queue[dict[str, Any]], pred: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    while True:
        event = lines.get(timeout=timeout_s)  # raises queue.Empty on timeout: test fails
        if pred(event):
            return event


def test_sigkilled_headset_process_restarts_equal_to_server(bridge: Bridge, tmp_path: Path) -> None:
    write_keypair(tmp_path, "server", bridge.server_keys)
    write_keypair(tmp_path, "hl-a", bridge.headset_keys["hl-a"])
    state = tmp_path / "hl-a.state.json"
    procs: list[subprocess.Popen[str]] = []
    try:
        with Churn(bridge.server):
            proc, lines = _spawn(bridge, tmp_path, state)
            procs.append(proc)
            first = _until(lines, lambda e: e["event"] == "ann")
            saved = _until(lines, lambda e: e["event"] == "saved" and e["seq"] >= first["seq"] + 20)
            proc.send_signal(signal.SIGKILL)  # mid-stream, between saves or during one
            proc.wait(5.0)
            assert bridge.server.wait_for(lambda: not bridge.server.headsets()["hl-a"].alive, 3.0)  # noticed dead
            proc, lines = _spawn(bridge, tmp_path, state)
            procs.append(proc)
            start = _until(lines, lambda e: e["event"] == "start")
            resumed = start["resumed_from"]
            assert isinstance(resumed, int) and resumed >= saved["seq"]  # restarted from its saved state
            mid = _until(lines, lambda e: e["event"] == "ann" and e["seq"] >= resumed + 40)
            assert mid["applied"][0] == resumed + 1
        seq, server_state = bridge.server.annotations
        final = _until(lines, lambda e: e["event"] == "ann" and e["seq"] == seq)
        assert final["applied"] == list(range(resumed + 1, seq + 1))  # nothing lost, nothing doubled
        assert final["digest"] == state_digest(server_state)
        assert bridge.server.headsets()["hl-a"].alive
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5.0)


def test_headset_restart_without_saved_state_gets_a_snapshot(bridge: Bridge) -> None:
    first = bridge.client("hl-a")
    with Churn(bridge.server):
        assert first.wait_for(lambda: first.annotations.seq >= 20, 5.0)
        bridge.close_client(first)
        second = bridge.client("hl-a")
        assert second.wait_for(lambda: ready(second) and second.annotations.seq >= 40, 5.0)
    seq, state = bridge.server.annotations
    assert second.wait_for(lambda: second.annotations.seq == seq, 3.0)
    assert state_digest(second.annotations.state) == state_digest(state)
    applied = second.annotations.applied
    assert applied == list(range(seq - len(applied) + 1, seq + 1))
