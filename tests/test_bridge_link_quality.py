"""The headset's link monitor: TCP's hidden repairs (headset_bridge/tcp_loss.py) on real
loopback sockets, and the window arithmetic on given readings. Loss itself is injected in
tests/test_reliability_network.py (a network namespace with nftables)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

from headset_bridge.client import DEGRADED_TCP_REPAIRS, LINK_WINDOW_S, _LinkMonitor
from headset_bridge.tcp_loss import read_repairs
from tests.bridge_fixtures import Bridge, running_bridge

bridge = pytest.fixture(name="bridge")(running_bridge)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is read on Linux only")
S = 1_000_000_000


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        try:
            yield client, peer
        finally:
            client.close()
            peer.close()


@linux_only
def test_a_clean_tcp_connection_has_nothing_repaired(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, peer = tcp_pair
    client.sendall(b"x" * 100_000)
    assert len(peer.recv(1000)) > 0
    assert read_repairs(client.fileno()) == 0
    assert read_repairs(peer.fileno()) == 0


def test_a_non_tcp_descriptor_reads_as_unknown() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert read_repairs(a.fileno()) is None


@linux_only
def test_a_connected_headset_reads_its_connections_and_reports_good(bridge: Bridge) -> None:
    c = bridge.client()
    assert c.wait_for(lambda: c.clock.synced and c.view().silence_ms is not None, 10.0)
    q = c.link_quality()
    assert q.tcp_repairs == 0, q  # read (not None) from both connections, nothing lost on loopback
    assert q.status == "good", q


def test_repairs_count_within_the_window_only() -> None:
    m = _LinkMonitor(timeout_s=1.0)
    m.received(0, 0)
    m.repaired(0, 10)  # repairs before the window are history
    m.received(1 * S, 1 * S)
    m.repaired(1 * S, 10 + DEGRADED_TCP_REPAIRS)
    q = m.quality(1 * S)
    assert q.tcp_repairs == DEGRADED_TCP_REPAIRS
    assert q.status == "degraded"
    assert q.reason == f"{DEGRADED_TCP_REPAIRS} lost TCP segments repaired"
    later = int((1 + LINK_WINDOW_S + 0.5) * S)
    m.received(later, later)
    m.repaired(later, 10 + DEGRADED_TCP_REPAIRS)
    q = m.quality(later)
    assert (q.tcp_repairs, q.status) == (0, "good"), q


def test_without_readings_the_monitor_does_not_guess() -> None:
    m = _LinkMonitor(timeout_s=1.0)
    m.received(0, 0)
    m.repaired(0, None)
    q = m.quality(S // 100)
    assert (q.tcp_repairs, q.status) == (None, "good"), q
