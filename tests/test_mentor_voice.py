"""Mentor voice: the bridge's audio topic, and a WebRTC microphone reaching a headset."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Iterator

import av
import numpy as np
import pytest
from bridge_fixtures import Bridge, ready, running_bridge, wait_all
from mentor_fixtures import SESSION, HeadsetPoller, PyViewer, Scene, make_scene, serve, stop

from headset_bridge import protocol as P
from mentor.room import VoiceChunk

bridge = pytest.fixture(name="bridge")(running_bridge)


def test_audio_reaches_every_headset_in_order(bridge: Bridge) -> None:
    a, b = bridge.client("hl-a"), bridge.client("hl-b")
    assert wait_all([a, b], ready)
    pcm = (np.arange(320, dtype="<i2") * 10).tobytes()
    seqs = [bridge.server.publish_audio(pcm, 16_000, 1, "dr-m") for _ in range(5)]
    assert wait_all([a, b], lambda c: len(c.audio) >= 5)
    for c in (a, b):
        assert [x.seq for x in c.audio] == seqs
        assert c.audio[0].pcm == pcm and c.audio[0].speaker == "dr-m" and c.audio[0].sample_rate == 16_000


@pytest.mark.parametrize(
    ("pcm", "rate", "channels", "error"),
    [
        (b"\x00" * 3, 16_000, 1, "audio payload must be whole s16 samples up to 65536 bytes, got 3"),
        (b"\x00" * 4, 96_000, 1, "audio must be s16le, 8-48 kHz, 1-2 channels, got 's16le' 96000 Hz 1 ch"),
        (b"\x00" * 70_000, 16_000, 1, "audio payload must be whole s16 samples up to 65536 bytes, got 70000"),
    ],
)
def test_bad_audio_is_refused_at_the_server(bridge: Bridge, pcm: bytes, rate: int, channels: int, error: str) -> None:
    with pytest.raises(P.ProtocolError) as exc:
        bridge.server.publish_audio(pcm, rate, channels)
    assert str(exc.value) == error


class Tone:
    """A 440 Hz microphone for the Python viewer (stands in for a browser's mic)."""

    kind = "audio"

    def __init__(self) -> None:
        from aiortc.mediastreams import AudioStreamTrack

        class _Track(AudioStreamTrack):  # type: ignore[misc]
            async def recv(self) -> av.AudioFrame:
                frame = await super().recv()  # paced silence with proper timestamps
                t = np.arange(frame.samples) + frame.pts
                samples = (3000 * np.sin(2 * np.pi * 440 * t / 48_000)).astype("<i2")[None, :]
                out = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
                out.sample_rate, out.pts, out.time_base = 48_000, frame.pts, fractions.Fraction(1, 48_000)
                return out

        self.track = _Track()


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


@pytest.fixture
def voiced(bridge: Bridge, scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadsetPoller]:
    client = bridge.client("hl-a")
    assert wait_all([client], ready)
    poller = HeadsetPoller(client)

    def voice(chunk: VoiceChunk) -> None:
        bridge.server.publish_audio(chunk.pcm, chunk.sample_rate, 1, chunk.speaker)

    served = serve(scene, tmp_path_factory.mktemp("voice"), bridge.server.annotate, voice)
    poller.served = served  # type: ignore[attr-defined]
    try:
        yield poller
    finally:
        stop(served)
        poller.close()


def test_mentor_microphone_reaches_the_headset_but_observers_do_not(voiced: HeadsetPoller) -> None:
    served = voiced.served  # type: ignore[attr-defined]

    async def run() -> None:
        observer = PyViewer(served.url, SESSION, served.token("observer", "obs"), quality="none")
        await observer.connect(audio_track=Tone().track)
        mentor = PyViewer(served.url, SESSION, served.token("mentor", "dr-v"), quality="none")
        await mentor.connect(audio_track=Tone().track)
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(
            None, voiced.wait_for, lambda c: sum(1 for a in list(c.audio) if a.speaker == "dr-v") >= 20, 10.0
        )
        await asyncio.gather(mentor.close(), observer.close())
        assert got

    asyncio.run(run())
    chunks = [a for a in list(voiced.client.audio) if a.speaker == "dr-v"]
    assert {a.speaker for a in voiced.client.audio} == {"dr-v"}  # the observer's mic is not relayed
    pcm = np.frombuffer(b"".join(a.pcm for a in chunks[5:]), "<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(pcm))
    peak_hz = np.argmax(spectrum) * 16_000 / len(pcm)
    assert abs(peak_hz - 440) < 15, peak_hz  # the tone survived Opus and resampling to 16 kHz
