"""NTP-style clock offset between a headset and the server.

The headset stamps ``t0`` (its clock) on a ``time_req``; the server stamps
``t1`` on receipt and ``t2`` on reply (server clock); the headset stamps ``t3``
on receipt. Then ``offset = ((t1 - t0) + (t2 - t3)) / 2`` is server minus
headset, and ``rtt = (t3 - t0) - (t2 - t1)``. The sample with the smallest
round trip among recent ones is the least disturbed by queueing, so it wins.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockSample:
    offset_ns: int  # server clock minus headset clock
    rtt_ns: int
    t3_ns: int  # headset time the sample was taken


def sample(t0: int, t1: int, t2: int, t3: int) -> ClockSample:
    if t3 < t0 or t2 < t1:
        msg = f"clock stamps out of order, got t0..t3 = {(t0, t1, t2, t3)!r}"
        raise ValueError(msg)
    offset = ((t1 - t0) + (t2 - t3)) // 2
    rtt = (t3 - t0) - (t2 - t1)
    return ClockSample(offset_ns=offset, rtt_ns=max(rtt, 0), t3_ns=t3)


class ClockSync:
    """Keeps the best of the last ``window`` samples."""

    def __init__(self, window: int = 16) -> None:
        self._samples: deque[ClockSample] = deque(maxlen=window)
        self.best: ClockSample | None = None

    @property
    def synced(self) -> bool:
        return self.best is not None

    def add(self, s: ClockSample) -> ClockSample:
        self._samples.append(s)
        self.best = min(self._samples, key=lambda x: x.rtt_ns)
        return self.best

    def to_server(self, t_local_ns: int) -> int | None:
        """A headset-clock time on the server clock, None before the first sample."""
        return None if self.best is None else t_local_ns + self.best.offset_ns

    def to_local(self, t_server_ns: int) -> int | None:
        return None if self.best is None else t_server_ns - self.best.offset_ns

    def reset(self) -> None:
        self._samples.clear()
        self.best = None
