"""Codec, clock maths and annotation ordering: no sockets."""

from __future__ import annotations

import contextlib
import json
import random

import numpy as np
import pytest
from bridge_fixtures import ann
from hypothesis import given, settings
from hypothesis import strategies as st

from headset_bridge import protocol as P
from headset_bridge.annotations import AnnotationLog, AnnotationReplica, state_digest
from headset_bridge.clock import ClockSync, sample
from headset_bridge.messages import Annotation, AnnotationOp, AnnotationOpName, PoseUpdate


def _pose_frames(**over: object) -> list[P.Buffer]:
    header = {
        "seq": 3,
        "t_ns": 10,
        "t_capture_ns": 5,
        "status": "tracking",
        "reason": "",
        "fitness": 0.9,
        "rmse_mm": 1.0,
        "repeat": False,
        "epoch": "e",
        "ann_seq": 0,
        "model": None,
        "sensor": "",
        "sensor_frame_seq": -1,
    }
    header.update(over)
    return P.encode("pose", header, P.pack_mat4(np.eye(4)))


def test_pose_roundtrip_keeps_transform_bits() -> None:
    T = np.arange(16, dtype=np.float64).reshape(4, 4) / 7.0
    frames = _pose_frames()[:2] + [P.pack_mat4(T)]
    msg = P.decode(frames)
    assert msg.topic == "pose" and msg.header["seq"] == 3 and msg.header["v"] == P.PROTOCOL_VERSION
    np.testing.assert_array_equal(P.unpack_mat4(msg.payload), T)


@pytest.mark.parametrize(
    ("frames", "reason", "quoted"),
    [
        ([b"pose", b"{}"], "frame_count", "got 2"),
        ([b"nope", b"{}", b""], "bad_topic", "b'nope'"),
        ([b"pose", b"[1, 2]", b""], "bad_header", "[1, 2]"),
        ([b"pose", b"{not json", b""], "bad_header", "{not json"),
        ([b"pose", b'{"v": 2, "type": "pose"}', b""], "bad_version", "got 2"),
        ([b"pose", b'{"v": 1, "type": "ann"}', b""], "bad_header", "'ann'"),
        ([b"pose", b'{"v": 1, "type": "pose", "seq": NaN, "t_ns": 0}', b""], "bad_header", "NaN"),
    ],
)
def test_decode_rejects_with_the_bad_value_quoted(frames: list[bytes], reason: str, quoted: str) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.decode(list(frames))
    assert info.value.reason == reason
    assert quoted in str(info.value)


def test_decode_checks_field_types_status_and_payload() -> None:
    with pytest.raises(P.ProtocolError, match="pose.seq must be int, got '3'"):
        P.decode(_pose_frames(seq="3"))
    with pytest.raises(P.ProtocolError, match="pose.repeat must be bool, got 1"):
        P.decode(_pose_frames(repeat=1))
    with pytest.raises(P.ProtocolError, match="got 'sleepy'"):
        P.decode(_pose_frames(status="sleepy"))
    bad_len = _pose_frames()[:2] + [b"\0" * 127]
    with pytest.raises(P.ProtocolError, match="got 127"):
        P.decode(bad_len)
    with pytest.raises(P.ProtocolError, match="unexpected topic"):
        P.decode(_pose_frames(), allowed=P.UPLINK_TYPES)


def test_depth_payload_size_must_match_header() -> None:
    header = {
        "seq": 1,
        "t_ns": 1,
        "t_capture_ns": 1,
        "width": 4,
        "height": 2,
        "dtype": "uint16",
        "depth_unit_mm": 1.0,
        "fx": 1.0,
        "fy": 1.0,
        "cx": 1.0,
        "cy": 1.0,
        "T_world_camera": np.eye(4).reshape(16).tolist(),
    }
    assert P.decode(P.encode("depth", header, b"\0" * 16)).header["width"] == 4
    with pytest.raises(P.ProtocolError, match="got 15"):
        P.decode(P.encode("depth", header, b"\0" * 15))
    with pytest.raises(P.ProtocolError, match="'float32'"):
        P.decode(P.encode("depth", {**header, "dtype": "float32"}, b"\0" * 16))


def test_pose_update_rejects_bad_values_quoting_them() -> None:
    with pytest.raises(ValueError, match=r"got shape \(3, 3\)"):
        PoseUpdate(np.eye(3), "tracking", 1.0, 1.0, 0, 0)
    with pytest.raises(ValueError, match="got 'maybe'"):
        PoseUpdate(np.eye(4), "maybe", 1.0, 1.0, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fitness must be a number, got '0.9'"):
        PoseUpdate(np.eye(4), "tracking", "0.9", 1.0, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="None only when lost"):
        PoseUpdate(np.eye(4), "tracking", 0.9, 1.0, None, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        PoseUpdate(np.zeros(4), "lost", 0.0, float("inf"), 0, 0)
    with pytest.raises(ValueError, match=r"lacks \['seq'\]"):
        PoseUpdate.from_mapping(
            {"T_sensor_model": np.eye(4), "status": "lost", "fitness": 0, "rmse_mm": 0, "timestamp_ns": 0}
        )


frame_bytes = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"pose", b"ann", b"hb", b"depth", b"sync", b"model_get", b"{}", b"", b"\xff"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(frame_bytes, min_size=0, max_size=5))
def test_fuzz_decode_raw_frames_only_raises_protocol_error(frames: list[bytes]) -> None:
    try:
        P.decode(frames)
    except P.ProtocolError as exc:
        assert exc.reason and str(exc)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(P.SCHEMAS)),
    st.dictionaries(
        st.sampled_from(
            [
                "seq",
                "t_ns",
                "status",
                "width",
                "height",
                "model",
                "op",
                "since",
                "epoch",
                "T_world_camera",
                "dtype",
                "encoding",
                "index",
                "sha256",
                "v",
                "type",
            ]
        ),
        json_values,
        max_size=8,
    ),
    st.binary(max_size=64),
)
def test_fuzz_decode_near_valid_headers(topic: str, fields: dict[str, object], payload: bytes) -> None:
    body = json.dumps({"v": 1, "type": topic, "seq": 0, "t_ns": 0, **fields}).encode()
    try:
        msg = P.decode([topic.encode(), body, payload])
    except P.ProtocolError:
        return
    assert msg.topic == topic  # anything accepted satisfied the schema


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_fuzz_annotation_op_from_json_only_raises_value_error(value: object) -> None:
    with contextlib.suppress(ValueError):
        AnnotationOp.from_json(value)


def test_annotation_rejects_bad_points_quoting_them() -> None:
    with pytest.raises(ValueError, match=r"got \(\(1, 2\),\)"):
        Annotation(id="x", kind="point", author="a", role="r", points_mm=((1, 2),), created_ns=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 'blob'"):
        Annotation(id="x", kind="blob", author="a", role="r", points_mm=(), created_ns=0)


def test_clock_offset_and_rtt() -> None:
    # Server is 1 000 ns ahead; 100 ns each way; 50 ns in the server.
    s = sample(t0=0, t1=1_100, t2=1_150, t3=250)
    assert (s.offset_ns, s.rtt_ns) == (1_000, 200)
    sync = ClockSync()
    sync.add(sample(0, 5_000, 5_000, 8_000))  # asymmetric, long round trip
    sync.add(s)
    assert sync.best == s and sync.to_server(10) == 1_010
    with pytest.raises(ValueError, match="got t0..t3"):
        sample(10, 0, 0, 5)


def test_annotation_log_rules_and_revisions() -> None:
    log = AnnotationLog(max_log=3)
    assert log.apply("add", ann(1)).seq == 1
    with pytest.raises(ValueError, match="already present, got 'a1'"):
        log.apply("add", ann(1))
    with pytest.raises(ValueError, match="id unknown, got 'a9'"):
        log.apply("delete", "a9")
    assert log.apply("update", ann(1, "v2")).annotation.rev == 1  # type: ignore[union-attr]
    log.apply("add", ann(2))
    log.apply("delete", "a1")
    assert [o.seq for o in log.since(2) or []] == [3, 4]
    assert log.since(0) is None  # trimmed: caller must snapshot
    assert log.since(4) == []


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60))
def test_replica_converges_whatever_the_delivery(seed: int, n_ops: int) -> None:
    """Drops, duplicates and reordering on the PUB path + resyncs = exactly the server's state."""
    rng = random.Random(seed)
    log, ops = AnnotationLog(), []
    for i in range(n_ops):
        ids = sorted(log.state)
        choices: list[AnnotationOpName] = ["add", "update", "delete"] if ids else ["add"]
        kind = rng.choice(choices)
        target = ann(i) if kind == "add" else (ids[0] if kind == "delete" else ann(ids[0][1:], str(i)))
        ops.append(log.apply(kind, target))
    rep = AnnotationReplica()
    snap_at = rng.randint(0, n_ops)
    delivered = [o for o in ops if rng.random() > 0.3] + [o for o in ops if rng.random() < 0.2]
    rng.shuffle(delivered)
    for o in delivered[: len(delivered) // 2]:
        rep.offer(o)
    rep.load_snapshot(snap_at, [a for a in _state_at(ops, snap_at).values()])
    for o in delivered[len(delivered) // 2 :]:
        rep.offer(o)
    for o in log.since(rep.seq) or []:  # what a sync reply would carry
        rep.offer(o)
    assert rep.seq == log.seq
    assert state_digest(rep.state) == state_digest(log.state)
    assert rep.applied == list(range(snap_at + 1, log.seq + 1))


def _state_at(ops: list[AnnotationOp], seq: int) -> dict[str, Annotation]:
    state: dict[str, Annotation] = {}
    for o in ops[:seq]:
        if o.op == "delete":
            del state[o.id]
        else:
            assert o.annotation is not None
            state[o.id] = o.annotation
    return state
