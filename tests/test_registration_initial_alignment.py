"""Initial alignment: paired-point with FRE, markerless on dense views and pointer traces."""

from __future__ import annotations

import numpy as np
import pytest
from registration_fixtures import (
    DEEP_TARGET,
    about,
    head_frames,
    head_model,
    perturbation,
    target_error_mm,
)

from registration import AlignmentConfig, Status, SurfaceModel, initial_alignment
from registration.frames import pose_difference, transform_points


def _face_vertices(model: SurfaceModel, min_cos: float = 0.5) -> np.ndarray:
    return np.flatnonzero(model.normals @ np.array([0.0, -1.0, 0.0]) > min_cos)


# ------------------------------------------------------------------ paired point
def test_paired_point_recovers_pose_and_reports_fre() -> None:
    model = head_model()
    rng = np.random.default_rng(0)
    X = model.vertices[rng.choice(len(model.vertices), 6, replace=False)]
    T = about(perturbation(40.0, 80.0, 1), model.centroid)
    noise = rng.normal(scale=0.5, size=X.shape)
    est = initial_alignment(model, np.zeros((0, 3)), landmarks=(X, transform_points(T, X) + noise))
    assert est.fre_mm is not None and 0.1 < est.fre_mm < 1.0
    assert est.status is Status.TRACKING
    assert target_error_mm(est.T_sensor_model, T) < 1.5
    assert 0.05 < est.predicted_tre_mm(DEEP_TARGET)[0] < 2.0


def test_paired_point_by_landmark_names_and_bad_landmark_degrades() -> None:
    V = head_model().vertices
    fid = {f"F{i}": V[i * 3000] for i in range(5)}
    model = SurfaceModel.from_mesh(V, head_model().triangles, fiducials=fid)
    T = about(perturbation(20.0, 30.0, 2), model.centroid)
    measured = {k: transform_points(T, v[None])[0] for k, v in fid.items()}
    good = initial_alignment(model, np.zeros((0, 3)), landmarks=measured)
    assert good.status is Status.TRACKING and good.fre_mm is not None and good.fre_mm < 1e-6
    measured["F2"] = measured["F2"] + np.array([15.0, 0.0, 0.0])  # a mislocated fiducial
    bad = initial_alignment(model, np.zeros((0, 3)), landmarks=measured)
    assert bad.status is not Status.TRACKING
    assert any("FRE" in r for r in bad.reasons)


def test_paired_point_three_pairs_is_not_trusted_and_two_raise() -> None:
    model = head_model()
    X = model.vertices[[0, 5000, 12000]]
    est = initial_alignment(model, np.zeros((0, 3)), landmarks=(X, X))
    assert est.status is Status.DEGRADED
    with pytest.raises(ValueError, match="3 landmark pairs"):
        initial_alignment(model, np.zeros((0, 3)), landmarks=(X[:2], X[:2]))


# ------------------------------------------------------------------ markerless
@pytest.mark.parametrize("seed", [0, 1])
def test_markerless_dense_face_view(seed: int) -> None:
    """A cropped depth view (what a headset sees of the face, hands included)."""
    model = head_model()
    frame = head_frames()[seed * 10]
    pts = frame.points(stride=2)
    # Crop like the headset scans: keep what lies within 12 cm of the face.
    near = np.linalg.norm(pts - transform_points(frame.T_sensor_model, model.centroid[None]), axis=1)
    est = initial_alignment(model, pts[near < 120.0])
    rot_deg, trans_mm = pose_difference(est.T_sensor_model, frame.T_sensor_model)
    assert est.status is Status.TRACKING, est.reasons
    assert target_error_mm(est.T_sensor_model, frame.T_sensor_model) < 2.0
    assert rot_deg < 1.5


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_markerless_sparse_pointer_dots(seed: int) -> None:
    """150 scattered pointer dots on the face, arbitrary pose, 0.5 mm tip noise."""
    model = head_model()
    rng = np.random.default_rng(seed)
    idx = rng.choice(_face_vertices(model), 150, replace=False)
    dots = model.vertices[idx] + rng.normal(scale=0.5, size=(150, 3))
    T = about(perturbation(90.0, 200.0, seed), model.centroid)
    est = initial_alignment(model, transform_points(T, dots))
    assert est.status is Status.TRACKING, est.reasons
    assert target_error_mm(est.T_sensor_model, T) < 2.0


def test_markerless_pointer_line_traces() -> None:
    """A few thousand points traced along lines over forehead, nose and cheeks."""
    model = head_model()
    rng = np.random.default_rng(7)
    face = model.vertices[_face_vertices(model, 0.3)]
    lines = []
    for z in (-150.0, -125.0, -100.0, -85.0):  # horizontal strokes across the face
        band = face[np.abs(face[:, 2] - z) < 1.0]
        lines.append(band[rng.choice(len(band), min(len(band), 500), replace=False)])
    stroke = face[np.abs(face[:, 0] - 5.0) < 1.0]  # one vertical stroke down the nose
    lines.append(stroke)
    trace = np.concatenate(lines) + rng.normal(scale=0.3, size=(sum(map(len, lines)), 3))
    T = about(perturbation(60.0, 150.0, 8), model.centroid)
    est = initial_alignment(model, transform_points(T, trace))
    assert est.status is Status.TRACKING, est.reasons
    assert target_error_mm(est.T_sensor_model, T) < 2.0


def test_symmetric_surface_is_ambiguous_not_tracking() -> None:
    """Dots on a cylinder side fit any rotation about its axis: never trusted."""
    import open3d as o3d

    cyl = o3d.geometry.TriangleMesh.create_cylinder(80.0, 200.0, resolution=120, split=40)
    model = SurfaceModel.from_mesh(np.asarray(cyl.vertices), np.asarray(cyl.triangles))
    rng = np.random.default_rng(0)
    side = np.flatnonzero(np.abs(model.normals[:, 2]) < 0.2)
    dots = model.vertices[rng.choice(side, 150, replace=False)]
    est = initial_alignment(model, dots + rng.normal(scale=0.3, size=dots.shape))
    assert est.status is not Status.TRACKING


def test_markerless_empty_or_nan_input_is_lost() -> None:
    model = head_model()
    assert initial_alignment(model, np.zeros((0, 3))).status is Status.LOST
    assert initial_alignment(model, np.full((100, 3), np.nan)).status is Status.LOST
    with pytest.raises(ValueError, match="shape"):
        initial_alignment(model, np.ones((10, 2)))


def test_config_is_frozen() -> None:
    cfg = AlignmentConfig()
    with pytest.raises(AttributeError):
        cfg.voxel_mm = 1.0  # type: ignore[misc]
