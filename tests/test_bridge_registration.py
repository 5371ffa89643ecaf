"""The ``registration`` uplink (a surface trace and touched landmarks for a navigation
registration) and its verdict in the pose headers: real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
from bridge_fixtures import Bridge, ready, running_bridge, until_live

from headset_bridge import protocol as P
from headset_bridge.messages import RegistrationRequest, RegistrationVerdict

bridge = pytest.fixture(name="bridge")(running_bridge)

TRACE = np.array([[float(i), -2.5 * i, 1400.0 + 0.125 * i] for i in range(300)])
MARKS = {"nasion": (1.0, 2.0, 3.0), "left_canthus": (-40.5, 10.0, 1390.0), "right_canthus": (40.0, 10.0, 1391.0)}


def _header(**kw: Any) -> dict[str, Any]:
    return {"seq": 7, "t_ns": 1, "frame": "world", "world_of": "", "n_points": 2, "landmarks": None, **kw}


def _frames(payload: bytes | None = None, **kw: Any) -> list[bytes]:
    """A registration message as raw frames, JSON written by hand (so it can hold anything)."""
    header = {"v": 1, "type": "registration", **_header(**kw)}
    body = payload if payload is not None else struct.pack("<6d", 1, 2, 3, 4, 5, 6)
    return [b"registration", json.dumps(header).encode(), body]


def test_trace_and_landmarks_arrive_intact_from_the_reference_client(bridge: Bridge) -> None:
    c = bridge.client()
    assert c.wait_for(lambda: ready(c), 3.0)
    seq = c.send_registration(TRACE, MARKS)
    assert bridge.server.wait_for(lambda: bool(bridge.server.senders("registration")), 3.0)
    assert bridge.server.senders("registration") == ["hl-a"]
    (req,) = bridge.server.take("registration", "hl-a")
    assert isinstance(req, RegistrationRequest)
    assert (req.headset, req.seq, req.world_of) == ("hl-a", seq, "")
    np.testing.assert_array_equal(req.points_mm, TRACE)
    assert req.landmarks == MARKS
    assert bridge.server.senders("registration") == []


@pytest.mark.parametrize(
    ("frames", "reason", "quoted"),
    [
        (_frames(struct.pack("<6d", 1, 2, math.nan, 4, 5, 6)), "bad_payload", "trace point 0 must be finite"),
        (_frames(struct.pack("<6d", 1, 2, 3, 4, 5, 2e5)), "bad_payload", "trace point 1 must be finite"),
        (_frames(n_points=3), "bad_payload", "n_points x 24 bytes, got 48"),
        (_frames(bytes(24 * 20_001), n_points=20_001), "bad_field", "n_points must be within 0..20000, got 20001"),
        (_frames(n_points="2"), "bad_field", "registration.n_points must be int, got '2'"),
        (_frames(frame="camera"), "bad_field", "frame must be one of ['world'], got 'camera'"),
        (_frames(landmarks=[1, 2, 3]), "bad_field", "registration.landmarks must be obj?"),
        (_frames(landmarks={"nasion": [1, 2]}), "bad_field", "landmark 'nasion' must be [x, y, z]"),
        (_frames(landmarks={"nasion": [1, 2, True]}), "bad_field", "landmark 'nasion' must be [x, y, z]"),
        (_frames(landmarks={"": [1, 2, 3]}), "bad_field", "landmark names must be printable"),
        (_frames(landmarks={f"p{i}": [0, 0, 0] for i in range(65)}), "bad_field", "at most 64, got 65"),
        (_frames(world_of="x" * 65), "bad_field", "world_of must be printable, at most 64"),
    ],
)
def test_bad_registration_is_refused_naming_the_problem(frames: list[bytes], reason: str, quoted: str) -> None:
    with pytest.raises(P.ProtocolError, match="registration") as err:
        P.decode(frames, allowed=P.UPLINK_TYPES)
    assert err.value.reason == reason
    assert quoted in str(err.value)


def test_a_nan_in_the_header_is_refused_before_any_field() -> None:
    frames = _frames()
    frames[1] = frames[1].replace(b'"landmarks": null', b'"landmarks": {"nasion": [NaN, 1, 2]}')
    with pytest.raises(P.ProtocolError, match="non-finite number 'NaN'"):
        P.decode(frames, allowed=P.UPLINK_TYPES)


def test_the_client_refuses_locally_what_the_server_would_drop(bridge: Bridge) -> None:
    c = bridge.client()
    with pytest.raises(ValueError, match="trace must be \\(N, 3\\) mm, got shape \\(5, 2\\)"):
        c.send_registration(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="trace point 3 must be finite"):
        c.send_registration(np.where(np.arange(30).reshape(10, 3) == 10, np.nan, 1.0))
    with pytest.raises(ValueError, match="landmarks must be finite"):
        c.send_registration(TRACE, {"nasion": (0.0, math.inf, 0.0)})
    with pytest.raises(ValueError, match="n_points must be within 0..20000, got 20001"):
        c.send_registration(np.zeros((20_001, 3)))
    assert c.uplink_pending == 0


def test_bad_messages_are_counted_one_each_and_poses_keep_flowing(bridge: Bridge) -> None:
    c = bridge.client(uplink_hwm=64)  # send_raw does not wait for room
    assert c.wait_for(lambda: ready(c), 3.0)
    bad = [
        _frames(struct.pack("<6d", math.nan, 2, 3, 4, 5, 6)),
        _frames(bytes(24 * 20_001), n_points=20_001),
        _frames(n_points="2"),
        _frames(landmarks={"nasion": "here"}),
    ]
    for frames in bad:
        c.send_raw(frames)
    c.send_registration(TRACE)  # ordered behind the bad ones on the same connection
    assert bridge.server.wait_for(lambda: bool(bridge.server.senders("registration")), 3.0)
    counts = bridge.server.counters
    assert counts.get("malformed") == len(bad)
    assert counts.get("malformed:bad_payload") == 1 and counts.get("malformed:bad_field") == 3
    assert counts.get("io_error") == 0
    (req,) = bridge.server.take("registration", "hl-a")  # only the good one was queued
    assert isinstance(req, RegistrationRequest) and len(req.points_mm) == len(TRACE)
    until_live(bridge, [c])  # the pose stream to the same headset is undisturbed


def test_the_verdict_rides_in_every_pose_header_also_for_a_late_headset(bridge: Bridge) -> None:
    early = bridge.client("hl-a")
    assert early.wait_for(lambda: ready(early), 3.0)
    verdict = RegistrationVerdict(
        3, "hl-a", 12, "done", False, "degraded", "trace only", "not trusted (trace only): ambiguous",
        reasons=("ambiguous: a distinct pose fits almost as well (1.20x the cost)",), hint="trace the nose",
        fre_mm=None, residual_mm=0.8, predicted_tre_mm=math.inf, rejected=4, n_points=40,
    )  # fmt: skip
    bridge.server.report_registration(verdict)
    assert early.wait_for(lambda: early.registration is not None, 3.0)
    assert early.registration == RegistrationVerdict.from_json(json.loads(json.dumps(verdict.to_json())))
    assert early.registration is not None and early.registration.predicted_tre_mm is None  # inf travels as null
    late = bridge.client("hl-b")  # joins after the report: the keepalive repeats carry it
    assert late.wait_for(lambda: late.registration is not None, 3.0)
    assert late.registration == early.registration
    seen: list[RegistrationVerdict] = []
    early.on_registration = seen.append
    bridge.server.report_registration(RegistrationVerdict(4, "slicer", -1, "running", False, "lost", "x", "busy"))
    assert early.wait_for(lambda: len(seen) == 1, 3.0) and seen[0].id == 4 and seen[0].state == "running"
    until_live(bridge, [early])
    assert len(seen) == 1  # repeats of the same verdict are not reported again


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("yes", "must be a JSON object"),
        ({"id": 1}, "registration lacks 'source'"),
        ({**RegistrationVerdict(1, "a", 1, "done", True, "tracking", "m", "v").to_json(), "state": "over"}, "state"),
        ({**RegistrationVerdict(1, "a", 1, "done", True, "tracking", "m", "v").to_json(), "fre_mm": "1"}, "fre_mm"),
        ({**RegistrationVerdict(1, "a", 1, "done", True, "tracking", "m", "v").to_json(), "reasons": "r"}, "list"),
    ],
)
def test_a_malformed_verdict_is_a_value_error_naming_it(raw: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        RegistrationVerdict.from_json(raw)
