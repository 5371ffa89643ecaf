"""A fiducial at a known voxel lands at the right LPS mm point in the mesh, and at the right
place in the GLB after the LPS -> glTF conversion (checked with independent readers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from imaging_fixtures import glb_mesh_positions, load_manifest, run_cli

from imaging.gltf import T_GLTF_LPS, gltf_m_to_lps_mm, lps_mm_to_gltf_m
from imaging.mesh_io import read_ply
from imaging.surface_distance import sample_surface

FIDUCIAL_VOXEL = (41, 23, 17)  # (i, j, k)
RADIUS_MM = 7.0


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _fiducial_image(direction: np.ndarray) -> tuple[sitk.Image, np.ndarray]:
    size = (64, 48, 40)  # x, y, z
    image = sitk.Image(size, sitk.sitkInt16)
    image.SetSpacing((0.7, 0.9, 1.5))
    image.SetOrigin((-31.0, 12.5, -80.25))
    image.SetDirection(tuple(direction.ravel()))
    # Expected position from SimpleITK itself: an implementation independent of ours.
    centre = np.asarray(image.TransformIndexToPhysicalPoint(FIDUCIAL_VOXEL))
    k, j, i = np.indices(tuple(reversed(size)))
    points = np.stack([i, j, k], axis=-1).reshape(-1, 3) * np.asarray(image.GetSpacing())
    physical = points @ direction.T + np.asarray(image.GetOrigin())
    inside = np.linalg.norm(physical - centre, axis=1) < RADIUS_MM
    voxels = np.where(inside, 1500, -1000).astype(np.int16).reshape(tuple(reversed(size)))
    out = sitk.GetImageFromArray(voxels)
    out.CopyInformation(image)
    return out, centre


@pytest.mark.parametrize(
    "direction",
    [np.eye(3), _rotation((0.3, -0.5, 1.0), 35.0), np.diag([-1.0, -1.0, 1.0]) @ _rotation((1, 0, 0), 20.0)],
    ids=["identity", "oblique", "ras-like-tilted"],
)
def test_fiducial_voxel_to_mesh_and_glb(tmp_path: Path, direction: np.ndarray) -> None:
    image, centre = _fiducial_image(direction)
    source = tmp_path / "fiducial.nrrd"
    sitk.WriteImage(image, str(source))
    out = tmp_path / "model"
    result = run_cli("prepare", str(source), "--out", str(out), "--segments", "bone")
    assert result.returncode == 0, result.stderr

    vertices, triangles = read_ply(out / "meshes" / "bone.ply")
    surface = sample_surface(vertices, triangles, 50_000)
    np.testing.assert_allclose(surface.mean(axis=0), centre, atol=0.25)
    radii = np.linalg.norm(surface - centre, axis=1)
    assert abs(radii.mean() - RADIUS_MM) < 0.5, radii.mean()

    gltf_vertices = glb_mesh_positions(out / "model.glb")["bone"]
    expected_m = np.array([centre[0], centre[2], -centre[1]]) / 1000.0  # written out by hand
    np.testing.assert_allclose(gltf_vertices.mean(axis=0), expected_m, atol=0.5e-3)
    np.testing.assert_allclose(gltf_vertices, lps_mm_to_gltf_m(vertices), atol=1e-6)
    manifest = load_manifest(out)
    np.testing.assert_allclose(manifest["gltf"]["T_gltf_lps"], T_GLTF_LPS)


def test_gltf_conversion_is_a_proper_rotation_and_round_trips() -> None:
    r = T_GLTF_LPS[:3, :3] * 1000.0
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(lps_mm_to_gltf_m([0.0, 0.0, 1000.0]), [0.0, 1.0, 0.0])  # superior is up
    np.testing.assert_allclose(lps_mm_to_gltf_m([0.0, -1000.0, 0.0]), [0.0, 0.0, 1.0])  # anterior is +Z
    np.testing.assert_allclose(lps_mm_to_gltf_m([1000.0, 0.0, 0.0]), [1.0, 0.0, 0.0])  # patient left is +X
    points = np.random.default_rng(1).normal(size=(20, 3)) * 100
    np.testing.assert_allclose(gltf_m_to_lps_mm(lps_mm_to_gltf_m(points)), points, atol=1e-9)
