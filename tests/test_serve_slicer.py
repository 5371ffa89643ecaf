"""A session with its OpenIGTLink link on: 3D Slicer (pyigtl's client as the real peer)
gets the session's meshes and live poses, and a seed it sends restarts the tracker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pyigtl
import pytest
from slicer_fixtures import Peer, wait_for
from test_serve import _client, _settings, tiny_model

from headset_bridge.keys import write_keypair
from scrubin.audit import audit_path, read_events
from scrubin.service import Service
from slicer_link.polydata import register_with_pyigtl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "sphere")


def test_session_serves_slicer_meshes_poses_and_takes_a_seed(tmp_path: Path, model_dir: Path) -> None:
    register_with_pyigtl()
    slicer = {"enabled": True, "port": 0, "accept_transform": True, "wire_frame": "LPS"}
    settings = _settings(tmp_path, model_dir, ("or-s",), mentor={"enabled": False})
    settings.sessions[0].slicer = settings.sessions[0].slicer.model_validate(slicer)
    _, secret = write_keypair(tmp_path / "state" / "keys" / "or-s" / "headsets", "h1")
    with Service(settings) as service, _client(service, "or-s", secret) as headset:
        session = service.sessions["or-s"]
        assert session.slicer is not None and session.model_ready.wait(30)
        peer = Peer(session.slicer.link.port)
        try:
            skin = o3d.io.read_triangle_mesh(str(model_dir / "meshes" / "skin.ply"))
            mesh = peer.inbox.wait(lambda m: m.message_type == "POLYDATA", "the skin mesh")
            assert len(mesh.points) == len(skin.vertices)
            np.testing.assert_allclose(np.min(mesh.points, 0), skin.get_min_bound(), atol=1e-3)

            T_seed = np.eye(4)
            T_seed[:3, 3] = (5.0, -3.0, 400.0)  # the sphere 400 mm in front of the camera
            peer.send(pyigtl.TransformMessage(T_seed, device_name="SeedModelToSensor"))
            audit = audit_path(tmp_path / "state" / "audit", "or-s")
            wait_for(lambda: any(e.action == "slicer.transform" for e in read_events(audit)), "the seed audited")

            assert headset.wait_for(lambda: headset.clock.synced, 5.0)
            headset.send_depth(np.zeros((32, 32), np.uint16), np.eye(4), (30.0, 30.0, 15.5, 15.5))
            record = wait_for(lambda: session.records(), "the frame registered")[0]
            assert record.event == "slicer seed"
            # An empty frame cannot confirm the seed: Slicer is told "lost", never shown a pose as tracking.
            status = peer.inbox.wait(lambda m: m.device_name == "ModelToSensorStatus", "the status in Slicer")
            assert "lost" in status.string
        finally:
            peer.stop()
    methods = [e.detail.get("method", "") for e in read_events(audit) if e.action == "registration initialised"]
    assert any(str(m).startswith("Slicer transform") for m in methods)
