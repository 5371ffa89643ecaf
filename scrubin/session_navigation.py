"""A theatre session's navigation registrations (the workflow surgeons know: touched
landmarks and a surface trace), taken from a headset's or a tracker's uplink or from 3D
Slicer's point lists, registered off the latency-critical loop, and handed to that loop
as the start of its tracker.

Flow: each request (a bridge ``registration`` message, or a Slicer ``SurfaceTrace`` with
the landmark lists sent before it) is audited ("navigation requested": who, how many
points, which landmark names; never coordinates) and queued. One worker thread runs
``registration.register_trace`` on the newest request (older ones still waiting are
superseded, and audited so) while the registration loop keeps publishing poses with
its current status. The outcome is audited ("navigation registered": method, status,
verdict, FRE, trace residual, rejected points, predicted TRE) and reported to the
headsets (the ``registration`` field of every pose header) and to Slicer (the
``RegistrationVerdict`` text). Only an accepted result (``tracking``) changes anything:
the loop restarts its tracker from it at the next depth frame of the headset whose
world it is in, ``T_camera_world @ T_world_model``, exactly like a Slicer seed; the
tracker's own checks on that frame then decide the status shown.

Frames: a headset sends points in its own world frame (that of its depth frames'
``T_world_camera``); a separate tracker, calibrated to a headset's world, names that
headset (``world_of``). Slicer's trace, like ``LandmarksSensor``, is in the sensor frame:
of the newest depth frame when it arrives (so the result is carried through the
headset's motion during the registration), or of the next one when none came yet.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from headset_bridge.messages import RegistrationRequest, RegistrationVerdict, check_status
from scrubin.audit import AuditLog

if TYPE_CHECKING:
    from headset_bridge.server import BridgeServer
    from registration import NavigationResult, SurfaceModel
    from registration.frames import F64
    from registration.navigation import Landmarks
    from slicer_link import SlicerLink
    from slicer_link.convert import TraceList

log = logging.getLogger(__name__)

UPLINK_KIND = "registration"  # the bridge's uplink topic
SLICER_SOURCE = "slicer"  # the verdict's source for a Slicer request
WAIT_S = 0.25  # the worker re-checks its stop flag at least this often
# The newest depth frame the session registered: (headset, T_world_camera), or None.
LatestFrame = Callable[[], "tuple[str, F64] | None"]


@dataclass(frozen=True)
class NavigationJob:
    """One request, ready to register. ``world_of`` names the headset whose world the
    points are in (None: the sensor frame of the next depth frame, whoever sends it);
    ``T_world_points`` maps the points' frame into that world."""

    source: str  # the audit actor: a headset key name, or a Slicer peer
    role: str  # "headset" or "slicer"
    request_seq: int  # the bridge message's seq; -1 from Slicer
    t_received_ns: int
    points_mm: F64
    landmarks: Landmarks | None
    landmark_names: tuple[str, ...]
    world_of: str | None
    T_world_points: F64
    problem: str | None = None  # why it cannot be registered (refused with this reason)

    @property
    def reporter(self) -> str:
        return SLICER_SOURCE if self.role == "slicer" else self.source

    @property
    def method(self) -> str:
        return "landmarks + trace" if self.landmark_names else "trace only"


@dataclass(frozen=True)
class NavigationOutcome:
    """The latest finished registration: its verdict, the result (None when refused
    before registering) and when it ran (server monotonic ns)."""

    verdict: RegistrationVerdict
    result: NavigationResult | None
    t_started_ns: int
    t_finished_ns: int


@dataclass(frozen=True)
class _Start:
    T_points_model: F64
    world_of: str | None
    T_world_points: F64
    how: str


class SessionNavigation:
    """Run :meth:`main` on its own thread; the other methods are thread-safe and cheap."""

    def __init__(
        self,
        session: str,
        audit: AuditLog,
        bridge: BridgeServer,
        model: Callable[[], SurfaceModel | None],
        latest_frame: LatestFrame,
        sensor: Callable[[], str | None],
    ) -> None:
        self.session = session
        self.audit = audit
        self.bridge = bridge
        self._model = model
        self._latest_frame = latest_frame
        self._sensor = sensor  # whose depth frames the session registers now (None: nobody yet)
        self._slicer: SlicerLink | None = None
        self._lock = threading.Lock()
        self._queue: deque[NavigationJob] = deque(maxlen=4)  # Slicer requests; the bridge queues its own
        self._start: _Start | None = None
        self._ids = itertools.count(1)
        self.last: NavigationOutcome | None = None

    def attach_slicer(self, link: SlicerLink) -> None:
        """Take surface traces from Slicer (when its permissions allow landmarks) and send
        it every verdict."""
        self._slicer = link
        link.on_trace = self._from_slicer

    # -- the worker ------------------------------------------------------------
    def main(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._step(stop)
            except Exception:  # the worker must outlive any request
                log.exception("session %s: navigation registration step failed", self.session)

    def _step(self, stop: threading.Event) -> None:
        if not self.bridge.wait_for(lambda: stop.is_set() or self._waiting(), WAIT_S) or stop.is_set():
            return
        jobs = self._take()
        for old in jobs[:-1]:  # a newer request came meanwhile: it is the one the surgeon wants
            self.audit.append(old.source, old.role, "navigation superseded", request_seq=old.request_seq)
        if jobs:
            self._run(jobs[-1])

    def _waiting(self) -> bool:
        with self._lock:
            if self._queue:
                return True
        return bool(self.bridge.senders(UPLINK_KIND))

    def _take(self) -> list[NavigationJob]:
        jobs = [
            self._from_uplink(item)
            for name in self.bridge.senders(UPLINK_KIND)
            for item in self.bridge.take(UPLINK_KIND, name)
            if isinstance(item, RegistrationRequest)
        ]
        with self._lock:
            jobs += self._queue
            self._queue.clear()
        return sorted(jobs, key=lambda j: j.t_received_ns)

    def _run(self, job: NavigationJob) -> None:
        ident, t0 = next(self._ids), time.monotonic_ns()
        what = f"{len(job.points_mm)} points" + (f", {len(job.landmark_names)} landmarks" if job.landmark_names else "")
        self._report(_verdict(ident, job, "running", f"registering ({job.method}): {what} from {job.reporter}"))
        result, verdict = self._register(ident, job)
        self.audit.append(
            job.source, job.role, "navigation registered", request_seq=job.request_seq, **_audited(verdict)
        )
        if verdict.accepted and result is not None:  # armed before anyone is told "accepted"
            how = f"navigation ({result.method}) from {job.reporter}"
            with self._lock:
                self._start = _Start(result.T_sensor_model, job.world_of, job.T_world_points, how)
        self.last = NavigationOutcome(verdict, result, t0, time.monotonic_ns())
        self._report(verdict)
        log.info("session %s: navigation from %s: %s", self.session, job.reporter, verdict.verdict)

    def _register(self, ident: int, job: NavigationJob) -> tuple[NavigationResult | None, RegistrationVerdict]:
        from registration import SurfaceTrace, register_trace

        model = self._model()
        if job.problem is not None or model is None:
            return None, _refused(ident, job, job.problem or "no patient model loaded yet")
        try:
            result = register_trace(model, SurfaceTrace(job.points_mm), job.landmarks)
        except (ValueError, KeyError) as exc:  # landmarks the model does not have, or too few
            return None, _refused(ident, job, str(exc.args[0]) if exc.args else type(exc).__name__)
        return result, _verdict_of(ident, job, result)

    def _report(self, verdict: RegistrationVerdict) -> None:
        self.bridge.report_registration(verdict)
        if self._slicer is not None:
            self._slicer.publish_verdict(verdict.verdict)

    # -- the registration loop's side ----------------------------------------------
    def take_start(self, headset: str, T_world_camera: F64) -> tuple[F64, str] | None:
        """The accepted result as ``T_sensor_model`` for this depth frame (once), with how
        it was made; None when there is none, or when the frame is not from the headset
        whose world the result is in (then it is dropped, and audited)."""
        from registration.frames import invert

        with self._lock:
            start, self._start = self._start, None
        if start is None:
            return None
        if start.world_of is None:
            return start.T_points_model, start.how
        if start.world_of != headset:
            reason = f"the trace is in {start.world_of}'s world, the depth frame is {headset}'s"
            self.audit.append("service", "system", "navigation not applied", reason=reason)
            return None
        return invert(T_world_camera) @ start.T_world_points @ start.T_points_model, start.how

    # -- requests ----------------------------------------------------------------------
    def _from_uplink(self, req: RegistrationRequest) -> NavigationJob:
        names = tuple(req.landmarks or ())
        world_of, sensor = req.world_of or req.headset, self._sensor()
        problem = None
        if sensor is not None and sensor != world_of:  # a result there could never start this tracker
            problem = f"the points are in {world_of}'s world, and this session registers {sensor}'s depth frames"
        job = NavigationJob(
            req.headset, "headset", req.seq, req.t_received_ns, req.points_mm, req.landmarks, names, world_of,
            np.eye(4), problem,
        )  # fmt: skip
        self._audit_request(job)
        return job

    def _from_slicer(self, trace: TraceList) -> None:
        """Called on a Slicer reader thread: pair the landmarks, anchor the sensor frame
        to the world of the newest depth frame, queue."""
        from slicer_link.convert import landmark_pairs

        landmarks: Landmarks | None = None
        names: tuple[str, ...] = ()
        problem = None
        if trace.sensor is not None:
            names = trace.sensor.names
            model = self._model()
            own = {} if model is None else {m.name: m.position_mm for m in model.fiducials + model.targets}
            try:
                landmarks = landmark_pairs(trace.sensor, trace.model or own)
            except ValueError as exc:
                problem = str(exc)
        latest = self._latest_frame()
        world_of, T = (None, np.eye(4)) if latest is None else latest
        actor = f"{SLICER_SOURCE}:{trace.device}"
        job = NavigationJob(
            actor, "slicer", -1, time.monotonic_ns(), trace.points_mm, landmarks, names, world_of, T, problem
        )
        self._audit_request(job)
        with self._lock:
            self._queue.append(job)

    def _audit_request(self, job: NavigationJob) -> None:
        self.audit.append(
            job.source,
            job.role,
            "navigation requested",
            request_seq=job.request_seq,
            n_points=len(job.points_mm),
            landmarks=list(job.landmark_names),
            world_of=job.world_of,
        )


# ------------------------------------------------------------------ verdicts
def _verdict(ident: int, job: NavigationJob, state: str, line: str, **kw: Any) -> RegistrationVerdict:
    defaults: dict[str, Any] = {
        "accepted": False,
        "status": "lost",
        "method": job.method,
        "n_points": len(job.points_mm),
    }
    return RegistrationVerdict(ident, job.reporter, job.request_seq, state, verdict=line, **{**defaults, **kw})


def _refused(ident: int, job: NavigationJob, problem: str) -> RegistrationVerdict:
    return _verdict(ident, job, "done", f"refused ({job.method}): {problem}", reasons=(problem,))


def _verdict_of(ident: int, job: NavigationJob, r: NavigationResult) -> RegistrationVerdict:
    status = check_status(str(r.status))
    return _verdict(
        ident,
        job,
        "done",
        r.verdict,
        accepted=status == "tracking",
        status=status,
        method=r.method,
        reasons=r.reasons,
        hint=r.hint,
        fre_mm=r.fre_mm,
        residual_mm=r.trace_residual_rms_mm,
        predicted_tre_mm=max(r.predicted_tre_mm.values(), default=None),
        rejected=r.rejected,
        n_points=r.n_points,
    )


def _audited(v: RegistrationVerdict) -> dict[str, Any]:
    """The verdict's audit fields: numbers and words, never a coordinate."""

    def mm(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "method": v.method,
        "status": v.status,
        "accepted": v.accepted,
        "verdict": v.verdict,
        "fre_mm": mm(v.fre_mm),
        "residual_mm": mm(v.residual_mm),
        "predicted_tre_mm": mm(v.predicted_tre_mm),
        "rejected": v.rejected,
        "n_points": v.n_points,
    }
