"""Packet loss that TCP hid, counted from the kernel (Linux ``TCP_INFO``) for the TCP
connections under ZeroMQ sockets.

Why: TCP turns loss into delay, and on a short path (loopback, one Wi-Fi hop) a lost segment
is usually resent within one message interval, so delays alone missed a link dropping 10 % of
its packets in about 1 run in 10 (tests/test_reliability_network.py). The kernel counts every
such repair: segments this side had to resend (``tcpi_total_retrans``) and segments that
arrived after a gap left by a lost one (``tcpi_rcv_ooopack``, Linux 5.4+). A clean link shows
neither. Where ``TCP_INFO`` does not exist (not Linux) or a connection is not TCP (``ipc://``),
:meth:`TcpLossCounter.total` returns None and the link monitor relies on delays alone. The
link monitor judges repairs as a share of the data segments, so a busy uplink (depth frames
are ~130 segments each) on a good link with rare losses is not called degraded.
"""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

# Byte offsets in Linux's struct tcp_info (include/uapi/linux/tcp.h); stable kernel ABI.
_TOTAL_RETRANS_AT = 100  # __u32 tcpi_total_retrans
_DATA_SEGS_AT = 152  # __u32 tcpi_data_segs_in, then __u32 tcpi_data_segs_out (Linux 4.6+)
_RCV_OOOPACK_AT = 224  # __u32 tcpi_rcv_ooopack (Linux 5.4+)
_TCP_INFO_BYTES = 232
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED


@dataclass(frozen=True)
class TcpCounts:
    """Counts of one or more TCP connections since they began."""

    repairs: int  # segments resent plus segments received after a gap
    segments: int  # data segments sent plus received

    def __add__(self, other: TcpCounts) -> TcpCounts:
        return TcpCounts(self.repairs + other.repairs, self.segments + other.segments)

    def __sub__(self, other: TcpCounts) -> TcpCounts:
        return TcpCounts(self.repairs - other.repairs, self.segments - other.segments)


NO_COUNTS = TcpCounts(0, 0)


def read_counts(fd: int) -> TcpCounts | None:
    """What the kernel counted on the TCP socket ``fd`` so far, or None when it cannot be read
    (not TCP, closed, kernel too old, not Linux)."""
    if _TCP_INFO is None:
        return None
    try:
        # A duplicate descriptor: closing it never closes libzmq's connection.
        with socket.socket(fileno=socket.dup(fd)) as sock:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_BYTES)
    except OSError:
        return None
    if len(raw) < _RCV_OOOPACK_AT + 4:
        return None
    (retrans,) = struct.unpack_from("=I", raw, _TOTAL_RETRANS_AT)
    segs_in, segs_out = struct.unpack_from("=II", raw, _DATA_SEGS_AT)
    (out_of_order,) = struct.unpack_from("=I", raw, _RCV_OOOPACK_AT)
    return TcpCounts(int(retrans) + int(out_of_order), int(segs_in) + int(segs_out))


class TcpLossCounter:
    """Follows the connections of ``sockets`` through ZeroMQ's socket monitor and sums their
    counts into totals that only grow (a reconnection starts its kernel counters at 0)."""

    def __init__(self, sockets: tuple[zmq.Socket[Any], ...]) -> None:
        self._sockets = sockets
        self._monitors = [s.get_monitor_socket(_EVENTS) for s in sockets]
        self._last: dict[int, TcpCounts] = {}  # fd -> its counts at the last read
        self._total = NO_COUNTS
        self._readable = False

    def total(self) -> TcpCounts | None:
        """Counts over every connection since this counter began; None if none could be read."""
        self._follow_connections()
        for fd, before in list(self._last.items()):
            now = read_counts(fd)
            if now is None:
                continue
            self._readable = True
            # Fewer segments than before: the descriptor now belongs to a new connection.
            self._total += now - before if now.segments >= before.segments else now
            self._last[fd] = now
        return self._total if self._readable else None

    def _follow_connections(self) -> None:
        for monitor in self._monitors:
            while True:
                try:
                    event = recv_monitor_message(monitor, zmq.NOBLOCK)
                except zmq.Again:
                    break
                fd = int(event["value"])
                if event["event"] == zmq.EVENT_CONNECTED:
                    self._last[fd] = read_counts(fd) or NO_COUNTS  # count from now on
                else:
                    self._last.pop(fd, None)

    def close(self) -> None:
        """Stop monitoring; must come before the sockets' context is terminated."""
        for sock, monitor in zip(self._sockets, self._monitors, strict=True):
            try:
                sock.disable_monitor()
            except zmq.ZMQError as exc:  # the socket is already closed
                log.debug("disable_monitor: %s", exc)
            monitor.close(linger=0)
