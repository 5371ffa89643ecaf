"""The mentor server over real sockets: tokens, signalling, shared video, the data channel, memory."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
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

from mentor.config import MentorConfig
from mentor.room import MentorRoom
from mentor.server import MentorServer
from mentor.tokens import issue, new_secret


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def served(scene: Scene, published: Published, tmp_path: Any) -> Iterator[Served]:
    s = serve(scene, tmp_path, published)
    try:
        with FramePump(s.room, scene):
            yield s
    finally:
        stop(s)


def _offer_url(s: Served) -> str:
    return f"{s.url}/s/{SESSION}/offer"


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (None, "missing token"),
        ("abc", "malformed token"),
        ("abc.def", "invalid token signature"),
        ("EXPIRED", "token expired"),
        ("OTHER_SESSION", "token is for another session ('theatre-2', not 'theatre-1')"),
        ("OTHER_SECRET", "invalid token signature"),
    ],
)
def test_offer_without_a_valid_token_is_401_and_audited(served: Served, token: str | None, error: str) -> None:
    if token == "EXPIRED":
        token = issue(served.secret, SESSION, "mentor", "dr-m", ttl_s=1, now=0)
    elif token == "OTHER_SESSION":
        token = issue(served.secret, "theatre-2", "mentor", "dr-m")
    elif token == "OTHER_SECRET":
        token = issue(new_secret(), SESSION, "mentor", "dr-m")
    for path in ("offer", "config"):
        status, body = post(f"{served.url}/s/{SESSION}/{path}", {"type": "offer", "sdp": "v=0"}, token)
        code = "token_expired" if error == "token expired" else "token_refused"  # the page stops retrying on it
        assert (status, body) == (401, {"error": error, "code": code})
    events = audit_events(served.audit_path, lambda ev: sum(e.action == "refused" for e in ev) >= 2)
    refused = [e for e in events if e.action == "refused"]
    assert len(refused) == 2 and refused[0].detail["reason"] == error


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "offer is not JSON"),
        ({"type": "answer", "sdp": "v=0"}, "offer.type must be 'offer', got 'answer'"),
        ({"type": "offer", "sdp": 5}, "offer.sdp must be str, got '5'"),
        ({"type": "offer", "sdp": "v=0", "quality": "ultra"}, "offer.quality must be one of"),
        ({"type": "offer", "sdp": "v=0\r\nnonsense"}, "could not negotiate the offer"),
    ],
)
def test_a_bad_offer_is_400_with_one_line_and_the_server_lives_on(served: Served, body: Any, error: str) -> None:
    status, reply = post(_offer_url(served), body, served.token())
    assert status == 400 and reply["error"].startswith(error), reply
    assert "\n" not in reply["error"]
    assert post(f"{served.url}/s/{SESSION}/config", {}, served.token())[0] == 200


def test_unknown_session_is_404_and_the_page_is_served_with_a_strict_policy(served: Served) -> None:
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(f"{served.url}/s/{SESSION}", timeout=5) as r:
        assert r.status == 200 and b"mentor.js" in r.read()
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    with urllib.request.urlopen(f"{served.url}/static/mentor.js", timeout=5) as r:
        assert b"requestVideoFrameCallback" in r.read()
    for path in ("/s/nope", "/static/../server.py", "/static/secret.txt"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{served.url}{path}", timeout=5)
        assert err.value.code == 404
    assert post(f"{served.url}/s/nope/offer", {}, served.token())[0] == 404


def test_server_binds_loopback_by_default(served: Served) -> None:
    assert served.url.startswith("http://127.0.0.1:")


async def _two_viewers(s: Served) -> tuple[PyViewer, PyViewer]:
    a, b = PyViewer(s.url, SESSION, s.token(name="a")), PyViewer(s.url, SESSION, s.token(name="b"))
    await asyncio.gather(a.connect(), b.connect())
    assert await a.wait_for(lambda: a.frames >= 15 and b.frames >= 15, 15)
    return a, b


def test_two_viewers_share_one_encode(served: Served) -> None:
    async def run() -> dict[str, int]:
        a, b = await _two_viewers(served)
        stats: dict[str, int] = served.server.call(lambda: served.server.hubs[SESSION].relay.encoders["high"].stats)
        people = a.of_type("participants")[-1]["list"]
        await a.close()
        await b.close()
        assert sorted(p["name"] for p in people) == ["a", "b"]
        return stats

    stats = asyncio.run(run())
    assert stats["viewers"] == 2
    # Each viewer decoded at least 15 frames; one encode per frame served both of them.
    assert 15 <= stats["frames"] < 60, stats


def test_marks_are_acked_deduplicated_and_refused_for_observers(served: Served, published: Published) -> None:
    async def run() -> tuple[PyViewer, PyViewer]:
        mentor = PyViewer(served.url, SESSION, served.token("mentor", "dr-m"))
        observer = PyViewer(served.url, SESSION, served.token("observer", "obs"), quality="none")
        await asyncio.gather(mentor.connect(), observer.connect())
        mark = {"type": "annotate", "cid": "c-1", "kind": "label", "uv": [[320, 240]], "text": "incision"}
        mentor.send(mark)
        mentor.send(mark)  # the re-send of an unacknowledged mark
        observer.send({**mark, "cid": "o-1"})
        mentor.send({"type": "annotate", "cid": "c-2", "kind": "circle", "uv": [[1, 1]]})  # valid JSON, bad field
        mentor.send({"type": "annotate", "cid": "c-3", "kind": "point", "uv": [[9000, 1]]})
        mentor.channel.send("{not json")
        ok = await mentor.wait_for(
            lambda: (
                len(mentor.of_type("ack")) >= 3 and bool(observer.of_type("ack")) and len(mentor.of_type("error")) >= 2
            ),
            10,
        )
        assert ok
        await asyncio.gather(mentor.close(), observer.close())
        return mentor, observer

    mentor, observer = asyncio.run(run())
    acks = {a["cid"]: a for a in mentor.of_type("ack") if not a["duplicate"]}
    dups = [a for a in mentor.of_type("ack") if a["duplicate"]]
    assert acks["c-1"]["ok"] and acks["c-1"]["anchored"]
    assert [d["id"] for d in dups] == [acks["c-1"]["id"]]
    assert [op for op, _ in published.ops] == ["add"]  # once, not twice
    assert acks["c-3"]["error"] == "click outside the 640x480 frame, got (9000.0, 1.0)"
    assert observer.of_type("ack")[0]["error"] == "role 'observer' cannot annotate"
    errors = [e["error"] for e in mentor.of_type("error")]
    assert errors[0] == "annotate.kind must be one of ('point', 'stroke', 'label'), got 'circle'"
    assert errors[1].startswith("message is not JSON")
    assert served.room.counters["bad_message"] == 2 and served.room.counters["duplicate"] == 1


def test_erase_removes_the_mark_everywhere(served: Served, published: Published) -> None:
    async def run() -> PyViewer:
        v = PyViewer(served.url, SESSION, served.token())
        await v.connect()
        v.send({"type": "annotate", "cid": "p-1", "kind": "point", "uv": [[320, 240]]})
        assert await v.wait_for(lambda: bool(v.of_type("ack")), 5)
        ident = v.of_type("ack")[0]["id"]
        v.send({"type": "erase", "cid": "e-1", "id": ident})
        assert await v.wait_for(lambda: any(not m["items"] for m in v.of_type("marks")[1:]), 5)
        await v.close()
        return v

    asyncio.run(run())
    assert [op for op, _ in published.ops] == ["add", "delete"]


def test_quality_switch_and_annotation_only_mode(served: Served) -> None:
    async def run() -> None:
        v = PyViewer(served.url, SESSION, served.token(), quality="none")
        await v.connect()
        assert v.answer["quality"] == "none"
        hub = served.server.hubs[SESSION]
        # Annotation-only: the peer's track watches no encoder and no encoder has a viewer.
        state = served.server.call(
            lambda: ([p.track and p.track.source for p in hub.peers], [e.viewers for e in hub.relay.encoders.values()])
        )
        assert state == ([None], [set(), set()])
        v.send({"type": "quality", "level": "low"})
        assert await v.wait_for(lambda: v.frames >= 5, 10)
        await v.close()

    asyncio.run(run())
    low = served.server.call(lambda: served.server.hubs[SESSION].relay.encoders["low"].stats)
    assert low["frames"] >= 5


def test_fifty_connect_close_cycles_keep_memory_flat(served: Served) -> None:
    """Python aiortc clients (not the browser: 50 browser sessions take minutes on 2 cores)."""
    proc = psutil.Process()

    async def cycle(n: int) -> None:
        for _ in range(n):
            v = PyViewer(served.url, SESSION, served.token())
            await v.connect()
            await v.close()

    asyncio.run(cycle(5))  # warm-up: codecs, thread pools, caches
    gc.collect()
    before = proc.memory_info().rss
    asyncio.run(cycle(50))
    gc.collect()
    growth_mb = (proc.memory_info().rss - before) / 2**20
    assert served.server.call(lambda: len(served.server.hubs[SESSION].peers)) == 0
    assert not served.room.participants
    assert growth_mb < 50, growth_mb


def test_tls_when_given_a_certificate(scene: Scene, tmp_path: Path) -> None:
    import datetime
    import ssl
    import urllib.request

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = MentorServer(MentorConfig(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"))
    room = MentorRoom(SESSION, new_secret(), scene.caster, CAMERA, Published(), None)
    server.add_room(room)
    url = server.start()
    try:
        assert url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
        ctx.check_hostname = False  # the test certificate names an IP address in its CN only
        with urllib.request.urlopen(f"{url}/s/{SESSION}", context=ctx, timeout=5) as r:
            assert r.status == 200
    finally:
        server.stop()
    with pytest.raises(ValueError, match=r"TLS needs both tls_cert and tls_key, got cert=None key="):
        MentorConfig(tls_key=tmp_path / "k.pem")
