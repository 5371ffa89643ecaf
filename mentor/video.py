"""Headset video to every mentor: one VP8 encode per quality level, shared by all viewers.

aiortc's ``RTCRtpSender`` accepts tracks whose ``recv()`` returns already-encoded
``av.Packet`` objects: it then only packetises them (``Vp8Encoder.pack``, with its own
picture id and RTP timestamps), so N viewers cost one encode. Two things aiortc does for
its own encoder have to be done here instead:

* keyframes: a PLI/FIR from a viewer calls ``sender._send_keyframe()``, which only sets a
  flag for aiortc's encoder; :func:`route_keyframe_requests` points it at the shared
  encoder. A new viewer also asks for one and drops delta frames until it arrives.
* bitrate: REMB adjusts aiortc's (unused) per-sender encoder; here the bitrate is fixed
  per quality level and a weak link switches to the ``low`` level instead.

The packet ``pts`` is the frame's capture time in 90 kHz ticks, so the timestamps a viewer
sees advance exactly like capture time (mentor/frameclock.py uses that to find the frame
a mentor clicked on).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger(__name__)

VIDEO_CLOCK_HZ: Final = 90_000
TIME_BASE: Final = fractions.Fraction(1, VIDEO_CLOCK_HZ)
KEYFRAME_MIN_INTERVAL_S: Final = 0.1  # coalesce PLI storms and joins into one keyframe
VIEWER_QUEUE: Final = 3  # encoded frames waiting for one sender; beyond that it resyncs


@dataclass(frozen=True)
class QualityLevel:
    name: str
    width: int
    height: int
    bitrate: int


LEVELS: Final = {
    "high": QualityLevel("high", 640, 480, 1_200_000),
    "low": QualityLevel("low", 320, 240, 300_000),
}
NO_VIDEO: Final = "none"  # annotation-only mode


def pts_of(t_capture_ns: int) -> int:
    """Capture time in 90 kHz ticks (the RTP video clock)."""
    return t_capture_ns * 9 // 100_000


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes
    pts: int
    keyframe: bool
    t_capture_ns: int


def _vp8_context(level: QualityLevel) -> Any:
    # The options aiortc's own Vp8Encoder uses (realtime, no lag, CBR), so both paths compare fairly.
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = level.width, level.height
    codec.bit_rate = level.bitrate
    codec.pix_fmt = "yuv420p"
    codec.gop_size = 3000
    codec.qmin, codec.qmax = 2, 56
    codec.options = {
        "bufsize": str(level.bitrate),
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(level.bitrate),
        "maxrate": str(level.bitrate),
        "noise-sensitivity": "4",
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
    }
    codec.thread_count = 1
    return codec


class Vp8Level:
    """The encoder of one quality level; ``encode`` runs off the event loop (PyAV frees the GIL)."""

    def __init__(self, level: QualityLevel) -> None:
        self.level = level
        self._codec = _vp8_context(level)
        self.frames = 0
        self.keyframes = 0

    def encode(self, rgb: npt.NDArray[np.uint8], t_capture_ns: int, keyframe: bool) -> EncodedFrame | None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame = frame.reformat(width=self.level.width, height=self.level.height, format="yuv420p")
        frame.pts, frame.time_base = pts_of(t_capture_ns), TIME_BASE
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = list(self._codec.encode(frame))
        if not packets:
            return None
        data = b"".join(bytes(p) for p in packets)
        is_key = any(p.is_keyframe for p in packets)
        self.frames += 1
        self.keyframes += int(is_key)
        return EncodedFrame(data, frame.pts, is_key, t_capture_ns)


class ViewerTrack(MediaStreamTrack):  # type: ignore[misc]  # aiortc is untyped here
    """One viewer's video track: hands the shared encoder's packets to one RTCRtpSender."""

    kind = "video"

    def __init__(self, source: SharedEncoder | None) -> None:
        super().__init__()
        self.source: SharedEncoder | None = None
        self._queue: asyncio.Queue[EncodedFrame] = asyncio.Queue()
        self._waiting_key = True
        self.sent = 0
        self.resyncs = 0
        self.switch(source)

    def switch(self, source: SharedEncoder | None) -> None:
        """Watch another quality level (None: no video). The sender keeps awaiting this same
        track, so switching needs no renegotiation and no replaceTrack (which would leave
        aiortc's sender waiting on the old track for ever)."""
        if self.source is not None:
            self.source.viewers.discard(self)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._waiting_key = True
        self.source = source
        if source is not None:
            source.viewers.add(self)
            source.request_keyframe()

    def offer(self, frame: EncodedFrame) -> None:
        if self._waiting_key and not frame.keyframe:
            return  # a decoder cannot start on a delta frame
        if self._queue.qsize() >= VIEWER_QUEUE:
            self._resync()
            if not frame.keyframe:
                return
        self._waiting_key = False
        self._queue.put_nowait(frame)

    def _resync(self) -> None:
        # This sender fell behind: drop what waits and restart cleanly at a keyframe.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._waiting_key = True
        self.resyncs += 1
        if self.source is not None:
            self.source.request_keyframe()

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        packet = av.Packet(frame.data)
        packet.pts, packet.time_base = frame.pts, TIME_BASE
        self.sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
        self.switch(None)


class SharedEncoder:
    """Encodes each new frame once for this level when anyone watches; fans packets out."""

    def __init__(self, level: QualityLevel, clock: Callable[[], float] = time.monotonic) -> None:
        self.level = level
        self.viewers: set[ViewerTrack] = set()
        self._encoder = Vp8Level(level)
        self._clock = clock
        self._want_key = True
        self._last_key_at = -1e9
        self._busy = False

    def subscribe(self) -> ViewerTrack:
        return ViewerTrack(self)

    def request_keyframe(self) -> None:
        self._want_key = True

    @property
    def stats(self) -> dict[str, int]:
        return {"frames": self._encoder.frames, "keyframes": self._encoder.keyframes, "viewers": len(self.viewers)}

    async def feed(self, rgb: npt.NDArray[np.uint8], t_capture_ns: int) -> bool:
        """Encode (in a worker thread) and deliver; False when skipped (no viewer, or busy)."""
        if not self.viewers or self._busy:
            return False
        now = self._clock()
        key = self._want_key and now - self._last_key_at >= KEYFRAME_MIN_INTERVAL_S
        self._busy = True
        try:
            loop = asyncio.get_running_loop()
            frame = await loop.run_in_executor(None, self._encoder.encode, rgb, t_capture_ns, key)
        finally:
            self._busy = False
        if frame is None:
            return False
        if frame.keyframe:
            self._want_key, self._last_key_at = False, now
        for viewer in list(self.viewers):
            viewer.offer(frame)
        return True


def route_keyframe_requests(sender: Any, request: Callable[[], None]) -> None:
    """Send the viewer's PLI/FIR to the shared encoder (aiortc calls ``_send_keyframe``)."""
    sender._send_keyframe = request


class VideoRelay:
    """A room's video: the latest headset frame, encoded once per level that has viewers."""

    def __init__(self) -> None:
        self.encoders = {name: SharedEncoder(level) for name, level in LEVELS.items()}
        self._wake = asyncio.Event()
        self._latest: tuple[npt.NDArray[np.uint8], int] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mentor-video")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def level(self, name: str) -> SharedEncoder | None:
        """The encoder of a quality level; None for annotation-only mode."""
        if name == NO_VIDEO:
            return None
        if name not in self.encoders:
            msg = f"video quality must be one of {sorted(self.encoders)} or {NO_VIDEO!r}, got {name!r}"
            raise ValueError(msg)
        return self.encoders[name]

    def subscribe(self, name: str) -> ViewerTrack:
        return ViewerTrack(self.level(name))

    def offer(self, rgb: npt.NDArray[np.uint8], t_capture_ns: int) -> None:
        """On the loop: keep only the newest frame (a slow encoder skips, never queues)."""
        self._latest = (rgb, t_capture_ns)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            latest, self._latest = self._latest, None
            if latest is None:
                continue
            try:
                await asyncio.gather(*(enc.feed(*latest) for enc in self.encoders.values()))
            except Exception:  # a bad frame must not end the relay
                log.exception("video encode failed")
