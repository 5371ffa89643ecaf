"""Fuzzing every decoder that takes bytes from outside (issue 7, hostile input): only the
project's own errors, counted, never a crash.

* the bridge server, over a real CURVE socket with an allowlisted key: arbitrary multipart
  messages; it stays up, answers, and counts what it dropped as malformed;
* ``protocol.decode``, ``Annotation``/``AnnotationOp.from_json``: ``ProtocolError``/``ValueError`` only;
* patient-model manifests read by ``registration.SurfaceModel.from_folder``;
* mentor tokens (``mentor.tokens.verify``): ``TokenError`` only.

``bench/fuzz_atheris.py`` runs the same targets for much longer under atheris.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headset_bridge import protocol as P
from headset_bridge.keys import Allowlist, KeyPair
from headset_bridge.messages import Annotation, AnnotationOp
from headset_bridge.server import BridgeServer, ServerConfig
from mentor.tokens import TokenError, issue, verify

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------- strategies
topics = st.one_of(st.sampled_from(sorted(P.SCHEMAS)).map(str.encode), st.binary(max_size=12))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """Mostly well-formed JSON headers with the right and wrong fields: reaches deep checks."""
    topic = draw(st.sampled_from(sorted(P.SCHEMAS)))
    fields = {
        name: draw(json_values)
        for name in draw(st.lists(st.sampled_from(sorted(P.SCHEMAS[topic]) or ["extra"]), max_size=12))
    }
    base = {"v": draw(st.sampled_from([1, 1, 1, 2, "1"])), "type": topic, "seq": draw(st.integers(-2, 2**64))}
    base["t_ns"] = draw(st.integers(-2, 2**64))
    return json.dumps({**base, **fields}).encode()


frames = st.lists(st.one_of(topics, headers(), st.binary(max_size=300)), min_size=1, max_size=5)


# --------------------------------------------------------------------- bridge server
class RawHeadset:
    """An allowlisted headset key on a bare DEALER: sends whatever the test says."""

    def __init__(self) -> None:
        self.server_keys, self.keys = KeyPair.generate(), KeyPair.generate()
        allow = Allowlist({"fuzzer": self.keys.public})
        self.server = BridgeServer(self.server_keys, allow, ServerConfig.ephemeral()).start()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.curve_serverkey, self.sock.curve_publickey = self.server_keys.public, self.keys.public
        self.sock.curve_secretkey, self.sock.linger = self.keys.secret, 0
        self.sock.connect(self.server.ctl_endpoint)
        self.seq = 0

    def ping(self) -> bool:
        """A valid time request answered: the server is up and serving."""
        self.seq += 1
        self.sock.send_multipart(P.encode("time_req", {"seq": self.seq, "t_ns": time.monotonic_ns()}))
        deadline = time.monotonic() + 5.0
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                msg = P.decode(self.sock.recv_multipart(), P.REPLY_TYPES)
                if msg.topic == "time_rep" and msg.header["seq"] == self.seq:
                    return True
        return False

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
        self.server.stop()


@pytest.fixture(scope="module")
def raw() -> Iterator[RawHeadset]:
    r = RawHeadset()
    assert r.ping()
    yield r
    r.close()


def _rejected_locally(message: list[bytes]) -> bool:
    try:
        P.decode(list(message), allowed=P.UPLINK_TYPES)
    except P.ProtocolError:
        return True
    return False


@FUZZ
@given(st.lists(frames, min_size=1, max_size=4))
def test_server_survives_and_counts_arbitrary_messages(raw: RawHeadset, messages: list[list[bytes]]) -> None:
    before = raw.server.counters.get("malformed")
    for message in messages:
        raw.sock.send_multipart(message)
    assert raw.ping()  # answered after the garbage: up, and the connection still served
    expected = sum(_rejected_locally(m) for m in messages)
    assert raw.server.counters.get("malformed") - before >= expected
    assert raw.server.counters.get("io_error") == 0  # no decoder raised past the counters


# --------------------------------------------------------------------- decoders, in process
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), headers()), min_size=0, max_size=5))
def test_protocol_decode_raises_only_protocol_errors(message: list[bytes]) -> None:
    for allowed in (None, P.UPLINK_TYPES, P.SERVER_TOPICS, P.REPLY_TYPES):
        try:
            decoded = P.decode(message, allowed)
        except P.ProtocolError as exc:
            assert exc.reason and str(exc)
        else:
            assert decoded.topic in P.SCHEMAS


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_annotation_decoders_raise_only_value_errors(value: Any) -> None:
    for decode in (Annotation.from_json, AnnotationOp.from_json):
        try:
            decode(value)
        except ValueError as exc:
            assert str(exc)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["id", "rev", "kind", "author", "role", "points_mm", "created_ns"]), json_values)
)
def test_annotation_fields_of_any_type(fields: dict[str, Any]) -> None:
    good = {"id": "a1", "rev": 0, "kind": "point", "author": "m", "role": "mentor", "points_mm": [[1, 2, 3]]}
    data = {**good, "created_ns": 5, **fields}
    try:
        ann = Annotation.from_json(data)
    except ValueError:
        return
    assert all(math.isfinite(c) for p in ann.points_mm for c in p)


# --------------------------------------------------------------------- manifests
manifests = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"schema_version": st.sampled_from([1, 2, "1"]), "units": st.sampled_from(["mm", "m"])},
        optional={"meshes": json_values, "landmarks": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)


def _from_folder(folder: Path, blob: bytes) -> None:
    from registration import SurfaceModel

    (folder / "manifest.json").write_bytes(blob)
    try:
        SurfaceModel.from_folder(folder)
    except (ValueError, KeyError) as exc:  # the errors from_folder documents by raising them
        assert str(exc)


@FUZZ
@given(manifests)
def test_manifest_reading_raises_only_project_errors(tmp_path: Path, blob: bytes) -> None:
    _from_folder(tmp_path, blob)


def _not_json(blob: bytes) -> bool:
    try:
        json.loads(blob)
    except ValueError:
        return True
    return False


wrong_versions = st.fixed_dictionaries(
    {"schema_version": json_values.filter(lambda v: v != 1), "units": json_values}, optional={"meshes": json_values}
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300).filter(_not_json) | wrong_versions.map(lambda v: json.dumps(v).encode()))
def test_manifest_not_json_or_of_another_version(tmp_path: Path, blob: bytes) -> None:
    """The shapes from_folder does handle today: undecodable bytes and unsupported versions."""
    _from_folder(tmp_path, blob)


def test_manifest_mesh_path_cannot_leave_the_folder(tmp_path: Path) -> None:
    import open3d as o3d

    outside = tmp_path / "elsewhere.ply"
    mesh = o3d.geometry.TriangleMesh.create_sphere(radius=50.0)
    o3d.io.write_triangle_mesh(str(outside), mesh)  # type: ignore[arg-type]
    folder = tmp_path / "model"
    folder.mkdir()
    manifest = {"schema_version": 1, "units": "mm", "meshes": [{"name": "skin", "files": {"ply": "../elsewhere.ply"}}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="outside"):
        from registration import SurfaceModel

        SurfaceModel.from_folder(folder)


# --------------------------------------------------------------------- mentor tokens
SECRET = b"k" * 32
printable_tokens = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
    st.text(max_size=100),  # any Unicode a browser or a proxy could hand over, no lone surrogates
    st.builds(lambda a, b: f"{a}.{b}", st.text(max_size=80), st.text(max_size=60)),
)


@settings(max_examples=500, deadline=None)
@given(printable_tokens)
def test_token_verify_raises_only_token_errors(token: str) -> None:
    with pytest.raises(TokenError):
        verify(SECRET, token, "sess")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=2))
def test_tampered_token_is_refused(position: int, flip: bytes) -> None:
    token = issue(SECRET, "sess", "mentor", "dr-m", now=1000.0)
    i = position % len(token)
    tampered = token[:i] + chr((ord(token[i]) ^ (flip[0] or 1)) % 128 or 65) + token[i + 1 :]
    if tampered == token:
        return
    with pytest.raises(TokenError):
        verify(SECRET, tampered, "sess", now=1000.0)


def test_token_with_a_lone_surrogate_is_a_token_error() -> None:
    with pytest.raises(TokenError):
        verify(SECRET, "\ud800.abc", "sess")


def test_fuzz_inputs_are_reproducible() -> None:
    """The byte corpus of bench/fuzz_atheris.py decodes the same way here (shared targets)."""
    from importlib import util

    spec = util.spec_from_file_location(
        "fuzz_atheris", Path(__file__).resolve().parents[1] / "bench" / "fuzz_atheris.py"
    )
    assert spec is not None and spec.loader is not None
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(3)
    for _ in range(100):
        for target in module.TARGETS.values():
            target(rng.bytes(int(rng.integers(0, 200))))  # raises only on an unexpected error
