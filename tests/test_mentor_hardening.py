"""The mentor server under outside pressure, over real sockets: idle and slow connections,
malformed requests, half-open offers; and its participant list (one row per person, the
headset with its tracking status)."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from mentor_fixtures import CAMERA, SESSION, FramePump, Published, PyViewer, Scene, make_scene, post

from mentor.config import MentorConfig
from mentor.guard import ConnectionGuard, RateLimitedLog
from mentor.room import MentorRoom
from mentor.server import MentorServer
from mentor.tokens import issue, new_secret
from scrubin.audit import AuditLog, read_events

TESTS = Path(__file__).resolve().parent


def until(pred: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # polling a condition with a deadline
    return True


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


@dataclass
class Hardened:
    server: MentorServer
    room: MentorRoom
    secret: bytes
    url: str
    audit_path: Path

    def token(self, role: str = "mentor", name: str = "dr-m") -> str:
        return issue(self.secret, SESSION, role, name, 600.0)  # type: ignore[arg-type]

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        return self.server.call(fn)


@pytest.fixture
def make_server(scene: Scene, tmp_path: Path) -> Iterator[Callable[..., Hardened]]:
    made: list[Hardened] = []

    def make(**config: Any) -> Hardened:
        secret = new_secret()
        audit_path = tmp_path / f"{SESSION}-{len(made)}.audit.sqlite"
        room = MentorRoom(SESSION, secret, scene.caster, CAMERA, Published(), AuditLog(audit_path))
        server = MentorServer(MentorConfig(**config))
        server.add_room(room)
        made.append(Hardened(server, room, secret, server.start(), audit_path))
        return made[-1]

    yield make
    for h in made:
        h.server.stop()
        assert h.room.audit is not None
        h.room.audit.close()


def _get(url: str, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _idle_sockets(port: int, count: int, sources: int, first: int = 2) -> list[socket.socket]:
    """``count`` TCP connections that send nothing, spread over ``sources`` loopback
    addresses (127.0.0.2, ...): non-blocking connects, then wait until each is set up."""
    socks = []
    for i in range(count):
        s = socket.socket()
        s.bind((f"127.0.0.{first + i % sources}", 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    poller = select.poll()  # select() stops at descriptor 1024
    for s in socks:
        poller.register(s, select.POLLOUT)
    pending = {s.fileno() for s in socks}
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(500):
            if fd in pending:
                pending.discard(fd)
                poller.unregister(fd)
    assert not pending, f"{len(pending)} of {count} connections never set up"
    return socks


def _closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


# -- connection limits ------------------------------------------------------------------------
def test_1200_idle_connections_over_the_descriptor_limit_leave_the_page_reachable_without_a_log_flood() -> None:
    """The server runs with 1024 descriptors (soft and hard); 1,200 idle connections from 40
    addresses are opened and held; the page and the config still answer, and the log has
    at most a few lines (no accept() error per turn)."""
    child = subprocess.Popen(
        [sys.executable, str(TESTS / "mentor_idle_child.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    socks: list[socket.socket] = []
    try:
        assert child.stdout is not None and child.stdin is not None
        hello = json.loads(child.stdout.readline())
        port = int(hello["url"].rsplit(":", 1)[1])
        socks = _idle_sockets(port, 1200, sources=40)
        # Wait until the server holds as many as its total cap allows (half of 1024 descriptors):
        # from then on each newcomer closes an idle one. The rest wait in the kernel's queue.
        assert until(lambda: any(_closed_by_server(s) for s in socks), 20.0)
        status, _, body = _get(f"{hello['url']}/s/{hello['session']}")
        assert status == 200 and b"mentor.js" in body
        status, reply = post(f"{hello['url']}/s/{hello['session']}/config", {}, hello["token"])
        assert status == 200 and reply["role"] == "mentor"
        assert psutil.Process(child.pid).num_fds() <= 512 + 64
    finally:
        for s in socks:
            s.close()
        if child.stdin is not None:
            child.stdin.close()
        code = child.wait(timeout=30)
    log = child.stderr.read() if child.stderr is not None else ""
    lines = log.splitlines()
    assert code == 0, log[-2000:]
    assert sum("out of system resource" in line for line in lines) <= 1
    assert len(lines) <= 10 and "Traceback" not in log, log[-2000:]
    assert any("idle connections closed for newer ones" in line for line in lines), log  # the caps engaged


def test_caps_per_address_and_in_total_close_the_oldest_idle_connection(make_server: Callable[..., Hardened]) -> None:
    h = make_server(max_connections=8, max_connections_per_ip=3)
    port = int(h.url.rsplit(":", 1)[1])
    same = _idle_sockets(port, 5, sources=1, first=2)  # 5 from 127.0.0.2: the 2 oldest make room
    assert until(lambda: [_closed_by_server(s) for s in same] == [True, True, False, False, False])
    assert h.on_loop(lambda: h.server.guard.per_ip("127.0.0.2")) == 3  # type: ignore[union-attr]
    others = _idle_sockets(port, 10, sources=5, first=10)  # 10 more from 5 addresses: total cap 8
    assert until(lambda: h.on_loop(lambda: len(h.server.guard)) <= 8)  # type: ignore[arg-type]
    status, headers, _ = _get(f"{h.url}/s/{SESSION}")  # a real request still gets in
    assert status == 200
    for s in same + others:
        s.close()


def test_slow_headers_idle_keepalive_and_slow_bodies_time_out(make_server: Callable[..., Hardened]) -> None:
    h = make_server(header_timeout_s=0.3, keepalive_timeout_s=0.3, body_timeout_s=0.3)
    port = int(h.url.rsplit(":", 1)[1])
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /s/theatre-1 HTTP/1.1\r\nHost: x\r\n")  # the head never completes
    slow.settimeout(5)
    assert slow.recv(100) == b""  # closed by the header timeout, no answer
    kept = socket.create_connection(("127.0.0.1", port))
    kept.sendall(b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n")
    kept.settimeout(5)
    assert kept.recv(1000).startswith(b"HTTP/1.1 204")
    assert kept.recv(100) == b""  # then idle: closed by the keep-alive timeout
    body = socket.create_connection(("127.0.0.1", port))
    body.sendall(
        f"POST /s/{SESSION}/offer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {h.token()}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
    )
    body.settimeout(5)
    answer = body.recv(2000)
    assert answer.startswith(b"HTTP/1.1 408") and b"offer body not received within 0.3 s" in answer
    for s in (slow, kept, body):
        s.close()


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_connection_guard_refuses_when_every_connection_is_busy_and_reports_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    guard = ConnectionGuard(2, 2, header_timeout_s=1.0, keepalive_timeout_s=5.0, clock=lambda: now[0])
    a, b, c = _Transport(), _Transport(), _Transport()
    assert guard.admit("a", "ip", a) and guard.admit("b", "ip", b)
    guard.busy("a")
    guard.busy("b")
    assert not guard.admit("c", "ip", c)  # nobody idle to make room: the new one is refused
    guard.idle("a")  # answered: keep-alive timeout from now on
    assert guard.admit("c", "ip", c) and a.aborted and not b.aborted
    now[0] = 1.5  # c sent no head within 1 s; a is gone, b busy
    with caplog.at_level(logging.INFO, logger="mentor.guard"):
        guard.sweep()
        guard.sweep()
    assert c.aborted and len(guard) == 1
    assert guard.counts.refused == 1 and guard.counts.evicted == 1 and guard.counts.timed_out == 1
    assert len([r for r in caplog.records if r.name == "mentor.guard"]) == 1


def test_over_the_total_cap_the_biggest_holder_gives_up_a_connection() -> None:
    guard = ConnectionGuard(4, 4, header_timeout_s=10.0, keepalive_timeout_s=10.0)
    person, flood = _Transport(), [_Transport() for _ in range(3)]
    assert guard.admit("person", "10.0.0.1", person)  # the oldest connection of all
    for i, t in enumerate(flood):
        assert guard.admit(f"f{i}", "10.0.0.2", t)
    assert guard.admit("new", "10.0.0.3", _Transport())
    assert not person.aborted and [t.aborted for t in flood] == [True, False, False]
    assert guard.per_ip("10.0.0.1") == 1 and guard.per_ip("10.0.0.2") == 2


def test_rate_limited_log_keeps_a_burst_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.limited"), burst=3, window_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.limited"):
        for i in range(100):
            limited.info("bad request %d", i)
        now[0] = 10.0
        limited.info("bad request %d", 100)
    assert [r.getMessage() for r in caplog.records] == [
        "bad request 0",
        "bad request 1",
        "bad request 2",
        "mentor server: 97 more such lines suppressed",
        "bad request 100",
    ]


# -- malformed requests -----------------------------------------------------------------------
def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


MALFORMED = {
    "bad content length": b"GET /s/theatre-1 HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "bad version": b"GET /s/theatre-1 HTTP/1.x\r\nHost: x\r\n\r\n",
    "binary request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "request line over 8 KiB": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "space in a header name": b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    "two content lengths": b"POST /s/theatre-1/config HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad chunk": b"POST /s/theatre-1/offer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n\r\n",
    "negative length": b"POST /s/theatre-1/offer HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "method not allowed": b"DELETE /s/theatre-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "no such route": b"GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_gets_a_short_generic_answer_and_one_log_line(
    make_server: Callable[..., Hardened], caplog: pytest.LogCaptureFixture, case: str
) -> None:
    h = make_server()
    port = int(h.url.rsplit(":", 1)[1])
    with caplog.at_level(logging.DEBUG):
        status, headers, body = _raw(port, MALFORMED[case])
        assert _get(f"{h.url}/s/{SESSION}")[0] == 200  # the server lives on
    assert 400 <= status < 500, (status, body)
    assert len(body) <= 100 and set(json.loads(body)) == {"error"}, body
    assert headers.get("server", "scrubin") == "scrubin", headers
    text = (json.dumps(headers) + body.decode("latin-1")).lower()
    for leak in ("python", "aiohttp", "traceback", "invalid literal", "exception", "error:"):
        assert leak not in text, (leak, headers, body)
    ours = [r for r in caplog.records if r.name.startswith(("aiohttp", "mentor", "asyncio"))]
    assert len(ours) <= 1 and all(r.exc_info is None and "\n" not in r.getMessage() for r in ours), [
        r.getMessage() for r in ours
    ]


def test_answers_carry_no_version_header_and_a_wrong_session_gets_a_page(make_server: Callable[..., Hardened]) -> None:
    h = make_server()
    status, headers, body = _get(f"{h.url}/s/{SESSION}")
    assert status == 200 and headers["Server"] == "scrubin"
    status, headers, body = _get(f"{h.url}/s/no-such-session")
    assert status == 404 and headers["Content-Type"].startswith("text/html") and headers["Server"] == "scrubin"
    assert b"<h1>No such mentor session</h1>" in body and b"{" not in body
    status, headers, body = _get(f"{h.url}/no/such/route")  # the router's own 404: short JSON, same headers
    assert (status, json.loads(body)) == (404, {"error": "not found"})
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Server"] == "scrubin"
    status, reply = post(f"{h.url}/s/no-such-session/config", {}, h.token())
    assert status == 404 and reply["error"] == "no such session"
    status, reply = post(f"{h.url}/s/{SESSION}/offer", {"type": "offer", "sdp": "v=0\r\nm=x y z\r\n"}, h.token())
    assert status == 400 and reply["error"] == "could not negotiate the offer: its SDP was not understood"


# -- half-open offers -------------------------------------------------------------------------
async def _abandoned_offer(url: str, token: str, tamper: bool) -> Any:
    """An offer with a valid token whose sender never completes ICE (abandoned), or
    completes ICE with a fingerprint that is not its certificate's (tampered)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("mentor", ordered=True)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    if tamper:
        head, _, rest = sdp.partition("a=fingerprint:sha-256 ")
        sdp = head + "a=fingerprint:sha-256 " + ("00:" * 32)[:-1] + rest[rest.index("\r\n") :]
    loop = asyncio.get_running_loop()
    status, answer = await loop.run_in_executor(None, post, url, {"type": "offer", "sdp": sdp}, token)
    assert status == 200, answer
    if tamper:
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    return pc


def _udp_sockets() -> int:
    return len(psutil.Process().net_connections(kind="udp"))


def test_half_open_offers_never_join_and_are_gone_within_the_bound(make_server: Callable[..., Hardened]) -> None:
    h = make_server(connect_timeout_s=1.5)
    url = f"{h.url}/s/{SESSION}/offer"
    udp_before = _udp_sockets()
    seen: list[tuple[int, int]] = []

    def census() -> tuple[int, int]:
        seen.append(h.on_loop(lambda: (len(h.server.hubs[SESSION].peers), len(h.room.participants))))
        return seen[-1]

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(_abandoned_offer(url, h.token(name=f"x{i}"), i < 5) for i in range(30))))

    loop = asyncio.new_event_loop()
    try:
        clients = loop.run_until_complete(run())
        assert census()[0] >= 25  # answered and not connected (the tampered ones may have failed already)
        assert until(lambda: census() == (0, 0), 20.0), seen[-1]
        assert max(p for _, p in seen) == 0
        for pc in clients:
            loop.run_until_complete(pc.close())
    finally:
        loop.close()
    assert until(lambda: _udp_sockets() <= udp_before, 10.0), (_udp_sockets(), udp_before)
    assert h.room.counters.get("half_open", 0) >= 25  # the 5 tampered ones may fail DTLS first
    events = list(read_events(h.audit_path))
    assert not [e for e in events if e.action == "join"]


def test_pending_offers_are_capped_per_room(make_server: Callable[..., Hardened]) -> None:
    h = make_server(max_pending_peers=2, connect_timeout_s=30.0)
    url = f"{h.url}/s/{SESSION}/offer"

    async def run() -> tuple[list[Any], tuple[int, dict[str, Any]]]:
        from aiortc import RTCConfiguration, RTCPeerConnection

        pcs = [await _abandoned_offer(url, h.token(), False) for _ in range(2)]
        third = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        third.createDataChannel("mentor")
        await third.setLocalDescription(await third.createOffer())
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(
            None, post, url, {"type": "offer", "sdp": third.localDescription.sdp}, h.token()
        )
        for pc in [*pcs, third]:
            await pc.close()
        return pcs, reply

    _, (status, reply) = asyncio.run(run())
    assert status == 503 and reply["code"] == "busy" and "try again" in reply["error"]


# -- participants -----------------------------------------------------------------------------
def test_one_row_per_person_and_the_headset_with_its_tracking(
    make_server: Callable[..., Hardened], scene: Scene
) -> None:
    h = make_server()
    a_token = h.token(name="dr-a")

    async def run() -> None:
        tabs = [PyViewer(h.url, SESSION, a_token), PyViewer(h.url, SESSION, a_token)]
        other = PyViewer(h.url, SESSION, h.token(role="observer", name="obs"))
        for v in (*tabs, other):
            await v.connect()
        ids = sorted(v.answer["participant"] for v in tabs)

        def latest() -> dict[str, Any]:
            found = other.of_type("participants")
            return found[-1] if found else {}

        assert await other.wait_for(lambda: len(latest().get("list", [])) == 2 and latest()["list"][0]["tabs"] == 2)
        rows = {r["name"]: r for r in latest()["list"]}
        assert sorted(rows["dr-a"]["ids"]) == ids and rows["dr-a"]["role"] == "mentor"
        assert rows["obs"]["tabs"] == 1 and rows["obs"]["id"] == other.answer["participant"]
        assert latest()["headset"] == {
            "name": "surgeon's headset",
            "role": "headset",
            "connected": False,
            "tracking": "lost",
        }
        with FramePump(h.room, scene):  # the headset streams and tracks: the list says so
            assert await other.wait_for(lambda: latest()["headset"]["connected"], 10)
            assert latest()["headset"]["tracking"] == "tracking"
        await tabs[1].close()
        assert await other.wait_for(lambda: latest()["list"][0]["tabs"] == 1, 10)
        assert await other.wait_for(lambda: not latest()["headset"]["connected"], 10)
        for v in (tabs[0], other):
            await v.close()

    asyncio.run(run())


def test_loop_socket_errors_become_one_counted_line(caplog: pytest.LogCaptureFixture) -> None:
    from mentor.guard import LoopErrorFilter

    now = [0.0]
    filt = LoopErrorFilter(clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(1000):  # what asyncio reports on each turn once descriptors run out
                filt(loop, {"message": "socket.accept() out of system resource", "exception": OSError(24, "EMFILE")})
            filt(loop, {"message": "something else"})  # goes to the loop's default handler
            now[0] += 60.0  # next window: a page that closed under a pending SCTP send
            gone = ConnectionError("Cannot send encrypted data, not connected")
            for _ in range(3):
                filt(loop, {"message": "Task exception was never retrieved", "exception": gone})
    finally:
        loop.close()
    guard_lines = [r for r in caplog.records if r.name == "mentor.guard"]
    assert len(guard_lines) == 2 and all(r.exc_info is None for r in guard_lines) and filt.suppressed == 1003
    assert "not connected" in guard_lines[1].getMessage()
    assert any(r.name == "asyncio" and "something else" in r.getMessage() for r in caplog.records)
