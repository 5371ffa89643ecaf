"""Mentor voice: the bridge's audio topic, and a WebRTC microphone reaching a headset."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Iterator
from pathlib import Path

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


# -- the theatre's voice: headset microphone -> bridge -> every mentor ----------------------
def _tone_chunks(n: int, rate: int = 16_000, hz: float = 440.0, ms: int = 20) -> list[bytes]:
    size = rate * ms // 1000
    t = np.arange(n * size)
    pcm = (3000 * np.sin(2 * np.pi * hz * t / rate)).astype("<i2")
    return [pcm[i * size : (i + 1) * size].tobytes() for i in range(n)]


def _peak_hz(frames: list[av.AudioFrame]) -> float:
    """Dominant frequency of received frames (aiortc decodes Opus to 48 kHz stereo s16)."""
    mono = np.concatenate([f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0] for f in frames])
    spectrum = np.abs(np.fft.rfft(mono.astype(float)))
    return float(np.argmax(spectrum) * frames[0].sample_rate / len(mono))


def test_headset_microphone_reaches_the_server_in_order(bridge: Bridge) -> None:
    client = bridge.client("hl-a")
    assert wait_all([client], ready)
    chunks = _tone_chunks(10)
    seqs = [client.send_audio(c, 16_000) for c in chunks]
    got: list[object] = []
    assert wait_all([client], lambda _c: bool(got.extend(bridge.server.take("audio", "hl-a"))) or len(got) >= 10)
    assert [a.seq for a in got] == seqs  # type: ignore[attr-defined]
    assert [a.pcm for a in got] == chunks  # type: ignore[attr-defined]
    assert {(a.headset, a.sample_rate, a.channels) for a in got} == {("hl-a", 16_000, 1)}  # type: ignore[attr-defined]


def test_bad_headset_audio_is_refused_at_the_client(bridge: Bridge) -> None:
    client = bridge.client("hl-a")
    with pytest.raises(P.ProtocolError, match="audio payload must be whole s16 samples up to 65536 bytes, got 3"):
        client.send_audio(b"\x00" * 3, 16_000)
    with pytest.raises(P.ProtocolError, match="audio must be s16le, 8-48 kHz, 1-2 channels, got 's16le' 4000 Hz"):
        client.send_audio(b"\x00" * 4, 4_000)


def test_room_refuses_audio_that_is_not_pcm(scene: Scene, tmp_path: Path) -> None:
    served = serve(scene, tmp_path, lambda *a: None)
    try:
        with pytest.raises(ValueError, match="audio must be s16 PCM, 1-2 channels, 8-48 kHz, got 3 bytes, 1 ch"):
            served.room.push_audio(b"\x00" * 3, 16_000)
    finally:
        stop(served)


def test_theatre_voice_reaches_every_mentor_and_observer(scene: Scene, tmp_path: Path) -> None:
    """Headset PCM pushed into the room is heard, as the same tone, by a mentor (who also
    sends a microphone) and by a listening observer; a viewer without audio gets none."""
    served = serve(scene, tmp_path, lambda *a: None)

    async def run() -> list[PyViewer]:
        mentor = PyViewer(served.url, SESSION, served.token("mentor", "dr-m"), quality="none")
        await mentor.connect(audio_track=Tone().track)
        observer = PyViewer(served.url, SESSION, served.token("observer", "obs"), quality="none")
        await observer.connect(listen=True)
        deaf = PyViewer(served.url, SESSION, served.token("observer", "deaf"), quality="none")
        await deaf.connect()
        loop = asyncio.get_running_loop()
        chunks = iter(_tone_chunks(100))

        async def pump() -> None:  # a headset's microphone pace (20 ms chunks), from a thread
            for c in chunks:
                await loop.run_in_executor(None, served.room.push_audio, c, 16_000)
                await asyncio.sleep(0.02)  # pacing, not synchronisation

        pumping = asyncio.ensure_future(pump())
        heard = await mentor.wait_for(lambda: len(mentor.audio) >= 60 and len(observer.audio) >= 60, 15.0)
        pumping.cancel()
        await asyncio.gather(mentor.close(), observer.close(), deaf.close())
        assert heard, (len(mentor.audio), len(observer.audio))
        return [mentor, observer, deaf]

    try:
        mentor, observer, deaf = asyncio.run(run())
    finally:
        stop(served)
    for viewer in (mentor, observer):
        assert abs(_peak_hz(viewer.audio[10:]) - 440.0) < 15.0
    assert deaf.audio == []


def test_browser_page_plays_the_theatre_voice(scene: Scene, tmp_path: Path) -> None:
    """Headless Chromium: the mentor page gets the headset's audio track, plays it in its
    <audio> element, and its receiver decodes sound (not silence)."""
    import threading

    from mentor_fixtures import chromium_page
    from waiting import until

    served = serve(scene, tmp_path, lambda *a: None)
    stop_pump = threading.Event()

    def pump() -> None:  # the headset microphone's pace
        for chunk in _tone_chunks(1500):
            if stop_pump.wait(0.02):  # pacing, not synchronisation
                return
            served.room.push_audio(chunk, 16_000)

    mic = threading.Thread(target=pump, daemon=True)
    try:
        with chromium_page() as page:
            page.goto(served.server.url_for(SESSION, served.token("observer", "obs")))
            page.wait_for_function("window.mentor && mentor.conn === 'connected'")
            mic.start()
            page.wait_for_function("mentor.theatreAudio === true")
            energy = """async () => {
                let out = null;
                (await mentor.peer().getStats()).forEach((s) => {
                    if (s.type === "inbound-rtp" && s.kind === "audio") out = s;
                });
                return out && out.packetsReceived > 25 && out.totalAudioEnergy > 0 ? out.totalAudioEnergy : false;
            }"""
            assert until(lambda: bool(page.evaluate(energy)), 15.0), page.evaluate(energy)
            assert page.evaluate("!document.getElementById('theatre').paused")
    finally:
        stop_pump.set()
        mic.join(timeout=5)
        stop(served)
