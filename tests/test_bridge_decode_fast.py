"""The precompiled per-topic header check never accepts what the full check refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headset_bridge import protocol as P

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**400, -1, 0])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["tracking", "degraded", "lost", "s16le", "uint16"]),
    lambda inner: st.lists(inner, max_size=17) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=20,
)


def _valid_header(topic: str) -> dict[str, Any]:
    sample = {"int": 7, "num": 1.5, "num?": None, "str": "tracking", "bool": False, "obj?": None, "str?": None}
    header: dict[str, Any] = {"v": 1, "type": topic, "seq": 1, "t_ns": 2}
    for name, kind in P.SCHEMAS[topic].items():
        header[name] = [0.0] * 16 if kind == P.MAT else sample[kind]
    return header


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(sorted(P.SCHEMAS)), data=st.data())
def test_fast_check_agrees_with_the_full_check(topic: str, data: st.DataObject) -> None:
    header = _valid_header(topic)
    for name in data.draw(st.lists(st.sampled_from(sorted(header)), max_size=3)):
        if data.draw(st.booleans()):
            header[name] = data.draw(JSON_VALUES)
        else:
            header.pop(name, None)
    header = json.loads(json.dumps(header))  # what a decoder really sees: exact JSON types
    try:
        P._check_fields(header, topic)
        full_ok = True
    except (P.ProtocolError, KeyError):
        full_ok = False
    if P._FAST_CHECKS[topic](header):
        assert full_ok, header


@pytest.mark.parametrize("topic", sorted(P.SCHEMAS))
def test_fast_check_accepts_a_valid_header(topic: str) -> None:
    assert P._FAST_CHECKS[topic](_valid_header(topic))


def test_huge_json_integer_is_a_protocol_error_naming_the_field() -> None:
    header = {
        "seq": 1,
        "t_ns": 1,
        "t_capture_ns": 1,
        "width": 1,
        "height": 1,
        "dtype": "uint16",
        "depth_unit_mm": 10**400,  # too large for a float: once an OverflowError escaped decode
        "fx": 1.0,
        "fy": 1.0,
        "cx": 0.0,
        "cy": 0.0,
        "T_world_camera": [1.0] * 16,
    }
    with pytest.raises(P.ProtocolError, match=r"depth\.depth_unit_mm must be num, got 1000"):
        P.decode(P.encode("depth", header, b"\0\0"))


def test_non_finite_transform_payload_is_refused_with_its_values() -> None:
    import struct

    payload = struct.pack("<16d", *([1.0] * 15 + [float("nan")]))
    with pytest.raises(P.ProtocolError, match=r"T must be finite, got \[\[1\.0"):
        P.unpack_mat4(payload, "T")
