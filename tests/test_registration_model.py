"""SurfaceModel preparation, depth back-projection, transforms and the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from registration_fixtures import DEEP_TARGET, head_frames, head_mesh, head_model

from registration import DepthFrame, PinholeIntrinsics, SurfaceModel
from registration.depth import depth_to_points
from registration.frames import invert, pose_difference, se3_exp, se3_log, transform_points
from registration.simulator import HeadsetSimulator, NoiseModel


def _write_folder(folder: Path, V: np.ndarray, F: np.ndarray) -> None:
    import open3d as o3d

    (folder / "meshes").mkdir(parents=True)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(V), o3d.utility.Vector3iVector(F))
    o3d.io.write_triangle_mesh(str(folder / "meshes" / "skin.ply"), mesh)
    manifest = {
        "schema_version": 1,
        "units": "mm",
        "frame": "LPS",
        "synthetic": True,
        "meshes": [{"name": "skin", "files": {"ply": "meshes/skin.ply"}, "triangles": len(F)}],
        "landmarks": {
            "fiducials": [{"name": "F1", "position_mm": V[0].tolist()}],
            "targets": [{"name": "lesion", "position_mm": DEEP_TARGET.tolist()}],
        },
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_from_folder_reads_manifest_mesh_and_landmarks(tmp_path: Path) -> None:
    V, F = head_mesh(40)
    _write_folder(tmp_path, V, F)
    model = SurfaceModel.from_folder(tmp_path, mesh="skin")
    assert len(model.vertices) == len(V)
    np.testing.assert_allclose(model.target("lesion"), DEEP_TARGET)
    np.testing.assert_allclose(model.target("F1"), V[0], atol=1e-4)
    with pytest.raises(KeyError, match="bone"):
        SurfaceModel.from_folder(tmp_path, mesh="bone")


def test_from_folder_rejects_other_units(tmp_path: Path) -> None:
    V, F = head_mesh(20)
    _write_folder(tmp_path, V, F)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["units"] = "m"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="'m'"):
        SurfaceModel.from_folder(tmp_path)


@pytest.mark.parametrize(
    ("V", "F", "match"),
    [
        (np.zeros((10, 2)), np.zeros((1, 3)), "vertices_mm"),
        (np.zeros((10, 3)), np.zeros((1, 4)), "triangles"),
        (np.zeros((10, 3)), np.array([[0, 1, 10]]), "indices"),
        (np.full((10, 3), np.nan), np.array([[0, 1, 2]]), "finite"),
    ],
)
def test_from_mesh_validates(V: np.ndarray, F: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SurfaceModel.from_mesh(V, F)


def test_normals_point_outward_and_grid_matches_kdtree() -> None:
    model = head_model()
    outward = np.einsum("ij,ij->i", model.vertices - model.centroid, model.normals)
    assert np.mean(outward > 0) > 0.97
    rng = np.random.default_rng(0)
    P = model.vertices[rng.choice(len(model.vertices), 2000)] + rng.normal(scale=4.0, size=(2000, 3))
    grid = model.lookup(P)
    exact_d, _ = model.nearest(P)
    inside = exact_d < model.band_mm - np.sqrt(3) * model.grid_mm
    assert inside.mean() > 0.95
    assert np.all(grid[inside] >= 0)
    grid, exact_d, P = grid[inside], exact_d[inside], P[inside]
    grid_d = np.linalg.norm(P - model.vertices[grid], axis=1)
    # The grid returns the nearest vertex of the voxel centre: off by at most a voxel.
    assert np.all(grid_d <= exact_d + np.sqrt(3) * model.grid_mm + 1e-9)
    far = model.centroid + np.array([[0.0, 0.0, 1e4], [1e9, -1e9, 0.0], [np.nan, 0.0, 0.0]])
    assert np.all(model.lookup(far[:2]) == -1)


def test_depth_to_points_drops_invalid_and_respects_units_and_roi() -> None:
    K = PinholeIntrinsics(4, 3, 2.0, 2.0, 1.5, 1.0)
    depth = np.array([[0.5, np.nan, 0.0, -1.0], [0.5, 0.5, 5.0, 0.2], [0.5, 0.5, 0.5, 0.5]])
    frame = DepthFrame(depth, K, depth_unit_mm=1000.0, min_mm=100.0, max_mm=1000.0)
    pts = depth_to_points(frame)
    assert pts.shape == (8, 3)
    assert np.all(pts[:, 2] >= 100.0) and np.all(pts[:, 2] <= 1000.0)
    centre = depth_to_points(frame, roi=(1, 1, 2, 2))
    np.testing.assert_allclose(centre, [[(1 - 1.5) / 2.0 * 500.0, 0.0, 500.0]])
    with pytest.raises(ValueError, match="shape"):
        depth_to_points(DepthFrame(np.zeros((2, 2)), K))


def test_depth_to_points_max_points_keeps_an_even_subset_of_the_same_points() -> None:
    rng = np.random.default_rng(3)
    depth = rng.uniform(150.0, 900.0, (512, 512))
    depth[rng.random(depth.shape) < 0.3] = np.nan
    frame = DepthFrame(depth, PinholeIntrinsics.ahat())
    roi = (100, 80, 400, 420)
    full = depth_to_points(frame, 2, roi)
    some = depth_to_points(frame, 2, roi, max_points=1000)
    assert 500 < len(some) <= 1000
    step = -(-len(full) // 1000)
    np.testing.assert_allclose(some, full[::step])  # every k-th valid pixel, not a random pick
    assert np.ptp(some[:, 1]) > 0.9 * np.ptp(full[:, 1])  # spread over the whole box
    np.testing.assert_allclose(depth_to_points(frame, 2, roi, max_points=10**6), full)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
    st.lists(st.floats(-500.0, 500.0), min_size=3, max_size=3),
)
def test_se3_exp_log_roundtrip(omega: list[float], v: list[float]) -> None:
    xi = np.array(omega + v)
    T = se3_exp(xi)
    np.testing.assert_allclose(se3_exp(se3_log(T)), T, atol=1e-6)
    np.testing.assert_allclose(invert(T) @ T, np.eye(4), atol=1e-9)
    p = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(transform_points(T, p), (T[:3, :3] @ p.T).T + T[:3, 3])


def test_simulator_ground_truth_and_noise() -> None:
    model = head_model()
    f = head_frames()[0]
    assert f.depth.depth.shape == (512, 512) and f.depth.depth.dtype == np.uint16
    visible = f.model_mask.sum()
    assert 2000 < visible < 60000
    # Model pixels, mapped back by the ground truth, lie on the surface within noise.
    v, u = np.nonzero(f.model_mask)
    z = f.depth.depth[v, u].astype(float)
    K = f.depth.intrinsics
    pts = np.stack([(u - K.cx) / K.fx * z, (v - K.cy) / K.fy * z, z], axis=1)
    d, _ = model.nearest(transform_points(invert(f.T_sensor_model), pts))
    assert 0.2 < np.median(d) < 1.5
    # About a third of the surface or less is seen from one viewpoint.
    seen = np.unique(model.nearest(transform_points(invert(f.T_sensor_model), pts))[1])
    assert len(seen) / len(model.vertices) < 0.45


def test_simulator_moves_smoothly_and_occludes() -> None:
    model = head_model()
    sim = HeadsetSimulator(model, noise=NoiseModel(sigma_mm=0.0, dropout=0.0), seed=2)
    a, b = sim.render(sim.pose(0.0)), sim.render(sim.pose(1 / 45))
    rot, trans = pose_difference(a.T_sensor_model, b.T_sensor_model)
    assert rot < 1.0 and trans < 5.0
    bare = HeadsetSimulator(model, noise=NoiseModel(sigma_mm=0.0, dropout=0.0), occluders=False)
    assert bare.render(sim.pose(0.0)).model_mask.sum() > a.model_mask.sum()
