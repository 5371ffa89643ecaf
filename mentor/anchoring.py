"""Turn a mentor's click on a video frame into a mark on the patient, and back.

The click at pixel (u, v) of the frame captured at time t becomes a ray from the video
camera's pose at t; the registration at t places the patient model in the same headset
world; the ray is cast into the model and the first hit is stored in model coordinates
(patient LPS, mm), so the mark stays on the anatomy when the head or the headset moves.

Frames follow the project convention ``T_a_b`` maps points from frame b into frame a. The
camera frame is OpenCV's pinhole frame: x right, y down, z forward, millimetres.

A click is anchored only on a pose whose status was ``tracking`` at capture time: a mark
placed through a degraded or lost registration could land on the wrong anatomy, so it stays
a 2D screen mark and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from domain.camera import PinholeIntrinsics
from domain.transforms import invert

F64 = npt.NDArray[np.float64]
ANCHORING_STATUS: Final = "tracking"


def pixel_ray(camera: PinholeIntrinsics, u: float, v: float) -> F64:
    """Unit direction, in the camera frame, of the ray through pixel (u, v)."""
    d = np.array([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, 1.0])
    unit: F64 = d / np.linalg.norm(d)
    return unit


def project(camera: PinholeIntrinsics, points_camera: F64) -> tuple[F64, npt.NDArray[np.bool_]]:
    """(N, 2) pixel coordinates and whether each point is in front and inside the image."""
    p = np.atleast_2d(points_camera)
    z = p[:, 2]
    safe = np.where(z > 1e-6, z, 1.0)
    uv = np.stack([camera.fx * p[:, 0] / safe + camera.cx, camera.fy * p[:, 1] / safe + camera.cy], axis=1)
    visible = (z > 1e-6) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= camera.width - 0.5)
    visible &= (uv[:, 1] >= -0.5) & (uv[:, 1] <= camera.height - 0.5)
    return uv, visible


@dataclass(frozen=True)
class VideoCamera:
    """The camera of one video frame as the headset sent it (docs/headset-protocol.md 6.2):
    its pinhole model in the frame's own pixels and its pose in the headset's world (mm)."""

    intrinsics: PinholeIntrinsics
    T_world_camera: F64

    def scaled_to(self, width: int, height: int) -> PinholeIntrinsics:
        """The intrinsics for the same image shown at ``width`` x ``height`` (pixel centres
        at integer coordinates: a pixel's centre u maps to (u + 0.5) * s - 0.5)."""
        K = self.intrinsics
        sx, sy = width / K.width, height / K.height
        return PinholeIntrinsics(width, height, K.fx * sx, K.fy * sy, (K.cx + 0.5) * sx - 0.5, (K.cy + 0.5) * sy - 0.5)


@dataclass(frozen=True)
class FramePose:
    """What was known when the video frame was captured (all 4x4, mm)."""

    T_world_camera: F64  # video camera in the headset's world
    T_world_model: F64  # patient model in the same world (T_world_sensor @ T_sensor_model)
    status: str  # registration status at capture time: tracking, degraded, lost


@dataclass(frozen=True)
class Anchor:
    anchored: bool
    point_model_mm: tuple[float, float, float] | None
    screen_uv: tuple[float, float]
    reason: str  # "hit the model", or why the mark stays 2D


class MeshRayCaster:
    """Open3D ray casting against the patient mesh (model frame, mm), prepared once."""

    def __init__(self, vertices_mm: npt.ArrayLike, triangles: npt.ArrayLike) -> None:
        import open3d as o3d

        self._core: Any = o3d.core  # typed stubs reject the numpy arrays the runtime accepts
        # Kept for the mentors' 3D view when no GLB is given (mentor.model_view).
        self.vertices_mm = np.asarray(vertices_mm, np.float32)
        self.triangles = np.asarray(triangles, np.uint32)
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(self._core.Tensor(self.vertices_mm), self._core.Tensor(self.triangles))

    def first_hit(self, origin: F64, direction: F64) -> float:
        """Distance (mm) along the unit ``direction`` to the first triangle, or inf."""
        return float(self.first_hits(origin[None], direction[None])[0])

    def first_hits(self, origins: F64, directions: F64) -> F64:
        """(N,) distances (mm) along each unit direction to the first triangle, inf on a miss."""
        rays = np.concatenate([np.atleast_2d(origins), np.atleast_2d(directions)], axis=1).astype(np.float32)
        result = self._scene.cast_rays(self._core.Tensor(rays))
        out: F64 = result["t_hit"].numpy().astype(np.float64)
        return out

    def closest_points(self, points_mm: F64) -> F64:
        """(N, 3) nearest points on the mesh surface (mm) to each of the (N, 3) points."""
        query = self._core.Tensor(np.atleast_2d(points_mm).astype(np.float32))
        out: F64 = self._scene.compute_closest_points(query)["points"].numpy().astype(np.float64)
        return out


def anchor_click(u: float, v: float, camera: PinholeIntrinsics, pose: FramePose, caster: MeshRayCaster) -> Anchor:
    """The 3D mark for a click at (u, v) on the frame described by ``pose``."""
    screen = (float(u), float(v))
    if not (0 <= u < camera.width and 0 <= v < camera.height):
        msg = f"click outside the {camera.width}x{camera.height} frame, got ({u}, {v})"
        raise ValueError(msg)
    if pose.status != ANCHORING_STATUS:
        return Anchor(False, None, screen, f"registration was {pose.status} when the frame was captured")
    T_model_camera = invert(np.asarray(pose.T_world_model, np.float64)) @ np.asarray(pose.T_world_camera, np.float64)
    origin = T_model_camera[:3, 3]
    direction = T_model_camera[:3, :3] @ pixel_ray(camera, u, v)
    distance = caster.first_hit(origin, direction)
    if not np.isfinite(distance):
        return Anchor(False, None, screen, "the ray missed the patient model")
    hit = origin + distance * direction
    return Anchor(True, (float(hit[0]), float(hit[1]), float(hit[2])), screen, "hit the model")


def _camera_from_model(T_world_camera: F64, T_world_model: F64) -> F64:
    out: F64 = invert(np.asarray(T_world_camera, np.float64)) @ np.asarray(T_world_model, np.float64)
    return out


def projection_matrix(camera: PinholeIntrinsics, T_world_camera: F64, T_world_model: F64) -> F64:
    """3x4 ``P_image_model = K [R | t]`` of ``T_camera_model``: a model point p (mm) shows at
    pixel (x / w, y / w) of ``(x, y, w) = P [p, 1]`` when w (its depth, mm) is positive.
    Sent to mentor pages with each status so they re-project marks themselves."""
    out: F64 = camera.matrix() @ _camera_from_model(T_world_camera, T_world_model)[:3]
    return out


def project_marks(
    points_model_mm: npt.ArrayLike, camera: PinholeIntrinsics, T_world_camera: F64, T_world_model: F64
) -> tuple[F64, npt.NDArray[np.bool_]]:
    """Where model-frame marks appear on a frame with the given (current) poses."""
    T_camera_model = _camera_from_model(T_world_camera, T_world_model)
    p = np.atleast_2d(np.asarray(points_model_mm, np.float64))
    in_camera = p @ T_camera_model[:3, :3].T + T_camera_model[:3, 3]
    return project(camera, in_camera)
