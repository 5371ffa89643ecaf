"""Bridge-only test helpers: keys, a running server, connected headsets."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headset_bridge.client import ClientConfig, HeadsetClient, PoseView
from headset_bridge.keys import Allowlist, KeyPair
from headset_bridge.messages import Annotation, PoseUpdate
from headset_bridge.server import BridgeServer, ServerConfig

HEADSETS = ("hl-a", "hl-b", "hl-c")


@dataclass
class Bridge:
    server: BridgeServer
    server_keys: KeyPair
    headset_keys: dict[str, KeyPair]
    clients: list[HeadsetClient] = field(default_factory=list)

    def config(self, **kw: Any) -> ClientConfig:
        return ClientConfig(self.server.pub_endpoint, self.server.ctl_endpoint, self.server_keys.public, **kw)

    def client(self, name: str = "hl-a", **kw: Any) -> HeadsetClient:
        c = HeadsetClient(self.headset_keys[name], self.config(**kw))
        self.clients.append(c)
        return c

    def close_client(self, c: HeadsetClient) -> None:
        self.clients.remove(c)
        c.close()


def make_bridge(**server_kw: Any) -> Bridge:
    server_keys = KeyPair.generate()
    headset_keys = {n: KeyPair.generate() for n in HEADSETS}
    allow = Allowlist({n: k.public for n, k in headset_keys.items()})
    server = BridgeServer(server_keys, allow, ServerConfig.ephemeral(**server_kw)).start()
    return Bridge(server, server_keys, headset_keys)


def running_bridge() -> Iterator[Bridge]:
    """Fixture body; test modules register it with ``bridge = pytest.fixture(name="bridge")(running_bridge)``."""
    b = make_bridge()
    try:
        yield b
    finally:
        for c in list(b.clients):
            c.close()
        b.server.stop()


def pose(seq: int, status: str = "tracking", t: float = 0.0) -> PoseUpdate:
    T = np.eye(4)
    T[:3, 3] = (t, 2.0 * t, seq)
    return PoseUpdate(T, status, 0.9, 1.5, time.monotonic_ns(), seq)  # type: ignore[arg-type]


def ann(i: int | str, text: str = "") -> Annotation:
    return Annotation(
        id=f"a{i}",
        kind="stroke",
        author="dr-m",
        role="mentor",
        points_mm=((float(hash(str(i)) % 100), 2.0, 3.0), (4.0, 5.0, 6.0)),
        created_ns=1000 + len(str(i)),
        text=text,
    )


def wait_all(clients: list[HeadsetClient], pred: Callable[[HeadsetClient], bool], timeout_s: float = 3.0) -> bool:
    """Poll every client until pred holds for all (one loop: no client starves)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for i, c in enumerate(clients):
            c.poll(0.005 if i == 0 else 0.0)  # wait on the first client's sockets, drain the rest
        if all(pred(c) for c in clients):
            return True
    return False


def ready(c: HeadsetClient) -> bool:
    return c.annotations.synced and c.clock.synced and c.epoch is not None


def until_live(
    bridge: Bridge, clients: list[HeadsetClient], status: str = "tracking", timeout_s: float = 5.0
) -> list[PoseView]:
    """Publish fresh poses until every client shows one live; the views at that instant.

    A single pose is live for only ~100 ms (then the server calls it stale), which a
    loaded CI box can miss; fresh poses make the check robust without weakening it.
    """
    seq = itertools.count(10_000)
    views: list[PoseView] = []

    def all_live(_: HeadsetClient) -> bool:
        if views:
            return True
        now = [c.view() for c in clients]
        if all(v.live and v.status == status for v in now):
            views.extend(now)
            return True
        bridge.server.publish_pose(pose(next(seq), status))
        return False

    assert wait_all(clients, all_live, timeout_s), [c.view().reason for c in clients]
    return views
