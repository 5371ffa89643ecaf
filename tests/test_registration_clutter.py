"""Support planes (table, wall) are dropped from a scan; curved skin never is."""

from __future__ import annotations

import numpy as np
from registration_fixtures import head_frames, head_model

from registration import Status, initial_alignment
from registration.clutter import drop_support_planes
from registration.frames import F64, transform_points
from registration.thinning import first_per_voxel


def _grid_plane(origin: F64, u: F64, v: F64, size_mm: float, step_mm: float, seed: int) -> F64:
    s = np.arange(-size_mm / 2, size_mm / 2, step_mm)
    a, b = np.meshgrid(s, s)
    pts = origin + a.reshape(-1, 1) * u + b.reshape(-1, 1) * v
    return pts + np.random.default_rng(seed).normal(0.0, 0.8, pts.shape)


def _face_view() -> tuple[F64, F64]:
    """Face points of a simulated depth view (sensor mm) and the sensor pose's model frame."""
    model = head_model()
    frame = head_frames()[0]
    pts = frame.points(stride=2)
    near = np.linalg.norm(pts - transform_points(frame.T_sensor_model, model.centroid[None]), axis=1)
    return pts[near < 120.0], frame.T_sensor_model


def test_table_and_wall_are_dropped_and_the_head_is_kept() -> None:
    face, _ = _face_view()
    c = face.mean(axis=0)
    x, y, z = np.eye(3)
    table = _grid_plane(c + [0.0, 140.0, 0.0], x, z, 400.0, 4.0, seed=1)  # below the head
    wall = _grid_plane(c + [0.0, 0.0, 200.0], x, y, 400.0, 4.0, seed=2)  # behind it
    scene = np.vstack([face, table, wall])
    kept = drop_support_planes(scene)
    is_face = np.isin(kept.view([("", kept.dtype)] * 3), face.view([("", face.dtype)] * 3)).ravel()
    assert is_face.sum() >= 0.97 * len(face)  # skin is not cut
    assert (~is_face).sum() <= 0.03 * (len(table) + len(wall))  # planes are gone


def test_curved_skin_alone_loses_nothing() -> None:
    face, _ = _face_view()
    assert len(drop_support_planes(face)) == len(face)


def test_dense_view_with_a_table_still_aligns() -> None:
    """Without dropping it, a table three times the face's size decides the fit."""
    model = head_model()
    face, T_true = _face_view()
    c = face.mean(axis=0)
    table = _grid_plane(c + [0.0, 140.0, 0.0], np.eye(3)[0], np.eye(3)[2], 500.0, 3.0, seed=3)
    est = initial_alignment(model, np.vstack([face, table]))
    assert est.status is Status.TRACKING, est.reasons
    err = transform_points(est.T_sensor_model, model.centroid[None]) - transform_points(T_true, model.centroid[None])
    assert np.linalg.norm(err) < 2.0


def test_first_per_voxel_keeps_one_real_point_per_cube() -> None:
    pts = np.array([[0.1, 0.1, 0.1], [0.9, 0.2, 0.3], [1.5, 0.1, 0.1], [-0.5, 0.0, 0.0], [1.2, 0.9, 0.9]])
    idx = first_per_voxel(pts, 1.0)
    assert idx.tolist() == [0, 2, 3]
    assert len(first_per_voxel(np.zeros((0, 3)), 1.0)) == 0
