"""Mentor faults and leaks (issue 7): a viewer process SIGKILLed mid-session is noticed and
audited, connect/close cycles do not grow memory, and a session on a PHI-seeded model sends
no seeded value over HTTP or the data channel.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from dicom_factory import head_like_volume, write_series
from mentor_fixtures import (
    CAMERA,
    SESSION,
    FramePump,
    Published,
    PyViewer,
    Scene,
    Served,
    audit_events,
    make_scene,
    post,
    serve,
    stop,
)
from test_reliability_phi import SERIES_UID, STUDY_UID, _leaks, _needles
from waiting import until

from mentor.config import MentorConfig
from mentor.room import MentorRoom
from mentor.server import MentorServer
from mentor.tokens import new_secret
from scrubin.audit import AuditLog

REPO = Path(__file__).resolve().parents[1]

# The child: one Python viewer that pings like the page (every 2 s there, faster here) until killed.
CHILD = """
import asyncio, sys
from mentor_fixtures import PyViewer

async def main() -> None:
    viewer = PyViewer(sys.argv[1], sys.argv[2], sys.argv[3], quality="none")
    await viewer.connect()
    print(viewer.answer["participant"], flush=True)
    t = 0
    while True:
        t += 1
        viewer.send({"type": "ping", "t": t})
        await asyncio.sleep(0.2)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


@pytest.fixture
def quick_silence(scene: Scene, tmp_path: Path) -> Iterator[Served]:
    """A server that drops a pinging peer after 1 s of silence (10 s by default)."""
    secret = new_secret()
    audit = tmp_path / f"{SESSION}.audit.sqlite"
    room = MentorRoom(SESSION, secret, scene.caster, CAMERA, Published(), AuditLog(audit))
    server = MentorServer(MentorConfig(peer_silence_s=1.0))
    server.add_room(room)
    s = Served(server, room, secret, server.start(), audit)
    try:
        yield s
    finally:
        stop(s)


def test_sigkilled_viewer_is_dropped_and_its_leave_audited(quick_silence: Served) -> None:
    s = quick_silence
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, s.url, SESSION, s.token(name="dr-killed")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in child.stdout or []:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    try:
        pid = lines.get(timeout=30)  # queue.Empty: the child never connected, the test fails
        assert until(lambda: s.server.call(lambda: pid in s.room.participants))
        assert until(lambda: s.server.call(lambda: next(iter(s.server.hubs[SESSION].peers)).last_ping is not None))
        child.send_signal(signal.SIGKILL)  # no goodbye: no SCTP abort, no DTLS close
        child.wait(10)
        assert until(lambda: s.server.call(lambda: pid not in s.room.participants), 15.0)
        assert s.server.call(lambda: len(s.server.hubs[SESSION].peers)) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    events = audit_events(s.audit_path, lambda ev: any(e.action == "leave" for e in ev))
    leave = [e for e in events if e.action == "leave"]
    assert [(e.actor, e.detail["participant"], e.detail["reason"]) for e in leave] == [("dr-killed", pid, "silent")]
    assert [e.action for e in events if e.detail.get("participant") == pid] == ["join", "leave"]


# -- connect/close cycles ------------------------------------------------------------------------
@pytest.fixture
def served(scene: Scene, tmp_path: Path) -> Iterator[Served]:
    s = serve(scene, tmp_path, Published())
    try:
        with FramePump(s.room, scene, fps=15.0):
            yield s
    finally:
        stop(s)


async def one_cycle(s: Served, quality: str) -> None:
    viewer = PyViewer(s.url, SESSION, s.token(), quality=quality)
    try:
        await viewer.connect()
        viewer.send({"type": "ping", "t": 1.0})
        assert await viewer.wait_for(lambda: bool(viewer.of_type("pong")))
    finally:
        await viewer.close()


def test_fifty_connect_close_cycles_leave_nothing_behind(served: Served) -> None:
    """200 cycles are measured in bench/bench_mentor_cycles.py; 50 here, half with video."""
    proc = psutil.Process()

    async def cycles() -> tuple[int, int]:
        for i in range(10):  # warm-up: codecs, thread pools, first-use caches
            await one_cycle(served, "low" if i % 2 else "none")
        gc.collect()
        start = proc.memory_info().rss
        for i in range(50):
            await one_cycle(served, "low" if i % 2 else "none")
        gc.collect()
        return start, proc.memory_info().rss

    start, end = asyncio.run(cycles())
    assert until(lambda: served.server.call(lambda: not served.server.hubs[SESSION].peers))
    assert served.server.call(lambda: dict(served.room.participants)) == {}
    assert (end - start) / 1e6 < 50.0, f"RSS grew {(end - start) / 1e6:.1f} MB over 50 cycles"
    events = audit_events(served.audit_path, lambda ev: sum(e.action == "leave" for e in ev) >= 60)
    assert sum(e.action == "join" for e in events) == sum(e.action == "leave" for e in events) == 60


# -- PHI: a session on a model prepared from a PHI-seeded series --------------------------------
def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return bytes(r.read())


def test_seeded_phi_reaches_no_http_response_and_no_data_channel_message(tmp_path: Path) -> None:
    from imaging.prepare import PrepareOptions, prepare_path
    from scrubin.config import load_settings
    from scrubin.service import Service

    dicom = tmp_path / "in"
    write_series(dicom, head_like_volume((20, 48, 48)), phi=True, study_uid=STUDY_UID, series_uid=SERIES_UID)
    needles = _needles(dicom)
    model = tmp_path / "model"
    prepare_path(dicom, model, PrepareOptions(segments=("skin",)))
    settings = load_settings(
        None,
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
        mentor={"port": 0},
        sessions=[{"name": "or-phi", "model": str(model), "pub_port": 0, "ctl_port": 0}],
    )
    blobs: dict[str, bytes] = {}
    with Service(settings) as service:
        session = service.sessions["or-phi"]
        assert until(lambda: session.mentor_room is not None, 30.0)
        url, token = service.mentor_link("or-phi", "mentor", "dr-m")
        assert url is not None
        base = url.split("/s/")[0]
        blobs["page"] = _get(f"{base}/s/or-phi")
        blobs["js"] = _get(f"{base}/static/mentor.js")
        blobs["config"] = json.dumps(post(f"{base}/s/or-phi/config", {}, token)).encode()

        async def talk() -> PyViewer:
            viewer = PyViewer(base, "or-phi", token, quality="none")
            try:
                await viewer.connect()
                viewer.send({"type": "annotate", "cid": "c1", "kind": "label", "uv": [[320, 240]], "text": "here"})
                viewer.send({"type": "ping", "t": 7.0})
                assert await viewer.wait_for(lambda: bool(viewer.of_type("ack")) and bool(viewer.of_type("status")))
                return viewer
            finally:
                await viewer.close()

        viewer = asyncio.run(talk())
    blobs["answer"] = json.dumps(viewer.answer).encode()
    # every data-channel message as received (parsed by the viewer; written back unescaped)
    texts = [json.dumps(m, ensure_ascii=False) for m in viewer.messages]
    for i, text in enumerate(texts):
        blobs[f"dc[{i}]"] = text.encode()
    blobs["dc[all]"] = "".join(texts).encode()
    kinds = {m["type"] for m in viewer.messages}
    assert {"hello", "participants", "marks", "ack", "status", "pong"} <= kinds  # every kind was captured
    assert _leaks(needles, {"input": (dicom / "IM0000.dcm").read_bytes()})  # the search does find PHI
    assert _leaks(needles, blobs) == []


def test_a_peer_is_dropped_when_its_token_expires(served: Served) -> None:
    """A link is valid for its lifetime, not for ever once connected: at expiry the page
    is told why, its peer connection is closed and the leave is audited."""

    async def run() -> tuple[str, list[dict[str, object]], str]:
        viewer = PyViewer(served.url, SESSION, served.token(name="dr-brief", ttl_s=2.0), quality="none")
        await viewer.connect()
        pid = str(viewer.answer["participant"])
        closed = await viewer.wait_for(lambda: viewer.pc.connectionState == "closed", 15.0)
        state = viewer.pc.connectionState
        await viewer.close()
        assert closed, state
        return pid, viewer.of_type("error"), state

    pid, errors, _ = asyncio.run(run())
    assert [e["error"] for e in errors] == ["token expired: ask for a new link"]
    assert served.server.call(lambda: pid not in served.room.participants)
    events = audit_events(served.audit_path, lambda ev: any(e.action == "leave" for e in ev))
    leave = [(e.actor, e.detail["participant"], e.detail["reason"]) for e in events if e.action == "leave"]
    assert leave == [("dr-brief", pid, "token expired")]
