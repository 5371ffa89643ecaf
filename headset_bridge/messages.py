"""Plain data at the bridge's edges: poses, annotations, uplink frames.

The bridge knows nothing of registration internals; the registration loop hands
it a :class:`PoseUpdate` and the mentor part hands it :class:`Annotation` ops.
Units are mm and nanoseconds; transforms are ``T_a_b`` (maps frame b into a),
4x4 float64 row-major.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

STATUSES: tuple[str, ...] = ("tracking", "degraded", "lost")
LIVE_STATUSES: tuple[str, ...] = ("tracking", "degraded")
ANNOTATION_KINDS: tuple[str, ...] = ("point", "stroke", "label")
ANNOTATION_OPS: tuple[str, ...] = ("add", "update", "delete")

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$")

Status = Literal["tracking", "degraded", "lost"]
AnnotationOpName = Literal["add", "update", "delete"]
Mat4 = npt.NDArray[np.float64]


def as_transform(value: Any, name: str) -> Mat4:
    """A finite 4x4 float64 copy of ``value`` or a ValueError quoting it."""
    arr = np.array(value, dtype=np.float64)
    if arr.shape != (4, 4):
        msg = f"{name} must be 4x4, got shape {arr.shape!r}"
        raise ValueError(msg)
    if not np.all(np.isfinite(arr)):
        msg = f"{name} must be finite, got {arr.tolist()!r}"
        raise ValueError(msg)
    return arr


def check_status(status: str) -> Status:
    if status not in STATUSES:
        msg = f"status must be one of {STATUSES}, got {status!r}"
        raise ValueError(msg)
    return status  # type: ignore[return-value]


@dataclass(frozen=True)
class PoseUpdate:
    """One registration result, as the registration loop hands it over.

    ``timestamp_ns`` is the capture time of the depth frame the pose was
    computed from, on the *server's* monotonic clock (time.monotonic_ns).
    """

    T_sensor_model: Mat4
    status: Status
    fitness: float
    rmse_mm: float
    timestamp_ns: int  # None is accepted (and stored as 0) only when status is lost
    seq: int
    sensor: str = ""  # which headset's depth sensor, "" when not a headset
    sensor_frame_seq: int = -1  # seq of that headset's depth frame, -1 unknown

    def __post_init__(self) -> None:
        # A str-valued Enum (registration's Status) becomes its plain value.
        object.__setattr__(self, "status", check_status(str(getattr(self.status, "value", self.status))))
        object.__setattr__(self, "T_sensor_model", as_transform(self.T_sensor_model, "T_sensor_model"))
        for name in ("fitness", "rmse_mm"):
            value = getattr(self, name)
            # Non-finite is allowed (a lost estimate has rmse inf); it travels as null.
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                msg = f"{name} must be a number, got {value!r}"
                raise ValueError(msg)
            object.__setattr__(self, name, float(value))
        if not isinstance(self.seq, int) or self.seq < 0:
            msg = f"seq must be a non-negative int, got {self.seq!r}"
            raise ValueError(msg)
        if self.timestamp_ns is None and self.status == "lost":
            object.__setattr__(self, "timestamp_ns", 0)  # nothing to age-check on a lost pose
        if not isinstance(self.timestamp_ns, int) or self.timestamp_ns < 0:
            msg = f"timestamp_ns must be a non-negative int (None only when lost), got {self.timestamp_ns!r}"
            raise ValueError(msg)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], seq: int | None = None) -> PoseUpdate:
        """Build from a plain dict; ``seq`` fills in when the dict has none."""
        keys = ("T_sensor_model", "status", "fitness", "rmse_mm", "timestamp_ns")
        missing = [k for k in keys if k not in data] + (["seq"] if "seq" not in data and seq is None else [])
        if missing:
            msg = f"pose update lacks {missing!r}, got keys {sorted(data)!r}"
            raise ValueError(msg)
        extra = {k: data[k] for k in ("sensor", "sensor_frame_seq") if k in data}
        seq_value: Any = data.get("seq", seq)  # validated in __post_init__
        return cls(**{k: data[k] for k in keys}, seq=seq_value, **extra)

    @classmethod
    def from_estimate(cls, estimate: object, seq: int, sensor: str = "", sensor_frame_seq: int = -1) -> PoseUpdate:
        """Duck-typed: anything with T_sensor_model, status, fitness, rmse_mm, timestamp_ns."""
        fields = ("T_sensor_model", "status", "fitness", "rmse_mm", "timestamp_ns")
        missing = [f for f in fields if not hasattr(estimate, f)]
        if missing:
            msg = f"estimate lacks {missing!r}, got {type(estimate).__name__!r}"
            raise ValueError(msg)
        data = {f: getattr(estimate, f) for f in fields}
        return cls(**data, seq=seq, sensor=sensor, sensor_frame_seq=sensor_frame_seq)


@dataclass(frozen=True)
class Annotation:
    """A mentor's mark on the patient model (points in model mm, LPS)."""

    id: str
    kind: str
    author: str
    role: str
    points_mm: tuple[tuple[float, float, float], ...]
    created_ns: int
    rev: int = 0
    text: str = ""
    color: str = "#ffcc00"
    screen_xy: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id or len(self.id) > 128:
            msg = f"annotation id must be a non-empty str of at most 128 chars, got {self.id!r}"
            raise ValueError(msg)
        if self.kind not in ANNOTATION_KINDS:
            msg = f"annotation kind must be one of {ANNOTATION_KINDS}, got {self.kind!r}"
            raise ValueError(msg)
        pts = tuple(tuple(float(c) for c in p) for p in self.points_mm)
        if any(len(p) != 3 or not all(math.isfinite(c) for c in p) for p in pts):
            msg = f"points_mm must be finite (x, y, z) triples, got {self.points_mm!r}"
            raise ValueError(msg)
        object.__setattr__(self, "points_mm", pts)
        if not isinstance(self.color, str) or not _COLOUR.match(self.color):
            msg = f"annotation color must be #rrggbb or #rrggbbaa, got {self.color!r}"
            raise ValueError(msg)
        if self.screen_xy is not None:
            xy = tuple(tuple(float(c) for c in p) for p in self.screen_xy)
            if any(len(p) != 2 or not all(math.isfinite(c) for c in p) for p in xy):
                msg = f"screen_xy must be finite (x, y) pairs, got {self.screen_xy!r}"
                raise ValueError(msg)
            object.__setattr__(self, "screen_xy", xy)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rev": self.rev,
            "kind": self.kind,
            "author": self.author,
            "role": self.role,
            "points_mm": [list(p) for p in self.points_mm],
            "screen_xy": None if self.screen_xy is None else [list(p) for p in self.screen_xy],
            "text": self.text,
            "color": self.color,
            "created_ns": self.created_ns,
        }

    @classmethod
    def from_json(cls, data: Any) -> Annotation:
        _json_object(data, "annotation")
        try:
            return cls(
                id=data["id"],
                rev=_int(data["rev"], "rev"),
                kind=data["kind"],
                author=_str(data["author"], "author"),
                role=_str(data["role"], "role"),
                points_mm=tuple(tuple(p) for p in data["points_mm"]),
                screen_xy=None if data.get("screen_xy") is None else tuple(tuple(p) for p in data["screen_xy"]),
                text=_str(data.get("text", ""), "text"),
                color=_str(data.get("color", "#ffcc00"), "color"),
                created_ns=_int(data["created_ns"], "created_ns"),
            )
        except (KeyError, TypeError) as exc:
            msg = f"annotation is malformed ({exc!r}), got {data!r}"
            raise ValueError(msg) from exc


def _json_object(data: Any, what: str) -> None:
    if not isinstance(data, dict):
        msg = f"{what} must be a JSON object, got {data!r:.200}"
        raise ValueError(msg)


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        msg = f"{name} must be an int, got {value!r}"
        raise ValueError(msg)
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        msg = f"{name} must be a str, got {value!r}"
        raise ValueError(msg)
    return value


@dataclass(frozen=True)
class AnnotationOp:
    """One entry of the server's annotation log; ``seq`` is assigned by the server."""

    seq: int
    op: AnnotationOpName
    id: str
    annotation: Annotation | None  # None for delete

    def to_json(self) -> dict[str, Any]:
        ann = None if self.annotation is None else self.annotation.to_json()
        return {"seq": self.seq, "op": self.op, "id": self.id, "annotation": ann}

    @classmethod
    def from_json(cls, data: Any) -> AnnotationOp:
        _json_object(data, "annotation op")
        op = data.get("op")
        if op not in ANNOTATION_OPS:
            msg = f"annotation op must be one of {ANNOTATION_OPS}, got {op!r}"
            raise ValueError(msg)
        raw = data.get("annotation")
        ann = None if op == "delete" else Annotation.from_json(raw)
        ident = _str(data.get("id"), "id")
        if ann is not None and ann.id != ident:
            msg = f"annotation op id {ident!r} differs from its annotation's id, got {ann.id!r}"
            raise ValueError(msg)
        return cls(seq=_int(data.get("seq"), "seq"), op=op, id=ident, annotation=ann)


@dataclass(frozen=True)
class ModelInfo:
    """What identifies the current patient model (GLB, glTF metres)."""

    sha256: str
    size: int
    chunk_size: int

    @property
    def chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "chunk_size": self.chunk_size}


@dataclass(frozen=True)
class DepthFrame:
    """A headset depth frame as the server hands it to registration."""

    headset: str
    seq: int
    t_capture_ns: int  # headset clock
    t_capture_server_ns: int | None  # same instant on the server clock, None before clock sync
    depth: npt.NDArray[np.uint16]  # (height, width), raw units
    depth_unit_mm: float
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy in pixels
    T_world_camera: Mat4  # mm, headset world
    t_received_ns: int | None = None  # server clock when the message arrived (depth frame "in")
    depth_kind: str = "z"  # "z": along the optical axis; "ray": from the camera centre along the pixel's ray


@dataclass(frozen=True)
class VideoFrame:
    headset: str
    seq: int
    t_capture_ns: int
    t_capture_server_ns: int | None
    width: int
    height: int
    encoding: str  # "rgb8" or "jpeg"
    data: bytes
    intrinsics: tuple[float, float, float, float] | None = None  # fx, fy, cx, cy (px); None: the configured camera
    T_world_camera: Mat4 | None = None  # the video camera at capture, mm, headset world


@dataclass(frozen=True)
class AudioChunk:
    """Headset microphone PCM (s16le, interleaved) as it arrived; ``t_received_ns`` is the
    server's monotonic clock."""

    headset: str
    seq: int
    t_received_ns: int
    sample_rate: int
    channels: int
    pcm: bytes


@dataclass(frozen=True)
class HeadsetPoseSample:
    headset: str
    seq: int
    t_capture_ns: int
    t_capture_server_ns: int | None
    T_world_head: Mat4


@dataclass
class Counters:
    """Things the bridge dropped or rejected, by reason; never silently."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n

    def get(self, reason: str) -> int:
        return self.counts.get(reason, 0)


@dataclass(frozen=True)
class RegistrationRequest:
    """A navigation registration uplinked by a headset or a tracker (``registration``
    topic): a surface trace and optional touched landmarks, in mm, in the world frame of
    ``world_of`` (the sender's own world when it sent ``""``). ``t_received_ns`` is the
    server's monotonic clock."""

    headset: str  # the sender, named by its key
    seq: int
    t_received_ns: int
    world_of: str
    points_mm: npt.NDArray[np.float64]  # (N, 3), x y z per row
    landmarks: dict[str, tuple[float, float, float]] | None  # model landmark name -> measured


REGISTRATION_STATES: tuple[str, ...] = ("running", "done")
MAX_VERDICT_CHARS = 600  # one operator line; reasons and hint are cut to fit a header
MAX_VERDICT_REASONS = 8


@dataclass(frozen=True)
class RegistrationVerdict:
    """What the server says about the latest navigation registration; it travels in every
    ``pose`` header (field ``registration``) so a late headset sees it too.

    ``id`` counts registrations on this server (a new id = a new request); ``state`` is
    ``running`` until the result is in; ``accepted`` (status ``tracking``) means the
    session's tracker starts from it at the next depth frame. Lengths are mm; None is
    "not measured" (e.g. no landmarks, no FRE)."""

    id: int
    source: str  # headset key name, or "slicer"
    request_seq: int  # the request's message seq (-1 when not from the bridge)
    state: str
    accepted: bool
    status: Status
    method: str
    verdict: str
    reasons: tuple[str, ...] = ()
    hint: str | None = None
    fre_mm: float | None = None
    residual_mm: float | None = None
    predicted_tre_mm: float | None = None
    rejected: int = 0
    n_points: int = 0

    def __post_init__(self) -> None:
        if self.state not in REGISTRATION_STATES:
            msg = f"registration state must be one of {REGISTRATION_STATES}, got {self.state!r}"
            raise ValueError(msg)
        check_status(self.status)
        object.__setattr__(self, "verdict", _clip(self.verdict))
        object.__setattr__(self, "reasons", tuple(_clip(r) for r in self.reasons[:MAX_VERDICT_REASONS]))
        object.__setattr__(self, "hint", None if self.hint is None else _clip(self.hint))
        for name in ("fre_mm", "residual_mm", "predicted_tre_mm"):
            value = getattr(self, name)
            finite = value is not None and math.isfinite(float(value))
            object.__setattr__(self, name, float(value) if finite else None)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out

    @classmethod
    def from_json(cls, data: Any) -> RegistrationVerdict:
        """Parse a ``registration`` header object, or ValueError naming what is wrong."""
        _json_object(data, "registration")
        try:
            reasons = data.get("reasons") or []
            if not isinstance(reasons, list):
                msg = f"registration reasons must be a list, got {reasons!r:.200}"
                raise ValueError(msg)
            return cls(
                id=_int(data["id"], "id"),
                source=_str(data["source"], "source"),
                request_seq=_int(data["request_seq"], "request_seq"),
                state=_str(data["state"], "state"),
                accepted=data["accepted"] is True,
                status=check_status(_str(data["status"], "status")),
                method=_str(data["method"], "method"),
                verdict=_str(data["verdict"], "verdict"),
                reasons=tuple(_str(r, "reason") for r in reasons),
                hint=None if data.get("hint") is None else _str(data["hint"], "hint"),
                fre_mm=_num_or_none(data.get("fre_mm"), "fre_mm"),
                residual_mm=_num_or_none(data.get("residual_mm"), "residual_mm"),
                predicted_tre_mm=_num_or_none(data.get("predicted_tre_mm"), "predicted_tre_mm"),
                rejected=_int(data.get("rejected", 0), "rejected"),
                n_points=_int(data.get("n_points", 0), "n_points"),
            )
        except KeyError as exc:
            msg = f"registration lacks {exc.args[0]!r}, got keys {sorted(data)!r:.200}"
            raise ValueError(msg) from None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_VERDICT_CHARS else text[: MAX_VERDICT_CHARS - 3] + "..."


def _num_or_none(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name} must be a number or null, got {value!r:.80}"
        raise ValueError(msg)
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond float range
        msg = f"{name} must be a finite number or null, got an integer of {len(str(value))} digits"
        raise ValueError(msg) from None
