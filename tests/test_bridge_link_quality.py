"""The headset's link monitor: TCP's hidden repairs (headset_bridge/tcp_loss.py) on real
loopback sockets, and the window arithmetic on given readings. Loss itself is injected in
tests/test_reliability_network.py (a network namespace with nftables)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest
from bridge_fixtures import Bridge, running_bridge

from headset_bridge.client import DEGRADED_TCP_REPAIR_SHARE, DEGRADED_TCP_REPAIRS, LINK_WINDOW_S, _LinkMonitor
from headset_bridge.tcp_loss import TcpCounts, read_counts

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
    sent, received = read_counts(client.fileno()), read_counts(peer.fileno())
    assert sent is not None and received is not None
    assert sent.repairs == received.repairs == 0
    assert sent.segments >= 2  # 100 kB is more than one segment, even at loopback's 64 kB MSS
    assert received.segments >= 1


def test_a_non_tcp_descriptor_reads_as_unknown() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert read_counts(a.fileno()) is None


@linux_only
def test_a_connected_headset_reads_its_connections_and_reports_good(bridge: Bridge) -> None:
    c = bridge.client()
    assert c.wait_for(lambda: c.clock.synced and c.view().silence_ms is not None, 10.0)
    # Counting starts when the connection is first seen: keepalives and time requests follow.
    assert c.wait_for(lambda: (c.link_quality().tcp_segments or 0) > 0, 5.0), c.link_quality()
    q = c.link_quality()
    assert q.tcp_repairs == 0, q  # read (not None) from both connections, nothing lost on loopback
    assert q.status == "good", q


def test_repairs_count_within_the_window_only() -> None:
    m = _LinkMonitor(timeout_s=1.0)
    m.received(0, 0)
    m.tcp_counted(0, TcpCounts(10, 100))  # repairs before the window are history
    m.received(1 * S, 1 * S)
    m.tcp_counted(1 * S, TcpCounts(10 + DEGRADED_TCP_REPAIRS, 110))
    q = m.quality(1 * S)
    assert (q.tcp_repairs, q.tcp_segments) == (DEGRADED_TCP_REPAIRS, 10)
    assert q.status == "degraded"
    assert q.reason == f"{DEGRADED_TCP_REPAIRS} of 10 TCP segments lost and repaired"
    later = int((1 + LINK_WINDOW_S + 0.5) * S)
    m.received(later, later)
    m.tcp_counted(later, TcpCounts(10 + DEGRADED_TCP_REPAIRS, 200))
    q = m.quality(later)
    assert (q.tcp_repairs, q.status) == (0, "good"), q


def test_rare_repairs_on_a_busy_link_are_not_degraded() -> None:
    """Depth frames are many segments each: a handful of repairs among thousands is a good link."""
    busy = 10_000
    below = int(DEGRADED_TCP_REPAIR_SHARE * busy) - 1
    m = _LinkMonitor(timeout_s=1.0)
    m.received(0, 0)
    m.tcp_counted(0, TcpCounts(0, 0))
    m.tcp_counted(S // 10, TcpCounts(below, busy))
    assert m.quality(S // 10).status == "good"
    m.tcp_counted(S // 5, TcpCounts(below + 2, busy))
    assert m.quality(S // 5).status == "degraded"


def test_without_readings_the_monitor_does_not_guess() -> None:
    m = _LinkMonitor(timeout_s=1.0)
    m.received(0, 0)
    m.tcp_counted(0, None)
    q = m.quality(S // 100)
    assert (q.tcp_repairs, q.tcp_segments, q.status) == (None, None, "good"), q
