"""One theatre session: a patient model, its registration loop, its bridge sockets, its keys,
token secret and audit log, and (once the model is loaded) its mentor room.

Sessions share nothing: each has its own CURVE server key and headset allowlist, its own
token secret, its own audit file and its own ports, so a key or token of one session is
refused by every other.

The registration loop takes the depth frames a headset uplinks, newest first (the bridge
queue already drops the oldest; anything still queued behind the newest is skipped and
counted), aligns the model on the first frame (markerless, or a configured seed pose in the
headset world), tracks it frame by frame, and publishes every estimate at once. Each
headset's depth-bias correction is applied to its frames first (scrubin.session_calibration). After a run
of lost frames it re-initialises: first from the last trusted pose carried through the
headset's own camera motion (the patient does not move in the headset world), then
markerless. A navigation registration (landmarks and a surface trace from a headset, a
tracker or Slicer) runs on its own thread and, when accepted, restarts the tracker like a
Slicer seed (scrubin.session_navigation).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from headset_bridge.messages import AudioChunk
from headset_bridge.messages import DepthFrame as UplinkDepth
from headset_bridge.messages import VideoFrame as UplinkVideo
from scrubin.audit import AuditLog
from scrubin.config import RegistrationSettings, SessionSettings
from scrubin.session_calibration import SessionDepthCalibration
from scrubin.session_navigation import SessionNavigation

if TYPE_CHECKING:
    from headset_bridge.keys import Allowlist, KeyPair
    from headset_bridge.messages import Annotation, AnnotationOp, AnnotationOpName
    from headset_bridge.server import BridgeServer
    from mentor.tokens import Claims, Role
    from registration import Estimate, SurfaceModel, Tracker
    from scrubin.session_slicer import SessionSlicer

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
# What a mentor room receives per pose: (t_capture_ns on the server clock, FramePose).
SYSTEM_ACTOR = ("service", "system")


class SessionError(Exception):
    """A session cannot start or act; the message is one line naming the session."""


# ------------------------------------------------------------------ keys
@dataclass(frozen=True)
class SessionKeys:
    """The session's CURVE server key, its headset allowlist and its token secret."""

    server: KeyPair
    allowlist: Allowlist
    token_secret: bytes
    allowlist_dir: Path | None = None

    @classmethod
    def load_or_create(cls, directory: Path) -> SessionKeys:
        """``DIR/server.key[_secret]``, ``DIR/headsets/*.key`` and ``DIR/token.secret``
        (0600), created on first use so that headsets and tokens survive a restart."""
        from headset_bridge.keys import Allowlist, load_keypair, write_keypair

        secret_path = directory / "server.key_secret"
        if not secret_path.exists():
            write_keypair(directory, "server")
        headsets = directory / "headsets"
        headsets.mkdir(parents=True, exist_ok=True)
        return cls(load_keypair(secret_path), Allowlist(directory=headsets), _token_secret(directory), headsets)

    @classmethod
    def ephemeral(cls, headsets: dict[str, bytes] | None = None) -> SessionKeys:
        """In-memory keys (demo and tests): nothing written, nothing reused."""
        from headset_bridge.keys import Allowlist, KeyPair

        return cls(KeyPair.generate(), Allowlist(keys=headsets or {}), secrets.token_bytes(32))


def _token_secret(directory: Path) -> bytes:
    path = directory / "token.secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    data = path.read_bytes()
    if len(data) < 32:
        msg = f"token secret {path} must hold at least 32 bytes, got {len(data)}"
        raise SessionError(msg)
    return data


# ------------------------------------------------------------------ records
@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One depth frame the loop registered (times on the server's monotonic clock)."""

    frame_seq: int  # the headset's depth message seq (sensor_frame_seq of the pose)
    headset: str
    pose_seq: int
    t_capture_ns: int  # capture, mapped to the server clock by the bridge's clock sync
    t_received_ns: int  # the frame arrived at the server (the bridge's socket)
    t_taken_ns: int  # the loop took it from the bridge queue
    t_published_ns: int  # its pose left through the bridge
    tracker_ms: float
    status: str
    predicted_tre_mm: float
    skipped: int  # older frames dropped in favour of this one
    T_sensor_model: F64
    T_world_camera: F64
    event: str = ""  # "init", "reinit" or ""


@dataclass(frozen=True)
class SessionStatus:
    name: str
    model_loaded: bool
    status: str
    frames: int
    skipped: int
    headsets: int
    video_frames: int
    predicted_tre_mm: float
    depth_calibration: dict[str, dict[str, Any]] = field(default_factory=dict)  # per headset


@dataclass
class _Loop:
    """Registration-loop state; only the loop thread touches it."""

    tracker: Tracker | None = None
    lost_run: int = 0
    reinits: int = 0
    T_world_model_good: F64 | None = None
    status: str = "lost"
    pose_seq: int = 0


# ------------------------------------------------------------------ session
class TheatreSession:
    """Start with :meth:`start`, stop with :meth:`stop`; public methods are thread-safe."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        model_dir: Path,
        keys: SessionKeys,
        audit: AuditLog,
        host: str = "127.0.0.1",
        token_ttl_s: float = 8 * 3600.0,
        annotation_store: Path | None = None,
    ) -> None:
        from headset_bridge.server import BridgeServer, ServerConfig

        self.settings = settings
        self.name = settings.name
        self.model_dir = model_dir
        self.keys = keys
        self.audit = audit
        self.token_ttl_s = token_ttl_s
        config = ServerConfig(
            host=host, pub_port=settings.pub_port, ctl_port=settings.ctl_port, annotation_store=annotation_store
        )
        self.bridge: BridgeServer = BridgeServer(keys.server, keys.allowlist, config)
        self.model: SurfaceModel | None = None
        self.model_glb: bytes | None = None
        self.target_mm: F64 | None = None
        self.frames: deque[FrameRecord] = deque(maxlen=settings.history_frames)
        self.skipped = 0
        self.video_frames = 0
        self.latest_video: tuple[npt.NDArray[np.uint8], int] | None = None  # rgb, t_capture_ns (server)
        self.model_ready = threading.Event()
        self._mentor: Any = None  # a mentor.room.MentorRoom once attached
        self._slicer: SessionSlicer | None = None
        if settings.slicer.enabled:
            from scrubin.session_slicer import SessionSlicer

            self._slicer = SessionSlicer(settings.slicer, host, audit)
        self._mentor_server: Any = None
        self._loop = _Loop()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seen_headsets: set[str] = set()
        self._sensor: str | None = settings.registration.sensor_headset
        self._started = False
        # Per-headset depth correction, stored next to the session's headset keys.
        cal_dir = keys.allowlist_dir.parent / "depth_calibration" if keys.allowlist_dir else None
        self.depth_calibration = SessionDepthCalibration(settings.registration, cal_dir, audit)
        # Landmarks + surface trace from a headset, a tracker or Slicer, on its own thread.
        self.navigation = SessionNavigation(
            self.name, audit, self.bridge, lambda: self.model, self._newest_frame, lambda: self._sensor
        )
        if self._slicer is not None:
            self.navigation.attach_slicer(self._slicer.link)

    # -- lifecycle ---------------------------------------------------------
    def start(self, mentor_server: Any = None) -> TheatreSession:
        """Bind the bridge sockets now (or raise one :class:`SessionError` line), then load
        the model and run the loops in the background."""
        try:
            self.bridge.start()
        except Exception as exc:
            self.bridge.stop()
            raise SessionError(self._bind_error(exc)) from None
        if self._slicer is not None:
            try:
                self._slicer.start()
            except OSError as exc:
                self.bridge.stop()
                msg = f"session {self.name!r}: cannot serve OpenIGTLink on port {self.settings.slicer.port}: {exc.strerror or exc}"
                raise SessionError(msg) from None
        self._started = True
        self._mentor_server = mentor_server
        self.audit.append(*SYSTEM_ACTOR, "session started", pub=self.bridge.pub_endpoint, ctl=self.bridge.ctl_endpoint)
        log.info("session %s: pub %s ctl %s", self.name, self.bridge.pub_endpoint, self.bridge.ctl_endpoint)
        self._spawn(self._registration_main, "registration")
        self._spawn(lambda: self.navigation.main(self._stop), "navigation")
        if self.settings.video:
            self._spawn(self._media_main, "media")
        return self

    def stop(self) -> None:
        """Stop the loops, close the bridge sockets, write the last audit row."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5.0)
        self.bridge.stop()
        self.depth_calibration.close()
        if self._slicer is not None:
            self._slicer.stop()
        self.audit.append(
            *SYSTEM_ACTOR,
            "session stopped",
            frames=len(self.frames),
            skipped=self.skipped,
            reinits=self._loop.reinits,
            dropped=dict(self.bridge.counters.counts),
        )
        log.info("session %s stopped", self.name)

    def _spawn(self, target: Callable[[], None], what: str) -> None:
        t = threading.Thread(target=target, name=f"{self.name}-{what}", daemon=True)
        self._threads.append(t)
        t.start()

    def _bind_error(self, exc: Exception) -> str:
        import errno

        import zmq

        cfg = self.bridge.config
        where = f"{cfg.host}:{cfg.pub_port}/{cfg.ctl_port}"
        if isinstance(exc, zmq.ZMQError) and exc.errno == errno.EADDRINUSE:
            return f"session {self.name!r}: port in use on {where} (is another scrubin serve running?)"
        return f"session {self.name!r}: cannot listen on {where}: {exc}"

    # -- tokens, annotations, mentor -----------------------------------------
    def issue_token(self, role: Role, name: str) -> str:
        from mentor.tokens import issue

        token = issue(self.keys.token_secret, self.name, role, name, ttl_s=self.token_ttl_s)
        self.audit.append(*SYSTEM_ACTOR, "token issued", token_role=role, to=name)
        return token

    def verify_token(self, token: str | None) -> Claims:
        """Claims of a token of *this* session (``mentor.tokens.TokenError`` otherwise)."""
        from mentor.tokens import verify

        return verify(self.keys.token_secret, token, self.name)

    def publish_annotation(self, op: AnnotationOpName, ann: Annotation | str) -> AnnotationOp:
        """Send an annotation op to every headset (and Slicer), and audit it."""
        entry = self._relay_annotation(op, ann)
        author, role = ("?", "?") if isinstance(ann, str) else (ann.author, ann.role)
        self.audit.append(author, role, f"annotation {op}", id=entry.id, seq=entry.seq)
        return entry

    def _relay_annotation(self, op: AnnotationOpName, ann: Annotation | str) -> AnnotationOp:
        """The mentor room's way out: it writes the audit row itself, with who, role, the
        model point and the frame time, so this one does not write a second."""
        entry = self.bridge.annotate(op, ann)
        if self._slicer is not None:
            self._slicer.annotations(list(self.bridge.annotations[1].values()))
        return entry

    def _attach_mentor(self) -> None:
        """THE one place where the mentor joins a session: a MentorRoom fed with the
        bridge's video frames and this session's pose history, publishing annotations
        through :meth:`publish_annotation`. Runs once the patient model is loaded (the
        room needs it for ray casting)."""
        if self._mentor_server is None or self.model is None:
            return
        try:
            from mentor.anchoring import MeshRayCaster
            from mentor.room import MentorRoom  # being written in parallel; see module doc
        except ImportError as exc:
            log.warning("session %s: no mentor room (%s); video and poses are kept for it", self.name, exc)
            return
        caster = MeshRayCaster(self.model.vertices, self.model.triangles)
        room = MentorRoom(
            self.name,
            self.keys.token_secret,
            caster,
            self.video_camera,
            self._relay_annotation,
            self.audit,
            publish_voice=self._publish_voice,
        )
        room.model_glb = self.model_glb
        self._mentor_server.add_room(room)
        self._mentor = room
        self.audit.append(*SYSTEM_ACTOR, "mentor room opened")

    def _publish_voice(self, chunk: Any) -> object:
        """Mentor speech (``mentor.room.VoiceChunk``) to every headset."""
        return self.bridge.publish_audio(chunk.pcm, chunk.sample_rate, 1, chunk.speaker)

    @property
    def mentor_room(self) -> Any:
        """The attached ``mentor.room.MentorRoom``, or None."""
        return self._mentor

    @property
    def slicer(self) -> SessionSlicer | None:
        """The OpenIGTLink link to 3D Slicer, when the session enables it."""
        return self._slicer

    @property
    def mentor_server(self) -> Any:
        return self._mentor_server

    @property
    def video_camera(self) -> Any:
        """Pinhole intrinsics of the headset's video frames (the mentor's clicks)."""
        from registration import PinholeIntrinsics

        w, h, fx, fy, cx, cy = self.settings.video_intrinsics
        return PinholeIntrinsics(int(w), int(h), fx, fy, cx, cy)

    def frame_pose(self, t_capture_ns: int) -> tuple[int, Any] | None:
        """The registration nearest in capture time to ``t_capture_ns`` as a
        ``mentor.anchoring.FramePose`` (for a scripted mentor or the room), with its time."""
        from mentor.anchoring import FramePose

        with self._lock:
            if not self.frames:
                return None
            rec = min(reversed(self.frames), key=lambda r: abs(r.t_capture_ns - t_capture_ns))
        T_world_model = rec.T_world_camera @ rec.T_sensor_model
        return rec.t_capture_ns, FramePose(rec.T_world_camera, T_world_model, rec.status)

    # -- status --------------------------------------------------------------
    def status(self) -> SessionStatus:
        alive = sum(1 for h in self.bridge.headsets().values() if h.alive)
        with self._lock:
            last = self.frames[-1] if self.frames else None
            n = len(self.frames)
        return SessionStatus(
            name=self.name,
            model_loaded=self.model_ready.is_set(),
            status=last.status if last else "lost",
            frames=n,
            skipped=self.skipped,
            headsets=alive,
            video_frames=self.video_frames,
            predicted_tre_mm=last.predicted_tre_mm if last else float("inf"),
            depth_calibration=self.depth_calibration.report(),
        )

    def _newest_frame(self) -> tuple[str, F64] | None:
        """(headset, T_world_camera) of the newest registered depth frame, or None."""
        with self._lock:
            rec = self.frames[-1] if self.frames else None
        return None if rec is None else (rec.headset, rec.T_world_camera)

    def records(self) -> list[FrameRecord]:
        with self._lock:
            return list(self.frames)

    def recent(self, n: int) -> list[FrameRecord]:
        """The last ``n`` records, oldest first, without copying the whole history."""
        with self._lock:
            tail = list(itertools.islice(reversed(self.frames), n))
        return tail[::-1]

    # -- model ---------------------------------------------------------------
    def _load_model(self) -> bool:
        from registration import SurfaceModel

        reg = self.settings.registration
        try:
            model = SurfaceModel.from_folder(self.model_dir, mesh=reg.mesh)
            glb = (self.model_dir / "model.glb").read_bytes()
        except Exception as exc:  # a bad model must not take the service down
            log.error("session %s: patient model unusable: %s", self.name, exc)
            # The class only: a message may quote the folder path, and audit files travel.
            self.audit.append(*SYSTEM_ACTOR, "model failed", error=type(exc).__name__)
            return False
        names = [t.name for t in model.targets + model.fiducials]
        self.target_mm = model.target(reg.target) if reg.target in names else model.centroid.copy()
        if self._stop.is_set():
            return False  # stopped while loading: the bridge and the audit log are closing
        self.bridge.set_model(glb)
        self.model = model
        self.model_glb = glb  # the mentors' 3D view shows what the headsets show
        if self._slicer is not None:
            self._slicer.model_loaded(self.model_dir, model)
        self.audit.append(*SYSTEM_ACTOR, "model loaded", mesh=reg.mesh, vertices=len(model.vertices), target=reg.target)
        return True

    # -- registration loop ---------------------------------------------------
    def _registration_main(self) -> None:
        if not self._load_model():
            return
        try:
            self._attach_mentor()
        except Exception:  # guidance goes on without the mentors
            log.exception("session %s: the mentor room could not be opened", self.name)
        self.model_ready.set()  # model loaded and, when there is a mentor server, its room open
        while not self._stop.is_set():
            try:
                self._registration_step()
            except Exception:  # the loop must outlive any frame
                log.exception("session %s: registration step failed", self.name)

    def _registration_step(self) -> None:
        if not self.bridge.wait_for(lambda: self._stop.is_set() or self._depth_waiting(), 0.25):
            return
        sensor = self._sensor
        if self._stop.is_set() or sensor is None:
            return
        items = self.bridge.take("depth", sensor)
        t_taken = time.monotonic_ns()
        if not items:
            return
        skipped = len(items) - 1  # newest wins: the rest are already stale
        self.skipped += skipped
        frame = items[-1]
        if isinstance(frame, UplinkDepth):
            self._process(frame, t_taken, skipped)

    def _depth_waiting(self) -> bool:
        """Called (in the loop thread, under the bridge's lock) on every bridge event."""
        if self._sensor is not None:
            if self.bridge.pending("depth", self._sensor) > 0:
                return True
            if self.settings.registration.sensor_headset is None and not self._alive(self._sensor):
                self._change_sensor(None)  # it died: the next headset to send depth takes over
            return False
        for name, info in self.bridge.headsets().items():
            if info.alive and self.bridge.pending("depth", name) > 0:
                self._change_sensor(name)
                return True
        return False

    def _alive(self, name: str) -> bool:
        info = self.bridge.headsets().get(name)
        return info is not None and info.alive

    def _change_sensor(self, name: str | None) -> None:
        # Another headset means another world frame: start the registration afresh.
        self._sensor = name
        self._loop.tracker = None
        self._loop.T_world_model_good = None
        self._loop.lost_run = 0
        self.audit.append(*SYSTEM_ACTOR, "sensor selected" if name else "sensor gone", headset=name)

    def _process(self, frame: UplinkDepth, t_taken: int, skipped: int) -> None:
        from headset_bridge.messages import PoseUpdate, check_status

        raw = _to_registration_frame(frame)
        depth = self.depth_calibration.correct(frame.headset, raw)  # before tracking
        t_capture = frame.t_capture_server_ns if frame.t_capture_server_ns is not None else t_taken
        try:
            est, event = self._estimate(depth, frame, t_capture)
        except Exception as exc:  # a frame that breaks the alignment still gets its (lost) answer
            from registration.estimate import lost

            log.exception("session %s: registration failed on frame %d", self.name, frame.seq)
            est, event = lost(0.0, f"internal error: {exc!r}", None, t_capture), "error"
        lp = self._loop
        lp.pose_seq += 1
        update = PoseUpdate(
            T_sensor_model=est.T_sensor_model,
            status=check_status(str(est.status)),
            fitness=est.fitness,
            rmse_mm=est.rmse_mm,
            timestamp_ns=int(t_capture),
            seq=lp.pose_seq,
            sensor=frame.headset,
            sensor_frame_seq=frame.seq,
        )
        self.bridge.publish_pose(update)
        t_pub = time.monotonic_ns()
        if self._slicer is not None:
            self._slicer.estimate(est)  # newest wins, never blocks on Slicer
        self._after_publish(frame, est, event, t_capture, t_taken, t_pub, skipped)
        if self.model is not None:  # after the pose left: learning never delays it
            self.depth_calibration.observe(frame.headset, raw, frame.T_world_camera, est, self.model)

    def _after_publish(
        self, frame: UplinkDepth, est: Estimate, event: str, t_cap: int, t_taken: int, t_pub: int, skipped: int
    ) -> None:
        assert self.target_mm is not None
        status = str(est.status)
        tre = float(est.predicted_tre_mm(self.target_mm)[0])
        rec = FrameRecord(
            frame.seq, frame.headset, self._loop.pose_seq, int(t_cap), frame.t_received_ns or t_taken, t_taken, t_pub,
            est.elapsed_ms,
            status, tre, skipped, est.T_sensor_model, frame.T_world_camera, event,
        )  # fmt: skip
        with self._lock:
            self.frames.append(rec)
        if status != self._loop.status:
            self.audit.append(*SYSTEM_ACTOR, f"registration {status}", frame=frame.seq, reasons=list(est.reasons)[:3])
            self._loop.status = status
        T_world_model = frame.T_world_camera @ est.T_sensor_model
        if status == "tracking":
            self._loop.T_world_model_good = T_world_model
        if self._mentor is not None:
            from mentor.anchoring import FramePose

            self._mentor.push_pose(int(t_cap), FramePose(frame.T_world_camera, T_world_model, status))

    def _estimate(self, depth: Any, frame: UplinkDepth, t_capture: int) -> tuple[Estimate, str]:
        lp = self._loop
        event = ""
        seed = self._slicer.take_seed() if self._slicer is not None else None
        seeded = "slicer seed"
        if seed is None:  # an accepted navigation registration starts the tracker the same way
            seed, seeded = self.navigation.take_start(frame.headset, frame.T_world_camera), "navigation"
        if seed is not None and self.model is not None:
            from registration import Tracker

            lp.tracker, lp.lost_run, event = Tracker(self.model, seed[0]), 0, seeded
            self.audit.append(*SYSTEM_ACTOR, "registration initialised", method=seed[1], frame=frame.seq, first=False)
        elif lp.tracker is None or lp.lost_run >= self.settings.registration.reinit_after_lost:
            event = "init" if lp.tracker is None else "reinit"
            lp.tracker = self._initialise(depth, frame, first=event == "init")
            lp.lost_run = 0
            if event == "reinit":
                lp.reinits += 1
        est = lp.tracker.update(depth, t_capture)
        lp.lost_run = lp.lost_run + 1 if str(est.status) == "lost" else 0
        return est, event

    def _initialise(self, depth: Any, frame: UplinkDepth, *, first: bool) -> Tracker:
        """A new tracker. Re-initialisations alternate between the last trusted pose carried
        through the headset's camera motion (cheap, right unless the patient moved) and a
        fresh alignment (the configured seed, or markerless)."""
        from registration import Tracker
        from registration.frames import invert

        assert self.model is not None
        reg = self.settings.registration
        T_camera_world = invert(frame.T_world_camera)
        lp = self._loop
        if not first and lp.T_world_model_good is not None and lp.reinits % 2 == 0:
            start, how = T_camera_world @ lp.T_world_model_good, "last trusted pose"
        elif reg.init == "seed" and reg.seed_T_world_model is not None:
            start, how = T_camera_world @ np.asarray(reg.seed_T_world_model), "seed"
        else:
            start, how = markerless(self.model, depth, reg).T_sensor_model, "markerless"
        log.info("session %s: %s from %s at frame %d", self.name, "init" if first else "re-init", how, frame.seq)
        self.audit.append(*SYSTEM_ACTOR, "registration initialised", method=how, frame=frame.seq, first=first)
        return Tracker(self.model, start)

    # -- video and headset audio to the mentors --------------------------------------
    def _media_main(self) -> None:
        while not self._stop.is_set():
            try:
                self._media_step()
            except Exception:
                log.exception("session %s: media relay step failed", self.name)

    def _media_step(self) -> None:
        if not self.bridge.wait_for(lambda: self._stop.is_set() or self._media_waiting(), 0.25):
            return
        for name in list(self._seen_headsets):
            for chunk in self.bridge.take("audio", name):  # every chunk, in order: voice has no "newest"
                if self._mentor is not None and isinstance(chunk, AudioChunk):
                    self._mentor.push_audio(chunk.pcm, chunk.sample_rate, chunk.channels)
            frames = [f for f in self.bridge.take("video", name) if isinstance(f, UplinkVideo)]
            if not frames:
                continue
            frame = frames[-1]  # newest wins for live video too
            rgb = _decode_video(frame)
            if rgb is None:
                self.bridge.counters.add("video_undecodable")
                continue
            t = frame.t_capture_server_ns if frame.t_capture_server_ns is not None else time.monotonic_ns()
            self.video_frames += 1
            self.latest_video = (rgb, t)
            if self._mentor is not None:
                self._mentor.push_video(rgb, t, _video_camera(frame))

    def _media_waiting(self) -> bool:
        for name, info in self.bridge.headsets().items():
            if name not in self._seen_headsets:
                self._seen_headsets.add(name)
                self.audit.append(name, "headset", "headset connected")
            if info.alive and (self.bridge.pending("video", name) > 0 or self.bridge.pending("audio", name) > 0):
                return True
        return False


# ------------------------------------------------------------------ helpers
def _to_registration_frame(frame: UplinkDepth) -> Any:
    """Registration's depth frame: z-depth along the optical axis (a "ray" frame is
    converted: docs/headset-protocol.md 6.2)."""
    from registration import DepthFrame, PinholeIntrinsics
    from registration.depth import ray_to_z

    h, w = frame.depth.shape
    fx, fy, cx, cy = frame.intrinsics
    out = DepthFrame(frame.depth, PinholeIntrinsics(w, h, fx, fy, cx, cy), depth_unit_mm=frame.depth_unit_mm)
    return ray_to_z(out) if frame.depth_kind == "ray" else out


def markerless(model: SurfaceModel, depth: Any, reg: RegistrationSettings) -> Estimate:
    """Markerless alignment on the part of the frame the surgeon is looking at: points
    within ``init_crop_radius_mm`` of a point ``init_crop_depth_mm`` behind the surface at
    the image centre (the head), so drapes, table and room do not compete."""
    from registration import initial_alignment
    from registration.depth import depth_to_points

    pts = depth_to_points(depth, reg.init_stride)
    K = depth.intrinsics
    d = np.asarray(depth.depth, dtype=np.float64) * depth.depth_unit_mm
    r0, c0 = int(K.cy), int(K.cx)
    patch = d[max(r0 - 30, 0) : r0 + 30, max(c0 - 30, 0) : c0 + 30]
    valid = patch[(patch >= depth.min_mm) & (patch <= depth.max_mm)]
    if len(valid) and len(pts):
        centre = np.array([0.0, 0.0, float(np.median(valid)) + reg.init_crop_depth_mm])
        pts = pts[np.linalg.norm(pts - centre, axis=1) < reg.init_crop_radius_mm]
    return initial_alignment(model, pts)


def _video_camera(frame: UplinkVideo) -> Any:
    """The frame's own camera (``mentor.anchoring.VideoCamera``) when the headset sent one."""
    if frame.intrinsics is None or frame.T_world_camera is None:
        return None
    from mentor.anchoring import VideoCamera
    from registration import PinholeIntrinsics

    fx, fy, cx, cy = frame.intrinsics
    return VideoCamera(PinholeIntrinsics(frame.width, frame.height, fx, fy, cx, cy), frame.T_world_camera)


def _decode_video(frame: Any) -> npt.NDArray[np.uint8] | None:
    """An HxWx3 uint8 image from an uplink video frame, None if it is not one."""
    if frame.encoding == "rgb8":
        if len(frame.data) != frame.width * frame.height * 3:
            return None
        return np.frombuffer(frame.data, dtype=np.uint8).reshape(frame.height, frame.width, 3)
    if frame.encoding == "jpeg":
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(frame.data)) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except Exception:  # noqa: BLE001 - a bad frame is counted, never fatal
            return None
    return None
