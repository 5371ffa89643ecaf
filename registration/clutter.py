"""Scene clutter that cannot be the patient: tables, walls and drapes seen as planes.

A headset scan of the operating field holds the head and whatever it rests on. Large
flat surfaces dominate such a scan (in the real HoloLens views up to 60 % of the points
are table and wall), so global matching and the fitness test would be judged on them.
Skin has no flat region of that size: a plane's inliers on a head are a thin curved cap
whose normals fan out, while a table's normals all agree with the plane's. That test
(normal agreement), not the plane's size, decides what is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from registration.frames import F64
from registration.thinning import every_kth


@dataclass(frozen=True)
class PlaneConfig:
    distance_mm: float = 4.0  # plane inlier band (RANSAC threshold)
    normal_radius_mm: float = 12.0
    aligned_deg: float = 10.0  # an inlier "agrees" when its normal is this close
    min_aligned: float = 0.6  # share of agreeing inliers that makes a plane clutter
    min_share: float = 0.03  # smaller planes are left alone
    max_planes: int = 5  # planes examined, clutter or not
    search_points: int = 4000  # planes are found on this many evenly spread points
    iterations: int = 300
    seed: int = 0


def drop_support_planes(points_mm: F64, config: PlaneConfig | None = None) -> F64:
    """``points_mm`` without the points of large flat surfaces (tables, walls, drapes).

    The largest planes of an evenly spread subset are found one after another by
    RANSAC; each is removed from the search, and is clutter only when at least
    ``min_aligned`` of its inliers have a normal within ``aligned_deg`` of the plane's
    (a flat surface, not a band across curved skin). A point is dropped when its nearest
    subset point is on a clutter plane and it lies within ``distance_mm`` of that plane.
    """
    cfg = config or PlaneConfig()
    sub = every_kth(points_mm, cfg.search_points)
    min_points = max(int(cfg.min_share * len(sub)), 30)
    if len(sub) < 2 * min_points:
        return points_mm
    normals = _normals(sub, cfg.normal_radius_mm)
    search = np.arange(len(sub))
    plane_of = np.full(len(sub), -1)
    planes: list[F64] = []
    cos_aligned = np.cos(np.radians(cfg.aligned_deg))
    for _ in range(cfg.max_planes):
        plane, inliers = _largest_plane(sub[search], cfg)
        if len(inliers) < min_points:
            break
        members = search[inliers]
        if np.mean(np.abs(normals[members] @ plane[:3]) > cos_aligned) >= cfg.min_aligned:
            plane_of[members] = len(planes)
            planes.append(plane)
        search = np.delete(search, inliers)
        if len(search) < min_points:
            break
    if not planes:
        return points_mm
    return points_mm[~_on_planes(points_mm, sub, plane_of, np.array(planes), cfg.distance_mm)]


def _on_planes(
    points_mm: F64, sub: F64, plane_of: NDArray[np.int64], planes: F64, distance_mm: float
) -> NDArray[np.bool_]:
    """Points whose nearest subset point lies on a clutter plane, and which are within
    ``distance_mm`` of that plane themselves."""
    from scipy.spatial import cKDTree

    nearest = cKDTree(sub).query(points_mm)[1]
    k = plane_of[nearest]
    on = k >= 0
    P = planes[k[on]]
    dist = np.abs(np.einsum("ij,ij->i", points_mm[on], P[:, :3]) + P[:, 3])
    out = np.zeros(len(points_mm), dtype=bool)
    out[np.flatnonzero(on)[dist < distance_mm]] = True
    return out


def _normals(points_mm: F64, radius_mm: float) -> F64:
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points_mm))
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius_mm, max_nn=30))
    return np.asarray(pc.normals)


def _largest_plane(points_mm: F64, cfg: PlaneConfig) -> tuple[F64, NDArray[np.int64]]:
    """The plane (a, b, c, d) with unit normal and most inliers, and their indices."""
    import open3d as o3d

    o3d.utility.random.seed(cfg.seed)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points_mm))
    model, inliers = pc.segment_plane(cfg.distance_mm, 3, cfg.iterations)
    plane = np.asarray(model, dtype=np.float64)
    return plane / max(float(np.linalg.norm(plane[:3])), 1e-12), np.asarray(inliers, dtype=np.int64)
