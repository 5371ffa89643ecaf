"""Per-headset depth-bias correction in a session (``registration.calibration``).

Each headset's correction lives in one file named after its key, next to the session's
headset keys: ``state_dir/keys/<session>/depth_calibration/<headset>.json``. The session
applies it to every depth frame of that headset before tracking (``depth_calibration =
"apply"``, the default: a stored correction was put there on purpose) and, with
``"learn"``, estimates it from the headset's own trusted frames: a frame counts when its
registration is ``tracking`` and it was taken from a new place (``MIN_SEPARATION_MM`` from
every kept one); once ``depth_calibration_min_views`` such frames are kept, the
multi-view estimate runs on a worker thread, and a result that passes every check of
``estimate_depth_calibration`` (enough views and spread, converged, within the bound, sd
<= 0.2 %) replaces the correction from the next frame on. Every change is audited; a
damaged file is refused with one line, never applied, never overwritten.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from domain.atomic_file import atomic_write
from scrubin.audit import AuditLog
from scrubin.config import RegistrationSettings

if TYPE_CHECKING:
    from registration import DepthFrame, Estimate, SurfaceModel
    from registration.calibration import CalibrationResult, CalibrationView, DepthCalibration

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
SCHEMA = "scrubin.depth_calibration"
VERSION = 1
SYSTEM_ACTOR = ("service", "system")
MIN_SEPARATION_MM = 40.0  # a kept frame's camera is this far from every other kept one
MAX_VIEWS = 12  # the newest distinct views are kept (bounded memory and fit time)
POINTS_PER_VIEW = 1500
NEAR_MODEL_MM = 15.0  # points kept for learning: this close to the model at the trusted pose
MIN_CHANGE = 5e-4  # a new scale closer than this to the current one is not worth a change


class CalibrationFileError(ValueError):
    """A stored correction cannot be used: one line naming the file and the problem."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"depth calibration {path}: {problem}")
        self.problem = problem  # without the path: what the audit log records


class CalibrationStore:
    """One JSON file per headset key under ``directory`` (None: kept in memory only)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def path(self, headset: str) -> Path | None:
        from headset_bridge.keys import check_name

        return None if self.directory is None else self.directory / f"{check_name(headset)}.json"

    def load(self, headset: str) -> DepthCalibration | None:
        """The stored correction, None when there is none; ``CalibrationFileError`` when
        the file is unreadable, not ours, for another headset, or out of bounds."""
        from registration.calibration import DepthCalibration

        path = self.path(headset)
        if path is None or not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationFileError(path, f"unreadable ({type(exc).__name__})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("version") != VERSION:
            schema = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise CalibrationFileError(path, f"not a {SCHEMA} v{VERSION} file, got schema {schema!r:.40}")
        if data.get("headset") != headset:
            raise CalibrationFileError(path, f"written for headset {data.get('headset')!r:.40}, not {headset!r}")
        try:
            return DepthCalibration.from_dict(data)
        except ValueError as exc:
            raise CalibrationFileError(path, str(exc)) from None

    def save(self, headset: str, calibration: DepthCalibration, **provenance: Any) -> None:
        """Write atomically (a crash leaves the old file or the new one, never half)."""
        path = self.path(headset)
        if path is None:
            return
        data = {"schema": SCHEMA, "version": VERSION, "headset": headset, **calibration.to_dict(), **provenance}
        data["updated_utc"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with atomic_write(path) as f:
            f.write((json.dumps(data, indent=1) + "\n").encode("utf-8"))


@dataclass
class _Headset:
    """One headset's correction and, when learning, its kept views."""

    calibration: DepthCalibration
    source: str  # "none", "stored", "learned" or "refused" (a damaged file: not applied)
    views: list[CalibrationView] = field(default_factory=list)
    pending: Future[CalibrationResult] | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class SessionDepthCalibration:
    """The session's per-headset corrections. ``correct`` and ``observe`` run on the
    registration loop's thread; ``report`` on any."""

    def __init__(self, settings: RegistrationSettings, directory: Path | None, audit: AuditLog) -> None:
        self.mode = settings.depth_calibration
        self.min_views = settings.depth_calibration_min_views
        self.max_scale_error = settings.depth_calibration_max_scale_error
        self.store = CalibrationStore(directory)
        self.audit = audit
        self._headsets: dict[str, _Headset] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def correct(self, headset: str, frame: DepthFrame) -> DepthFrame:
        """The frame with the headset's correction applied (unchanged when off or none)."""
        if self.mode == "off":
            return frame
        return self._state(headset).calibration.apply_to_depth(frame)

    def observe(self, headset: str, raw: DepthFrame, T_world_camera: F64, est: Estimate, model: SurfaceModel) -> None:
        """In learn mode: keep a trusted frame from a new place, collect a finished
        estimate, start the next one when there are enough views."""
        if self.mode != "learn":
            return
        h = self._state(headset)
        if h.source == "refused":
            return  # a damaged file is the user's to fix: never learned over
        if h.pending is not None and h.pending.done():
            self._collect(headset, h)
        if str(est.status) != "tracking" or not self._new_place(h, T_world_camera):
            return
        view = self._view(raw, T_world_camera, est, model, h.calibration)
        if view is None:
            return
        h.views = [*h.views, view][-MAX_VIEWS:]
        if len(h.views) >= self.min_views and h.pending is None:
            h.pending = self._executor().submit(self._estimate, model, list(h.views), h.calibration)

    def report(self) -> dict[str, dict[str, Any]]:
        """Per headset: scale, offset_mm, source and what the estimate rests on."""
        with self._lock:
            return {
                name: {**h.calibration.to_dict(), "source": h.source, "views_kept": len(h.views), **h.detail}
                for name, h in self._headsets.items()
            }

    def settle(self, timeout_s: float | None = None) -> None:
        """Wait for the running estimates and adopt what passes (tests; a final report)."""
        for name, h in list(self._headsets.items()):
            if h.pending is not None:
                self._collect(name, h, timeout_s)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- internals -------------------------------------------------------------
    def _state(self, headset: str) -> _Headset:
        h = self._headsets.get(headset)
        if h is None:
            h = self._load(headset)
            with self._lock:
                self._headsets[headset] = h
        return h

    def _load(self, headset: str) -> _Headset:
        from registration.calibration import DepthCalibration

        try:
            cal = self.store.load(headset)
        except CalibrationFileError as exc:
            log.warning("%s (not applied)", exc)
            self.audit.append(*SYSTEM_ACTOR, "depth calibration refused", headset=headset, problem=exc.problem)
            return _Headset(DepthCalibration(), "refused", detail={"problem": exc.problem})
        if cal is None:
            return _Headset(DepthCalibration(), "none")
        self.audit.append(
            *SYSTEM_ACTOR, "depth calibration applied", headset=headset, scale=cal.scale, offset_mm=cal.offset_mm
        )
        return _Headset(cal, "stored")

    @staticmethod
    def _new_place(h: _Headset, T_world_camera: F64) -> bool:
        centre = np.asarray(T_world_camera, dtype=np.float64)[:3, 3]
        return all(np.linalg.norm(v.T_world_sensor[:3, 3] - centre) >= MIN_SEPARATION_MM for v in h.views)

    @staticmethod
    def _view(
        raw: DepthFrame, T_world_camera: F64, est: Estimate, model: SurfaceModel, current: DepthCalibration
    ) -> CalibrationView | None:
        """The frame's raw points near the model (at the trusted pose, with the current
        correction: the estimate is of the whole correction, from raw ranges)."""
        from registration.calibration import CalibrationView
        from registration.depth import depth_to_points
        from registration.frames import invert, transform_points
        from registration.icp import surface_distance

        pts = depth_to_points(raw, 2, max_points=4 * POINTS_PER_VIEW)
        P = transform_points(invert(est.T_sensor_model), current.apply_to_points(pts))
        near = pts[surface_distance(model, P) < NEAR_MODEL_MM]
        if len(near) < 100:
            return None
        keep = near[:: max(1, len(near) // POINTS_PER_VIEW)]
        return CalibrationView(keep, np.asarray(T_world_camera, dtype=np.float64), est.T_sensor_model)

    def _estimate(
        self, model: SurfaceModel, views: list[CalibrationView], current: DepthCalibration
    ) -> CalibrationResult:
        from registration.calibration import CalibrationConfig, estimate_depth_calibration

        cfg = CalibrationConfig(min_views=self.min_views, max_scale_error=self.max_scale_error)
        return estimate_depth_calibration(model, views, cfg, start=current)

    def _collect(self, headset: str, h: _Headset, timeout_s: float | None = None) -> None:
        """Take the finished estimate off the headset (a failed one is logged once)."""
        future, h.pending = h.pending, None
        if future is None:
            return
        try:
            result = future.result(timeout=timeout_s)
        except Exception:  # a failed estimate must not stop learning nor the loop
            log.exception("headset %s: depth calibration estimate failed", headset)
            return
        self._take(headset, h, result)

    def _take(self, headset: str, h: _Headset, result: CalibrationResult) -> None:
        """Adopt a finished estimate when it passed every check and differs enough."""
        if not result.ok:
            log.info("headset %s: depth calibration not taken: %s", headset, "; ".join(result.reasons))
            return
        new = result.calibration
        if abs(new.scale - h.calibration.scale) < max(MIN_CHANGE, 2.0 * result.scale_sd) and h.source != "none":
            return
        detail: dict[str, Any] = {
            "views": result.n_views,
            "scale_sd": round(result.scale_sd, 6),
            "view_spread_deg": round(result.view_spread_deg, 1),
            "rms_mm": round(result.rms_mm, 3),
        }
        self.store.save(headset, new, **detail)
        self.audit.append(
            *SYSTEM_ACTOR, "depth calibration learned", headset=headset, scale=new.scale, offset_mm=new.offset_mm,
            previous_scale=h.calibration.scale, previous_offset_mm=h.calibration.offset_mm, fit=detail,
        )  # fmt: skip
        log.info("headset %s: depth scale %.4f learned from %d views", headset, new.scale, result.n_views)
        with self._lock:
            h.calibration, h.source, h.detail = new, "learned", detail

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="depth-calibration")
        return self._pool


def describe(report: dict[str, dict[str, Any]]) -> str:
    """One short status phrase: ``depth scale h1 0.9923 (learned)``; empty when none."""
    parts = []
    for name, r in sorted(report.items()):
        if r["source"] == "none":
            continue
        offset = f" {r['offset_mm']:+.1f} mm" if r["offset_mm"] and math.isfinite(r["offset_mm"]) else ""
        parts.append(f"{name} {r['scale']:.4f}{offset} ({r['source']})")
    return ("depth scale " + ", ".join(parts)) if parts else ""
