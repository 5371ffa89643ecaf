"""The event-loop side of one room: its peers (aiortc), its video and audio relays, its
broadcasts.

Everything here runs on the mentor server's loop. A peer is one browser (or other WebRTC
client) with a validated token: it receives the room's video at its quality level and
the headset's microphone (when the offer has an audio m-line), may send its own
microphone (mentors only: it goes to the surgeon), and talks JSON over one ordered,
reliable data channel ("mentor").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import av
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from mentor.audio import AudioRelay, ListenerTrack
from mentor.config import MentorConfig
from mentor.frameclock import FrameClock
from mentor.room import Ack, MentorRoom, Participant
from mentor.signalling import Annotate, Erase, OfferRequest, Ping, Quality, Restore, SignallingError, parse_message
from mentor.tokens import Claims
from mentor.video import VideoRelay, ViewerTrack, route_keyframe_requests

log = logging.getLogger(__name__)

VOICE_RATE: Final = 16_000  # Hz, mono s16le: speech for the headset's speaker
CHANNEL: Final = "mentor"
HEADSET_SEEN_S: Final = 2.0  # the headset counts as connected while its video or poses are this fresh


class OfferRefused(ValueError):
    """An offer this server will not answer; the message says what is missing (for the client)."""


class PendingLimit(Exception):
    """Too many answered peers of a room are still connecting; the client may retry later."""


BYE_FLUSH_S: Final = 0.5  # the longest a stopping server waits for its goodbyes to leave


def _vp8_only(transceiver: Any) -> None:
    # The shared encoder produces VP8; make sure the answer does not pick H264.
    codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]
    transceiver.setCodecPreferences(codecs)


class Peer:
    def __init__(self, hub: RoomHub, claims: Claims, quality: str) -> None:
        self.hub = hub
        self.claims = claims
        self.quality = quality
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[RTCIceServer(**s.to_json()) for s in hub.config.ice_servers])
        )
        self.participant: Participant | None = None  # set once ICE and DTLS connect, never before
        self.pid = secrets.token_hex(4)  # the participant id it will have (the answer carries it)
        self.channel: Any = None
        self.sender: Any = None
        self.track: ViewerTrack | None = None
        self.listener: ListenerTrack | None = None
        self.clock = FrameClock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.last_ping: float | None = None  # monotonic s; None until the peer's first ping
        self.dropping = False  # removal scheduled (silent or token expired)
        self._last_marks = ""
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # -- negotiation -------------------------------------------------------------
    async def answer(self, offer: OfferRequest) -> dict[str, Any]:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        if self.pc.sctp is None:
            msg = "offer has no data channel (m=application): marks and status need one"
            raise OfferRefused(msg)
        video = [t for t in self.pc.getTransceivers() if t.kind == "video"]
        if video:
            _vp8_only(video[0])
            # A track even in annotation-only mode (it then carries nothing), so that
            # switching quality later needs no renegotiation.
            self.track = self.hub.relay.subscribe(self.quality)
            self.sender = self.pc.addTrack(self.track)
            route_keyframe_requests(self.sender, self._keyframe)
        if any(t.kind == "audio" for t in self.pc.getTransceivers()):
            self.listener = self.hub.audio.subscribe()  # the theatre's voice, if a headset sends it
            self.pc.addTrack(self.listener)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        desc = self.pc.localDescription
        return {"sdp": desc.sdp, "type": desc.type, **self.hello()}

    def hello(self) -> dict[str, Any]:
        cam = self.hub.room.camera
        return {
            "participant": self.pid,
            "name": self.claims.name,
            "role": self.claims.role,
            "may_annotate": self.claims.may_annotate,
            "quality": self.quality,
            "camera": {"width": cam.width, "height": cam.height},
        }

    def _keyframe(self) -> None:
        if self.track is not None and self.track.source is not None:
            self.track.source.request_keyframe()

    def set_quality(self, level: str) -> None:
        if self.track is None or level == self.quality:
            return  # no video was negotiated, or nothing changes
        self.track.switch(self.hub.relay.level(level))
        self.quality = level
        self.hub.broadcast_participants()

    # -- events ------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != CHANNEL:
            return
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("open", self._on_open)
        if channel.readyState == "open":
            self._on_open()

    def _joined(self) -> None:
        """The peer is connected (ICE + DTLS, or its channel opened): now it is a participant."""
        if self.participant is None and not self.closed and not self.dropping:
            self.participant = self.hub.room.join(self.claims, self.quality, pid=self.pid)
            self.hub.broadcast_participants()

    def _on_open(self) -> None:
        self._joined()
        self.send({"type": "hello", **self.hello()})
        self.hub.broadcast_participants()
        self._last_marks = ""
        self.push_views(self.hub.marks_json())

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio" and self.claims.may_annotate:
            self._spawn(self._voice(track))
        else:
            self._spawn(_drain(track))  # unconsumed remote tracks queue frames without bound

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self._joined()
        if self.pc.connectionState in ("failed", "closed") and not self.closed:
            self._spawn(self.hub.remove(self, self.pc.connectionState))

    async def _voice(self, track: Any) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                for out in resampler.resample(frame):
                    self.hub.room.voice(self.claims.name, bytes(out.planes[0])[: out.samples * 2], VOICE_RATE)

    def _on_message(self, message: str | bytes) -> None:
        try:
            self._handle(message)
        except Exception as exc:  # a fault here must cost one message, not the connection
            self.hub.room.count("internal_error")
            log.exception("mentor message handling failed")
            self.send({"type": "error", "error": f"server error: {str(exc)[:200]}"})

    def _handle(self, message: str | bytes) -> None:
        room = self.hub.room
        try:
            msg = parse_message(message, self.hub.config.max_dc_message_bytes)
        except SignallingError as exc:
            room.count("bad_message")
            log.info("bad data-channel message from %s: %s", self.participant and self.participant.id, exc)
            self.send({"type": "error", "error": str(exc)})
            return
        if isinstance(msg, Annotate):
            self._ack(room.annotate(self.claims, msg, self.clock))
        elif isinstance(msg, Erase):
            self._ack(room.erase(self.claims, msg))
        elif isinstance(msg, Restore):
            self._ack(room.restore(self.claims, msg))
        elif isinstance(msg, Quality):
            self.set_quality(msg.level)
        elif isinstance(msg, Ping):
            self.last_ping = time.monotonic()
            self.send({"type": "pong", "t": msg.t})

    def _ack(self, ack: Ack) -> None:
        self.send(ack.to_json())
        if ack.ok and not ack.duplicate:
            self.hub.push_marks()

    def send(self, payload: dict[str, Any]) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(payload, separators=(",", ":")))

    def push_views(self, marks: str) -> None:
        """Send the marks view (JSON) if it changed since this peer last got it."""
        if marks != self._last_marks and self.channel is not None and self.channel.readyState == "open":
            self._last_marks = marks
            self.channel.send(marks)

    async def close(self) -> None:
        self.closed = True
        for track in (self.track, self.listener):
            if track is not None:
                track.stop()
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        await self.pc.close()


def _unsent(peer: Peer) -> bool:
    channel = peer.channel
    return channel is not None and channel.readyState == "open" and channel.bufferedAmount > 0


async def _drain(track: Any) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


class RoomHub:
    def __init__(self, room: MentorRoom, config: MentorConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.room = room
        self.config = config
        self.loop = loop
        self.relay = VideoRelay()
        self.audio = AudioRelay()
        self.peers: set[Peer] = set()
        self.last_video_at: float | None = None  # monotonic s of the headset's latest frame
        self._headset: dict[str, Any] = {}  # the headset row last broadcast
        self._ticker: asyncio.Task[None] | None = None
        self._audit_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"audit-{room.session}")

    def start(self) -> None:
        self.room.audit_writer = self._audit_writer
        self.relay.start()
        self._ticker = self.loop.create_task(self._tick(), name=f"mentor-{self.room.session}")
        loop = self.loop

        def listener(rgb: Any, t_ns: int) -> None:
            self.last_video_at = time.monotonic()
            loop.call_soon_threadsafe(self.relay.offer, rgb, t_ns)

        def audio(pcm: bytes, sample_rate: int, channels: int) -> None:
            loop.call_soon_threadsafe(self.audio.offer, pcm, sample_rate, channels)

        self.room.video_listener = listener
        self.room.audio_listener = audio

    async def stop(self) -> None:
        self.room.video_listener = None
        self.room.audio_listener = None
        await self.say_bye("session ended")
        for peer in list(self.peers):
            await self.remove(peer, "server stopping")
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.relay.stop()
        self.room.audit_writer = None
        # Flush: every audit row queued so far is on disk before stop() returns.
        await asyncio.get_running_loop().run_in_executor(None, self._audit_writer.shutdown, True)

    async def say_bye(self, reason: str) -> None:
        """Tell every page the session is over before its connection closes: a closed
        channel alone reads as a network fault, and the page would retry a server that is
        gone. Waits (bounded) until each goodbye is handed to the transport."""
        self.broadcast({"type": "bye", "reason": reason, "code": "session_ended"})
        deadline = time.monotonic() + BYE_FLUSH_S
        while time.monotonic() < deadline and any(_unsent(p) for p in self.peers):
            await asyncio.sleep(0.01)

    async def connect(self, claims: Claims, offer: OfferRequest) -> dict[str, Any]:
        pending = sum(p.participant is None for p in self.peers)
        if pending >= self.config.max_pending_peers:
            msg = f"{pending} connections are still being set up in this session: try again in a few seconds"
            raise PendingLimit(msg)
        peer = Peer(self, claims, offer.quality)
        self.peers.add(peer)
        try:
            answer = await peer.answer(offer)
        except Exception:
            await self.remove(peer, "negotiation failed")
            raise
        self.loop.call_later(self.config.connect_timeout_s, self._connect_deadline, peer)
        return answer

    def _connect_deadline(self, peer: Peer) -> None:
        """A peer still not connected (half-open: ICE never completed, DTLS refused) is
        closed, so it holds no UDP sockets and was never a participant."""
        if peer in self.peers and peer.participant is None and not peer.dropping:
            log.info(
                "mentor peer %s dropped: not connected within %g s", peer.claims.name, self.config.connect_timeout_s
            )
            self.room.count("half_open")
            peer.dropping = True
            peer._spawn(self.remove(peer, "not connected in time"))

    async def remove(self, peer: Peer, reason: str) -> None:
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        await peer.close()
        if peer.participant is not None:
            self.room.leave(peer.participant.id, reason)
        self.broadcast_participants()

    def broadcast(self, payload: dict[str, Any]) -> None:
        for peer in list(self.peers):
            peer.send(payload)

    def broadcast_participants(self) -> None:
        self._headset = self.headset_row()
        self.broadcast({"type": "participants", "list": self.people(), "headset": self._headset})

    def people(self) -> list[dict[str, Any]]:
        """One row per person (a token's name and role) however many tabs they opened, the
        oldest tab first: its id and quality lead the row, ``ids`` and ``tabs`` cover all."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        joined = [p for p in self.peers if p.participant is not None]
        for peer in sorted(joined, key=lambda p: p.participant.joined_ns if p.participant else 0):
            part = peer.participant
            assert part is not None
            row = rows.get((part.name, part.role))
            if row is None:
                rows[(part.name, part.role)] = part.to_json() | {"quality": peer.quality, "ids": [part.id], "tabs": 1}
            else:
                row["ids"].append(part.id)
                row["tabs"] += 1
        return list(rows.values())

    def headset_row(self, status: dict[str, Any] | None = None) -> dict[str, Any]:
        """The surgeon's headset as the mentors see it: connected (video or poses arriving)
        and its tracking status, from the room's own status view."""
        status = status or self.room.status_view()
        pose_age_ms = status.get("pose_age_ms")
        now = time.monotonic()
        video = self.last_video_at is not None and now - self.last_video_at < HEADSET_SEEN_S
        posing = pose_age_ms is not None and pose_age_ms < HEADSET_SEEN_S * 1000
        return {
            "name": "surgeon's headset",
            "role": "headset",
            "connected": video or posing,
            "tracking": status["tracking"],
        }

    def _drop_stale_peers(self) -> None:
        """Drop peers that pinged and then went silent (a killed browser says no goodbye)
        and peers whose token has expired (a link is valid for its lifetime, not for
        ever once connected); each is scheduled for removal once."""
        now, wall = time.monotonic(), time.time()
        for peer in list(self.peers):
            if peer.closed or peer.dropping:
                continue
            if peer.claims.expires_at <= wall:
                reason = "token expired"
                peer.send({"type": "error", "error": "token expired: ask for a new link", "code": "token_expired"})
            elif peer.last_ping is not None and now - peer.last_ping > self.config.peer_silence_s:
                reason = "silent"
            else:
                continue
            log.info("mentor peer %s dropped: %s", peer.claims.name, reason)
            peer.dropping = True
            peer._spawn(self.remove(peer, reason))

    def marks_json(self) -> str:
        return json.dumps(self.room.marks_view(), separators=(",", ":"))

    def push_marks(self) -> None:
        if not self.peers:
            return
        marks = self.marks_json()  # once for every peer
        for peer in list(self.peers):
            peer.push_views(marks)

    async def _tick(self) -> None:
        period = 1.0 / self.config.status_hz
        while True:
            await asyncio.sleep(period)
            try:
                self._drop_stale_peers()
                status = self.room.status_view()
                self.broadcast(status)  # pages re-project marks with its P_image_model
                if self.peers and self.headset_row(status) != self._headset:
                    self.broadcast_participants()  # the headset came, went, or changed tracking
            except Exception:  # a broadcast error must not stop the ticker
                log.exception("mentor status tick failed")
