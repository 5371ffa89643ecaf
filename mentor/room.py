"""One theatre session as the mentors see it: who is in, the marks, the poses, the video.

``push_video`` and ``push_pose`` are called from the bridge / registration threads; the
rest runs on the mentor server's event loop. Marks are anchored with the pose of the
frame the mentor clicked on (looked up by capture time), stored in model mm, sent to the
headsets through ``publish_annotation`` and re-projected for the mentors with the current
pose. A mark that cannot be anchored stays a 2D screen mark and says why.

Every mark request carries the page's own id (``cid``): the answer to a request is
remembered, so a re-send after a lost acknowledgement is answered again, never applied twice.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

from domain.annotation import Annotation, AnnotationOpName
from domain.audit import AuditSink
from domain.camera import PinholeIntrinsics
from mentor.anchoring import (
    Anchor,
    FramePose,
    MeshRayCaster,
    VideoCamera,
    anchor_click,
    project_marks,
    projection_matrix,
)
from mentor.audio import check_pcm
from mentor.frameclock import FrameClock
from mentor.model_view import anchor_model_point
from mentor.occlusion import OcclusionCache
from mentor.signalling import Annotate, Erase, Restore
from mentor.tokens import Claims

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

MAX_STROKE_POINTS: Final = 64  # a stroke is resampled to this many anchored points at most
MAX_REMEMBERED_ACKS: Final = 10_000
STALE_POSE_MS: Final = 500.0
MAX_FRAMES_KEPT: Final = 600  # capture times of recent frames (20 s at 30 fps)
MAX_ERASED_KEPT: Final = 100  # erased marks their eraser may still restore (undo)

PublishAnnotation = Callable[[AnnotationOpName, Annotation | str], object]


@dataclass(frozen=True)
class Participant:
    id: str
    name: str
    role: str
    quality: str
    joined_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "quality": self.quality}


@dataclass(frozen=True)
class Mark:
    annotation: Annotation
    anchored: bool
    reason: str  # "hit the model", or why it stays 2D
    t_capture_ns: int | None


@dataclass(frozen=True)
class Ack:
    cid: str
    ok: bool
    id: str = ""
    anchored: bool = False
    reason: str = ""
    error: str = ""
    t_capture_ns: int | None = None
    point_model_mm: tuple[float, float, float] | None = None
    duplicate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "ack",
            "cid": self.cid,
            "ok": self.ok,
            "id": self.id,
            "anchored": self.anchored,
            "reason": self.reason,
            "error": self.error,
            "t_capture_ns": None if self.t_capture_ns is None else str(self.t_capture_ns),
            "point_model_mm": self.point_model_mm,
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True)
class VoiceChunk:
    """Mentor speech for the surgeon: PCM s16le, mono."""

    speaker: str
    pcm: bytes
    sample_rate: int
    t_ns: int


@dataclass
class _Poses:
    times: list[int] = field(default_factory=list)
    poses: list[FramePose] = field(default_factory=list)


class MentorRoom:
    """Per-session state; one per theatre session (see module docstring for threads)."""

    def __init__(
        self,
        session: str,
        token_secret: bytes,
        caster: MeshRayCaster,
        camera: PinholeIntrinsics,
        publish_annotation: PublishAnnotation,
        audit: AuditSink | None,
        publish_voice: Callable[[VoiceChunk], object] | None = None,
        max_pose_gap_ms: float = 100.0,
        pose_history_s: float = 5.0,
    ) -> None:
        self.session = session
        self.token_secret = token_secret
        self.caster = caster
        self.camera = camera
        self.publish_annotation = publish_annotation
        self.publish_voice = publish_voice
        self.audit = audit
        self.audit_writer: Executor | None = None  # set by the server: writes off its event loop
        self.participants: dict[str, Participant] = {}
        self.marks: dict[str, Mark] = {}
        self.counters: dict[str, int] = {}
        self.video_listener: Callable[[npt.NDArray[np.uint8], int], None] | None = None
        self.audio_listener: Callable[[bytes, int, int], None] | None = None
        self._max_gap_ns = int(max_pose_gap_ms * 1e6)
        self._history_ns = int(pose_history_s * 1e9)
        self._lock = threading.Lock()  # poses and frame times: written from other threads
        self._poses = _Poses()
        self._frames: deque[int] = deque(maxlen=MAX_FRAMES_KEPT)  # capture times of recent frames
        self._video_cameras: OrderedDict[int, VideoCamera] = OrderedDict()  # frames that brought their camera
        self._latest_video_ns: int | None = None
        self._acks: OrderedDict[tuple[str, str], Ack] = OrderedDict()
        self._erased: OrderedDict[str, tuple[str, Mark]] = OrderedDict()  # id -> (eraser's nonce, mark)
        self._ids = itertools.count(1)
        self.model_glb: bytes | None = None  # the 3D view's model (GLB); None: the ray-casting mesh
        self._occlusion = OcclusionCache(caster)
        self._voice_failing = False

    # -- other threads ---------------------------------------------------------
    def push_video(self, rgb: npt.NDArray[np.uint8], t_capture_ns: int, camera: VideoCamera | None = None) -> None:
        """A headset video frame (H, W, 3) uint8 RGB; any thread. ``camera``: the frame's own
        camera when the headset sent one; None: the configured camera at the depth camera's pose."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            msg = f"video frame must be (H, W, 3) uint8, got {rgb.shape!r} {rgb.dtype}"
            raise ValueError(msg)
        with self._lock:
            self._frames.append(t_capture_ns)
            self._latest_video_ns = t_capture_ns
            if camera is not None:
                _put_bounded(self._video_cameras, t_capture_ns, camera, MAX_FRAMES_KEPT)
        listener = self.video_listener
        if listener is not None:
            listener(rgb, t_capture_ns)

    def push_audio(self, pcm: bytes, sample_rate: int, channels: int = 1) -> None:
        """Headset microphone PCM (s16le, interleaved) for the mentors; any thread."""
        check_pcm(pcm, sample_rate, channels)
        listener = self.audio_listener
        if listener is not None:
            listener(pcm, sample_rate, channels)

    def push_pose(self, t_capture_ns: int, pose: FramePose) -> None:
        """The camera and model poses at a capture time (same clock as the video); any thread."""
        with self._lock:
            p = self._poses
            i = bisect.bisect_right(p.times, t_capture_ns)
            p.times.insert(i, t_capture_ns)
            p.poses.insert(i, pose)
            cut = bisect.bisect_left(p.times, p.times[-1] - self._history_ns)
            if cut:
                del p.times[:cut], p.poses[:cut]

    def latest_pose(self) -> tuple[int, FramePose] | None:
        with self._lock:
            p = self._poses
            return (p.times[-1], p.poses[-1]) if p.times else None

    def pose_at(self, t_capture_ns: int) -> tuple[int, FramePose] | None:
        """The pose nearest in capture time, if within the allowed gap."""
        with self._lock:
            p = self._poses
            i = bisect.bisect_left(p.times, t_capture_ns)
            best = min(
                (j for j in (i - 1, i) if 0 <= j < len(p.times)),
                key=lambda j: abs(p.times[j] - t_capture_ns),
                default=None,
            )
            if best is None or abs(p.times[best] - t_capture_ns) > self._max_gap_ns:
                return None
            return p.times[best], p.poses[best]

    def capture_times(self) -> list[int]:
        """Capture times of the recent video frames, sorted."""
        with self._lock:
            return sorted(self._frames)

    # -- loop thread -----------------------------------------------------------
    def count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def join(self, claims: Claims, quality: str, pid: str | None = None) -> Participant:
        pid = pid or secrets.token_hex(4)
        p = Participant(pid, claims.name, claims.role, quality, time.time_ns())
        self.participants[pid] = p
        self._audit(claims.name, claims.role, "join", participant=pid, quality=quality)
        return p

    def leave(self, pid: str, reason: str = "closed") -> None:
        p = self.participants.pop(pid, None)
        if p is not None:
            self._audit(p.name, p.role, "leave", participant=pid, reason=reason)

    def refused(self, reason: str, remote: str) -> None:
        self.count("refused_token")
        self._audit("-", "-", "refused", reason=reason, remote=remote)

    def frame_time(self, req: Annotate, clock: FrameClock | None) -> tuple[int | None, str]:
        """Capture time of the clicked frame (None: use the latest pose), or why it is unknown."""
        if req.t_capture_ns is not None:
            return req.t_capture_ns, ""
        if req.rtp_ts is None:
            return None, ""
        if clock is None:
            return None, "this viewer has no video clock"
        captures = self.capture_times()
        t = clock.capture_time(req.rtp_ts, captures)
        if t is None and clock.calibrate(req.rtp_recent, captures):
            t = clock.capture_time(req.rtp_ts, captures)
        return (t, "") if t is not None else (None, "the clicked video frame is no longer known")

    def annotate(self, claims: Claims, req: Annotate, clock: FrameClock | None = None) -> Ack:
        """Anchor and publish a mark, or answer again what was answered for this cid."""
        key = (claims.nonce, req.cid)
        early = self._answered_or_refused(claims, key, "annotate")
        if early is not None:
            return early
        try:
            ack = self._place(claims, req, clock)
        except ValueError as exc:
            ack = Ack(req.cid, False, error=str(exc))
        return self._remember(key, ack)

    def erase(self, claims: Claims, req: Erase) -> Ack:
        key = (claims.nonce, req.cid)
        early = self._answered_or_refused(claims, key, "erase")
        if early is not None:
            return early
        mark = self.marks.get(req.id)
        if mark is None:
            return self._remember(key, Ack(req.cid, False, id=req.id, error=f"no mark with id {req.id!r}"))
        if mark.anchored:
            self.publish_annotation("delete", req.id)  # raises: the mark stays, the page re-sends
        del self.marks[req.id]
        _put_bounded(self._erased, req.id, (claims.nonce, mark), MAX_ERASED_KEPT)
        # Both names: a mentor erasing another's mark is on record as such.
        self._audit(claims.name, claims.role, "erase", id=req.id, author=mark.annotation.author)
        return self._remember(key, Ack(req.cid, True, id=req.id))

    def restore(self, claims: Claims, req: Restore) -> Ack:
        """Undo an erase: only the same link (token) that erased the mark may bring it back."""
        key = (claims.nonce, req.cid)
        early = self._answered_or_refused(claims, key, "restore")
        if early is not None:
            return early
        found = self._erased.get(req.id)
        if found is None or found[0] != claims.nonce:
            return self._remember(key, Ack(req.cid, False, id=req.id, error=f"no mark {req.id!r} erased by you"))
        mark = found[1]
        if mark.anchored:
            self.publish_annotation("add", mark.annotation)  # raises: stays erased, the page re-sends
        del self._erased[req.id]
        self.marks[req.id] = mark
        self._audit(claims.name, claims.role, "restore", id=req.id, author=mark.annotation.author)
        return self._remember(key, Ack(req.cid, True, id=req.id, anchored=mark.anchored, reason=mark.reason))

    def _answered_or_refused(self, claims: Claims, key: tuple[str, str], verb: str) -> Ack | None:
        """The earlier answer to a re-sent message (applied once), or a refusal for a role
        that may not mark; None when the request is new and allowed."""
        if key in self._acks:
            self.count("duplicate")
            return _duplicate(self._acks[key])
        if not claims.may_annotate:
            self._audit(claims.name, claims.role, "refused_annotation", cid=key[1])
            return Ack(key[1], False, error=f"role {claims.role!r} cannot {verb}")
        return None

    def _remember(self, key: tuple[str, str], ack: Ack) -> Ack:
        _put_bounded(self._acks, key, ack, MAX_REMEMBERED_ACKS)
        return ack

    def _place(self, claims: Claims, req: Annotate, clock: FrameClock | None) -> Ack:
        uv = _resample(req.uv)
        t_capture_ns, unknown = self.frame_time(req, clock)
        if req.point_model_mm is not None:  # a click on the 3D view: on the model already
            anchor = anchor_model_point(self.caster, req.point_model_mm)  # ValueError: refused
            anchors, reason, t_frame = [anchor], anchor.reason, None
        elif unknown:
            anchors, reason, t_frame = [Anchor(False, None, p, unknown) for p in uv], unknown, None
        else:
            anchors, reason, t_frame = self._anchor_all(uv, t_capture_ns)
        anchored = all(a.anchored for a in anchors)
        ident = f"m{next(self._ids)}-{secrets.token_hex(3)}"
        points = tuple(a.point_model_mm for a in anchors if a.point_model_mm is not None) if anchored else ()
        ann = Annotation(
            id=ident,
            kind=req.kind,
            author=claims.name,
            role=claims.role,
            points_mm=points,
            created_ns=time.time_ns(),
            text=req.text,
            color=req.color,
            screen_xy=uv or None,
        )
        if anchored:
            self.publish_annotation("add", ann)  # first: a mark the headsets never got is not kept
        self.marks[ident] = Mark(ann, anchored, reason, t_frame)
        first = points[0] if points else None
        self._audit(
            claims.name,
            claims.role,
            "annotation",
            id=ident,
            kind=req.kind,
            anchored=anchored,
            reason=reason,
            t_capture_ns=t_frame,
            point_model_mm=first,
            points=len(points),
        )
        return Ack(req.cid, True, ident, anchored, reason, t_capture_ns=t_frame, point_model_mm=first)

    def _anchor_all(
        self, uv: tuple[tuple[float, float], ...], t_capture_ns: int | None
    ) -> tuple[list[Anchor], str, int | None]:
        found = self.latest_pose() if t_capture_ns is None else self.pose_at(t_capture_ns)
        if found is None:
            why = (
                "no pose yet"
                if t_capture_ns is None
                else f"no pose within {self._max_gap_ns / 1e6:.0f} ms of the frame"
            )
            return [Anchor(False, None, p, why) for p in uv], why, t_capture_ns
        t_pose, pose = found
        camera, seen = self._seen_from(t_capture_ns, pose)
        anchors = [anchor_click(u, v, camera, seen, self.caster) for u, v in uv]
        misses = [a for a in anchors if not a.anchored]
        if not misses:
            return anchors, "hit the model", t_capture_ns if t_capture_ns is not None else t_pose
        why = misses[0].reason if len(anchors) == 1 else f"{len(misses)} of {len(anchors)} points: {misses[0].reason}"
        return anchors, why, t_capture_ns if t_capture_ns is not None else t_pose

    def marks_view(self) -> dict[str, Any]:
        """Every mark where it appears now: anchored ones projected with the current pose,
        with their model points so the page re-projects them with each status's
        ``P_image_model`` (the marks list is sent only when it changes, never per pose:
        re-sending every mark at the status rate held the event loop for milliseconds)."""
        latest = self.latest_pose()
        marks = list(self.marks.values())
        projected = [m for m in marks if m.anchored]
        where: dict[str, list[list[float | bool]]] = {}
        if latest is not None and projected:
            camera, pose = self._seen_from(None, latest[1])
            pts = np.concatenate([np.asarray(m.annotation.points_mm, np.float64).reshape(-1, 3) for m in projected])
            uv, visible = project_marks(pts, camera, pose.T_world_camera, pose.T_world_model)
            rows = [[u, v, s] for (u, v), s in zip(np.round(uv, 1).tolist(), visible.tolist(), strict=True)]
            start = 0
            for m in projected:
                n = len(m.annotation.points_mm)
                where[m.annotation.id] = rows[start : start + n]
                start += n
        items = []
        for m in marks:
            a = m.annotation
            uv_items = where.get(a.id)
            if uv_items is None:
                uv_items = [[u, v, not m.anchored] for u, v in (a.screen_xy or ())]
            item = {
                "id": a.id,
                "kind": a.kind,
                "author": a.author,
                "text": a.text,
                "color": a.color,
                "anchored": m.anchored,
                "reason": m.reason,
                "created_ms": a.created_ns // 1_000_000,
                "uv": uv_items,
            }
            if m.anchored:
                item["points_mm"] = [[round(c, 2) for c in p] for p in a.points_mm]
            items.append(item)
        return {"type": "marks", "items": items}

    def status_view(self, now_ns: int | None = None) -> dict[str, Any]:
        latest = self.latest_pose()
        status, age_ms = "lost", None
        if latest is not None:
            status = latest[1].status
            age_ms = ((time.monotonic_ns() if now_ns is None else now_ns) - latest[0]) / 1e6
        if age_ms is not None and age_ms > STALE_POSE_MS:
            status = "lost"  # the registration loop went quiet: never show an old pose as live
        P, occluded = None, {}
        if latest is not None:
            camera, pose = self._seen_from(None, latest[1])
            P = np.round(projection_matrix(camera, pose.T_world_camera, pose.T_world_model), 6).tolist()
            occluded = self._occluded(latest[0], pose)
        return {"type": "status", "tracking": status, "pose_age_ms": age_ms, "P_image_model": P, "occluded": occluded}

    def _seen_from(self, t_frame_ns: int | None, pose: FramePose) -> tuple[PinholeIntrinsics, FramePose]:
        """The camera that took the video frame at ``t_frame_ns`` (None: the newest frame)
        and the pose seen from it: the frame's own camera when the headset sent one (the
        model's place in the world comes from registration either way), else the
        configured camera at the depth camera's pose."""
        with self._lock:
            t = self._latest_video_ns if t_frame_ns is None else t_frame_ns
            own = None if t is None else self._video_cameras.get(t)
        if own is None:
            return self.camera, pose
        return own.scaled_to(self.camera.width, self.camera.height), replace(pose, T_world_camera=own.T_world_camera)

    def _occluded(self, t_pose_ns: int, pose: FramePose) -> dict[str, list[bool]]:
        """{mark id: hidden flag per point} of the marks the anatomy hides, in part or whole."""
        marks = [(i, m.annotation.points_mm) for i, m in self.marks.items() if m.anchored]
        return self._occlusion.view(t_pose_ns, pose.T_world_camera, pose.T_world_model, marks)

    def voice(self, speaker: str, pcm: bytes, sample_rate: int) -> None:
        if self.publish_voice is None:
            return
        try:
            self.publish_voice(VoiceChunk(speaker, pcm, sample_rate, time.monotonic_ns()))
        except Exception as exc:  # voice is best effort: a chunk lost, never the connection
            self.count("voice_error")
            # One line when voice starts failing (a bridge stopped before the mentor server,
            # at shutdown, fails every chunk until the peers close): no traceback, no flood.
            if not self._voice_failing:
                log.warning("publishing mentor voice failed, chunks dropped until it works again: %s", exc)
            self._voice_failing = True
        else:
            self._voice_failing = False

    def _audit(self, actor: str, role: str, action: str, **detail: Any) -> None:
        if self.audit is None:
            return
        writer = self.audit_writer
        if writer is None:
            self._write_audit(actor, role, action, detail)
        else:  # one worker thread keeps the order; the event loop never waits for fsync
            writer.submit(self._write_audit, actor, role, action, detail)

    def _write_audit(self, actor: str, role: str, action: str, detail: dict[str, Any]) -> None:
        assert self.audit is not None
        try:
            self.audit.append(actor, role, action, session=self.session, **detail)
        except Exception:  # an audit failure is logged loudly but must not drop the mark
            log.exception("audit append failed for %s", action)
            self.counters["audit_error"] = self.counters.get("audit_error", 0) + 1


def _put_bounded(table: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    """Insert, then drop the oldest entries beyond ``limit``: what a client can make the
    room remember stays bounded."""
    table[key] = value
    while len(table) > limit:
        table.popitem(last=False)


def _duplicate(ack: Ack) -> Ack:
    return Ack(**{**ack.__dict__, "duplicate": True})


def _resample(uv: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    if len(uv) <= MAX_STROKE_POINTS:
        return uv
    idx = np.linspace(0, len(uv) - 1, MAX_STROKE_POINTS).round().astype(int)
    return tuple(uv[i] for i in idx)
