"""GLB round trip and the PNG a headset would show (live vs hidden)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from bridge_fixtures import Bridge, ann, ready, running_bridge
from matplotlib.image import imread

from headset_bridge.glb import T_GLTF_LPS, T_LPS_GLTF, pack_points_glb, positions_lps_mm
from headset_bridge.messages import PoseUpdate
from headset_bridge.render import project, render_png

bridge = pytest.fixture(name="bridge")(running_bridge)

K = (300.0, 300.0, 160.0, 120.0)


def _sphere(n: int = 2000, r: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(n, 3))
    out: np.ndarray = r * v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def test_gltf_frame_convention() -> None:
    lps = np.array([10.0, 20.0, 30.0, 1.0])  # left, posterior, superior (mm)
    np.testing.assert_allclose(T_GLTF_LPS @ lps, [0.010, 0.030, -0.020, 1.0])
    np.testing.assert_allclose(T_LPS_GLTF @ T_GLTF_LPS, np.eye(4))
    pts = _sphere(50)
    np.testing.assert_allclose(positions_lps_mm(pack_points_glb(pts)), pts, atol=1e-4)
    with pytest.raises(ValueError, match="got header"):
        positions_lps_mm(b"x" * 40)


def test_project_pinhole() -> None:
    T = np.eye(4)
    T[2, 3] = 300.0
    uv = project([[0, 0, 0], [30, 0, 0], [0, 0, -400]], T, K)  # the last is behind the camera
    np.testing.assert_allclose(uv, [[160, 120], [190, 120]])


def _cyan(png: Path) -> int:
    img = imread(png)[..., :3]
    return int(np.sum((img[..., 0] < 0.4) & (img[..., 1] > 0.6) & (img[..., 2] > 0.6)))


def test_render_what_the_headset_shows(bridge: Bridge, tmp_path: Path) -> None:
    model = _sphere()
    bridge.server.set_model(pack_points_glb(model))
    bridge.server.annotate("add", ann(1, "incision"))
    c = bridge.client()
    assert c.wait_for(lambda: ready(c) and c.model is not None and c.annotations.seq == 1, 5.0)
    T = np.eye(4)
    T[2, 3] = 300.0  # model 300 mm in front of the camera
    views = []

    def live_now() -> bool:  # fresh poses until one is seen live (each is live ~100 ms)
        if (v := c.view()).live:
            views.append(v)
            return True
        bridge.server.publish_pose(PoseUpdate(T, "tracking", 0.95, 0.8, time.monotonic_ns(), 1))
        return False

    assert c.wait_for(live_now, 5.0)
    frame = np.full((240, 320), 800, np.uint16)
    assert c.model is not None
    live = render_png(
        tmp_path / "live.png", frame, K, views[0], positions_lps_mm(c.model), c.annotations.state.values()
    )
    bridge.server.publish_pose(PoseUpdate(T, "lost", 0.0, float("inf"), time.monotonic_ns(), 2))
    assert c.wait_for(lambda: c.view().status == "lost", 3.0)
    hidden = render_png(
        tmp_path / "hidden.png", frame, K, c.view(), positions_lps_mm(c.model), c.annotations.state.values()
    )
    assert imread(live).shape[:2] == (240, 320)
    assert _cyan(live) > 200 and _cyan(hidden) == 0  # the overlay is drawn only while live
