"""Which video frame did the mentor click on? Map a viewer's frame timestamps to capture times.

The browser reports, for each frame it presents, a timestamp derived from the frame's RTP
timestamp (``requestVideoFrameCallback`` metadata ``rtpTimestamp``). Chromium reports it in
microseconds with an offset of its own; an aiortc receiver reports 90 kHz ticks from its
first frame. Either way it is a linear clock with the capture time's rate (the sender puts
the capture time into the RTP timestamp, see mentor/video.py) and an unknown offset. The
offset is found once per viewer by matching a few consecutive presented frames against the
capture times of the frames sent recently: capture times are irregular at the microsecond
level, so one offset fits them all.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

SCALES_US: Final = (1.0, 1e6 / 90_000)  # viewer clock unit in microseconds: Chromium, then 90 kHz
MIN_VALUES: Final = 2
MATCH_TOL_US: Final = 30.0  # capture times travel as 90 kHz ticks (11 us) plus rounding


@dataclass
class FrameClock:
    """Per viewer: ``capture_us = value * scale + offset`` once calibrated."""

    scale: float | None = None
    offset_us: float | None = None
    ambiguous: bool = False

    @property
    def calibrated(self) -> bool:
        return self.scale is not None and self.offset_us is not None

    def capture_time(self, value: float, captures_ns: Sequence[int]) -> int | None:
        """The capture time (ns) of the known frame this viewer value refers to, or None."""
        if self.scale is None or self.offset_us is None:
            return None
        return _nearest(value * self.scale + self.offset_us, captures_ns)

    def calibrate(self, values: Sequence[float], captures_ns: Sequence[int]) -> bool:
        """Find scale and offset fitting every value in ``values`` (recent presented frames)."""
        if len(values) < MIN_VALUES or not captures_ns:
            return False  # one value fits any frame: it would pick one at random
        for scale in SCALES_US:
            fits = _offsets(values, captures_ns, scale)
            if fits:
                # Capture times on an exact grid fit several shifts; the newest one assumes
                # the last presented frame is the last sent (off by a frame at worst).
                self.scale, self.offset_us, self.ambiguous = scale, max(fits), len(fits) > 1
                return True
        return False


def _nearest(capture_us: float, captures_ns: Sequence[int]) -> int | None:
    target = capture_us * 1000.0
    i = bisect.bisect_left(captures_ns, target)
    best = min((j for j in (i - 1, i) if 0 <= j < len(captures_ns)), key=lambda j: abs(captures_ns[j] - target))
    return captures_ns[best] if abs(captures_ns[best] - target) <= MATCH_TOL_US * 1000 else None


def _offsets(values: Sequence[float], captures_ns: Sequence[int], scale: float) -> list[float]:
    last = values[-1] * scale
    fits = []
    for t in captures_ns:
        offset = t / 1000.0 - last
        if all(_nearest(v * scale + offset, captures_ns) is not None for v in values):
            fits.append(offset)
    return fits
