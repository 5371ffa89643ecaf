"""Which marks the anatomy hides from the headset camera at the current pose.

A mark's point (model mm) is seen by the camera when the straight line from the camera centre
to the point crosses no part of the patient model before it. The test casts that ray into the
same mesh the clicks are anchored on: if the first hit is more than ``TOLERANCE_MM`` short of
the point, something (the head itself, seen from behind, or the nose seen from the side) is in
front of it, and the page draws the mark as "behind the anatomy". The tolerance absorbs the
mark lying on the very surface the ray ends on (grazing rays, float32 ray casting, a 3D-view
click snapped to the mesh) without letting a mark a few mm under the skin pass as visible.

The answer changes with the pose, so the room computes it for each status it sends (10 Hz),
once per pose and set of marks (:class:`OcclusionCache`), for every peer at once.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from domain.transforms import invert

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
TOLERANCE_MM: Final = 3.0


class RayCaster(Protocol):
    def first_hits(self, origins: F64, directions: F64) -> F64: ...


def camera_centre_model(T_world_camera: F64, T_world_model: F64) -> F64:
    """The camera centre in the model frame (mm)."""
    T_model_camera = invert(np.asarray(T_world_model, np.float64)) @ np.asarray(T_world_camera, np.float64)
    out: F64 = T_model_camera[:3, 3]
    return out


def occluded(
    caster: RayCaster, camera_model: F64, points_model_mm: npt.ArrayLike, tolerance_mm: float = TOLERANCE_MM
) -> npt.NDArray[np.bool_]:
    """(N,) whether the model surface hides each point from the camera centre ``camera_model``."""
    if tolerance_mm < 0 or not np.isfinite(tolerance_mm):
        msg = f"occlusion tolerance must be a finite number of mm >= 0, got {tolerance_mm!r}"
        raise ValueError(msg)
    points = np.atleast_2d(np.asarray(points_model_mm, np.float64))
    if points.shape[1:] != (3,):
        msg = f"points must be (N, 3) model mm, got shape {points.shape!r}"
        raise ValueError(msg)
    if len(points) == 0:
        return np.zeros(0, bool)
    rays = points - np.asarray(camera_model, np.float64)
    distance = np.linalg.norm(rays, axis=1)
    # A point within the tolerance of the camera has nothing in front of it to speak of.
    near = distance <= tolerance_mm
    units = rays / np.where(near, 1.0, distance)[:, None]
    origins = np.broadcast_to(np.asarray(camera_model, np.float64), points.shape)
    hits = caster.first_hits(origins, units)
    hidden: npt.NDArray[np.bool_] = (hits < distance - tolerance_mm) & ~near
    return hidden


MarkPoints = tuple[str, tuple[tuple[float, float, float], ...]]  # an anchored mark: id, points (model mm)


class OcclusionCache:
    """Occlusion of the anchored marks at the newest pose, computed once per pose and marks.

    ``view`` answers ``{mark id: [occluded, ...] per point}`` for the marks with at least one
    hidden point (absent: every point in sight), the form the status message carries.
    """

    def __init__(self, caster: RayCaster, tolerance_mm: float = TOLERANCE_MM) -> None:
        self.caster = caster
        self.tolerance_mm = tolerance_mm
        self._key: tuple[object, ...] | None = None
        self._view: dict[str, list[bool]] = {}

    def view(
        self, t_pose_ns: int, T_world_camera: F64, T_world_model: F64, marks: list[MarkPoints]
    ) -> dict[str, list[bool]]:
        key = (t_pose_ns, np.asarray(T_world_camera).tobytes(), *marks)  # a video frame may bring its own camera
        if key == self._key:
            return self._view
        self._key, self._view = key, {}
        if not marks:
            return self._view
        points = np.concatenate([np.asarray(p, np.float64).reshape(-1, 3) for _, p in marks])
        centre = camera_centre_model(T_world_camera, T_world_model)
        hidden = occluded(self.caster, centre, points, self.tolerance_mm).tolist()
        start = 0
        for ident, p in marks:
            flags = hidden[start : start + len(p)]
            start += len(p)
            if any(flags):
                self._view[ident] = flags
        return self._view
