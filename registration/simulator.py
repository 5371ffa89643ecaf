"""Headset depth simulator: ray-cast the model from a moving virtual HoloLens 2 AHAT camera.

Per frame it renders a 512x512 depth image (uint16 mm, like AHAT) of the model plus
occluders (gloved hands, an instrument, a drape and the table), adds depth-dependent
noise and bias, random and grazing-angle dropouts, and returns the ground-truth
``T_sensor_model`` and the mask of pixels that see the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from registration.depth import AHAT_RATE_HZ, DepthFrame, PinholeIntrinsics
from registration.frames import F64, invert
from registration.model import SurfaceModel

ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])  # the face looks towards -y (P is +y)
SUPERIOR_LPS = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class NoiseModel:
    sigma_mm: float = 1.0  # standard deviation at ``ref_mm``
    ref_mm: float = 500.0
    bias_mm: float = 0.0  # constant depth offset
    bias_per_m: float = 0.5  # extra bias per metre beyond ``ref_mm`` (ToF multipath-like)
    dropout: float = 0.02  # random missing pixels
    grazing_deg: float = 78.0  # no return beyond this incidence angle

    def sigma_at(self, z_mm: F64) -> F64:
        # Time-of-flight noise grows with the square of the distance.
        out: F64 = self.sigma_mm * (z_mm / self.ref_mm) ** 2
        return out


@dataclass(frozen=True)
class SimFrame:
    depth: DepthFrame
    T_sensor_model: F64
    timestamp_ns: int
    model_mask: NDArray[np.bool_]  # pixels whose return is the model surface

    def points(self, stride: int = 1) -> F64:
        from registration.depth import depth_to_points

        return depth_to_points(self.depth, stride)


def look_at(eye: F64, target: F64, up: F64) -> F64:
    """T_model_sensor of an OpenCV camera at ``eye`` looking at ``target``."""
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, -up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


class HeadsetSimulator:
    """A virtual surgeon's headset orbiting slowly in front of the model's face."""

    def __init__(
        self,
        model: SurfaceModel,
        *,
        intrinsics: PinholeIntrinsics | None = None,
        noise: NoiseModel | None = None,
        distance_mm: float = 400.0,
        view_dir: F64 = ANTERIOR_LPS,
        up: F64 = SUPERIOR_LPS,
        sweep_deg: float = 25.0,
        occluders: bool = True,
        rate_hz: float = AHAT_RATE_HZ,
        seed: int = 0,
    ) -> None:
        import open3d as o3d

        self.model = model
        self.K = intrinsics or PinholeIntrinsics.ahat()
        self.noise = noise or NoiseModel()
        self.distance_mm = distance_mm
        self.view_dir = np.asarray(view_dir, float) / np.linalg.norm(view_dir)
        self.up = np.asarray(up, float)
        self.sweep = np.radians(sweep_deg)
        self.rate_hz = rate_hz
        self.rng = np.random.default_rng(seed)
        self.with_occluders = occluders
        self.focus = self._face_point()
        self._static = model.raycasting_scene
        self._o3d = o3d
        self._drape: Any = self._drape_scene() if occluders else None
        v, u = np.mgrid[0 : self.K.height, 0 : self.K.width].astype(np.float64)
        d = np.stack([(u - self.K.cx) / self.K.fx, (v - self.K.cy) / self.K.fy, np.ones_like(u)], -1)
        self._dirs = (d / np.linalg.norm(d, axis=-1, keepdims=True)).reshape(-1, 3)

    # ------------------------------------------------------------ trajectory
    def pose(self, t_s: float) -> F64:
        """Ground-truth T_sensor_model at time ``t_s``: a slow sweep with head bob."""
        side = np.cross(self.up, self.view_dir)
        az = self.sweep * np.sin(2 * np.pi * 0.11 * t_s)
        el = 0.4 * self.sweep * np.sin(2 * np.pi * 0.07 * t_s + 0.5)
        d = np.cos(el) * (np.cos(az) * self.view_dir + np.sin(az) * side) + np.sin(el) * self.up
        dist = self.distance_mm + 40.0 * np.sin(2 * np.pi * 0.05 * t_s)
        bob = 4.0 * np.array([np.sin(2 * np.pi * 0.9 * t_s), np.sin(2 * np.pi * 1.3 * t_s), 0.0])
        eye = self.focus + dist * d + bob
        return invert(look_at(eye, self.focus + 0.5 * bob, self.up))

    def frames(self, n: int, start_s: float = 0.0) -> Iterator[SimFrame]:
        for k in range(n):
            t = start_s + k / self.rate_hz
            yield self.render(self.pose(t), int(round(t * 1e9)))

    # ------------------------------------------------------------ rendering
    def render(self, T_sensor_model: F64, timestamp_ns: int = 0) -> SimFrame:
        o3d = self._o3d
        T_ms = invert(T_sensor_model)
        dirs_m = self._dirs @ T_ms[:3, :3].T
        rays = np.hstack([np.broadcast_to(T_ms[:3, 3], dirs_m.shape), dirs_m]).astype(np.float32)
        rt = o3d.core.Tensor(rays)
        hit = self._static.cast_rays(rt)
        t_model = hit["t_hit"].numpy().astype(np.float64)
        normals = hit["primitive_normals"].numpy().astype(np.float64)
        t = t_model.copy()
        if self.with_occluders:
            for scene in (self._drape, self._hands_scene(T_ms, timestamp_ns)):
                t = np.minimum(t, scene.cast_rays(rt)["t_hit"].numpy().astype(np.float64))
        on_model = np.isfinite(t_model) & (t_model <= t)
        z = t * self._dirs[:, 2]
        z = self._corrupt(z, on_model, normals, dirs_m)
        mask = on_model & np.isfinite(z)
        depth = np.where(np.isfinite(z), np.clip(np.round(z), 0, 65535), 0).astype(np.uint16)
        shape = (self.K.height, self.K.width)
        frame = DepthFrame(depth.reshape(shape), self.K, depth_unit_mm=1.0)
        return SimFrame(frame, T_sensor_model.copy(), timestamp_ns, mask.reshape(shape))

    def _corrupt(self, z: F64, on_model: NDArray[np.bool_], normals: F64, dirs: F64) -> F64:
        nm = self.noise
        z = z.copy()
        finite = np.isfinite(z)
        zf = z[finite]
        z[finite] = (
            zf
            + nm.bias_mm
            + nm.bias_per_m * (zf - nm.ref_mm) / 1000.0
            + self.rng.normal(size=zf.shape) * nm.sigma_at(zf)
        )
        cos_inc = np.abs(np.einsum("ij,ij->i", normals, dirs))
        grazing = on_model & (cos_inc < np.cos(np.radians(nm.grazing_deg)))
        drop = (self.rng.random(z.shape) < nm.dropout) | grazing
        z[drop] = np.nan
        return z

    # ------------------------------------------------------------ occluders
    def _face_point(self) -> F64:
        """Where the anterior ray through the centroid meets the skin."""
        c = self.model.centroid
        pts = self.model.vertices
        along = (pts - c) @ self.view_dir
        lateral = np.linalg.norm((pts - c) - np.outer(along, self.view_dir), axis=1)
        near_axis = lateral < 15.0
        if not np.any(near_axis):
            centre: F64 = c.copy()
            return centre
        out: F64 = pts[near_axis][np.argmax(along[near_axis])] - 30.0 * self.view_dir
        return out

    def _drape_scene(self) -> Any:
        """A drape over the lower head and a table plane behind it (static)."""
        o3d = self._o3d
        lo, hi = self.model.bounds
        size = hi - lo
        scene = o3d.t.geometry.RaycastingScene()
        drape = o3d.geometry.TriangleMesh.create_box(size[0] + 200, size[1] + 60, 0.35 * size[2])
        drape.translate(lo - np.array([100.0, 30.0, 0.25 * size[2]]))
        table = o3d.geometry.TriangleMesh.create_box(size[0] + 600, 20.0, size[2] + 600)
        table.translate(np.array([lo[0] - 300, hi[1] + 30.0, lo[2] - 300]))
        for mesh in (drape, table):
            scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
        return scene

    def _hands_scene(self, T_ms: F64, ts: int) -> Any:
        """Two gloved hands (ellipsoids) and an instrument near the face, moving slowly."""
        o3d = self._o3d
        t = ts * 1e-9
        side = np.cross(self.up, self.view_dir)
        scene = o3d.t.geometry.RaycastingScene()
        for sgn, phase in ((1.0, 0.0), (-1.0, 1.7)):
            hand = o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=10)
            hand.vertices = o3d.utility.Vector3dVector(np.asarray(hand.vertices) * [45.0, 22.0, 14.0])
            centre = (
                self.focus
                + sgn * (85.0 + 10.0 * np.sin(0.8 * t + phase)) * side
                - 40.0 * self.up
                + 70.0 * self.view_dir
            )
            hand.translate(centre)
            scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(hand))
        tool = o3d.geometry.TriangleMesh.create_cylinder(3.0, 160.0, resolution=12)
        tool.rotate(_rotation_between(np.array([0, 0, 1.0]), self.view_dir + 0.6 * side), center=(0, 0, 0))
        tool.translate(self.focus + 110.0 * self.view_dir + (20.0 + 8.0 * np.sin(t)) * self.up)
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(tool))
        return scene


def _rotation_between(a: F64, b: F64) -> F64:
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(a @ b)
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3) if c > 0 else -np.eye(3)
    K = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    out: F64 = np.eye(3) + K + K @ K * (1.0 / (1.0 + c))
    return out
