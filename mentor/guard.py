"""Connection limits for the mentor HTTP server: per address and in total, with timeouts.

Idle TCP connections cost a file descriptor each; enough of them used to exhaust the
process's descriptors, after which asyncio's accept loop failed and logged on every turn.
:class:`ConnectionGuard` keeps the count bounded below the descriptor limit instead:

* a new connection over a cap takes the place of the OLDEST IDLE connection of its own
  address (per-address cap) or of the address holding the most connections (total cap), so
  idle sockets can never shut out a real request; when every connection in scope is busy
  with a request the new one is closed at once;
* a connection that sends no complete request head within ``header_timeout_s`` of opening,
  or sits idle ``keepalive_timeout_s`` after its last answer, is closed (slowloris, idle);
* refusals and closes are counted and reported in at most one log line per ``log_every_s``.

Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger(__name__)

LOG_EVERY_S: Final = 10.0
FD_RESERVE: Final = 2  # at most 1/FD_RESERVE of the descriptors go to HTTP connections
NOISY_LOOP_ERRORS: Final = (
    "socket.accept() out of system resource",
    "SSL handshake failed",
    "Fatal error on transport",
)


@dataclass
class _Conn:
    ip: str
    transport: Any
    opened: float
    idle_since: float | None  # None while a request is being handled
    served: bool = False  # answered a request: the keep-alive timeout applies, not the header one


@dataclass
class GuardCounts:
    evicted: int = 0  # idle connections closed to make room for a new one
    refused: int = 0  # new connections closed because every connection in scope was busy
    timed_out: int = 0  # closed by the header or keep-alive timeout

    def total(self) -> int:
        return self.evicted + self.refused + self.timed_out


@dataclass
class ConnectionGuard:
    max_total: int
    max_per_ip: int
    header_timeout_s: float
    keepalive_timeout_s: float
    clock: Callable[[], float] = time.monotonic
    log_every_s: float = LOG_EVERY_S
    counts: GuardCounts = field(default_factory=GuardCounts)
    _conns: dict[object, _Conn] = field(default_factory=dict)  # insertion order: oldest first
    _by_ip: dict[str, dict[object, None]] = field(default_factory=dict)
    _logged: GuardCounts = field(default_factory=GuardCounts)
    _last_log: float = float("-inf")

    def __post_init__(self) -> None:
        if self.max_total < 1 or self.max_per_ip < 1:
            msg = f"connection caps must be >= 1, got total {self.max_total!r} per address {self.max_per_ip!r}"
            raise ValueError(msg)

    # -- connection life cycle -------------------------------------------------------
    def admit(self, key: object, ip: str, transport: Any) -> bool:
        """Take a new connection in (closing an idle one if a cap is reached) or say no."""
        same_ip = self._by_ip.get(ip, {})
        if len(same_ip) >= self.max_per_ip and not self._evict_oldest_idle(same_ip):
            self.counts.refused += 1
            return False
        if len(self._conns) >= self.max_total and not self._evict_from_biggest_holder():
            self.counts.refused += 1
            return False
        now = self.clock()
        self._conns[key] = _Conn(ip, transport, now, now)
        self._by_ip.setdefault(ip, {})[key] = None
        return True

    def release(self, key: object) -> None:
        conn = self._conns.pop(key, None)
        if conn is None:
            return
        same_ip = self._by_ip.get(conn.ip)
        if same_ip is not None:
            same_ip.pop(key, None)
            if not same_ip:
                del self._by_ip[conn.ip]

    def busy(self, key: object) -> None:
        conn = self._conns.get(key)
        if conn is not None:
            conn.idle_since = None

    def is_busy(self, key: object) -> bool:
        conn = self._conns.get(key)
        return conn is not None and conn.idle_since is None

    def idle(self, key: object) -> None:
        conn = self._conns.get(key)
        if conn is not None:
            conn.idle_since, conn.served = self.clock(), True

    def __len__(self) -> int:
        return len(self._conns)

    def per_ip(self, ip: str) -> int:
        return len(self._by_ip.get(ip, {}))

    def _evict_oldest_idle(self, scope: dict[object, Any]) -> bool:
        for key in scope:  # oldest first
            conn = self._conns.get(key)
            if conn is not None and conn.idle_since is not None:
                self._close(key, conn)
                self.counts.evicted += 1
                return True
        return False

    def _evict_from_biggest_holder(self) -> bool:
        """Over the total cap: the address holding the most connections gives up its oldest
        idle one (a person with a tab or two is never the one to lose it to a flood)."""
        biggest = max(self._by_ip.values(), key=len, default={})
        return self._evict_oldest_idle(biggest) or self._evict_oldest_idle(self._conns)

    def _close(self, key: object, conn: _Conn) -> None:
        self.release(key)  # now: the transport reports connection_lost only on a later turn
        conn.transport.abort()

    # -- periodic ----------------------------------------------------------------------
    def sweep(self) -> None:
        """Close connections past their header or keep-alive timeout; report, rate-limited."""
        now = self.clock()
        for key, conn in list(self._conns.items()):
            if conn.idle_since is None:
                continue
            limit = self.keepalive_timeout_s if conn.served else self.header_timeout_s
            if now - conn.idle_since > limit:
                self._close(key, conn)
                self.counts.timed_out += 1
        self._report(now)

    def _report(self, now: float, final: bool = False) -> None:
        if self.counts.total() == self._logged.total() or (now - self._last_log < self.log_every_s and not final):
            return
        c, was = self.counts, self._logged
        log.warning(
            "mentor server connection limits: %d idle connections closed for newer ones, %d refused (all busy), "
            "%d timed out since the last report; %d open (caps: %d per address, %d in total)",
            c.evicted - was.evicted,
            c.refused - was.refused,
            c.timed_out - was.timed_out,
            len(self._conns),
            self.max_per_ip,
            self.max_total,
        )
        self._logged = GuardCounts(c.evicted, c.refused, c.timed_out)
        self._last_log = now

    def report_final(self) -> None:
        """At shutdown: what happened since the last report, whatever the rate limit."""
        self._report(self.clock(), final=True)

    async def run(self) -> None:
        """Sweep until cancelled, often enough for the shortest timeout."""
        period = min(1.0, max(0.05, min(self.header_timeout_s, self.keepalive_timeout_s) / 4))
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep()
            except Exception:  # a sweep fault must not end the limits
                log.exception("connection sweep failed")


def raise_fd_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # a container may refuse; the caps still hold
            log.info("could not raise the descriptor limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_cap(configured: int, fd_soft_limit: int) -> int:
    """The total cap in force: the configured one, within a share of the descriptors (the
    rest are for peers' UDP sockets, the audit log, the bridge)."""
    return min(configured, max(16, fd_soft_limit // FD_RESERVE))


@dataclass
class LoopErrorFilter:
    """The loop's exception handler: socket-level errors (accept out of descriptors, a reset
    during a TLS handshake, a peer's transport that closed under a pending send, e.g.
    aiortc's "Cannot send (encrypted) data, not connected" when a page goes away) become
    one counted line per ``log_every_s`` without a traceback; anything else goes to the
    loop's default handler."""

    log_every_s: float = LOG_EVERY_S
    clock: Callable[[], float] = time.monotonic
    suppressed: int = 0
    _last_log: float = float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        exc = context.get("exception")
        if isinstance(exc, ConnectionError):
            message = f"{message}: {exc}"  # a peer gone: its own words, one line
        elif not message.startswith(NOISY_LOOP_ERRORS):
            loop.default_exception_handler(context)
            return
        self.suppressed += 1
        now = self.clock()
        if now - self._last_log >= self.log_every_s:
            log.warning("mentor server: %s (%s); %d such errors so far", message, type(exc).__name__, self.suppressed)
            self._last_log = now


@dataclass
class RateLimitedLog:
    """INFO lines through ``logger``, at most ``burst`` per ``window_s``; the rest are counted
    and reported in one line when the next window opens (a client can send bad requests in
    a loop: the log must not become the attack)."""

    logger: logging.Logger
    burst: int = 20
    window_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _start: float = float("-inf")
    _count: int = 0
    _dropped: int = 0

    def info(self, msg: str, *args: object) -> None:
        now = self.clock()
        if now - self._start >= self.window_s:
            if self._dropped:
                self.logger.info("mentor server: %d more such lines suppressed", self._dropped)
            self._start, self._count, self._dropped = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self.logger.info(msg, *args)
        else:
            self._dropped += 1
