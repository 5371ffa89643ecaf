"""Peer input is validated field by field; every refusal is one line naming the field."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mentor.signalling import Annotate, Erase, Ping, Quality, SignallingError, bearer_token, parse_message, parse_offer


def test_good_messages_parse() -> None:
    m = parse_message(
        json.dumps(
            {"type": "annotate", "cid": "a-1", "kind": "label", "uv": [[1, 2.5]], "text": "x", "t_capture_ns": "123"}
        )
    )
    assert m == Annotate("a-1", "label", ((1.0, 2.5),), "x", "#ffcc00", None, 123, ())
    assert parse_message('{"type": "erase", "cid": "e", "id": "m1"}') == Erase("e", "m1")
    assert parse_message('{"type": "quality", "level": "none"}') == Quality("none")
    assert parse_message('{"type": "ping", "t": 5}') == Ping(5.0)
    assert parse_offer(b'{"type": "offer", "sdp": "v=0\\r\\n"}').quality == "high"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("[]", "message must be a JSON object, got '[]'"),
        ('{"type": "hack"}', "message.type must be annotate, erase, restore, quality or ping, got 'hack'"),
        ('{"type": "annotate", "cid": "a b"}', "annotate.cid must be 1-64 letters, digits or _.:-, got 'a b'"),
        (
            '{"type": "annotate", "cid": "a", "kind": "point", "uv": []}',
            "annotate.uv must be a list of 1..512 [u, v] pairs, got '[]'",
        ),
        (
            '{"type": "annotate", "cid": "a", "kind": "point", "uv": [[1, NaN]]}',
            "annotate.uv entries must be finite [u, v] pairs, got '[1, nan]'",
        ),
        (
            '{"type": "annotate", "cid": "a", "kind": "point", "uv": [[1, 2], [3, 4]]}',
            "annotate.uv of a point must hold one point, got 2",
        ),
        (
            '{"type": "annotate", "cid": "a", "kind": "label", "uv": [[1, 2]], "text": " "}',
            "annotate.text of a label must not be empty, got ' '",
        ),
        (
            '{"type": "annotate", "cid": "a", "kind": "point", "uv": [[1, 2]], "color": "red"}',
            "annotate.color must be #rrggbb, got 'red'",
        ),
        (
            '{"type": "annotate", "cid": "a", "kind": "point", "uv": [[1, 2]], "t_capture_ns": -1}',
            "annotate.t_capture_ns must be a non-negative int or null, got '-1'",
        ),
        (
            '{"type": "annotate", "cid": "a", "kind": "point", "uv": [[1, 2]], "rtp_ts": true}',
            "annotate.rtp_ts must be a finite number or null, got 'True'",
        ),
        ('{"type": "erase", "cid": "a", "id": ""}', "erase.id must be a non-empty str of at most 128 chars, got ''"),
        ('{"type": "quality", "level": "4k"}', "quality.level must be one of ('high', 'low', 'none'), got '4k'"),
        ('{"type": "ping", "t": "now"}', "ping.t must be int or float, got 'now'"),
    ],
)
def test_bad_messages_name_the_field(raw: str, error: str) -> None:
    with pytest.raises(SignallingError) as exc:
        parse_message(raw)
    assert str(exc.value) == error


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(SignallingError, match=r"^message over 10 bytes, got 11$"):
        parse_message("x" * 11, limit=10)


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_never_escapes_as_another_error(raw: str) -> None:
    try:
        parse_message(raw)
    except SignallingError as exc:
        assert "\n" not in str(exc)


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "type",
                        "cid",
                        "kind",
                        "uv",
                        "text",
                        "id",
                        "level",
                        "t",
                        "rtp_ts",
                        "rtp_recent",
                        "t_capture_ns",
                        "color",
                    ]
                ),
                c,
                max_size=6,
            )
        ),
        max_leaves=20,
    )
)
def test_arbitrary_json_is_parsed_or_refused_cleanly(value: object) -> None:
    with contextlib.suppress(SignallingError):  # refused cleanly is fine; anything else fails the test
        parse_message(json.dumps(value))


def test_bearer_header() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer  x ") == "x"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None and bearer_token("Bearer ") is None
