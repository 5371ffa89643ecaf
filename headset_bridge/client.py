"""Reference headset client: the whole protocol, single-threaded, poll-driven.

A headset app calls :meth:`HeadsetClient.poll` once per rendered frame (or in
a loop) and reads :meth:`HeadsetClient.view` to decide what to draw. Nothing
runs behind the app's back, so a frozen app also freezes its heartbeats and
the server notices (that is the point).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from headset_bridge import protocol as P
from headset_bridge.annotations import AnnotationReplica
from headset_bridge.clock import ClockSync, sample
from headset_bridge.keys import KeyPair
from headset_bridge.messages import (
    LIVE_STATUSES,
    Annotation,
    AnnotationOp,
    Counters,
    Mat4,
    ModelInfo,
    RegistrationVerdict,
    as_transform,
)
from headset_bridge.tcp_loss import TcpCounts, TcpLossCounter
from headset_bridge.transport import client_socket

log = logging.getLogger(__name__)
# Plain ints: pyzmq's enum flags cost microseconds per operation on the hot path.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


@dataclass(frozen=True)
class ClientConfig:
    pub_endpoint: str
    ctl_endpoint: str
    server_public: bytes
    hb_interval_s: float = 0.1
    time_interval_s: float = 0.5
    silence_s: float = 0.1  # nothing heard for this long: the pose is stale
    max_pose_age_s: float = 0.25  # capture-to-now on the server clock
    request_timeout_s: float = 1.0
    uplink_queue: int = 4
    audio_queue: int = 50  # microphone chunks (~1 s at 20 ms): small, sent before sensor frames
    uplink_hwm: int = 4
    model_credit: int = 4  # model chunks in flight


@dataclass(frozen=True)
class PoseView:
    """What the headset may show. Draw the overlay only when ``live``."""

    live: bool
    flagged: bool  # live but degraded: draw with a warning
    status: str
    reason: str  # why not live (empty when live)
    T_sensor_model: Mat4 | None
    seq: int
    fitness: float
    rmse_mm: float
    age_ms: float | None  # capture to now, on the server clock
    silence_ms: float | None  # since the last message from the server
    sensor: str = ""
    sensor_frame_seq: int = -1


@dataclass(frozen=True)
class PoseReceipt:
    """Per-hop timing of one pose; server times on the server clock."""

    seq: int
    t_capture_ns: int  # server clock
    t_send_ns: int  # server clock
    t_recv_ns: int  # headset clock
    offset_ns: int  # server minus headset, best estimate at receipt

    @property
    def network_ns(self) -> int:
        """Server send to headset receive."""
        return self.t_recv_ns + self.offset_ns - self.t_send_ns

    @property
    def capture_to_recv_ns(self) -> int:
        return self.t_recv_ns + self.offset_ns - self.t_capture_ns


@dataclass
class _Pose:
    header: dict[str, Any]
    T: Mat4 | None
    t_recv_ns: int


@dataclass
class _ModelFetch:
    info: ModelInfo
    chunks: dict[int, bytes] = field(default_factory=dict)
    next_index: int = 0
    in_flight: dict[int, float] = field(default_factory=dict)  # index -> sent at


@dataclass(frozen=True)
class AudioChunk:
    """Mentor voice from the server: PCM s16le, interleaved when stereo."""

    seq: int
    t_ns: int  # server send time (server clock)
    sample_rate: int
    channels: int
    speaker: str
    pcm: bytes


@dataclass(frozen=True)
class ResumeState:
    """What a headset may persist to resume annotations after a restart."""

    epoch: str
    seq: int
    annotations: tuple[Annotation, ...]


class HeadsetClient:
    def __init__(
        self,
        keys: KeyPair,
        config: ClientConfig,
        context: zmq.Context[Any] | None = None,
        resume: ResumeState | None = None,
    ) -> None:
        self.config = config
        self.counters = Counters()
        self.clock = ClockSync()
        self.annotations = AnnotationReplica()
        self.epoch: str | None = None
        self.stream: str | None = None  # the server run's id (pose header "stream")
        self.errors: deque[tuple[str, str]] = deque(maxlen=32)  # the server's latest error replies
        self.model: bytes | None = None
        self.model_sha256: str | None = None
        self.pose_log: deque[PoseReceipt] = deque(maxlen=100_000)  # every new (non-repeat) pose received
        self.on_annotation: Callable[[AnnotationOp], None] | None = None
        self.audio: deque[AudioChunk] = deque(maxlen=500)  # 10 s of 20 ms chunks; oldest dropped
        self.on_audio: Callable[[AudioChunk], None] | None = None
        # The server's verdict on the latest navigation registration (anyone's), from the
        # pose headers; None until the server reports one.
        self.registration: RegistrationVerdict | None = None
        self.on_registration: Callable[[RegistrationVerdict], None] | None = None
        self._own_ctx = context is None
        self._ctx: zmq.Context[Any] = context if context is not None else zmq.Context(io_threads=1)
        self._sub = client_socket(self._ctx, zmq.SUB, keys, config.server_public)
        # RCVHWM 0 (no receive limit) on both sockets works around libzmq's abort
        # "Assertion failed: _input_stopped (stream_engine_base.cpp)" (zeromq/libzmq#3937,
        # still in libzmq 4.3.5): once a full receive queue stops the engine's input, the
        # ZMTP heartbeat times out, the SUB reconnects into the same full pipe, and the
        # app's next read restarts the input of an engine that never stopped: SIGABRT. A
        # headset app that freezes for over ~2 s while poses flow would die on resume
        # (tests/test_bridge_hwm_abort.py). With no limit the input never stops. Memory
        # grows with the freeze instead (about 1 MB/s resident with 60 Hz poses and a
        # mentor speaking) and is freed by the next poll, which skips the backlog (the
        # newest pose wins); docs/headset-protocol.md section 1.1.
        self._sub.setsockopt(zmq.RCVHWM, 0)
        for topic in P.SERVER_TOPICS:
            self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._dealer = client_socket(self._ctx, zmq.DEALER, keys, config.server_public)
        self._dealer.setsockopt(zmq.SNDHWM, config.uplink_hwm)
        # Replies only answer this client's own requests (a few in flight), so no limit
        # costs nothing and keeps the DEALER clear of the same abort.
        self._dealer.setsockopt(zmq.RCVHWM, 0)
        self._tcp_loss = TcpLossCounter((self._sub, self._dealer))  # before connecting: sees every connection
        self._sub.connect(config.pub_endpoint)
        self._dealer.connect(config.ctl_endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._sub, zmq.POLLIN)
        self._poller.register(self._dealer, zmq.POLLIN)
        self._pose: _Pose | None = None
        self._last_heard_ns: int | None = None
        self._seq = 0
        self._ctl_out: deque[list[P.Buffer]] = deque(maxlen=64)
        self._uplink: deque[list[P.Buffer]] = deque(maxlen=config.uplink_queue)
        self._audio_out: deque[list[P.Buffer]] = deque(maxlen=config.audio_queue)
        self._sync_sent: float | None = None
        self._fetch: _ModelFetch | None = None
        self._next_hb = 0.0
        self._next_time = 0.0
        self._link = _LinkMonitor(config.request_timeout_s)
        if resume is not None:
            # Keep the persisted state; the server answers with only what was missed
            # (or a full snapshot if it restarted meanwhile: a new epoch).
            self.epoch = resume.epoch
            self.annotations.load_snapshot(resume.seq, list(resume.annotations))
        self._request_sync(self.epoch, self.annotations.seq)

    # -- app-facing -----------------------------------------------------------
    def poll(self, timeout_s: float = 0.0) -> int:
        """Handle everything pending (waiting up to ``timeout_s`` for the first)."""
        now = time.monotonic()
        wait = min(timeout_s, max(0.0, min(self._next_hb, self._next_time) - now))
        handled = 0
        # One zmq_poll for both sockets is cheaper than asking each for EVENTS, and an
        # idle DEALER (the usual case) then costs nothing.
        for sock, _ in self._poller.poll(math.ceil(wait * 1000) if wait > 0 else 0):
            handled += self._drain_sub() if sock is self._sub else self._drain_dealer()
        self._timers(time.monotonic())
        self._flush()
        return handled

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(left, 0.02))
        return True

    def view(self, now_ns: int | None = None) -> PoseView:
        now = time.monotonic_ns() if now_ns is None else now_ns
        silence = None if self._last_heard_ns is None else (now - self._last_heard_ns) / 1e6
        p = self._pose
        if p is None:
            return PoseView(False, False, "lost", "nothing heard yet", None, -1, 0.0, 0.0, None, silence)
        h = p.header
        now_server = self.clock.to_server(now)
        age = None if now_server is None else (now_server - h["t_capture_ns"]) / 1e6
        reason = self._not_live_reason(h, p.T, silence, age)
        return PoseView(
            live=not reason,
            flagged=not reason and h["status"] == "degraded",
            status=h["status"],
            reason=reason,
            T_sensor_model=p.T,
            seq=h["seq"],
            fitness=_num(h["fitness"]),
            rmse_mm=_num(h["rmse_mm"]),
            age_ms=age,
            silence_ms=silence,
            sensor=h["sensor"],
            sensor_frame_seq=h["sensor_frame_seq"],
        )

    def _not_live_reason(self, h: dict[str, Any], T: Mat4 | None, silence: float | None, age: float | None) -> str:
        if h["status"] not in LIVE_STATUSES:
            return f"status {h['status']}" + (f" ({h['reason']})" if h["reason"] else "")
        if T is None:
            return "no transform"
        if silence is None or silence > self.config.silence_s * 1000:
            return f"server silent for {silence:.0f} ms" if silence is not None else "server silent"
        if age is None:
            return "clock not synchronised"
        if age > self.config.max_pose_age_s * 1000:
            return f"pose is {age:.0f} ms old"
        return ""

    def link_quality(self, now_ns: int | None = None) -> LinkQuality:
        """Link health from the headset's side (keepalive gaps, late deliveries, request round
        trips and losses, and on Linux the losses TCP repaired, read with each heartbeat): show
        a degraded-link warning when it is not ``good``, independently of the pose status."""
        return self._link.quality(time.monotonic_ns() if now_ns is None else now_ns)

    def resume_state(self) -> ResumeState | None:
        if self.epoch is None or not self.annotations.synced:
            return None
        return ResumeState(self.epoch, self.annotations.seq, tuple(self.annotations.state.values()))

    @property
    def sockets(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        """The SUB and DEALER sockets, to register in an app's own poller (then call ``poll(0)``)."""
        return self._sub, self._dealer

    def close(self) -> None:
        """Close at once (linger 0): queued messages are dropped, like a crash."""
        self._tcp_loss.close()
        self._sub.close(linger=0)
        self._dealer.close(linger=0)
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> HeadsetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- uplink (bounded, oldest dropped) --------------------------------------
    def send_depth(
        self,
        depth: npt.NDArray[np.uint16],
        T_world_camera: Mat4,
        intrinsics: tuple[float, float, float, float],
        depth_unit_mm: float = 1.0,
        t_capture_ns: int | None = None,
        depth_kind: str = "z",
    ) -> int:
        """Queue a depth frame; returns its message seq (poses name it as ``sensor_frame_seq``).
        ``depth_kind``: "z" (along the optical axis) or "ray" (distance from the camera
        centre along each pixel's ray, as HoloLens AHAT gives it)."""
        arr = np.ascontiguousarray(depth, dtype="<u2")
        if arr.ndim != 2:
            msg = f"depth must be 2-D (height, width), got shape {arr.shape!r}"
            raise ValueError(msg)
        if depth_kind not in P.DEPTH_KINDS:
            msg = f"depth_kind must be one of {P.DEPTH_KINDS}, got {depth_kind!r}"
            raise ValueError(msg)
        fx, fy, cx, cy = (float(v) for v in intrinsics)
        header = {
            "t_capture_ns": t_capture_ns or time.monotonic_ns(),
            "width": arr.shape[1],
            "height": arr.shape[0],
            "dtype": "uint16",
            "depth_unit_mm": float(depth_unit_mm),
            "fx": fx,
            "fy": fy,
            "cx": cx,
            "cy": cy,
            "T_world_camera": as_transform(T_world_camera, "T_world_camera").reshape(16).tolist(),
        }
        if depth_kind != "z":
            header["depth_kind"] = depth_kind
        return self._enqueue_uplink("depth", header, arr.tobytes())

    def send_video(
        self,
        data: bytes,
        width: int,
        height: int,
        encoding: str = "rgb8",
        t_capture_ns: int | None = None,
        intrinsics: tuple[float, float, float, float] | None = None,
        T_world_camera: Mat4 | None = None,
    ) -> int:
        """Queue a video frame. ``intrinsics`` (fx, fy, cx, cy in pixels) and
        ``T_world_camera`` (mm) describe the video camera at capture; give both, so the
        server anchors mentor marks with this camera rather than its configured one."""
        header: dict[str, Any] = {
            "t_capture_ns": t_capture_ns or time.monotonic_ns(),
            "width": width,
            "height": height,
            "encoding": encoding,
        }
        if (intrinsics is None) != (T_world_camera is None):
            msg = f"give the video camera's intrinsics and T_world_camera together, got only {'intrinsics' if intrinsics is not None else 'T_world_camera'}"
            raise ValueError(msg)
        if intrinsics is not None and T_world_camera is not None:
            header.update(zip(("fx", "fy", "cx", "cy"), (float(v) for v in intrinsics), strict=True))
            header["T_world_camera"] = as_transform(T_world_camera, "T_world_camera").reshape(16).tolist()
        return self._enqueue_uplink("video", header, bytes(data))

    def send_audio(self, pcm: bytes, sample_rate: int, channels: int = 1) -> int:
        """Microphone PCM (s16le, interleaved) for the mentors; returns its seq. Chunks of
        10-40 ms keep the delay low; at most ``audio_queue`` wait, the oldest dropped."""
        header = {"sample_rate": int(sample_rate), "channels": int(channels), "format": "s16le", "speaker": ""}
        return self._enqueue_uplink("audio", header, bytes(pcm), self._audio_out, check=True)

    def send_registration(
        self,
        trace_world_mm: npt.ArrayLike,
        landmarks: Mapping[str, npt.ArrayLike] | None = None,
        world_of: str = "",
    ) -> int:
        """Ask the server to register the patient model from a surface trace (N, 3) and
        optional touched landmarks ``{model landmark name: (x, y, z)}``, all mm in the
        headset's world frame (the frame of ``T_world_camera``), or in the world of the
        headset named ``world_of`` when a separate tracker sends it. Checked here as the
        server would (ValueError naming the problem); sent ahead of queued sensor frames,
        never dropped for them. Returns the message seq (the verdict's ``request_seq``)."""
        n, payload = P.registration_payload(trace_world_mm)
        marks = None
        if landmarks is not None:
            marks = {str(k): np.asarray(v, dtype=np.float64).reshape(-1).tolist() for k, v in landmarks.items()}
            bad = {k: v for k, v in marks.items() if not all(math.isfinite(c) for c in v)}
            if bad:  # JSON has no NaN: say which landmark rather than what the encoder says
                msg = f"landmarks must be finite (x, y, z) mm, got {bad!r:.200}"
                raise ValueError(msg)
        header = {"frame": "world", "world_of": world_of, "n_points": n, "landmarks": marks}
        return self._enqueue_uplink("registration", header, payload, self._ctl_out, check=True)

    def send_headset_pose(self, T_world_head: Mat4, t_capture_ns: int | None = None) -> None:
        T = as_transform(T_world_head, "T_world_head")
        self._enqueue_uplink("headset_pose", {"t_capture_ns": t_capture_ns or time.monotonic_ns()}, P.pack_mat4(T))

    @property
    def uplink_pending(self) -> int:
        """Uplink messages waiting for room in the socket (at most ``uplink_queue``)."""
        return len(self._uplink)

    def send_raw(self, frames: list[P.Buffer]) -> None:
        """Send frames as they are (tests, fuzzing)."""
        self._dealer.send_multipart(frames, flags=zmq.NOBLOCK)

    def _enqueue_uplink(
        self,
        topic: str,
        header: dict[str, Any],
        payload: bytes,
        queue: deque[list[P.Buffer]] | None = None,
        *,
        check: bool = False,
    ) -> int:
        """Queue one uplink message (the oldest dropped when ``queue`` is full: the sensor
        queue by default); ``check`` refuses here what the server would drop."""
        queue = self._uplink if queue is None else queue
        seq = self._next_seq()
        frames = P.encode(topic, {"seq": seq, "t_ns": time.monotonic_ns(), **header}, payload)
        if check:
            P.decode(frames, allowed=P.UPLINK_TYPES)
        if len(queue) == queue.maxlen:
            self.counters.add(f"uplink_dropped:{topic}")
        queue.append(frames)
        self._flush()
        return seq

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send_ctl(self, topic: str, header: dict[str, Any]) -> None:
        self._ctl_out.append(P.encode(topic, {"seq": self._next_seq(), "t_ns": time.monotonic_ns(), **header}))
        self._flush()

    def _flush(self) -> None:
        # Control first: a heartbeat must not wait behind depth frames; voice next.
        for queue in (self._ctl_out, self._audio_out, self._uplink):
            while queue:
                try:
                    self._dealer.send_multipart(queue[0], flags=zmq.NOBLOCK)
                except zmq.Again:
                    return
                queue.popleft()

    # -- timers ----------------------------------------------------------------
    def _timers(self, now: float) -> None:
        if now >= self._next_hb:
            self._next_hb = now + self.config.hb_interval_s
            # Read here only (10 Hz): two getsockopt calls, never on an app's per-frame path.
            self._link.tcp_counted(time.monotonic_ns(), self._tcp_loss.total())
            best = self.clock.best
            self._send_ctl(
                "hb",
                {
                    "ann_seq": self.annotations.seq,
                    "pose_seq": -1 if self._pose is None else self._pose.header["seq"],
                    "model_sha256": self.model_sha256,
                    "offset_ns": 0 if best is None else best.offset_ns,
                    "rtt_ns": -1 if best is None else best.rtt_ns,
                },
            )
        if now >= self._next_time:
            # Sample fast until synced, then at the steady rate.
            self._next_time = now + (self.config.time_interval_s if self.clock.synced else 0.05)
            t0 = time.monotonic_ns()
            self._link.requested(t0)
            self._send_ctl("time_req", {"t_ns": t0})
        if self._sync_sent is not None and now - self._sync_sent > self.config.request_timeout_s:
            self._request_sync(self.epoch, self.annotations.seq)
        if self._fetch is not None:
            self._pump_model(now)

    def _request_sync(self, epoch: str | None, since: int) -> None:
        self._sync_sent = time.monotonic()
        self._send_ctl("sync", {"epoch": epoch, "since": since})

    # -- inbound ---------------------------------------------------------------
    def _recv_all(self, sock: zmq.Socket[Any], copy: bool) -> list[tuple[list[Any], int]]:
        """Everything queued on ``sock`` now, each with its receive time (the one receive hook)."""
        out: list[tuple[list[Any], int]] = []
        recv, now = sock.recv_multipart, time.monotonic_ns
        try:  # called when the poller saw input: no EVENTS query before the first
            out.append((recv(_NOBLOCK, copy=copy), now()))
        except zmq.Again:
            return out
        # Then EVENTS (a few us) rather than provoking zmq.Again (an exception) at the end.
        while sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]  # EVENTS is an int
            out.append((recv(_NOBLOCK, copy=copy), now()))
        return out

    def _decode(self, frames: list[Any], allowed: frozenset[str]) -> P.Message | None:
        try:
            return P.decode(frames, allowed=allowed)
        except P.ProtocolError as exc:
            self.counters.add("malformed")
            log.warning("dropped malformed server message: %s", exc)
            return None

    def _drain_sub(self) -> int:
        # The per-message path (60 Hz poses + keepalives, times every headset an app
        # serves): full validation in P.decode, then plain appends; the pose itself is
        # unpacked and applied once per batch (the newest wins, a backlog is skipped).
        batch = self._recv_all(self._sub, copy=True)  # small messages: copying is cheaper
        newest: tuple[P.Message, int] | None = None
        skipped = 0
        link, log_pose = self._link, self.pose_log.append
        for frames, t_recv in batch:
            msg = self._decode(frames, P.SERVER_TOPICS)
            if msg is None:
                continue
            h = msg.header
            self._last_heard_ns = t_recv
            link.received(h["t_ns"], t_recv)
            topic = msg.topic
            if topic == "pose":
                if not h["repeat"]:
                    best = self.clock.best
                    offset = best.offset_ns if best is not None else 0
                    log_pose(PoseReceipt(h["seq"], h["t_capture_ns"], h["t_ns"], t_recv, offset))
                if newest is not None:
                    skipped += 1
                newest = (msg, t_recv)
            elif topic == "ann":
                self._on_ann(msg)
            else:
                self._on_audio(msg)
        if skipped:
            self.counters.add("pose_skipped", skipped)
        if newest is not None:
            self._on_pose(*newest)
        return len(batch)

    def _on_pose(self, msg: P.Message, t_recv: int) -> None:
        h = msg.header
        T = P.unpack_mat4(msg.payload, "T_sensor_model") if len(msg.payload) else None
        self._pose = _Pose(h, T, t_recv)
        stream = h.get("stream")
        if type(stream) is str and stream != self.stream:
            if self.stream is not None:  # the server restarted: its clock and pose seq with it
                log.warning("server pose stream restarted (%s -> %s): clock resync", self.stream, stream)
                self.clock.reset()
                self._next_time = 0.0  # ask the new server's clock now, not in 0.5 s
                self.counters.add("stream_restarted")
            self.stream = stream
        if self.epoch != h["epoch"]:
            if self.epoch is not None:
                log.warning("server restarted (epoch %s -> %s): resynchronising", self.epoch, h["epoch"])
                self.annotations.reset()
            self.epoch = h["epoch"]
            if self._sync_sent is None and not self.annotations.synced:
                self._request_sync(None, -1)
        if self.annotations.synced and h["ann_seq"] > self.annotations.seq and self._sync_sent is None:
            self._request_sync(self.epoch, self.annotations.seq)  # missed the tail: PUB dropped or joined late
        self._check_model(h["model"])
        self._check_registration(h.get("registration"))

    def _check_registration(self, raw: Any) -> None:
        """Parse the verdict only when it changed (a new id or state): poses are hot."""
        old = self.registration
        if raw is None or (
            type(raw) is dict and old is not None and raw.get("id") == old.id and raw.get("state") == old.state
        ):
            return
        try:
            verdict = RegistrationVerdict.from_json(raw)
        except ValueError as exc:
            self.counters.add("malformed")
            log.warning("dropped malformed registration verdict: %s", exc)
            return
        self.registration = verdict
        if self.on_registration is not None:
            self.on_registration(verdict)

    def _on_audio(self, msg: P.Message) -> None:
        h = msg.header
        chunk = AudioChunk(h["seq"], h["t_ns"], h["sample_rate"], h["channels"], h["speaker"], bytes(msg.payload))
        self.audio.append(chunk)
        if self.on_audio is not None:
            self.on_audio(chunk)

    def _on_ann(self, msg: P.Message) -> None:
        if msg.header["epoch"] != self.epoch:
            return  # from before a restart, or before the first keepalive told us the epoch
        try:
            op = AnnotationOp.from_json(P.json_payload(msg.payload, "ann"))
        except ValueError as exc:
            self.counters.add("malformed")
            log.warning("dropped malformed annotation: %s", exc)
            return
        self._offer(op)

    def _offer(self, op: AnnotationOp) -> None:
        if self.annotations.offer(op) and self.on_annotation is not None:
            self.on_annotation(op)
        if self.annotations.gap and self._sync_sent is None:
            self._request_sync(self.epoch, self.annotations.seq)

    def _drain_dealer(self) -> int:
        batch = self._recv_all(self._dealer, copy=False)  # model chunks: no copy
        for frames, t_recv in batch:
            msg = self._decode(frames, P.REPLY_TYPES)
            if msg is None:
                continue
            try:
                self._on_reply(msg, t_recv)
            except ValueError as exc:  # includes ProtocolError
                self.counters.add("malformed")
                log.warning("dropped malformed %s reply: %s", msg.topic, exc)
        return len(batch)

    def _on_reply(self, msg: P.Message, t3: int) -> None:
        h = msg.header
        if msg.topic == "time_rep":
            self.clock.add(sample(h["t0_ns"], h["t1_ns"], h["t2_ns"], t3))
            self._link.answered(h["t0_ns"], t3)
        elif msg.topic == "snapshot":
            anns = P.json_payload(msg.payload, "snapshot")
            if not isinstance(anns, list):
                raise P.ProtocolError("bad_payload", f"snapshot payload must be a list, got {anns!r:.80}")
            parsed = [Annotation.from_json(a) for a in anns]  # all or nothing: parse before touching state
            self.epoch = h["epoch"]
            self.annotations.load_snapshot(h["seq"], parsed)
            self._sync_sent = None
        elif msg.topic == "ann_batch":
            ops = P.json_payload(msg.payload, "ann_batch")
            if not isinstance(ops, list):
                raise P.ProtocolError("bad_payload", f"ann_batch payload must be a list, got {ops!r:.80}")
            parsed_ops = [AnnotationOp.from_json(raw) for raw in ops]
            self._sync_sent = None
            for op in parsed_ops:
                self._offer(op)
        elif msg.topic == "model_chunk":
            self._on_chunk(msg)
        elif msg.topic == "error":
            log.warning("server error %s: %s", h["code"], h["detail"])
            self.counters.add(f"server_error:{h['code']}")
            self.errors.append((str(h["code"]), str(h["detail"])))
            if h["code"] == "model_changed":
                self._fetch = None

    # -- model -------------------------------------------------------------------
    def _check_model(self, raw: dict[str, Any] | None) -> None:
        if raw is None or (raw.get("sha256") == self.model_sha256 and self._fetch is None):
            return  # the common case, kept cheap: nothing changed
        try:
            info = ModelInfo(str(raw["sha256"]), int(raw["size"]), int(raw["chunk_size"]))
        except (KeyError, TypeError, ValueError):
            self.counters.add("malformed")
            return
        if info.sha256 == self.model_sha256 or (self._fetch is not None and self._fetch.info == info):
            return
        if info.size < 0 or info.chunk_size <= 0:
            self.counters.add("malformed")
            return
        self._fetch = _ModelFetch(info)
        self._pump_model(time.monotonic())

    def _pump_model(self, now: float) -> None:
        f = self._fetch
        assert f is not None
        for index, sent in list(f.in_flight.items()):
            if now - sent > self.config.request_timeout_s:
                f.in_flight[index] = now
                self._send_ctl("model_get", {"sha256": f.info.sha256, "index": index})
        while len(f.in_flight) < self.config.model_credit and f.next_index < f.info.chunks:
            f.in_flight[f.next_index] = now
            self._send_ctl("model_get", {"sha256": f.info.sha256, "index": f.next_index})
            f.next_index += 1

    def _on_chunk(self, msg: P.Message) -> None:
        f, h = self._fetch, msg.header
        if f is None or h["sha256"] != f.info.sha256 or h["index"] not in f.in_flight:
            return  # late duplicate or from an abandoned fetch
        del f.in_flight[h["index"]]
        f.chunks[h["index"]] = bytes(msg.payload)
        if len(f.chunks) == f.info.chunks:
            data = b"".join(f.chunks[i] for i in range(f.info.chunks))
            self._fetch = None
            if hashlib.sha256(data).hexdigest() != f.info.sha256 or len(data) != f.info.size:
                self.counters.add("model_hash_mismatch")
                log.warning("model %s failed its hash check; refetching", f.info.sha256[:12])
                return
            self.model, self.model_sha256 = data, f.info.sha256
            log.info("model %s (%d bytes) received", f.info.sha256[:12], f.info.size)
        else:
            self._pump_model(time.monotonic())


# -- link quality --------------------------------------------------------------------
# Measured on the headset from what it already exchanges: the server's 50 ms keepalive on
# SUB (gaps are late or missed keepalives) and the time requests on the DEALER (round trip,
# and requests left unanswered). TCP hides packet loss as delay, so both show up as time.
LINK_WINDOW_S = 5.0
SERVER_KEEPALIVE_S = 0.05  # docs/headset-protocol.md section 4.1
LATE_GAP_S = 2 * SERVER_KEEPALIVE_S
_LATE_GAP_NS = int(LATE_GAP_S * 1e9)
LINK_LOST_S = 1.0
DEGRADED_LATE_KEEPALIVES = 3  # per window: one stall can be the app's own frame hitch
LATE_DELIVERY_S = 0.05  # one-way delay above the window's floor: a retransmission, not jitter
DEGRADED_LATE_DELIVERIES = 3  # per window
DEGRADED_RTT_MS = 50.0  # median round trip; a theatre LAN or Wi-Fi 6 link stays far below
# Segments TCP resent or received after a gap (headset_bridge/tcp_loss.py), per window: 0 on
# a clean link (0 of 431 data segments in 2.5 s on loopback); 10 % packet loss: 22-52 of
# 308-403 (7-15 %), also in a run where no delivery was late. Degraded at 2 % of the data
# segments, and at least 3, so a link busy with depth frames is not degraded by rare losses.
DEGRADED_TCP_REPAIR_SHARE = 0.02
DEGRADED_TCP_REPAIRS = 3


@dataclass(frozen=True)
class LinkQuality:
    """How the link to the server looks from the headset over the last ``window_s``."""

    status: str  # "good", "degraded" or "lost"
    reason: str  # why not good (empty when good)
    rtt_ms: float | None  # median round trip of answered time requests
    unanswered: int  # time requests with no reply within the request timeout
    answered: int
    late_keepalives: int  # SUB silences over twice the keepalive period
    longest_silence_ms: float
    late_deliveries: int  # server messages delayed over 50 ms beyond the window's fastest
    tcp_repairs: int | None = None  # lost segments TCP repaired in the window; None: cannot tell
    tcp_segments: int | None = None  # data segments sent and received in the window
    window_s: float = LINK_WINDOW_S


class _LinkMonitor:
    def __init__(self, timeout_s: float, window_s: float = LINK_WINDOW_S) -> None:
        self._timeout_ns, self._window_ns = int(timeout_s * 1e9), int(window_s * 1e9)
        self._last_heard: int | None = None
        self._gaps: deque[tuple[int, int]] = deque(maxlen=4096)  # (at, gap) of late keepalives
        self._pending: dict[int, int] = {}  # t0 of time requests in flight
        self._rtts: deque[tuple[int, int]] = deque(maxlen=256)  # (at, rtt)
        self._lost: deque[int] = deque(maxlen=256)  # when a request was given up
        # (received, received - sent): the two clocks' offset is unknown but constant, so a
        # delay above the window's minimum is queueing or TCP retransmission (hidden loss).
        self._delays: deque[tuple[int, int]] = deque(maxlen=4096)
        self._tcp: deque[tuple[int, TcpCounts]] = deque(maxlen=1024)  # (at, counts so far)

    def received(self, t_sent: int, t_recv: int) -> None:
        """A server message sent at ``t_sent`` (server clock) arrived at ``t_recv``."""
        self._delays.append((t_recv, t_recv - t_sent))
        last = self._last_heard
        if last is not None and t_recv - last > _LATE_GAP_NS:
            self._gaps.append((t_recv, t_recv - last))
        self._last_heard = t_recv

    def tcp_counted(self, at: int, total: TcpCounts | None) -> None:
        """The TCP counts (they only grow) read at ``at``; None when they cannot be read."""
        if total is not None:
            self._tcp.append((at, total))

    def _tcp_in_window(self, since: int) -> TcpCounts | None:
        if not self._tcp:
            return None
        # From the last reading at or before the window's start (else the first one) to now.
        base = next((total for at, total in reversed(self._tcp) if at <= since), self._tcp[0][1])
        return self._tcp[-1][1] - base

    def requested(self, t0: int) -> None:
        self._expire(t0)
        self._pending[t0] = t0

    def answered(self, t0: int, t3: int) -> None:
        if self._pending.pop(t0, None) is not None:
            self._rtts.append((t3, t3 - t0))

    def _expire(self, now: int) -> None:
        for t0 in [t for t in self._pending if now - t > self._timeout_ns]:
            del self._pending[t0]
            self._lost.append(now)

    def quality(self, now: int) -> LinkQuality:
        self._expire(now)
        since = now - self._window_ns
        gaps = [g for at, g in self._gaps if at >= since]
        silence = 0 if self._last_heard is None else now - self._last_heard
        longest = max([*gaps, silence]) / 1e6
        rtts = sorted(r for at, r in self._rtts if at >= since)
        rtt = rtts[len(rtts) // 2] / 1e6 if rtts else None
        lost = sum(1 for at in self._lost if at >= since)
        delays = [d for at, d in self._delays if at >= since]
        floor = min(delays, default=0)
        late = sum(1 for d in delays if d - floor > LATE_DELIVERY_S * 1e9)
        tcp = self._tcp_in_window(since)
        reasons = []
        if self._last_heard is None or silence > LINK_LOST_S * 1e9:
            reasons.append(
                "nothing heard from the server" if self._last_heard is None else f"silent {silence / 1e6:.0f} ms"
            )
        if len(gaps) >= DEGRADED_LATE_KEEPALIVES:
            reasons.append(f"{len(gaps)} late keepalives")
        if late >= DEGRADED_LATE_DELIVERIES:
            reasons.append(f"{late} late deliveries")
        if tcp is not None and tcp.repairs >= max(DEGRADED_TCP_REPAIRS, DEGRADED_TCP_REPAIR_SHARE * tcp.segments):
            reasons.append(f"{tcp.repairs} of {tcp.segments} TCP segments lost and repaired")
        if lost:
            reasons.append(f"{lost} unanswered requests")
        if rtt is not None and rtt > DEGRADED_RTT_MS:
            reasons.append(f"round trip {rtt:.0f} ms")
        status = "good" if not reasons else "lost" if reasons[0].startswith(("nothing", "silent")) else "degraded"
        repairs, segments = (None, None) if tcp is None else (tcp.repairs, tcp.segments)
        return LinkQuality(
            status, "; ".join(reasons), rtt, lost, len(rtts), len(gaps), longest, late, repairs, segments
        )


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)
