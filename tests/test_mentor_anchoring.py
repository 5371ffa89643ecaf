"""A click on the video lands on the right point of the patient model, and comes back."""

from __future__ import annotations

import numpy as np
import pytest
from mentor_fixtures import look_at, rigid

from imaging.mesh_io import read_ply
from imaging.prepare import PrepareOptions, prepare_phantom
from mentor.anchoring import FramePose, MeshRayCaster, anchor_click, project_marks
from registration import PinholeIntrinsics

CAMERA = PinholeIntrinsics(width=640, height=480, fx=520.0, fy=518.0, cx=319.5, cy=241.0)


@pytest.fixture(scope="module")
def skin(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, MeshRayCaster]:
    out = tmp_path_factory.mktemp("anchoring") / "model"
    prepare_phantom(out, PrepareOptions(segments=("skin",), triangle_budget=60_000))
    vertices, triangles = read_ply(out / "meshes" / "skin.ply")
    return vertices.astype(np.float64), triangles, MeshRayCaster(vertices, triangles)


def _pixel_of(point_model: np.ndarray, T_world_camera: np.ndarray, T_world_model: np.ndarray) -> tuple[float, float]:
    """Expected pixel, written out with general matrix inverses (independent of the module)."""
    p_cam = np.linalg.inv(T_world_camera) @ T_world_model @ np.append(point_model, 1.0)
    return CAMERA.fx * p_cam[0] / p_cam[2] + CAMERA.cx, CAMERA.fy * p_cam[1] / p_cam[2] + CAMERA.cy


@pytest.mark.parametrize("vertex_pick", [0.1, 0.5, 0.9])
def test_click_lands_on_the_model_point(skin: tuple[np.ndarray, np.ndarray, MeshRayCaster], vertex_pick: float) -> None:
    vertices, triangles, caster = skin
    normals = np.zeros_like(vertices)
    face = np.cross(
        vertices[triangles[:, 1]] - vertices[triangles[:, 0]], vertices[triangles[:, 2]] - vertices[triangles[:, 0]]
    )
    for corner in range(3):
        np.add.at(normals, triangles[:, corner], face)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    facing = np.flatnonzero(normals[:, 1] < -0.8)  # the face side (anterior is -y)
    index = facing[int(vertex_pick * (len(facing) - 1))]
    target = vertices[index]
    T_world_model = rigid((0.2, -0.4, 0.3), (120.0, -35.0, 800.0))  # the patient somewhere in the room
    eye_model = target + 380.0 * normals[index] + np.array([25.0, 0.0, 15.0])
    T_world_camera = T_world_model @ look_at(eye_model, target)
    u, v = _pixel_of(target, T_world_camera, T_world_model)
    anchor = anchor_click(u, v, CAMERA, FramePose(T_world_camera, T_world_model, "tracking"), caster)
    assert anchor.anchored, anchor.reason
    assert np.linalg.norm(np.asarray(anchor.point_model_mm) - target) < 0.5
    # the head turns and the headset moves: the mark projects where the anatomy now is
    T_world_model_later = rigid((0.25, -0.1, 0.5), (90.0, 10.0, 760.0))
    T_world_camera_later = T_world_model_later @ look_at(eye_model + np.array([-30.0, 10.0, 5.0]), target)
    uv, visible = project_marks([anchor.point_model_mm], CAMERA, T_world_camera_later, T_world_model_later)
    assert visible[0]
    np.testing.assert_allclose(uv[0], _pixel_of(target, T_world_camera_later, T_world_model_later), atol=0.3)


def test_miss_and_untrusted_pose_stay_2d(skin: tuple[np.ndarray, np.ndarray, MeshRayCaster]) -> None:
    _, _, caster = skin
    T_world_model = np.eye(4)
    T_world_camera = look_at(np.array([0.0, -500.0, 0.0]), np.array([0.0, 0.0, 0.0]))
    hit = anchor_click(320, 240, CAMERA, FramePose(T_world_camera, T_world_model, "tracking"), caster)
    assert hit.anchored
    corner = anchor_click(2, 2, CAMERA, FramePose(T_world_camera, T_world_model, "tracking"), caster)
    assert not corner.anchored and corner.reason == "the ray missed the patient model"
    assert corner.screen_uv == (2.0, 2.0)
    for status in ("degraded", "lost"):
        flagged = anchor_click(320, 240, CAMERA, FramePose(T_world_camera, T_world_model, status), caster)
        assert not flagged.anchored and flagged.reason == f"registration was {status} when the frame was captured"
    with pytest.raises(ValueError, match=r"click outside the 640x480 frame, got \(700, 10\)"):
        anchor_click(700, 10, CAMERA, FramePose(T_world_camera, T_world_model, "tracking"), caster)
