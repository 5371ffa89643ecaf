"""Headset microphone to every mentor: PCM chunks from the bridge, one track per listener.

aiortc encodes audio per sender (Opus at 48 kHz, resampling whatever it is given), which
for one voice costs little; what is shared is the source. :meth:`AudioRelay.offer` (on
the event loop) hands each chunk to every subscribed :class:`ListenerTrack`. A listener
keeps a short queue: one that falls behind drops its oldest chunks, so the voice it
hears stays live rather than drifting ever later. Chunks become ``av.AudioFrame``s on a
continuous sample clock (gaps in the headset's stream are not padded: the receiver's
jitter buffer conceals them).
"""

from __future__ import annotations

import asyncio
import fractions
from collections import deque
from typing import Final

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

LISTENER_QUEUE: Final = 25  # chunks per listener (~0.5 s of 20 ms chunks)
LAYOUTS: Final = {1: "mono", 2: "stereo"}


def check_pcm(pcm: bytes, sample_rate: int, channels: int) -> None:
    """ValueError unless ``pcm`` is whole s16 samples of 1-2 channels at 8-48 kHz."""
    if channels not in LAYOUTS or len(pcm) % (2 * channels) or not 8000 <= sample_rate <= 48000:
        msg = f"audio must be s16 PCM, 1-2 channels, 8-48 kHz, got {len(pcm)} bytes, {channels} ch, {sample_rate} Hz"
        raise ValueError(msg)


class ListenerTrack(MediaStreamTrack):  # type: ignore[misc]  # aiortc is untyped here
    """One listener's audio track (s16 PCM chunks in, ``av.AudioFrame`` out)."""

    kind = "audio"

    def __init__(self, relay: AudioRelay) -> None:
        super().__init__()
        self._relay = relay
        self._chunks: deque[tuple[bytes, int, int]] = deque()
        self._ready = asyncio.Event()
        self._samples_sent = 0
        self.dropped = 0

    def offer(self, pcm: bytes, sample_rate: int, channels: int) -> None:
        if len(self._chunks) >= LISTENER_QUEUE:
            self._chunks.popleft()
            self.dropped += 1
        self._chunks.append((pcm, sample_rate, channels))
        self._ready.set()

    async def recv(self) -> av.AudioFrame:
        while not self._chunks:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        pcm, rate, channels = self._chunks.popleft()
        samples = len(pcm) // (2 * channels)
        frame = av.AudioFrame(format="s16", layout=LAYOUTS[channels], samples=samples)
        frame.planes[0].update(pcm)
        frame.sample_rate = rate
        frame.pts, frame.time_base = self._samples_sent, fractions.Fraction(1, rate)
        self._samples_sent += samples
        return frame

    def stop(self) -> None:
        super().stop()
        self._relay.listeners.discard(self)
        self._ready.set()  # a recv() waiting for audio ends now


class AudioRelay:
    """A room's headset audio; ``offer`` runs on the event loop."""

    def __init__(self) -> None:
        self.listeners: set[ListenerTrack] = set()
        self.chunks = 0

    def subscribe(self) -> ListenerTrack:
        track = ListenerTrack(self)
        self.listeners.add(track)
        return track

    def offer(self, pcm: bytes, sample_rate: int, channels: int) -> None:
        """A chunk already checked by :func:`check_pcm` (the room does, on its caller's thread)."""
        self.chunks += 1
        for track in list(self.listeners):
            track.offer(pcm, sample_rate, channels)
