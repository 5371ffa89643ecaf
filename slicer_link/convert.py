"""scrubin objects <-> OpenIGTLink messages, and the checks on what Slicer sends.

Frames: scrubin's model side is patient LPS mm. Slicer's scene is RAS, and OpenIGTLinkIF
copies POLYDATA and POINT coordinates into it unchanged, so model-side coordinates are
flipped to RAS on the wire when ``wire_frame == "RAS"`` (x and y negate; the flip is its
own inverse). The sensor side has no anatomical axes and is never flipped: the TRANSFORM
``ModelToSensor`` on the wire is ``T_sensor_model @ T_lps_wire``, so meshes in wire
coordinates placed under it land in sensor mm.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from pyigtl.messages import PointMessage, StringMessage, TransformMessage

from domain.pose import PoseEstimate, status_name
from domain.transforms import as_transform
from slicer_link.config import WireFrame
from slicer_link.polydata import PolyDataMessage

if TYPE_CHECKING:
    from domain.annotation import Annotation

F64 = npt.NDArray[np.float64]
LandmarkFrame = Literal["sensor", "model"]

T_LPS_RAS: F64 = np.diag([-1.0, -1.0, 1.0, 1.0])  # also T_ras_lps: the flip is an involution
ORTHONORMAL_TOL = 1e-3  # float32 on the wire plus Slicer's own compositions
MAX_TRANSLATION_MM = 5000.0
MAX_COORDINATE_MM = 1.0e5
POINT_NAME_BYTES = 64
POINT_GROUP_BYTES = 32
POINT_ELEMENT_BYTES = 136  # one POINT element on the wire (name, group, colour, xyz, diameter, owner)
# A navigation registration from Slicer: a POINT list of the surface trace (sensor frame,
# never flipped, like LandmarksSensor), and the verdict sent back as a STRING.
TRACE_DEVICE = "SurfaceTrace"
VERDICT_DEVICE = "RegistrationVerdict"
MAX_TRACE_POINTS = 20_000  # as over the headset bridge; the link's message limit may cap it lower


def flip(frame: WireFrame) -> F64:
    """``T_lps_wire`` (= ``T_wire_lps``) for model-side coordinates."""
    return T_LPS_RAS if frame == "RAS" else np.eye(4)


def model_to_wire(points_lps: object, frame: WireFrame) -> F64:
    """(N, 3) model LPS mm -> wire coordinates (see module docstring)."""
    P = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    return P * np.diag(flip(frame))[:3]


wire_to_model = model_to_wire  # the flip is its own inverse


def wall_time_s(timestamp_ns: int | None) -> float:
    """OpenIGTLink timestamps are Unix seconds; scrubin stamps frames on the monotonic clock."""
    now = time.time()
    if timestamp_ns is None:
        return now
    return now - (time.monotonic_ns() - int(timestamp_ns)) * 1e-9


# ---------------------------------------------------------------- outgoing
def mesh_message(name: str, vertices_lps: object, triangles: object, frame: WireFrame) -> PolyDataMessage:
    """POLYDATA named ``name`` (Slicer creates a model node of that name)."""
    return PolyDataMessage(model_to_wire(vertices_lps, frame), triangles, device_name=name)


def status_text(estimate: PoseEstimate) -> str:
    """One line for Slicer's text node: status, fit quality and why it is not tracking."""
    status = status_name(estimate.status)
    text = f"{status} fitness={_num(estimate.fitness, 2)} rmse={_num(estimate.rmse_mm, 2)}mm"
    if estimate.reasons:
        text += " | " + "; ".join(estimate.reasons)
    return ascii_line(text)


def ascii_line(text: str, limit: int = 1000) -> str:
    """``text`` as ASCII (others become ``?``) of at most ``limit`` characters, for STRING."""
    return text.encode("ascii", "replace").decode("ascii")[:limit]


def transform_message(T_sensor_model: F64, status: str, device: str, frame: WireFrame, timestamp_s: float) -> Any:
    """TRANSFORM ``device`` (ModelToSensor) with the status as header-v2 metadata.

    Slicer copies metadata keys containing "Status" onto the transform node's attributes,
    so the status travels atomically with the matrix it belongs to.
    """
    msg = TransformMessage(T_sensor_model @ flip(frame), timestamp=timestamp_s, device_name=device)
    msg.header_version = 2
    msg.metadata = {"TransformStatus": status}
    return msg


def status_message(text: str, device: str, timestamp_s: float) -> Any:
    return StringMessage(text, timestamp=timestamp_s, device_name=device)


def annotation_message(annotations: Sequence[Annotation], device: str, frame: WireFrame) -> Any:
    """One POINT list of every annotation's points (strokes: one point per vertex)."""
    names: list[str] = []
    groups: list[str] = []
    colours: list[tuple[int, int, int, int]] = []
    points: list[tuple[float, float, float]] = []
    for ann in annotations:
        label = ann.text or f"{ann.kind}-{ann.id}"
        many = len(ann.points_mm) > 1
        for k, p in enumerate(ann.points_mm):
            names.append(f"{label} {k + 1}" if many else label)
            groups.append(ann.kind)
            colours.append(_rgba(ann.color))
            points.append(p)
    wire = model_to_wire(points, frame) if points else np.zeros((0, 3))
    return PointList(wire, names, groups, colours, device_name=device)


class PointList(PointMessage):  # type: ignore[misc]  # pyigtl is untyped (Any)
    """POINT that may be empty (clears Slicer's list) and cuts UTF-8 names on character
    boundaries (pyigtl would cut mid-character and its own reader then fails)."""

    def __init__(
        self,
        positions: F64,
        names: Sequence[str],
        groups: Sequence[str],
        rgba: Sequence[tuple[int, int, int, int]],
        device_name: str,
    ) -> None:
        PointMessage.__init__(self, positions=positions, names=list(names), device_name=device_name)
        self.groups, self.rgba_colors = list(groups), list(rgba)

    def _pack_content(self) -> bytes:
        parts = []
        for i, xyz in enumerate(np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)):
            r, g, b, a = self.rgba_colors[i]
            name, group = _cut(self.names[i], POINT_NAME_BYTES), _cut(self.groups[i], POINT_GROUP_BYTES)
            parts.append(_POINT.pack(name, group, r, g, b, a, *xyz, 0.0, b""))
        return b"".join(parts)


_POINT = struct.Struct("> 64s 32s 4B 3f f 20s")  # one POINT element, 136 bytes


# ---------------------------------------------------------------- incoming
@dataclass(frozen=True)
class LandmarkList:
    """Named points from Slicer. ``frame == "sensor"``: measured positions in the sensor
    frame; ``"model"``: positions on the patient model, already converted to LPS mm."""

    device: str
    frame: LandmarkFrame
    names: tuple[str, ...]
    points_mm: F64

    def as_mapping(self) -> dict[str, tuple[float, float, float]]:
        return {n: (float(p[0]), float(p[1]), float(p[2])) for n, p in zip(self.names, self.points_mm, strict=True)}


@dataclass(frozen=True)
class SeedTransform:
    """A transform sent to seed or override the registration: ``T_sensor_model`` in mm,
    model side LPS, rotation re-orthonormalised."""

    device: str
    T_sensor_model: F64
    timestamp_s: float


@dataclass(frozen=True)
class TraceList:
    """A surface trace from Slicer: points (N, 3) mm in the sensor frame (never flipped),
    with the landmark lists that go with it (``sensor``: the measured ones received since
    the previous trace; ``model``: the latest model-side list), either may be None."""

    device: str
    points_mm: F64
    sensor: LandmarkList | None = None
    model: LandmarkList | None = None


def landmarks_from_message(msg: Any, frame: LandmarkFrame, wire_frame: WireFrame, max_points: int) -> LandmarkList:
    """Check a POINT message (Slicer fiducial list) and convert it, or ValueError."""
    names = tuple(str(n) for n in msg.names)
    P = _positions(msg, "landmark", max_points)
    if any(not n.strip() for n in names) or len(set(names)) != len(names):
        msg_ = f"landmark names must be non-empty and unique, got {list(names)!r}"
        raise ValueError(msg_)
    points = wire_to_model(P, wire_frame) if frame == "model" else P
    return LandmarkList(str(msg.device_name), frame, names, points)


def trace_from_message(msg: Any, max_points: int) -> TraceList:
    """Check a POINT message holding a surface trace (sensor mm) and convert it, or
    ValueError. Point names are not used (a trace is one acquisition)."""
    return TraceList(str(msg.device_name), _positions(msg, "trace", max_points))


def _positions(msg: Any, what: str, max_points: int) -> F64:
    """The (N, 3) positions of a POINT message: 1..max_points, finite, within range."""
    P = np.asarray(msg.positions, dtype=np.float64).reshape(-1, 3)
    if not 1 <= len(P) <= max_points:
        msg_ = f"{what} list {msg.device_name!r} must hold 1 to {max_points} points, got {len(P)}"
        raise ValueError(msg_)
    bad = ~np.all(np.isfinite(P) & (np.abs(P) <= MAX_COORDINATE_MM), axis=1)
    if bad.any():
        shown = repr(P.tolist()) if len(P) <= 64 else f"point {int(np.argmax(bad))} = {P[bad][0].tolist()!r}"
        msg_ = f"{what} positions must be finite mm within {MAX_COORDINATE_MM:g}, got {shown}"
        raise ValueError(msg_)
    return P


def seed_from_message(msg: Any, wire_frame: WireFrame) -> SeedTransform:
    """Check a TRANSFORM from Slicer (finite, rigid, proper, mm) and convert it to
    ``T_sensor_model``, or ValueError naming the problem."""
    T_wire = check_rigid(msg.matrix, f"transform {msg.device_name!r}")
    return SeedTransform(str(msg.device_name), T_wire @ flip(wire_frame), float(msg.timestamp))


def check_rigid(value: object, name: str) -> F64:
    """A rigid 4x4 (orthonormal rotation, det +1, last row 0 0 0 1, translation mm) with
    its rotation projected onto SO(3), or ValueError quoting the matrix."""
    T = as_transform(value, name)  # 4x4, finite: the bridge's check
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6):
        msg = f"{name} must have last row [0, 0, 0, 1], got {T[3].tolist()!r}"
        raise ValueError(msg)
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=ORTHONORMAL_TOL):
        msg = f"{name} must be rigid (orthonormal rotation, no scale or shear), got {T.tolist()!r}"
        raise ValueError(msg)
    if np.linalg.det(R) < 0:
        msg = f"{name} must be a proper rotation (det +1), it mirrors: got {T.tolist()!r}"
        raise ValueError(msg)
    if np.linalg.norm(T[:3, 3]) > MAX_TRANSLATION_MM:
        msg = f"{name} translation must be within {MAX_TRANSLATION_MM:g} mm, got {T[:3, 3].tolist()!r}"
        raise ValueError(msg)
    U, _, Vt = np.linalg.svd(R)
    out = T.copy()
    out[:3, :3] = U @ Vt
    return out


def landmark_pairs(sensor: LandmarkList, model: LandmarkList | Mapping[str, object]) -> tuple[F64, F64]:
    """``(model_points (K,3) LPS mm, sensor_points (K,3) mm)`` paired by name, ready for
    ``registration.initial_alignment(..., landmarks=(X, Y))``; ValueError if a sensor
    landmark has no model counterpart or fewer than 3 pairs remain."""
    if sensor.frame != "sensor":
        msg = f"first landmark list must be in the sensor frame, got {sensor.frame!r}"
        raise ValueError(msg)
    known = model.as_mapping() if isinstance(model, LandmarkList) else dict(model)
    missing = [n for n in sensor.names if n not in known]
    if missing:
        msg = f"sensor landmarks without a model landmark of the same name: {missing!r}; model has {sorted(known)!r}"
        raise ValueError(msg)
    if len(sensor.names) < 3:
        msg = f"paired-point alignment needs >= 3 named pairs, got {len(sensor.names)}"
        raise ValueError(msg)
    X = np.array([np.asarray(known[n], dtype=np.float64).reshape(3) for n in sensor.names])
    return X, sensor.points_mm.copy()


# ---------------------------------------------------------------- helpers
def _num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _rgba(colour: str) -> tuple[int, int, int, int]:
    h = colour.lstrip("#")
    a = int(h[6:8], 16) if len(h) == 8 else 255
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), a


def _cut(text: str, limit: int) -> bytes:
    raw = text.encode("utf-8")[:limit]
    return raw.decode("utf-8", "ignore").encode("utf-8")


__all__ = [
    "LandmarkList",
    "SeedTransform",
    "TraceList",
    "annotation_message",
    "ascii_line",
    "check_rigid",
    "landmark_pairs",
    "landmarks_from_message",
    "mesh_message",
    "seed_from_message",
    "status_message",
    "status_text",
    "trace_from_message",
    "transform_message",
]
