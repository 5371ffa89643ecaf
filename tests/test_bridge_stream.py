"""Server to headsets: poses, fail-safe status, annotations, model, liveness, clock."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from bridge_fixtures import Bridge, ann, make_bridge, pose, ready, running_bridge, until_live, wait_all

from headset_bridge.annotations import state_digest
from headset_bridge.client import HeadsetClient

bridge = pytest.fixture(name="bridge")(running_bridge)


def test_pose_reaches_every_headset_with_units_and_frames(bridge: Bridge) -> None:
    clients = [bridge.client(n) for n in ("hl-a", "hl-b", "hl-c")]
    assert wait_all(clients, ready)
    bridge.server.publish_pose(pose(7, t=12.5))
    assert wait_all(clients, lambda c: c.view().seq == 7)
    for c in clients:
        v = c.view()
        assert v.T_sensor_model is not None and v.T_sensor_model[0, 3] == 12.5  # mm, row-major
        assert v.T_sensor_model[1, 3] == 25.0 and v.T_sensor_model[2, 3] == 7.0
    for v in until_live(bridge, clients):
        assert v.status == "tracking" and not v.flagged
        assert v.age_ms is not None and v.age_ms >= 0


def test_degraded_is_live_but_flagged(bridge: Bridge) -> None:
    c = bridge.client()
    assert c.wait_for(lambda: ready(c), 3.0)
    (v,) = until_live(bridge, [c], "degraded")
    assert v.live and v.flagged


def test_tracking_lost_reaches_every_headset(bridge: Bridge) -> None:
    clients = [bridge.client(n) for n in ("hl-a", "hl-b", "hl-c")]
    assert wait_all(clients, ready)
    until_live(bridge, clients)
    bridge.server.publish_pose(pose(2, "lost"))
    assert wait_all(clients, lambda c: c.view().status == "lost")
    assert all(not c.view().live and c.view().reason == "status lost" for c in clients)


def test_keepalive_never_vouches_for_a_stale_pose(bridge: Bridge) -> None:
    """The registration loop stops: the server itself reports lost (stale) within its limit."""
    c = bridge.client()
    assert c.wait_for(lambda: ready(c), 3.0)
    until_live(bridge, [c])
    assert c.wait_for(lambda: c.view().status == "lost", 3.0)  # no new pose follows
    assert "stale" in c.view().reason and not c.view().live


def test_client_treats_silence_as_stale(bridge: Bridge) -> None:
    c = bridge.client()
    assert c.wait_for(lambda: ready(c), 3.0)
    (v,) = until_live(bridge, [c])
    assert v.silence_ms is not None
    later = c.view(now_ns=time.monotonic_ns() + int(0.101e9))  # nothing heard for 101 ms more
    assert not later.live and "silent" in later.reason
    bridge.server.stop()  # the real thing: the server vanishes
    bridge.server = make_bridge().server  # fixture teardown stops this one
    assert c.wait_for(lambda: not c.view().live, 3.0)
    assert "silent" in c.view().reason


def test_newest_pose_wins_for_a_slow_headset_and_nobody_waits(bridge: Bridge) -> None:
    slow, fast = bridge.client("hl-a"), bridge.client("hl-b")
    assert wait_all([slow, fast], ready)
    for i in range(1, 3001):  # the slow headset does not read at all meanwhile
        bridge.server.publish_pose(pose(i))
        if i % 100 == 0:
            bridge.server.annotate("add", ann(i))
    assert fast.wait_for(lambda: fast.view().seq == 3000 and fast.annotations.seq == 30, 10.0)
    slow.poll(0)  # its queue is full: one drain jumps over the backlog to the newest it holds
    assert slow.counters.get("pose_skipped") >= 30
    assert slow.wait_for(lambda: slow.view().seq == 3000 and slow.annotations.seq == 30, 10.0)
    # ... yet it lost no annotation.
    assert state_digest(slow.annotations.state) == state_digest(bridge.server.annotations[1])
    assert slow.annotations.applied == list(range(1, 31))


def test_annotations_in_order_exactly_once_and_late_joiner_snapshot(bridge: Bridge) -> None:
    early = bridge.client("hl-a")
    assert early.wait_for(lambda: ready(early), 3.0)
    srv = bridge.server
    for i in range(20):
        srv.annotate("add", ann(i))
    srv.annotate("update", ann(3, "moved"))
    srv.annotate("delete", "a4")
    late = bridge.client("hl-b")  # joins mid-stream: snapshot + its seq, then updates
    assert late.wait_for(lambda: ready(late), 3.0)
    assert late.annotations.seq == 22 and late.annotations.applied == []
    for i in range(20, 30):
        srv.annotate("add", ann(i))
    seq, state = srv.annotations
    assert wait_all([early, late], lambda c: c.annotations.seq == seq)
    for c in (early, late):
        assert state_digest(c.annotations.state) == state_digest(state)
        assert "a4" not in c.annotations.state and c.annotations.state["a3"].rev == 1
    assert early.annotations.applied == list(range(1, seq + 1))
    assert late.annotations.applied == list(range(23, seq + 1))


def test_model_fetched_in_chunks_only_when_it_changes(bridge: Bridge) -> None:
    glb = bytes(range(256)) * 4000  # ~1 MB, 4 chunks of 256 KiB
    info = bridge.server.set_model(glb)
    c = bridge.client()
    assert c.wait_for(lambda: c.model_sha256 == info.sha256, 5.0)
    assert c.model == glb and info.sha256 == hashlib.sha256(glb).hexdigest()
    gets = bridge.server.headsets()["hl-a"].received["model_get"]
    assert gets == info.chunks == 4
    bridge.server.set_model(glb)  # same bytes: nothing to send
    bridge.server.publish_pose(pose(1))
    assert c.wait_for(lambda: c.view().seq == 1, 3.0)
    new = glb[::-1]
    info2 = bridge.server.set_model(new)
    assert c.wait_for(lambda: c.model_sha256 == info2.sha256, 5.0)
    assert c.model == new
    assert bridge.server.headsets()["hl-a"].received["model_get"] == 8


def test_dead_and_frozen_headsets_are_noticed(bridge: Bridge) -> None:
    crashed, frozen = bridge.client("hl-a"), bridge.client("hl-b")
    assert wait_all([crashed, frozen], ready)
    assert bridge.server.wait_for(lambda: len(bridge.server.headsets()) == 2, 3.0)
    bridge.close_client(crashed)  # sockets gone, linger 0
    t0 = time.monotonic()
    # frozen: still connected but never polls again (no heartbeats)
    assert bridge.server.wait_for(lambda: not any(h.alive for h in bridge.server.headsets().values()), 3.0)
    assert time.monotonic() - t0 < 3.0
    assert frozen.wait_for(lambda: bridge.server.headsets()["hl-b"].alive, 3.0)  # thaws
    assert bridge.server.counters.get("headset_dead") == 2


def test_clock_sync_bounds(bridge: Bridge) -> None:
    c = bridge.client()
    assert c.wait_for(lambda: c.clock.synced, 3.0)
    best = c.clock.best
    assert best is not None and best.rtt_ns > 0
    # Same host, same monotonic clock: the true offset is 0, and NTP's error is at most rtt/2.
    assert abs(best.offset_ns) <= best.rtt_ns // 2 + 1
    assert c.wait_for(lambda: bridge.server.headsets()["hl-a"].rtt_ns > 0, 3.0)  # reported in heartbeats


def test_server_restart_makes_headsets_resync() -> None:
    first = make_bridge()
    c = HeadsetClient(first.headset_keys["hl-a"], first.config())
    try:
        first.server.annotate("add", ann(1))
        assert c.wait_for(lambda: c.annotations.seq == 1, 3.0)
        old_epoch = c.epoch
        pub_port = int(first.server.pub_endpoint.rsplit(":", 1)[1])
        ctl_port = int(first.server.ctl_endpoint.rsplit(":", 1)[1])
        first.server.stop()
        from headset_bridge.server import BridgeServer, ServerConfig

        second = BridgeServer(
            first.server_keys, first.server.allowlist, ServerConfig(pub_port=pub_port, ctl_port=ctl_port)
        ).start()
        try:
            second.annotate("add", ann(2))
            second.annotate("add", ann(3))
            assert c.wait_for(lambda: c.epoch == second.epoch and c.annotations.seq == 2, 5.0)
            assert c.epoch != old_epoch and set(c.annotations.state) == {"a2", "a3"}
        finally:
            second.stop()
    finally:
        c.close()


def test_registration_estimate_duck_typed_lost_with_infinite_rmse(bridge: Bridge) -> None:
    """Registration's lost Estimate (rmse inf, maybe no timestamp, str Enum status) must pass."""
    import enum
    from dataclasses import dataclass

    import numpy as np

    from headset_bridge.messages import PoseUpdate

    class Status(str, enum.Enum):  # noqa: UP042 - mirrors registration.estimate.Status
        LOST = "lost"

    @dataclass
    class Estimate:
        T_sensor_model: np.ndarray
        status: Status
        fitness: float
        rmse_mm: float
        timestamp_ns: int | None

    c = bridge.client()
    assert c.wait_for(lambda: ready(c), 3.0)
    bridge.server.publish_pose(pose(1))
    update = PoseUpdate.from_estimate(Estimate(np.eye(4), Status.LOST, 0.0, float("inf"), None), seq=2)
    assert update.status == "lost" and type(update.status) is str
    bridge.server.publish_pose(update)
    assert c.wait_for(lambda: c.view().seq == 2, 3.0)
    v = c.view()
    assert v.status == "lost" and not v.live and np.isnan(v.rmse_mm)
    bridge.server.publish_pose(
        {
            "T_sensor_model": np.eye(4),
            "status": "tracking",
            "fitness": 0.9,
            "rmse_mm": 1.0,
            "timestamp_ns": time.monotonic_ns(),
        }
    )  # no seq: next one
    assert c.wait_for(lambda: c.view().seq == 3, 3.0)
    until_live(bridge, [c])


def test_poses_keep_flowing_while_an_annotation_is_being_made_durable(tmp_path: Path, monkeypatch: Any) -> None:
    """An annotation op is fsync'd before anyone sees it; that wait must not hold up poses."""
    from headset_bridge.annotations import AnnotationStore

    stalled, release = threading.Event(), threading.Event()
    real_append = AnnotationStore.append

    def slow_append(self: AnnotationStore, entry: Any) -> None:
        stalled.set()
        assert release.wait(10.0), "test never released the store"
        real_append(self, entry)

    monkeypatch.setattr(AnnotationStore, "append", slow_append)
    b = make_bridge(annotation_store=tmp_path / "ann.sqlite")
    try:
        c = b.client("hl-a")
        assert c.wait_for(lambda: ready(c), 5.0)
        writer = threading.Thread(target=b.server.annotate, args=("add", ann(1)))
        writer.start()
        assert stalled.wait(5.0)
        b.server.publish_pose(pose(7))  # while the op waits for its disk
        assert c.wait_for(lambda: c.view().seq == 7, 3.0)
        assert "a1" not in c.annotations.state and b.server.annotations[0] == 0  # not visible before durable
        release.set()
        writer.join(5.0)
        assert c.wait_for(lambda: "a1" in c.annotations.state, 3.0)
        assert b.server.annotations[0] == 1
    finally:
        release.set()
        for cl in list(b.clients):
            cl.close()
        b.server.stop()
