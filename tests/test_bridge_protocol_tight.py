"""The headset protocol as an outside client meets it (issue 17, part 4): the allowlist
folder is re-read while running, a request with its fields in the wrong place gets an
``error`` reply (never silence), depth may be a z-depth or a distance along the ray, a
video frame may carry its own camera, and a restarted server is told apart by ``stream``
while a persisted annotation log keeps its ``epoch``. Real CURVE sockets on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from bridge_fixtures import Bridge, pose, ready, running_bridge, wait_all

from headset_bridge import protocol as P
from headset_bridge.client import ClientConfig, HeadsetClient
from headset_bridge.keys import Allowlist, KeyPair, load_keypair, write_keypair
from headset_bridge.messages import DepthFrame, VideoFrame
from headset_bridge.server import BridgeServer, ServerConfig
from headset_bridge.transport import client_socket
from registration import PinholeIntrinsics
from registration.depth import DepthFrame as RegDepth
from registration.depth import depth_to_points, ray_cosines, ray_to_z

bridge = pytest.fixture(name="bridge")(running_bridge)


@pytest.fixture
def folder_bridge(tmp_path: Path) -> Iterator[tuple[BridgeServer, KeyPair, Path, list[HeadsetClient]]]:
    """A server whose allowlist is a folder holding one key, hl-a."""
    keys_dir = tmp_path / "headsets"
    keys_dir.mkdir()
    write_keypair(keys_dir, "hl-a")
    server_keys = KeyPair.generate()
    server = BridgeServer(server_keys, Allowlist(directory=keys_dir), ServerConfig.ephemeral()).start()
    clients: list[HeadsetClient] = []
    try:
        yield server, server_keys, keys_dir, clients
    finally:
        for c in clients:
            c.close()
        server.stop()


def _client(server: BridgeServer, server_keys: KeyPair, secret: Path, clients: list[HeadsetClient]) -> HeadsetClient:
    cfg = ClientConfig(server.pub_endpoint, server.ctl_endpoint, server_keys.public)
    c = HeadsetClient(load_keypair(secret), cfg)
    clients.append(c)
    return c


def test_a_key_added_to_the_folder_while_running_is_accepted(folder_bridge: Any, tmp_path: Path) -> None:
    server, server_keys, keys_dir, clients = folder_bridge
    staging = tmp_path / "new"
    staging.mkdir()
    public, secret = write_keypair(staging, "hl-new")
    public.rename(keys_dir / public.name)  # as an administrator would drop it in
    deadline = time.monotonic() + 10.0
    while server.allowlist.name_of(load_keypair(secret).public) is None and time.monotonic() < deadline:
        server.wait_for(lambda: False, 0.05)  # the server polls its folder; wait on its condition
    assert server.allowlist.name_of(load_keypair(secret).public) == "hl-new"
    c = _client(server, server_keys, secret, clients)
    assert c.wait_for(lambda: ready(c), 5.0)
    assert "hl-new" in server.headsets()


def test_a_key_removed_from_the_folder_is_cut_off(folder_bridge: Any) -> None:
    server, server_keys, keys_dir, clients = folder_bridge
    c = _client(server, server_keys, keys_dir / "hl-a.key_secret", clients)
    assert c.wait_for(lambda: ready(c), 5.0)
    (keys_dir / "hl-a.key").unlink()
    assert c.wait_for(lambda: server.counters.get("revoked") >= 1, 10.0)
    for i in range(1, 4):
        server.publish_pose(pose(i))
    c.poll(0.2)
    assert c.view().seq == 0 and not c.view().live  # no pose after the revocation reached it
    assert not server.headsets()["hl-a"].alive


def test_a_bad_key_file_keeps_the_previous_list(folder_bridge: Any) -> None:
    server, _, keys_dir, _ = folder_bridge
    (keys_dir / "junk.key").write_text("not a key\n")
    assert server.allowlist.refresh() == {}  # read, refused, the old list kept
    assert server.allowlist.name_of(load_keypair(keys_dir / "hl-a.key_secret").public) == "hl-a"


# -- requests with misplaced fields ---------------------------------------------------
@pytest.fixture
def dealer(bridge: Bridge) -> Iterator[zmq.Socket[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = client_socket(ctx, zmq.DEALER, bridge.headset_keys["hl-a"], bridge.server_keys.public)
    sock.connect(bridge.server.ctl_endpoint)
    yield sock
    sock.close(linger=0)
    ctx.term()


def _ask(sock: zmq.Socket[Any], topic: str, header: dict[str, Any], payload: bytes = b"") -> P.Message:
    """Send one raw request; the first reply that is not a keepalive-free answer to it."""
    sock.send_multipart(P.encode(topic, {"seq": 7, "t_ns": 1, **header}, payload))
    assert sock.poll(5000), f"no reply to {topic} {header}"
    return P.decode(sock.recv_multipart(), allowed=P.REPLY_TYPES)


@pytest.mark.parametrize(
    ("topic", "header", "payload", "detail"),
    [
        ("sync", {}, json.dumps({"epoch": None, "since": -1}).encode(), "lacks 'epoch'"),
        ("sync", {"epoch": None, "since": -1}, b'{"since": -1}', "payload must be empty"),
        ("model_get", {"sha256": "00"}, json.dumps({"index": 0}).encode(), "lacks 'index'"),
        ("hb", {"ann_seq": 0}, b"", "lacks 'pose_seq'"),
        (
            "depth",
            {
                "t_capture_ns": 1,
                "width": 2,
                "height": 2,
                "dtype": "uint16",
                "depth_unit_mm": 1.0,
                "fx": 1.0,
                "fy": 1.0,
                "cx": 0.5,
                "cy": 0.5,
                "T_world_camera": np.eye(4).reshape(16).tolist(),
                "depth_kind": "euclid",
            },
            bytes(8),
            "depth_kind must be one of",
        ),  # fmt: skip
        ("video", {"t_capture_ns": 1, "width": 1, "height": 1, "encoding": "rgb8", "fx": 1.0}, bytes(3), "all of"),
    ],
)
def test_a_misplaced_or_bad_field_gets_an_error_reply(
    dealer: zmq.Socket[Any], topic: str, header: dict[str, Any], payload: bytes, detail: str
) -> None:
    reply = _ask(dealer, topic, header, payload)
    assert reply.topic == "error", reply
    assert reply.header["code"] == "bad_request" and reply.header["seq"] == 7
    assert reply.header["request"] == topic and detail in reply.header["detail"], reply.header


def test_a_well_formed_request_still_gets_its_answer(dealer: zmq.Socket[Any]) -> None:
    reply = _ask(dealer, "sync", {"epoch": None, "since": -1})
    assert reply.topic == "snapshot"


# -- depth: z or ray ------------------------------------------------------------------
def test_ray_distances_become_z_depth() -> None:
    K = PinholeIntrinsics(64, 48, 40.0, 42.0, 31.5, 23.5)
    z_true = 500.0
    ray = np.round(z_true / ray_cosines(K) * 4.0).astype(np.uint16)  # 0.25 mm units, a plane at z = 500
    frame = ray_to_z(RegDepth(ray, K, depth_unit_mm=0.25))
    pts = depth_to_points(frame)
    assert len(pts) == 64 * 48
    assert np.abs(pts[:, 2] - z_true).max() < 0.2  # the unit's rounding, not the ray's length (up to 80 mm more)
    assert np.abs(depth_to_points(RegDepth(ray, K, depth_unit_mm=0.25))[:, 2] - z_true).max() > 50


def test_depth_kind_and_video_camera_reach_the_server(bridge: Bridge) -> None:
    c = bridge.client("hl-a")
    assert c.wait_for(lambda: ready(c), 5.0)
    T = np.eye(4)
    T[:3, 3] = (10.0, 20.0, 30.0)
    c.send_depth(np.full((4, 6), 500, np.uint16), T, (5.0, 5.0, 2.5, 1.5), depth_kind="ray")
    c.send_video(bytes(2 * 3 * 3), 3, 2, intrinsics=(2.0, 2.0, 1.0, 0.5), T_world_camera=T)
    c.send_video(bytes(2 * 3 * 3), 3, 2)
    assert wait_all(
        [c], lambda _: bridge.server.pending("video", "hl-a") == 2 and bridge.server.pending("depth", "hl-a") == 1
    )
    (depth,) = bridge.server.take("depth", "hl-a")
    with_camera, without = bridge.server.take("video", "hl-a")
    assert isinstance(depth, DepthFrame) and depth.depth_kind == "ray"
    assert isinstance(with_camera, VideoFrame) and with_camera.intrinsics == (2.0, 2.0, 1.0, 0.5)
    assert with_camera.T_world_camera is not None and np.allclose(with_camera.T_world_camera, T)
    assert isinstance(without, VideoFrame) and without.intrinsics is None and without.T_world_camera is None
    with pytest.raises(ValueError, match="together"):
        c.send_video(b"", 1, 1, intrinsics=(1.0, 1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="depth_kind"):
        c.send_depth(np.zeros((2, 2), np.uint16), T, (1.0, 1.0, 0.5, 0.5), depth_kind="euclid")


# -- epoch and stream ------------------------------------------------------------------
def test_a_restarted_server_keeps_its_epoch_and_changes_its_stream(tmp_path: Path) -> None:
    server_keys, hk = KeyPair.generate(), KeyPair.generate()
    store = tmp_path / "ann.sqlite"
    first = BridgeServer(server_keys, Allowlist({"hl-a": hk.public}), ServerConfig.ephemeral(annotation_store=store))
    first.start()
    ports = [int(e.rsplit(":", 1)[1]) for e in (first.pub_endpoint, first.ctl_endpoint)]
    c = HeadsetClient(hk, ClientConfig(first.pub_endpoint, first.ctl_endpoint, server_keys.public))
    try:
        assert c.wait_for(lambda: ready(c) and c.stream is not None, 5.0)
        epoch, stream = c.epoch, c.stream
        assert stream == first.stream and epoch == first.epoch
        first.stop()
        cfg = ServerConfig(pub_port=ports[0], ctl_port=ports[1], annotation_store=store)
        second = BridgeServer(server_keys, Allowlist({"hl-a": hk.public}), cfg).start()
        try:
            assert c.wait_for(lambda: c.stream == second.stream, 10.0)
            assert c.epoch == epoch and second.epoch == epoch  # the persisted log: same epoch
            assert c.counters.get("stream_restarted") == 1
            assert c.wait_for(lambda: c.clock.synced, 5.0)  # the clock was measured again
        finally:
            second.stop()
    finally:
        c.close()


def test_the_document_names_every_header_field() -> None:
    """docs/headset-protocol.md is the one reference: every field the code checks is in it."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "headset-protocol.md").read_text()
    fields = {(t, n) for schema in (P.SCHEMAS, P.OPTIONAL_FIELDS) for t, fs in schema.items() for n in fs}
    missing = sorted(f"{t}.{n}" for t, n in fields if f"`{n}`" not in doc)
    assert missing == [], missing
    assert all(f"`{t}`" in doc for t in P.SCHEMAS), [t for t in P.SCHEMAS if f"`{t}`" not in doc]
