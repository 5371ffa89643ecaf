"""A headset client written from docs/headset-protocol.md alone: plain pyzmq, json, struct
and hashlib, nothing from headset_bridge's client code (issue 17: "a developer should not
need to read the Python client"). It connects over CURVE, measures the clock (section 5),
syncs annotations (4.3), reads poses (4.1), fetches the model in chunks (4.4), sends a
heartbeat (7) and a ray-distance depth frame (6.2), and gets an ``error`` for a request
with a field in its payload (2). The server side is the real BridgeServer."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from headset_bridge.keys import Allowlist, KeyPair
from headset_bridge.messages import Annotation, DepthFrame, PoseUpdate
from headset_bridge.server import BridgeServer, ServerConfig


class DocClient:
    """Only what the document says, in the order it says it."""

    def __init__(self, pub: str, ctl: str, server_public: bytes) -> None:
        self.public, secret = zmq.curve_keypair()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sub, self.dealer = self.ctx.socket(zmq.SUB), self.ctx.socket(zmq.DEALER)
        for sock in (self.sub, self.dealer):
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.setsockopt(zmq.RCVHWM, 0)  # section 1.1
            sock.setsockopt(zmq.LINGER, 0)
        for topic in (b"pose", b"ann"):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.dealer.setsockopt(zmq.SNDHWM, 4)
        self.pub_endpoint, self.ctl_endpoint = pub, ctl
        self.seq = 0

    def connect(self) -> None:
        self.sub.connect(self.pub_endpoint)
        self.dealer.connect(self.ctl_endpoint)

    def close(self) -> None:
        self.sub.close()
        self.dealer.close()
        self.ctx.term()

    def send(self, topic: str, fields: dict[str, Any], payload: bytes = b"") -> int:
        self.seq += 1
        header = {"v": 1, "type": topic, "seq": self.seq, "t_ns": time.monotonic_ns(), **fields}
        self.dealer.send_multipart([topic.encode(), json.dumps(header).encode(), payload])
        return self.seq

    def reply(self, wanted: str, timeout_s: float = 5.0) -> tuple[dict[str, Any], bytes]:
        deadline = time.monotonic() + timeout_s
        while self.dealer.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            topic, header, payload = self.dealer.recv_multipart()
            h = json.loads(header)
            assert len([topic, header, payload]) == 3 and h["v"] == 1 and h["type"] == topic.decode()
            if topic.decode() == wanted or topic == b"error":
                return h, payload
        raise AssertionError(f"no {wanted} reply within {timeout_s} s")

    def pose(self, timeout_s: float = 5.0) -> tuple[dict[str, Any], bytes]:
        deadline = time.monotonic() + timeout_s
        while self.sub.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            topic, header, payload = self.sub.recv_multipart()
            if topic == b"pose":
                return json.loads(header), payload
        raise AssertionError("no pose within the timeout")


@pytest.fixture
def setup() -> Iterator[tuple[BridgeServer, DocClient]]:
    server_keys = KeyPair.generate()
    client = None
    allow = Allowlist({})
    server = BridgeServer(server_keys, allow, ServerConfig.ephemeral()).start()
    try:
        client = DocClient(server.pub_endpoint, server.ctl_endpoint, server_keys.public)
        allow.add("doc-headset", client.public)
        client.connect()
        yield server, client
    finally:
        if client is not None:
            client.close()
        server.stop()


def test_a_client_from_the_document_alone(setup: tuple[BridgeServer, DocClient]) -> None:
    server, c = setup
    # Section 5: time_req (t_ns = t0) -> time_rep (t0, t1, t2); offset and rtt.
    t0 = time.monotonic_ns()
    asked = c.send("time_req", {})
    rep, _ = c.reply("time_rep")
    t3 = time.monotonic_ns()
    assert rep["type"] == "time_rep" and rep["seq"] == asked  # the echo
    rtt = (t3 - rep["t0_ns"]) - (rep["t2_ns"] - rep["t1_ns"])
    assert rep["t0_ns"] >= t0 and 0 <= rtt < 5e9

    # Section 4.3: sync from scratch -> snapshot, then ops in order from the PUB.
    server.annotate("add", Annotation("a1", "point", "dr-m", "mentor", ((1.0, 2.0, 3.0),), time.time_ns()))
    c.send("sync", {"epoch": None, "since": -1})
    snap, payload = c.reply("snapshot")
    assert snap["type"] == "snapshot" and snap["count"] == 1 and snap["seq"] == 1
    assert [a["id"] for a in json.loads(payload)] == ["a1"]
    c.send("sync", {"epoch": snap["epoch"], "since": snap["seq"]})  # up to date: an empty batch
    batch, payload = c.reply("ann_batch")
    assert json.loads(payload) == [] and batch["from_seq"] == batch["to_seq"] + 1

    # Section 4.1: a pose; its transform is 16 little-endian float64, row-major.
    T = np.eye(4)
    T[:3, 3] = (10.0, -20.0, 300.0)
    glb = bytes(range(256)) * 2000  # 512 kB: two 256 KiB chunks
    server.set_model(glb)
    server.publish_pose(PoseUpdate(T, "tracking", 0.9, 0.5, time.monotonic_ns(), 7, "doc-headset", 3))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        pose, payload = c.pose()
        if pose["seq"] == 7:
            break
    assert pose["status"] == "tracking" and pose["epoch"] == snap["epoch"] and isinstance(pose["stream"], str)
    assert np.allclose(np.array(struct.unpack("<16d", payload)).reshape(4, 4), T)

    # Section 4.4: the model named in the pose, in chunks, checked by size and SHA-256.
    info = pose["model"]
    count = -(-info["size"] // info["chunk_size"])
    chunks = {}
    for index in range(count):
        c.send("model_get", {"sha256": info["sha256"], "index": index})
        h, data = c.reply("model_chunk")
        assert h["type"] == "model_chunk" and h["count"] == count
        chunks[h["index"]] = data
    model = b"".join(chunks[i] for i in range(count))
    assert len(model) == info["size"] and hashlib.sha256(model).hexdigest() == info["sha256"]

    # Section 7: the heartbeat's fields go in the header; the server records them.
    c.send("hb", {"ann_seq": 1, "pose_seq": 7, "model_sha256": info["sha256"], "offset_ns": 0, "rtt_ns": rtt})
    assert server.wait_for(lambda: server.headsets().get("doc-headset") is not None, 5.0)
    assert server.wait_for(lambda: server.headsets()["doc-headset"].pose_seq == 7, 5.0)

    # Section 6.2: depth as distance along the ray, said so in the header.
    depth = np.full((4, 6), 800, "<u2")
    fields = {"t_capture_ns": time.monotonic_ns(), "width": 6, "height": 4, "dtype": "uint16"}
    fields |= {"depth_unit_mm": 1.0, "fx": 5.0, "fy": 5.0, "cx": 2.5, "cy": 1.5, "depth_kind": "ray"}
    fields["T_world_camera"] = np.eye(4).reshape(16).tolist()
    c.send("depth", fields, depth.tobytes())
    assert server.wait_for(lambda: server.pending("depth", "doc-headset") == 1, 5.0)
    (frame,) = server.take("depth", "doc-headset")
    assert isinstance(frame, DepthFrame) and frame.depth_kind == "ray"

    # Section 2: a field in the payload instead of the header is answered, not ignored.
    seq = c.send("model_get", {"sha256": info["sha256"]}, json.dumps({"index": 0}).encode())
    err, _ = c.reply("error")
    assert err["type"] == "error" and err["code"] == "bad_request" and err["seq"] == seq
    assert err["request"] == "model_get" and "index" in err["detail"]
