"""Plain data at the bridge's edges: poses, annotations, uplink frames.

The bridge knows nothing of registration internals; the registration loop hands
it a :class:`PoseUpdate` and the mentor part hands it :class:`Annotation` ops.
Units are mm and nanoseconds; transforms are ``T_a_b`` (maps frame b into a),
4x4 float64 row-major.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

# The types that cross parts live one layer below (domain/); re-exported here because
# they are the bridge's public message types too.
from domain.annotation import ANNOTATION_KINDS as ANNOTATION_KINDS
from domain.annotation import ANNOTATION_OPS as ANNOTATION_OPS
from domain.annotation import Annotation as Annotation
from domain.annotation import AnnotationOp as AnnotationOp
from domain.annotation import AnnotationOpName as AnnotationOpName
from domain.json_fields import json_int, json_object, json_str
from domain.pose import LIVE_STATUSES as LIVE_STATUSES
from domain.pose import STATUSES as STATUSES
from domain.pose import PoseUpdate as PoseUpdate
from domain.pose import Status as Status
from domain.pose import check_status as check_status
from domain.transforms import Mat4 as Mat4
from domain.transforms import as_transform as as_transform


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
        json_object(data, "registration")
        try:
            reasons = data.get("reasons") or []
            if not isinstance(reasons, list):
                msg = f"registration reasons must be a list, got {reasons!r:.200}"
                raise ValueError(msg)
            return cls(
                id=json_int(data["id"], "id"),
                source=json_str(data["source"], "source"),
                request_seq=json_int(data["request_seq"], "request_seq"),
                state=json_str(data["state"], "state"),
                accepted=data["accepted"] is True,
                status=check_status(json_str(data["status"], "status")),
                method=json_str(data["method"], "method"),
                verdict=json_str(data["verdict"], "verdict"),
                reasons=tuple(json_str(r, "reason") for r in reasons),
                hint=None if data.get("hint") is None else json_str(data["hint"], "hint"),
                fre_mm=_num_or_none(data.get("fre_mm"), "fre_mm"),
                residual_mm=_num_or_none(data.get("residual_mm"), "residual_mm"),
                predicted_tre_mm=_num_or_none(data.get("predicted_tre_mm"), "predicted_tre_mm"),
                rejected=json_int(data.get("rejected", 0), "rejected"),
                n_points=json_int(data.get("n_points", 0), "n_points"),
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
