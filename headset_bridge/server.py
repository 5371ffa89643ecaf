"""The bridge server: poses, annotations and the model out; sensor data in.

Two CURVE sockets (see docs/headset-protocol.md):

* PUB  (``pub``, default 5570): ``pose`` (new poses and a 20 Hz keepalive
  repeat) and ``ann`` (annotation ops). PUB never blocks: a slow headset only
  loses its own old messages, and it recovers annotations by sequence number.
* ROUTER (``ctl``, default 5571): headset requests (sync, time, model chunks),
  heartbeats and uplink (depth, video, headset pose, microphone audio, navigation
  registrations). The verdict of the latest registration rides in every ``pose``.

``publish_pose`` runs on the caller's (registration loop's) thread and costs
one non-blocking send. One I/O thread serves the ROUTER, the keepalive and the
liveness checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from headset_bridge import protocol as P
from headset_bridge.annotations import AnnotationLog, AnnotationStore
from headset_bridge.keys import Allowlist, KeyPair
from headset_bridge.messages import (
    Annotation,
    AnnotationOp,
    AnnotationOpName,
    AudioChunk,
    Counters,
    DepthFrame,
    HeadsetPoseSample,
    ModelInfo,
    PoseUpdate,
    RegistrationRequest,
    RegistrationVerdict,
    VideoFrame,
)
from headset_bridge.transport import DEFAULT_CTL_PORT, DEFAULT_PUB_PORT, bind, server_socket, start_authenticator

log = logging.getLogger(__name__)

UplinkItem = DepthFrame | VideoFrame | HeadsetPoseSample | AudioChunk | RegistrationRequest


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    pub_port: int = DEFAULT_PUB_PORT  # 0 = ephemeral
    ctl_port: int = DEFAULT_CTL_PORT
    keepalive_s: float = 0.05  # pose repeat; headsets treat 100 ms of silence as stale
    stale_after_s: float = 0.1  # no new pose for this long: keepalive says "lost"
    dead_after_s: float = 0.5  # no message from a headset for this long: dead
    max_message_bytes: int = 8 * 1024 * 1024  # per uplink message; bigger is counted and dropped
    queue_len: int = 4  # per headset and uplink kind; oldest dropped
    audio_queue_len: int = 50  # microphone chunks per headset (~1 s at 20 ms)
    pub_hwm: int = 64
    ctl_hwm: int = 64
    chunk_size: int = 256 * 1024
    allowlist_poll_s: float = 0.5  # how often the allowlist folder is checked for added/removed keys
    # SQLite file of annotation ops: survives a server crash, and keeps the epoch (no resync)
    annotation_store: Path | None = None

    @classmethod
    def ephemeral(cls, **kw: Any) -> ServerConfig:
        return cls(pub_port=0, ctl_port=0, **kw)


@dataclass
class HeadsetInfo:
    """What the server knows of one authenticated headset."""

    name: str
    alive: bool = True
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    ann_seq: int = -1
    pose_seq: int = -1
    model_sha256: str | None = None
    offset_ns: int = 0  # headset-reported: server clock minus headset clock
    rtt_ns: int = -1  # -1: not synced yet
    deaths: int = 0
    received: dict[str, int] = field(default_factory=dict)
    routing_id: bytes = b""


class BridgeServer:
    """Start with ``start()`` (or ``with``); all public methods are thread-safe."""

    def __init__(self, keys: KeyPair, allowlist: Allowlist, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.keys = keys
        self.allowlist = allowlist
        # A persisted annotation log keeps its epoch across restarts; otherwise it changes
        # on restart and headsets resync from a snapshot.
        store = AnnotationStore(self.config.annotation_store) if self.config.annotation_store else None
        self._store = store
        self.epoch = store.epoch if store is not None else secrets.token_hex(8)
        # This run's id, in every pose: the pose seq and the server clock restart with it,
        # while the epoch (the annotation log's identity) survives a restart when persisted.
        self.stream = secrets.token_hex(8)
        self.counters = Counters()
        self.pub_endpoint = ""
        self.ctl_endpoint = ""
        self._ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
        self._auth: Any = None
        self._pub: zmq.Socket[Any] | None = None
        self._ctl: zmq.Socket[Any] | None = None
        # _pub_lock: PUB socket, latest pose, annotation log, model (send order == seq order).
        self._pub_lock = threading.Lock()
        # _ann_lock: one annotation op at a time from validation to broadcast (taken before
        # _pub_lock, never inside it), so the fsync of an op does not hold up poses.
        self._ann_lock = threading.Lock()
        self._latest: PoseUpdate | None = None
        self._latest_at_ns = 0
        self._log = AnnotationLog(store=store)
        self._model: bytes | None = None
        self._model_info: ModelInfo | None = None
        self._audio_seq = 0
        self._registration: dict[str, Any] | None = None  # the latest verdict, in every pose header
        # _cond: headsets, uplink queues, counters; notified whenever they change.
        self._cond = threading.Condition(threading.RLock())
        self._headsets: dict[str, HeadsetInfo] = {}
        self._uplink: dict[tuple[str, str], deque[UplinkItem]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> BridgeServer:
        cfg = self.config
        self._auth = start_authenticator(self._ctx, self.allowlist)
        self.allowlist.refresh()  # what was revoked before the start concerns nobody connected
        self._pub, self._ctl = self._open_sockets()
        self.pub_endpoint = bind(self._pub, cfg.host, cfg.pub_port)
        self.ctl_endpoint = bind(self._ctl, cfg.host, cfg.ctl_port)
        self._thread = threading.Thread(target=self._run, name="bridge-io", daemon=True)
        self._thread.start()
        log.info("bridge up: pub %s ctl %s epoch %s", self.pub_endpoint, self.ctl_endpoint, self.epoch)
        return self

    def _open_sockets(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        cfg = self.config
        pub = server_socket(self._ctx, zmq.PUB, self.keys)
        pub.setsockopt(zmq.SNDHWM, cfg.pub_hwm)
        ctl = server_socket(self._ctx, zmq.ROUTER, self.keys)
        ctl.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Finite limits stay on the server (memory per headset against a flood). Unlike the
        # headset's SUB they cannot hit libzmq#3937 (docs/headset-protocol.md 1.1): a bound
        # socket gets a fresh session and queue per connection, so a reconnect after a stall
        # never meets an old full queue (tests/test_bridge_hwm_abort.py, server stall).
        ctl.setsockopt(zmq.RCVHWM, cfg.ctl_hwm)
        ctl.setsockopt(zmq.SNDHWM, cfg.ctl_hwm)
        # Hard transport cap: libzmq disconnects a peer sending a frame over it
        # before buffering it. Messages between the two limits are counted. The cap
        # applies to the CURVE-boxed frame, hence the margin for its overhead.
        ctl.setsockopt(zmq.MAXMSGSIZE, 2 * cfg.max_message_bytes + 4096)
        return pub, ctl

    def _check_allowlist(self) -> None:
        """Pick up keys added to or removed from the allowlist folder. New connections are
        checked against the list as it is now (ZAP asks it); a revoked key's connections
        that are already open are ended by re-opening both sockets, because libzmq cannot
        drop one peer of a PUB: every headset then reconnects and authenticates again,
        and the revoked one is refused. The overlays go without poses for about 0.1-0.3 s
        (hidden: the safe failure); revoking is rare and deliberate."""
        revoked = self.allowlist.refresh()
        if not revoked:
            return
        log.warning(
            "allowlist: %d key(s) revoked (%s): re-opening the sockets", len(revoked), ", ".join(revoked.values())
        )
        self.counters.add("revoked", len(revoked))
        with self._pub_lock:
            for sock in (self._pub, self._ctl):
                if sock is not None:
                    sock.close(linger=0)
            self._pub, self._ctl = self._open_sockets()
            for sock, endpoint in ((self._pub, self.pub_endpoint), (self._ctl, self.ctl_endpoint)):
                self._rebind(sock, endpoint)
        with self._cond:
            for info in self._headsets.values():
                if info.name in revoked.values():
                    info.alive = False

    def _rebind(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        """Bind to the endpoint the closed socket held; libzmq releases the port from its
        own I/O thread, so the first tries may find it still in use."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                sock.bind(endpoint)
                return
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                self._stop.wait(0.01)  # the port is freed asynchronously; nothing to wait on

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with self._pub_lock:
            for sock in (self._pub, self._ctl):
                if sock is not None:
                    sock.close(linger=0)
            self._pub = self._ctl = None
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> BridgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- server -> headsets --------------------------------------------------
    def publish_pose(self, update: PoseUpdate | Mapping[str, Any]) -> None:
        """Send a pose now; never blocks (a slow headset drops its own backlog).

        A mapping without ``seq`` gets the next one after the last published.
        """
        data = None if isinstance(update, PoseUpdate) else dict(update)
        with self._pub_lock:
            if not isinstance(update, PoseUpdate):
                update = PoseUpdate.from_mapping(data or {}, seq=0 if self._latest is None else self._latest.seq + 1)
            self._latest = update
            self._latest_at_ns = time.monotonic_ns()
            self._send_pose(repeat=False)

    def annotate(self, op: AnnotationOpName, ann: Annotation | str) -> AnnotationOp:
        """Apply an op to the log and broadcast it; returns it with its seq.

        The op is persisted (fsync) under the annotation lock only, so poses keep flowing
        meanwhile; it becomes visible (state, sync replies, PUB) under the PUB lock."""
        with self._ann_lock:
            entry = self._log.prepare(op, ann)
            with self._pub_lock:
                self._log.commit(entry)
                self._send_annotation(entry)
        return entry

    def _send_annotation(self, entry: AnnotationOp) -> None:
        header = {
            "seq": entry.seq,
            "t_ns": time.monotonic_ns(),
            "op": entry.op,
            "id": entry.id,
            "epoch": self.epoch,
        }
        self._send_pub(P.encode("ann", header, P.json_bytes(entry.to_json())))

    def publish_audio(self, pcm: bytes, sample_rate: int, channels: int = 1, speaker: str = "") -> int:
        """Send mentor voice (PCM s16le) to every headset; never blocks. Returns its seq."""
        with self._pub_lock:
            self._audio_seq += 1
            header = {
                "seq": self._audio_seq,
                "t_ns": time.monotonic_ns(),
                "sample_rate": sample_rate,
                "channels": channels,
                "format": "s16le",
                "speaker": speaker,
            }
            frames = P.encode("audio", header, pcm)
            P.decode(frames, allowed=P.SERVER_TOPICS)  # refuse here what a headset would drop
            self._send_pub(frames)
            return self._audio_seq

    def set_model(self, glb: bytes) -> ModelInfo:
        """Publish a new patient model; headsets fetch it only if its hash changed."""
        info = ModelInfo(hashlib.sha256(glb).hexdigest(), len(glb), self.config.chunk_size)
        with self._pub_lock:
            if self._model_info != info:
                self._model, self._model_info = bytes(glb), info
                log.info("model %s (%d bytes) published", info.sha256[:12], info.size)
                self._send_pose(repeat=True)  # announce now, not at the next keepalive
        return info

    def report_registration(self, verdict: RegistrationVerdict) -> None:
        """Tell every headset how the latest navigation registration went: the verdict
        rides in every ``pose`` header from now on, and goes out at once (never blocks)."""
        data = verdict.to_json()
        with self._pub_lock:
            self._registration = data
            if self._pub is not None:
                self._send_pose(repeat=True)

    @property
    def annotations(self) -> tuple[int, dict[str, Annotation]]:
        with self._pub_lock:
            return self._log.seq, dict(self._log.state)

    def _send_pose(self, repeat: bool) -> None:
        latest, now = self._latest, time.monotonic_ns()
        status, reason = ("lost", "no pose yet") if latest is None else (latest.status, "")
        if latest is not None and repeat and now - self._latest_at_ns > self.config.stale_after_s * 1e9:
            # The registration loop went quiet: never let a keepalive vouch for an old pose.
            status, reason = "lost", f"stale: no pose for {(now - self._latest_at_ns) / 1e6:.0f} ms"
        header = {
            "seq": 0 if latest is None else latest.seq,
            "t_ns": now,
            "t_capture_ns": 0 if latest is None else latest.timestamp_ns,
            "status": status,
            "reason": reason,
            "fitness": None if latest is None else P.finite_or_none(latest.fitness),
            "rmse_mm": None if latest is None else P.finite_or_none(latest.rmse_mm),
            "repeat": repeat,
            "epoch": self.epoch,
            "stream": self.stream,
            "ann_seq": self._log.seq,
            "model": None if self._model_info is None else self._model_info.to_json(),
            "sensor": "" if latest is None else latest.sensor,
            "sensor_frame_seq": -1 if latest is None else latest.sensor_frame_seq,
            "registration": self._registration,
        }
        payload = b"" if latest is None else P.pack_mat4(latest.T_sensor_model)
        self._send_pub(P.encode("pose", header, payload))

    def _send_pub(self, frames: list[P.Buffer]) -> None:
        if self._pub is None:
            msg = f"bridge server is not running (pub socket is {self._pub!r})"
            raise RuntimeError(msg)
        try:
            self._pub.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:  # PUB drops rather than blocks; kept for safety
            self._count("pub_dropped")

    # -- headsets, uplink ---------------------------------------------------
    def headsets(self) -> dict[str, HeadsetInfo]:
        with self._cond:
            return {n: replace(h, received=dict(h.received)) for n, h in self._headsets.items()}

    def take(self, kind: str, headset: str) -> list[UplinkItem]:
        """Pop everything queued of ``kind`` (depth, video, headset_pose, audio) from one headset."""
        with self._cond:
            q = self._uplink.get((headset, kind))
            items = list(q) if q else []
            if q:
                q.clear()
            return items

    def pending(self, kind: str, headset: str) -> int:
        """How many ``kind`` items from ``headset`` wait in its bounded queue."""
        with self._cond:
            q = self._uplink.get((headset, kind))
            return len(q) if q else 0

    def senders(self, kind: str) -> list[str]:
        """Headsets with ``kind`` items waiting in their queues."""
        with self._cond:
            return [name for (name, k), q in self._uplink.items() if k == kind and q]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``predicate()`` holds (re-checked on every state change)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def _count(self, reason: str, n: int = 1) -> None:
        with self._cond:
            self.counters.add(reason, n)

    # -- I/O thread ---------------------------------------------------------
    def _run(self) -> None:
        next_keepalive = next_allowlist = time.monotonic()
        while not self._stop.is_set():
            wait_ms = max(0.0, (next_keepalive - time.monotonic()) * 1000)
            try:
                if time.monotonic() >= next_allowlist:
                    self._check_allowlist()  # may replace self._ctl: poll the current one
                    next_allowlist = time.monotonic() + self.config.allowlist_poll_s
                ctl = self._ctl
                assert ctl is not None
                if ctl.poll(math.ceil(min(wait_ms, 50)), zmq.POLLIN):
                    self._drain_ctl()
                if time.monotonic() >= next_keepalive:
                    with self._pub_lock:
                        if self._pub is not None:
                            self._send_pose(repeat=True)
                    next_keepalive = time.monotonic() + self.config.keepalive_s
                self._check_dead()
            except zmq.ContextTerminated:
                return
            except Exception:  # the loop must survive anything a peer can cause
                log.exception("bridge I/O loop error")
                self._count("io_error")

    def _drain_ctl(self, budget: int = 256) -> None:
        assert self._ctl is not None
        for _ in range(budget):
            try:
                frames = self._ctl.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._handle(frames, time.monotonic_ns())
        with self._cond:
            self._cond.notify_all()

    def _handle(self, frames: list[zmq.Frame], t1: int) -> None:
        size = sum(len(f.buffer) for f in frames[1:])
        if size > self.config.max_message_bytes:
            self._count("oversized")
            log.warning("dropped oversized message, got %d bytes", size)
            return
        name = self._peer_name(frames)
        if name is None:
            self._count("unauthorised")
            return
        try:
            msg = P.decode(list(frames[1:]), allowed=P.UPLINK_TYPES)
        except P.ProtocolError as exc:
            self._refuse(name, frames, exc)
            return
        info = self._touch(name, frames[0].bytes, msg.topic, t1)
        try:
            self._dispatch(info, frames[0].bytes, msg, t1)
        except P.ProtocolError as exc:
            self._refuse(name, frames, exc)

    def _refuse(self, name: str, frames: list[zmq.Frame], exc: P.ProtocolError) -> None:
        """Count a malformed message from an authenticated headset and answer it with an
        ``error`` (code ``bad_request``) naming the problem, so a client developer sees
        why, rather than silence. Replies are non-blocking: a flood fills the peer's own
        queue (ctl_hwm) and the rest are dropped, never buffered here."""
        self._count("malformed")
        self._count(f"malformed:{exc.reason}")
        log.debug("dropped malformed message from %s: %s", name, exc)
        topic, seq = _echo(frames[1:])
        header = {"seq": seq, "code": "bad_request", "detail": f"{topic}: {exc}"[:500], "request": topic}
        self._reply(frames[0].bytes, "error", header)

    def _peer_name(self, frames: list[zmq.Frame]) -> str | None:
        if len(frames) < 2:
            return None
        try:
            user = frames[1].get("User-Id")
        except zmq.ZMQError:
            return None
        return self.allowlist.name_of(str(user).encode())

    def _touch(self, name: str, rid: bytes, topic: str, now: int) -> HeadsetInfo:
        with self._cond:
            info = self._headsets.get(name)
            if info is None:
                info = self._headsets[name] = HeadsetInfo(name=name, first_seen_ns=now)
                log.info("headset %s connected", name)
            elif not info.alive:
                log.info("headset %s is back", name)
            info.alive, info.last_seen_ns, info.routing_id = True, now, rid
            info.received[topic] = info.received.get(topic, 0) + 1
            return info

    def _check_dead(self) -> None:
        now, limit = time.monotonic_ns(), int(self.config.dead_after_s * 1e9)
        with self._cond:
            for info in self._headsets.values():
                if info.alive and now - info.last_seen_ns > limit:
                    info.alive = False
                    info.deaths += 1
                    self.counters.add("headset_dead")
                    log.warning("headset %s silent for %.0f ms: dead", info.name, (now - info.last_seen_ns) / 1e6)
                    self._cond.notify_all()

    def _dispatch(self, info: HeadsetInfo, rid: bytes, msg: P.Message, t1: int) -> None:
        h = msg.header
        if msg.topic == "hb":
            with self._cond:
                info.ann_seq, info.pose_seq, info.model_sha256 = h["ann_seq"], h["pose_seq"], h["model_sha256"]
                info.offset_ns, info.rtt_ns = h["offset_ns"], h["rtt_ns"]
        elif msg.topic == "time_req":
            self._reply(rid, "time_rep", {"seq": h["seq"], "t0_ns": h["t_ns"], "t1_ns": t1})
        elif msg.topic == "sync":
            self._reply_sync(rid, h)
        elif msg.topic == "model_get":
            self._reply_chunk(rid, h)
        else:
            self._queue_uplink(info, msg, t1)

    def _reply(self, rid: bytes, topic: str, header: dict[str, Any], payload: P.Buffer = b"") -> None:
        assert self._ctl is not None
        if topic == "time_rep":
            header["t2_ns"] = time.monotonic_ns()
        header.setdefault("t_ns", time.monotonic_ns())
        try:
            self._ctl.send_multipart([rid, *P.encode(topic, header, payload)], flags=zmq.NOBLOCK)
        except zmq.Again:
            self._count("reply_dropped")  # peer's queue full; it retries on timeout
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._count("reply_unroutable")  # peer went away

    def _reply_sync(self, rid: bytes, h: dict[str, Any]) -> None:
        with self._pub_lock:
            seq = self._log.seq
            ops = self._log.since(h["since"]) if h["epoch"] == self.epoch else None
            if ops is None:
                anns = [a.to_json() for a in self._log.state.values()]
            else:
                batch = [o.to_json() for o in ops]
        if ops is None:
            header = {"seq": seq, "epoch": self.epoch, "count": len(anns)}
            self._reply(rid, "snapshot", header, P.json_bytes(anns))
        else:
            header = {"seq": seq, "epoch": self.epoch, "from_seq": h["since"] + 1, "to_seq": seq}
            self._reply(rid, "ann_batch", header, P.json_bytes(batch))

    def _reply_chunk(self, rid: bytes, h: dict[str, Any]) -> None:
        with self._pub_lock:
            model, info = self._model, self._model_info
        if model is None or info is None or info.sha256 != h["sha256"]:
            self._reply(
                rid, "error", {"seq": h["seq"], "code": "model_changed", "detail": f"no model {h['sha256']!r:.80}"}
            )
            return
        index = h["index"]
        if not 0 <= index < info.chunks:
            self._reply(
                rid,
                "error",
                {"seq": h["seq"], "code": "bad_index", "detail": f"chunk index out of range, got {index!r}"},
            )
            return
        chunk = memoryview(model)[index * info.chunk_size : (index + 1) * info.chunk_size]
        header = {"seq": h["seq"], "index": index, "count": info.chunks, **info.to_json()}
        self._reply(rid, "model_chunk", header, chunk)

    def _queue_uplink(self, info: HeadsetInfo, msg: P.Message, t_received_ns: int) -> None:
        item = self._uplink_item(info, msg, t_received_ns)
        key = (info.name, msg.topic)
        with self._cond:
            size = self.config.audio_queue_len if msg.topic == "audio" else self.config.queue_len
            q = self._uplink.setdefault(key, deque(maxlen=size))
            if len(q) == q.maxlen:
                self.counters.add(f"uplink_dropped:{msg.topic}")  # deque drops the oldest
            q.append(item)
            # Wake consumers now, not at the end of the batch: a depth frame must not wait
            # while this thread copies the video frame that arrived right behind it.
            self._cond.notify_all()

    def _uplink_item(self, info: HeadsetInfo, msg: P.Message, t_received_ns: int) -> UplinkItem:
        h, name = msg.header, info.name
        if msg.topic == "audio":
            pcm = bytes(msg.payload)
            return AudioChunk(name, h["seq"], t_received_ns, h["sample_rate"], h["channels"], pcm)
        if msg.topic == "registration":  # checked in full by P.decode: parsing cannot fail
            points, marks = P.registration_points(msg.payload), P.registration_landmarks(h)
            return RegistrationRequest(name, h["seq"], t_received_ns, h["world_of"], points, marks)
        t_server = h["t_capture_ns"] + info.offset_ns if info.rtt_ns >= 0 else None
        if msg.topic == "depth":
            depth = np.frombuffer(msg.payload, dtype="<u2").reshape(h["height"], h["width"])
            return DepthFrame(
                headset=name,
                seq=h["seq"],
                t_capture_ns=h["t_capture_ns"],
                t_capture_server_ns=t_server,
                depth=depth,
                depth_unit_mm=float(h["depth_unit_mm"]),
                intrinsics=(float(h["fx"]), float(h["fy"]), float(h["cx"]), float(h["cy"])),
                T_world_camera=P.mat4_from_list(h["T_world_camera"], "T_world_camera"),
                t_received_ns=t_received_ns,
                depth_kind=h.get("depth_kind", "z"),
            )
        if msg.topic == "video":
            return VideoFrame(
                headset=name,
                seq=h["seq"],
                t_capture_ns=h["t_capture_ns"],
                t_capture_server_ns=t_server,
                width=h["width"],
                height=h["height"],
                encoding=h["encoding"],
                data=bytes(msg.payload),
                intrinsics=(h["fx"], h["fy"], h["cx"], h["cy"]) if "fx" in h else None,
                T_world_camera=P.mat4_from_list(h["T_world_camera"], "T_world_camera") if "fx" in h else None,
            )
        T = P.unpack_mat4(msg.payload, "T_world_head")
        return HeadsetPoseSample(
            headset=name, seq=h["seq"], t_capture_ns=h["t_capture_ns"], t_capture_server_ns=t_server, T_world_head=T
        )


def _echo(frames: list[zmq.Frame]) -> tuple[str, int]:
    """The topic and ``seq`` of a message that failed validation, as far as they can be
    read (``?`` and 0 otherwise), to echo in the ``error`` reply."""
    topic, seq = "?", 0
    if frames:
        topic = bytes(frames[0].buffer[:64]).decode("ascii", "replace")
    if len(frames) > 1 and len(frames[1].buffer) <= P.MAX_HEADER_BYTES:
        try:
            header = json.loads(bytes(frames[1].buffer))
        except (ValueError, RecursionError):
            header = None
        raw = header.get("seq") if isinstance(header, dict) else None
        if type(raw) is int and 0 <= raw < 2**63:
            seq = raw
    return topic, seq
