"""What a frame is, and which trust checks apply to it.

Three kinds of input reach registration, and they differ in what can be checked:

* ``depth_image`` (:class:`~registration.depth.DepthFrame`): a depth camera's image, the
  camera at the sensor origin. Line of sight (free space: no point may be seen *behind*
  the model surface) and the region-of-interest crop apply.
* ``camera_points`` (:class:`CameraPoints`, or a plain (N, 3) array): the same as points,
  e.g. a headset's point cloud; the camera is at the sensor origin, so line of sight
  applies.
* ``surface_trace`` (:class:`SurfaceTrace`): points touched or swept with a tracked
  pointer or digitiser, in the tracker's frame. There is no camera: the points can be
  anywhere, far from the sensor origin, and nothing is "seen through". Any count from
  :data:`MIN_TRACE_POINTS` up. A trace is one acquisition, not a stream, so the motion
  model's jump check does not apply either.

:data:`CHECKS` names the detectors of registration/confidence.py that run per kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np

from registration.frames import F64

MIN_TRACE_POINTS: Final = 6  # a rigid pose has 6 degrees of freedom


class FrameKind(StrEnum):
    DEPTH_IMAGE = "depth_image"
    CAMERA_POINTS = "camera_points"
    SURFACE_TRACE = "surface_trace"


class Check(StrEnum):
    """The per-frame detectors (registration/confidence.py)."""

    CORRESPONDENCES = "correspondences"
    FITNESS = "fitness"
    RMSE = "rmse"
    CONDITION = "condition"
    PREDICTED_TRE = "predicted_tre"
    JUMP = "jump"
    HOLDOUT = "holdout"
    FREE_SPACE = "free_space"
    TURNED_RIVAL = "turned_rival"


_ALL: Final = frozenset(Check)
CHECKS: Final[dict[FrameKind, frozenset[Check]]] = {
    FrameKind.DEPTH_IMAGE: _ALL,
    FrameKind.CAMERA_POINTS: _ALL,
    FrameKind.SURFACE_TRACE: _ALL - {Check.FREE_SPACE, Check.JUMP},
}


def _points(points_mm: object, what: str) -> F64:
    P = np.asarray(points_mm, dtype=np.float64)
    if P.size == 0:
        return np.zeros((0, 3))
    if P.ndim != 2 or P.shape[1] != 3:
        msg = f"{what} must be (N, 3) mm, got shape {P.shape}"
        raise ValueError(msg)
    out: F64 = P[np.all(np.isfinite(P), axis=1)]
    return out


@dataclass(frozen=True, init=False)
class SurfaceTrace:
    """Points (N, 3, mm) traced on the patient with a tracked pointer, in the tracker's
    frame. Non-finite rows are dropped; the origin is a valid point (no camera)."""

    points_mm: F64
    kind: FrameKind = FrameKind.SURFACE_TRACE

    def __init__(self, points_mm: object) -> None:
        object.__setattr__(self, "points_mm", _points(points_mm, "SurfaceTrace points"))
        object.__setattr__(self, "kind", FrameKind.SURFACE_TRACE)

    def __len__(self) -> int:
        return len(self.points_mm)


@dataclass(frozen=True, init=False)
class CameraPoints:
    """Points (N, 3, mm) measured by a camera at the sensor origin (a point cloud).
    Non-finite rows and points at the origin (no return) are dropped."""

    points_mm: F64
    kind: FrameKind = FrameKind.CAMERA_POINTS

    def __init__(self, points_mm: object) -> None:
        P = _points(points_mm, "CameraPoints points")
        object.__setattr__(self, "points_mm", P[np.any(P != 0.0, axis=1)])
        object.__setattr__(self, "kind", FrameKind.CAMERA_POINTS)

    def __len__(self) -> int:
        return len(self.points_mm)
