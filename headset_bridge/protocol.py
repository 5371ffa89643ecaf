"""Wire format: every message is three ZeroMQ frames ``[topic, header, payload]``.

* topic: ASCII message type (PUB/SUB filters on it),
* header: UTF-8 JSON object with ``v`` (protocol version), ``type`` (== topic),
  ``seq`` and ``t_ns`` plus per-type fields (see :data:`SCHEMAS`),
* payload: raw bytes (little-endian binary or UTF-8 JSON, per type), maybe empty.

``decode`` never trusts the peer: anything off raises :class:`ProtocolError`
whose message quotes the bad value, so the caller can count and drop it.
docs/headset-protocol.md is the normative description.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from headset_bridge.messages import STATUSES, Mat4, as_transform

PROTOCOL_VERSION: Final = 1
MAX_HEADER_BYTES: Final = 64 * 1024
MAT4_BYTES: Final = 128  # 16 little-endian float64, row-major
_MAT4 = struct.Struct("<16d")

Buffer = bytes | memoryview

INT = "int"
NUM = "num"
NUM_OR_NULL = "num?"  # null = not finite (e.g. the rmse of a lost pose)
STR = "str"
BOOL = "bool"
OBJ_OR_NULL = "obj?"
STR_OR_NULL = "str?"
MAT = "mat4"  # list of 16 finite numbers

# Required header fields per message type, beyond v, type, seq, t_ns.
SCHEMAS: Final[dict[str, dict[str, str]]] = {
    # server -> headset, PUB
    "pose": {
        "t_capture_ns": INT,
        "status": STR,
        "reason": STR,
        "fitness": NUM_OR_NULL,
        "rmse_mm": NUM_OR_NULL,
        "repeat": BOOL,
        "epoch": STR,
        "ann_seq": INT,
        "model": OBJ_OR_NULL,
        "sensor": STR,
        "sensor_frame_seq": INT,
    },
    "ann": {"op": STR, "id": STR, "epoch": STR},
    # server -> headset, ROUTER replies
    "snapshot": {"epoch": STR, "count": INT},
    "ann_batch": {"epoch": STR, "from_seq": INT, "to_seq": INT},
    "time_rep": {"t0_ns": INT, "t1_ns": INT, "t2_ns": INT},
    "model_chunk": {"sha256": STR, "index": INT, "count": INT, "size": INT, "chunk_size": INT},
    "error": {"code": STR, "detail": STR},
    # headset -> server, DEALER
    "sync": {"epoch": STR_OR_NULL, "since": INT},
    "hb": {"ann_seq": INT, "pose_seq": INT, "model_sha256": STR_OR_NULL, "offset_ns": INT, "rtt_ns": INT},
    "time_req": {},
    "model_get": {"sha256": STR, "index": INT},
    "depth": {
        "t_capture_ns": INT,
        "width": INT,
        "height": INT,
        "dtype": STR,
        "depth_unit_mm": NUM,
        "fx": NUM,
        "fy": NUM,
        "cx": NUM,
        "cy": NUM,
        "T_world_camera": MAT,
    },
    "video": {"t_capture_ns": INT, "width": INT, "height": INT, "encoding": STR},
    "headset_pose": {"t_capture_ns": INT},
    # both ways, PCM s16le: mentor voice to the surgeon (PUB), headset microphone to the
    # mentors (DEALER; the server names the speaker from the headset's key, not the header)
    "audio": {"sample_rate": INT, "channels": INT, "format": STR, "speaker": STR},
    # headset or tracker -> server, DEALER: a navigation registration (a surface trace and
    # optional touched landmarks); payload n_points x (x, y, z) little-endian float64
    "registration": {"frame": STR, "world_of": STR, "n_points": INT, "landmarks": OBJ_OR_NULL},
}

# Optional header fields: checked when present, absent from older peers.
OPTIONAL_FIELDS: Final[dict[str, dict[str, str]]] = {
    # this server run's id: a new one means the pose stream (and the server clock) restarted
    "pose": {"stream": STR},
    # what a depth value measures: "z" (along the optical axis, the default) or "ray"
    # (distance from the camera centre along the pixel's ray, as HoloLens AHAT gives it)
    "depth": {"depth_kind": STR},
    # the video camera's own pinhole model and pose at capture (all five, or none)
    "video": {"fx": NUM, "fy": NUM, "cx": NUM, "cy": NUM, "T_world_camera": MAT},
}
DEPTH_KINDS: Final = ("z", "ray")
VIDEO_CAMERA_FIELDS: Final = ("fx", "fy", "cx", "cy", "T_world_camera")
# Requests carry every field in the header; their payload is empty.
REQUEST_TYPES: Final = frozenset({"sync", "hb", "time_req", "model_get"})

SERVER_TOPICS: Final = frozenset({"pose", "ann", "audio"})
MAX_AUDIO_BYTES: Final = 64 * 1024
REPLY_TYPES: Final = frozenset({"snapshot", "ann_batch", "time_rep", "model_chunk", "error"})
UPLINK_TYPES: Final = frozenset(
    {"sync", "hb", "time_req", "model_get", "depth", "video", "headset_pose", "audio", "registration"}
)

# Navigation registration limits (docs/headset-protocol.md section 6.1).
MAX_TRACE_POINTS: Final = 20_000
MAX_LANDMARKS: Final = 64
MAX_NAME_CHARS: Final = 64  # a landmark or headset name
MAX_COORDINATE_MM: Final = 1.0e5  # 100 m from the world origin: nothing in a theatre is further
TRACE_POINT_BYTES: Final = 24  # x, y, z as little-endian float64
REGISTRATION_FRAMES: Final = frozenset({"world"})


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    topic: str
    header: dict[str, Any]
    payload: Buffer


def encode(topic: str, header: dict[str, Any], payload: Buffer = b"") -> list[Buffer]:
    """Frames for one message; ``header`` gains ``v`` and ``type``."""
    full = {"v": PROTOCOL_VERSION, "type": topic, **header}
    body = json.dumps(full, separators=(",", ":"), allow_nan=False).encode()
    return [topic.encode("ascii"), body, payload]


def decode(frames: list[Any], allowed: frozenset[str] | None = None) -> Message:
    """Parse and validate frames (bytes, memoryview or zmq.Frame)."""
    if len(frames) != 3:
        raise ProtocolError("frame_count", f"expected 3 frames [topic, header, payload], got {len(frames)!r}")
    topic_raw, header_raw, payload = frames
    if type(topic_raw) is not bytes or type(header_raw) is not bytes or type(payload) is not bytes:
        topic_raw, header_raw, payload = (_buffer(f) for f in frames)
    topic = _TOPIC_OF.get(topic_raw) if type(topic_raw) is bytes else None  # hot path: one dict look-up
    if topic is None or (allowed is not None and topic not in allowed):
        topic = _topic(topic_raw, allowed)
    header = _header(header_raw, topic)
    if not _FAST_CHECKS[topic](header):
        _check_fields(header, topic)  # the full check raises, naming the field
    if topic in OPTIONAL_FIELDS:
        _check_optional(header, topic)
    _check_payload(topic, header, payload)
    return Message(topic, header, payload)


def _buffer(frame: Any) -> Buffer:
    if isinstance(frame, (bytes, memoryview)):
        return frame
    buf = getattr(frame, "buffer", None)  # zmq.Frame: zero-copy view
    if isinstance(buf, memoryview):
        return buf
    raise ProtocolError("frame_type", f"frame must be bytes-like, got {type(frame).__name__!r}")


def _topic(raw: Buffer, allowed: frozenset[str] | None) -> str:
    raw_b = bytes(raw[:64])
    try:
        topic = raw_b.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("bad_topic", f"topic must be ASCII, got {raw_b!r}") from None
    if topic not in SCHEMAS or (allowed is not None and topic not in allowed) or len(raw) > 64:
        raise ProtocolError("bad_topic", f"unknown or unexpected topic, got {raw_b!r}")
    return topic


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name!r}")


def _header(raw: Buffer, topic: str) -> dict[str, Any]:
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("bad_header", f"header over {MAX_HEADER_BYTES} bytes, got {len(raw)!r}")
    try:
        text = raw.decode("utf-8") if type(raw) is bytes else bytes(raw).decode("utf-8")
        header = _JSON.decode(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_header", f"header is not JSON ({exc}), got {bytes(raw[:200])!r}") from None
    if type(header) is not dict:
        raise ProtocolError("bad_header", f"header must be a JSON object, got {header!r:.200}")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"header v must be {PROTOCOL_VERSION}, got {header.get('v')!r:.80}")
    if header.get("type") != topic:
        raise ProtocolError("bad_header", f"header type must equal topic {topic!r}, got {header.get('type')!r:.80}")
    return header


def _check_fields(header: dict[str, Any], topic: str) -> None:
    for name, kind, check in _CHECKS[topic]:
        value = header.get(name, _MISSING)
        if value is _MISSING:
            raise ProtocolError("bad_header", f"{topic} header lacks {name!r}, got keys {sorted(header)!r:.200}")
        if not check(value):
            raise ProtocolError("bad_field", f"{topic}.{name} must be {kind}, got {value!r:.200}")
    if header["seq"] < 0 or header["t_ns"] < 0:
        raise ProtocolError(
            "bad_field", f"{topic} seq and t_ns must be >= 0, got {header['seq']!r}, {header['t_ns']!r}"
        )
    if topic == "pose" and header["status"] not in STATUSES:
        raise ProtocolError("bad_field", f"pose.status must be one of {STATUSES}, got {header['status']!r:.80}")


def _check_optional(header: dict[str, Any], topic: str) -> None:
    for name, kind in OPTIONAL_FIELDS[topic].items():
        if name in header and not _is_kind(header[name], kind):
            raise ProtocolError("bad_field", f"{topic}.{name} must be {kind}, got {header[name]!r:.200}")
    if topic == "depth" and header.get("depth_kind", "z") not in DEPTH_KINDS:
        raise ProtocolError(
            "bad_field", f"depth.depth_kind must be one of {DEPTH_KINDS}, got {header['depth_kind']!r:.40}"
        )
    if topic == "video":
        present = [n for n in VIDEO_CAMERA_FIELDS if n in header]
        if present and len(present) != len(VIDEO_CAMERA_FIELDS):
            raise ProtocolError(
                "bad_header", f"video camera needs all of {VIDEO_CAMERA_FIELDS} or none, got only {present!r}"
            )
        if present and not (header["fx"] > 0 and header["fy"] > 0):
            raise ProtocolError("bad_field", f"video fx, fy must be > 0, got {header['fx']!r}, {header['fy']!r}")


def _is_kind(value: Any, kind: str) -> bool:
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if kind == NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if kind == NUM_OR_NULL:
        return value is None or _is_kind(value, NUM)
    if kind == STR:
        return isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == OBJ_OR_NULL:
        return value is None or isinstance(value, dict)
    if kind == STR_OR_NULL:
        return value is None or isinstance(value, str)
    if kind == MAT:
        return isinstance(value, list) and len(value) == 16 and all(_is_kind(v, NUM) for v in value)
    raise AssertionError(kind)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float: not a usable number
        return False


_MISSING = object()

# -- the hot path: one precompiled check per topic ---------------------------------
# decode() runs for every message a headset receives (poses at 60 Hz plus keepalives),
# so the per-field loop above is only the fallback that names the bad field. The fast
# check is straight-line code generated once from SCHEMAS: exact-type tests (JSON only
# yields exact dict/list/str/int/float/bool/None) and no call per field. It may refuse
# what the full check accepts (then the full check decides), never the other way round.
_INT_RANGE = "-9223372036854775808 <= v <= 9223372036854775807"
_FAST_EXPR: Final[dict[str, str]] = {
    INT: f"type(v) is int and {_INT_RANGE}",
    NUM: "(type(v) is float and _isfinite(v)) or (type(v) is int and -_BIG < v < _BIG)",
    STR: "type(v) is str",
    BOOL: "type(v) is bool",
    OBJ_OR_NULL: "v is None or type(v) is dict",
    STR_OR_NULL: "v is None or type(v) is str",
    MAT: "_is_mat(v)",
}
_FAST_EXPR[NUM_OR_NULL] = f"v is None or {_FAST_EXPR[NUM]}"


def _is_mat(value: Any) -> bool:
    return type(value) is list and len(value) == 16 and all(_is_kind(v, NUM) for v in value)


def _fast_check(topic: str, fields: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    lines = [f"def check_{topic}(h):", "    g = h.get"]
    for name, kind in {"seq": INT, "t_ns": INT, **fields}.items():
        expr = f"type(v) is int and 0 <= v <= {2**63 - 1}" if name in ("seq", "t_ns") else _FAST_EXPR[kind]
        lines += [f"    v = g({name!r}, _MISSING)", f"    if not ({expr}):", "        return False"]
    if topic == "pose":
        lines += ["    if h['status'] not in _STATUSES:", "        return False"]
    lines.append("    return True")
    scope: dict[str, Any] = {
        "_MISSING": _MISSING,
        "_isfinite": math.isfinite,
        "_BIG": 2**1000,  # far inside float range: converting never overflows
        "_is_mat": _is_mat,
        "_STATUSES": frozenset(STATUSES),
    }
    exec("\n".join(lines), scope)  # noqa: S102 - source built above from SCHEMAS only
    check: Callable[[dict[str, Any]], bool] = scope[f"check_{topic}"]
    return check


_FAST_CHECKS: Final = {topic: _fast_check(topic, fields) for topic, fields in SCHEMAS.items()}
_TOPIC_OF: Final = {topic.encode("ascii"): topic for topic in SCHEMAS}
_JSON: Final = json.JSONDecoder(parse_constant=_reject_constant)  # built once, not per message


def _checker(kind: str) -> Callable[[Any], bool]:
    # Fast paths for the hot types (exact type checks: bool is not an int here).
    if kind == INT:
        return lambda v: type(v) is int and -(2**63) <= v < 2**63
    if kind == STR:
        return lambda v: type(v) is str
    if kind == BOOL:
        return lambda v: type(v) is bool
    return lambda v: _is_kind(v, kind)


_CHECKS: Final[dict[str, list[tuple[str, str, Callable[[Any], bool]]]]] = {
    topic: [(n, k, _checker(k)) for n, k in {"seq": INT, "t_ns": INT, **fields}.items()]
    for topic, fields in SCHEMAS.items()
}


def _check_payload(topic: str, header: dict[str, Any], payload: Buffer) -> None:
    n = len(payload)
    expected: tuple[int, ...] | None = None
    if topic == "pose":
        expected = (0, MAT4_BYTES)
    elif topic == "headset_pose":
        expected = (MAT4_BYTES,)
    elif topic == "depth":
        expected = (_depth_bytes(header),)
    elif topic == "video":
        expected = _video_bytes(header)
    elif topic == "audio":
        _check_audio(header, n)
    elif topic == "registration":
        _check_registration(header, payload)
    elif topic in REQUEST_TYPES and n:  # a field sent in the payload instead of the header
        raise ProtocolError(
            "bad_payload", f"{topic} carries its fields in the header: payload must be empty, got {n!r} bytes"
        )
    if expected is not None and n not in expected:
        raise ProtocolError("bad_payload", f"{topic} payload must be {expected} bytes, got {n!r}")


def _depth_bytes(header: dict[str, Any]) -> int:
    w, h = header["width"], header["height"]
    if not (0 < w <= 8192 and 0 < h <= 8192) or header["dtype"] != "uint16":
        raise ProtocolError(
            "bad_field", f"depth must be uint16 with 0 < width, height <= 8192, got {w!r}x{h!r} {header['dtype']!r:.40}"
        )
    if header["depth_unit_mm"] <= 0:
        raise ProtocolError("bad_field", f"depth_unit_mm must be > 0, got {header['depth_unit_mm']!r}")
    return int(w * h * 2)


def _check_audio(header: dict[str, Any], n: int) -> None:
    rate, channels = header["sample_rate"], header["channels"]
    if header["format"] != "s16le" or not (8000 <= rate <= 48000 and 1 <= channels <= 2):
        raise ProtocolError(
            "bad_field",
            f"audio must be s16le, 8-48 kHz, 1-2 channels, got {header['format']!r:.20} {rate!r} Hz {channels!r} ch",
        )
    if n % (2 * channels) or n > MAX_AUDIO_BYTES:
        raise ProtocolError(
            "bad_payload", f"audio payload must be whole s16 samples up to {MAX_AUDIO_BYTES} bytes, got {n!r}"
        )


def _check_registration(header: dict[str, Any], payload: Buffer) -> None:
    frame, n, world_of = header["frame"], header["n_points"], header["world_of"]
    if frame not in REGISTRATION_FRAMES:
        raise ProtocolError(
            "bad_field", f"registration.frame must be one of {sorted(REGISTRATION_FRAMES)}, got {frame!r:.40}"
        )
    if not 0 <= n <= MAX_TRACE_POINTS:
        raise ProtocolError("bad_field", f"registration.n_points must be within 0..{MAX_TRACE_POINTS}, got {n!r:.40}")
    if len(world_of) > MAX_NAME_CHARS or not world_of.isprintable():
        raise ProtocolError(
            "bad_field",
            f"registration.world_of must be printable, at most {MAX_NAME_CHARS} chars, got {world_of!r:.80}",
        )
    _check_landmarks(header["landmarks"])
    if len(payload) != n * TRACE_POINT_BYTES:
        raise ProtocolError(
            "bad_payload", f"registration payload must be n_points x {TRACE_POINT_BYTES} bytes, got {len(payload)!r}"
        )
    pts = np.frombuffer(payload, dtype="<f8").reshape(-1, 3)
    bad = ~np.all(np.isfinite(pts) & (np.abs(pts) <= MAX_COORDINATE_MM), axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ProtocolError(
            "bad_payload",
            f"registration trace point {i} must be finite mm within {MAX_COORDINATE_MM:g}, got {pts[i].tolist()!r}",
        )


def _check_landmarks(marks: Any) -> None:
    """None, or {name: [x, y, z]} with at most MAX_LANDMARKS finite, plausible entries."""
    if marks is None:
        return
    if len(marks) > MAX_LANDMARKS:
        raise ProtocolError(
            "bad_field", f"registration.landmarks must hold at most {MAX_LANDMARKS}, got {len(marks)!r}"
        )
    for name, xyz in marks.items():
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise ProtocolError(
                "bad_field",
                f"registration landmark names must be printable, 1-{MAX_NAME_CHARS} chars, got {name!r:.80}",
            )
        ok = type(xyz) is list and len(xyz) == 3 and all(_is_kind(v, NUM) and abs(v) <= MAX_COORDINATE_MM for v in xyz)
        if not ok:
            raise ProtocolError(
                "bad_field",
                f"registration landmark {name!r} must be [x, y, z] finite mm within {MAX_COORDINATE_MM:g}, got {xyz!r:.120}",
            )


def registration_points(payload: Buffer) -> npt.NDArray[np.float64]:
    """The (N, 3) trace of a checked ``registration`` payload, as a native-order copy."""
    return np.frombuffer(payload, dtype="<f8").reshape(-1, 3).astype(np.float64)


def registration_landmarks(header: dict[str, Any]) -> dict[str, tuple[float, float, float]] | None:
    """The landmarks of a checked ``registration`` header, or None."""
    marks = header["landmarks"]
    if marks is None:
        return None
    return {str(k): (float(v[0]), float(v[1]), float(v[2])) for k, v in marks.items()}


def registration_payload(points_mm: Any) -> tuple[int, bytes]:
    """``(n_points, payload)`` for an (N, 3) trace in mm (ValueError if not that shape)."""
    pts = np.asarray(points_mm, dtype="<f8")
    if pts.ndim != 2 or pts.shape[1] != 3:
        msg = f"trace must be (N, 3) mm, got shape {pts.shape!r}"
        raise ValueError(msg)
    return len(pts), np.ascontiguousarray(pts).tobytes()


def _video_bytes(header: dict[str, Any]) -> tuple[int, ...] | None:
    w, h, enc = header["width"], header["height"], header["encoding"]
    if not (0 < w <= 8192 and 0 < h <= 8192):
        raise ProtocolError("bad_field", f"video size must be within 1..8192, got {w!r}x{h!r}")
    if enc == "rgb8":
        return (int(w * h * 3),)
    if enc == "jpeg":
        return None
    raise ProtocolError("bad_field", f"video encoding must be 'rgb8' or 'jpeg', got {enc!r:.40}")


def pack_mat4(T: Mat4) -> bytes:
    return _MAT4.pack(*np.asarray(T, dtype=np.float64).reshape(16))


def unpack_mat4(payload: Buffer, name: str = "transform") -> Mat4:
    if len(payload) != MAT4_BYTES:
        raise ProtocolError("bad_payload", f"{name} needs {MAT4_BYTES} bytes, got {len(payload)!r}")
    values = _MAT4.unpack(payload)
    # Any NaN/inf makes the sum non-finite (so does an overflow: also refused). Summing the
    # 16 Python floats is cheaper than numpy's reduction for this size.
    if not math.isfinite(sum(values)):
        rows = [list(values[i : i + 4]) for i in range(0, 16, 4)]
        raise ProtocolError("bad_payload", f"{name} must be finite, got {rows!r}")
    return np.array(values, dtype=np.float64).reshape(4, 4)  # a copy, native order


def mat4_from_list(values: list[float], name: str) -> Mat4:
    try:
        return as_transform(np.asarray(values, dtype=np.float64).reshape(4, 4), name)
    except ValueError as exc:
        raise ProtocolError("bad_field", str(exc)) from None


def json_payload(payload: Buffer, topic: str) -> Any:
    try:
        return _JSON.decode(bytes(payload).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(
            "bad_payload", f"{topic} payload is not JSON ({exc}), got {bytes(payload[:200])!r}"
        ) from None


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
