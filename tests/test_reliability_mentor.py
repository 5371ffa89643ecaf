"""Hostile input against the mentor server (issue 7): fuzzed signalling JSON and data-channel
messages (decoders and real sockets), every HTTP endpoint's token check, a tampered DTLS
fingerprint. The server answers with its own errors only, counts them, and stays up: a
valid viewer still connects afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mentor_fixtures import SESSION, FramePump, Published, PyViewer, Scene, Served, make_scene, post, serve, stop
from waiting import until

from mentor.signalling import SignallingError, bearer_token, parse_message, parse_offer
from mentor.tokens import issue, new_secret

T = TypeVar("T")
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))

# -- strategies: random bytes and text, and JSON close to what the page sends ------------------
JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=30)
)
JSON = st.recursive(
    JSON_LEAF,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
    max_leaves=20,
)
FIELDS = ("cid", "kind", "uv", "text", "color", "rtp_ts", "rtp_recent", "t_capture_ns", "id", "level", "t")
TYPES = ("annotate", "erase", "quality", "ping", "offer", "answer", "", None)
NEAR_VALID = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={f: JSON | st.sampled_from(["point", "stroke", "label", "#ff0000", "high", "none", "c1"]) for f in FIELDS},
)
MESSAGE = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    JSON.map(json.dumps),
    NEAR_VALID.map(json.dumps),
)


def _rejected_locally(message: str | bytes) -> bool:
    try:
        parse_message(message)
    except SignallingError:
        return True
    return False


# -- decoders -------------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(MESSAGE)
def test_message_decoder_raises_only_signalling_errors(message: str | bytes) -> None:
    try:
        parse_message(message)
    except SignallingError as exc:
        assert "\n" not in str(exc)  # one line, naming the field


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), NEAR_VALID.map(lambda d: json.dumps(d).encode())))
def test_offer_decoder_raises_only_signalling_errors(body: bytes) -> None:
    try:
        offer = parse_offer(body)
    except SignallingError as exc:
        assert "\n" not in str(exc)
    else:
        assert offer.sdp.startswith("v=0")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=80)))
def test_bearer_header_parsing_never_raises(header: str | None) -> None:
    token = bearer_token(header)
    assert token is None or (header is not None and token in header)


# -- a server, a loop thread for the Python viewers --------------------------------------------
class LoopThread:
    """An asyncio loop in a thread, so synchronous (hypothesis) tests can drive aiortc peers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


@pytest.fixture(scope="module")
def served(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = serve(scene, tmp_path_factory.mktemp("mentor"), Published())
    try:
        with FramePump(s.room, scene, fps=15.0):
            yield s
    finally:
        stop(s)


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def counters(s: Served) -> dict[str, int]:
    return dict(s.server.call(lambda: dict(s.room.counters)))


def no_peers_left(s: Served) -> bool:
    return bool(s.server.call(lambda: not s.server.hubs[SESSION].peers and not s.room.participants))


def valid_viewer_works(s: Served, loop: LoopThread) -> None:
    """A fresh viewer connects, opens its data channel and gets a pong: the server is healthy."""

    async def check() -> None:
        viewer = PyViewer(s.url, SESSION, s.token(name="after-fuzz"), quality="none")
        try:
            await viewer.connect()
            viewer.send({"type": "ping", "t": 42.5})
            assert await viewer.wait_for(lambda: any(m.get("t") == 42.5 for m in viewer.of_type("pong")))
        finally:
            await viewer.close()

    loop.run(check())


# -- signalling over real HTTP ----------------------------------------------------------------
HEADER_TEXT = st.text(alphabet=string.printable.strip() + " ", max_size=60)


def _raw_post(url: str, body: bytes | None, headers: dict[str, str], method: str = "POST") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@FUZZ
@given(
    path=st.sampled_from(["offer", "config"]),
    body=st.one_of(
        st.binary(max_size=400),
        NEAR_VALID.map(lambda d: json.dumps(d).encode()),
        st.text(max_size=300).map(lambda t: json.dumps({"type": "offer", "sdp": "v=0\r\n" + t}).encode()),
    ),
    auth=st.one_of(st.none(), st.just("VALID"), HEADER_TEXT, HEADER_TEXT.map(lambda t: "Bearer " + t)),
    content_type=st.one_of(st.none(), HEADER_TEXT),
)
def test_random_http_requests_get_one_line_errors(
    served: Served, path: str, body: bytes, auth: str | None, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = f"Bearer {served.token()}" if auth == "VALID" else auth
    before = counters(served)
    status, raw = _raw_post(f"{served.url}/s/{SESSION}/{path}", body, headers)
    reply = json.loads(raw)
    after = counters(served)
    if status == 200:  # a valid token: config answers whatever the body, an offer never passes here
        assert auth == "VALID" and path == "config" and reply["role"] == "mentor"
        return
    assert status in (400, 401, 413), (status, reply)
    assert isinstance(reply["error"], str) and reply["error"] and "\n" not in reply["error"]
    counted = "refused_token" if status == 401 else "bad_offer"
    assert after.get(counted, 0) > before.get(counted, 0)  # every refusal is counted


def test_server_is_healthy_after_the_http_fuzz(served: Served, loop: LoopThread) -> None:
    assert counters(served).get("internal_error", 0) == 0
    valid_viewer_works(served, loop)
    assert until(lambda: no_peers_left(served))


# -- tokens on every endpoint -----------------------------------------------------------------
PUBLIC_GETS = {"/s/{session}", "/static/{name}", "/static/{name:.+}", "/favicon.ico"}  # the page holds no secret
TOKEN_GETS = {"/s/{session}/model.glb"}  # the patient model: token in the header only


def _routes(s: Served) -> list[tuple[str, str]]:
    runner: Any = s.server._runner
    out = []
    for route in runner.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        out.append((route.method, info.get("formatter") or info.get("path", "")))
    return out


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, "missing token"),
        ("Bearer", "missing token"),
        ("Basic dXNlcjpwdw==", "missing token"),
        ("Bearer not-a-token", "malformed token"),
        ("Bearer a.b", "invalid token signature"),
        ("Bearer \u00e9t\u00e9.x", "malformed token"),
        ("WRONG", "invalid token signature"),
        ("EXPIRED", "token expired"),
        ("OTHER_SESSION", "token is for another session ('theatre-2', not 'theatre-1')"),
    ],
)
def test_every_endpoint_refuses_bad_tokens_with_401_and_one_line(
    served: Served, header: str | None, error: str
) -> None:
    routes = _routes(served)
    token_routes = [(method, path) for method, path in routes if method == "POST" or path in TOKEN_GETS]
    public = {path for method, path in routes if method in ("GET", "HEAD")} - TOKEN_GETS
    assert public <= PUBLIC_GETS, f"a new GET endpoint must be reviewed for tokens, got {public - PUBLIC_GETS}"
    assert sorted(p for m, p in token_routes if m == "POST") == ["/s/{session}/config", "/s/{session}/offer"]
    assert {p for m, p in token_routes if m in ("GET", "HEAD")} == TOKEN_GETS
    if header == "WRONG":
        header = f"Bearer {issue(new_secret(), SESSION, 'mentor', 'x')}"
    elif header == "EXPIRED":
        header = f"Bearer {issue(served.secret, SESSION, 'mentor', 'x', ttl_s=1, now=time.time() - 10)}"
    elif header == "OTHER_SESSION":
        header = f"Bearer {issue(served.secret, 'theatre-2', 'mentor', 'x')}"
    for method, path in token_routes:
        url = served.url + path.replace("{session}", SESSION)
        headers = {} if header is None else {"Authorization": header.encode("utf-8").decode("latin-1")}
        # the token must be in the header: one in the query string or the body does not count
        body = json.dumps({"token": served.token()}).encode() if method == "POST" else None
        status, raw = _raw_post(url + f"?token={served.token()}", body, headers, method)
        if method == "HEAD":  # no body to read the reason from: the status says it
            assert status == 401, (method, path, status)
            continue
        code = "token_expired" if error == "token expired" else "token_refused"  # the page stops retrying on it
        assert (status, json.loads(raw)) == (401, {"error": error, "code": code})


# -- data channel over a real aiortc connection ----------------------------------------------
@FUZZ
@given(batch=st.lists(MESSAGE, min_size=1, max_size=15))
def test_random_data_channel_messages_cost_one_error_each(
    served: Served, loop: LoopThread, batch: list[str | bytes]
) -> None:
    before = counters(served)

    async def send_all() -> list[dict[str, Any]]:
        viewer = PyViewer(served.url, SESSION, served.token(), quality="none")
        try:
            await viewer.connect()
            for message in batch:
                viewer.channel.send(message)
            viewer.send({"type": "ping", "t": -1.5})  # ordered channel: its pong comes after every answer
            assert await viewer.wait_for(lambda: any(m.get("t") == -1.5 for m in viewer.of_type("pong")))
            return viewer.messages
        finally:
            await viewer.close()

    replies = loop.run(send_all())
    after = counters(served)
    rejected = sum(_rejected_locally(m) for m in batch)
    assert after.get("bad_message", 0) - before.get("bad_message", 0) == rejected
    assert len([r for r in replies if r["type"] == "error"]) == rejected
    assert after.get("internal_error", 0) == 0


def test_server_is_healthy_after_the_data_channel_fuzz(served: Served, loop: LoopThread) -> None:
    valid_viewer_works(served, loop)
    assert until(lambda: no_peers_left(served))


# -- DTLS ----------------------------------------------------------------------------------------
def _tamper_fingerprint(sdp: str) -> str:
    def flip(m: re.Match[str]) -> str:
        octets = m.group(2).split(":")
        octets[0] = f"{int(octets[0], 16) ^ 0xFF:02X}"
        return m.group(1) + ":".join(octets)

    tampered, n = re.subn(r"(a=fingerprint:sha-256 )([0-9A-Fa-f:]+)", flip, sdp)
    assert n >= 1 and tampered != sdp
    return tampered


def test_tampered_dtls_fingerprint_never_connects(served: Served, loop: LoopThread) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    async def attempt() -> tuple[list[str], list[str]]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        states: list[str] = []
        pc.on("connectionstatechange", lambda: states.append(pc.connectionState))
        channel = pc.createDataChannel("mentor")
        opened: list[bool] = []
        channel.on("open", lambda: opened.append(True))
        await pc.setLocalDescription(await pc.createOffer())
        body = {"type": "offer", "sdp": _tamper_fingerprint(pc.localDescription.sdp), "quality": "none"}
        status, answer = await asyncio.get_running_loop().run_in_executor(
            None, post, f"{served.url}/s/{SESSION}/offer", body, served.token()
        )
        assert status == 200  # the SDP is well formed; the DTLS handshake is what must fail
        server_states: list[str] = []
        peer = served.server.call(lambda: next(p for p in served.server.hubs[SESSION].peers))
        peer.pc.on("connectionstatechange", lambda: server_states.append(peer.pc.connectionState))
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        deadline = time.monotonic() + 8.0
        while "failed" not in server_states and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await pc.close()
        assert not opened  # no data channel over a refused DTLS session
        return states, server_states

    states, server_states = loop.run(attempt())
    assert "connected" not in server_states and "failed" in server_states, server_states
    # The server dropped the failed peer and stays healthy.
    assert until(lambda: no_peers_left(served))
    valid_viewer_works(served, loop)
