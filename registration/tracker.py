"""Real-time frame-to-model tracking with a constant-velocity motion model."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from registration.confidence import (
    ConfidenceConfig,
    FrameQuality,
    StatusMachine,
    failures,
    see_through_fraction,
)
from registration.dense_fit import (
    DenseFit,
    Gathered,
    dense_surface,
    fit_pose,
    gather_depth,
    gather_points,
    inlier_stats,
)
from registration.depth import DepthFrame
from registration.estimate import Estimate, Status, lost, predicted_tre
from registration.frame_kinds import CameraPoints, SurfaceTrace
from registration.frames import (
    F64,
    as_transform,
    invert,
    max_displacement_mm,
    se3_exp,
    se3_log,
    transform_points,
)
from registration.icp import covariance_about_origin, normalised_condition
from registration.model import SurfaceModel
from registration.motion import Persistence
from registration.navigation import NavigationConfig, register_trace
from registration.thinning import evenly_spaced, every_kth
from registration.turns import TurnedRival, best_turned_rival

log = logging.getLogger(__name__)

MIN_HOLDOUT_EVERY = 5  # at most every 5th near point is held out of the fit


@dataclass(frozen=True)
class TrackerConfig:
    stride: int = 1  # every pixel inside the predicted model box: the fit's noise falls as 1/sqrt(points)
    max_points: int = 8000  # points used in the fit (an evenly spread subset beyond this)
    candidate_margin: float = 1.5  # point frames: this x (fit + holdout) / near share are gated
    holdout_points: int = 200  # points kept back to check the fit
    gate_mm: float = 10.0  # initial correspondence gate around the predicted pose
    tracking_gate_mm: float = 6.0  # tighter while tracking: the motion model is good
    tol_mm: float = 0.05  # stop when the step moves points by less than this (well below the noise-limited TRE)
    inlier_mm: float = 3.0  # fitness / rmse inlier distance
    iterations: int = 10
    roi_margin_px: int = 16
    max_velocity_gap_s: float = 0.2  # no extrapolation across longer gaps
    seed: int = 0
    free_space_rays: int = 256  # all-points sample for the see-through test
    see_through_margin_mm: float = 6.0
    lock_check_points: int = 120  # points of the rival-pose check made before a lock
    lock_check_trunc_mm: float = 5.0
    recheck_every: int = 8  # usable frames short of a lock between turn checks
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    trace: NavigationConfig = field(default_factory=NavigationConfig)  # surface-trace frames


Frame = F64 | DepthFrame | CameraPoints | SurfaceTrace


class Tracker:
    """Tracks the model in successive sensor frames.

    ``start`` is an :class:`Estimate` (e.g. from ``initial_alignment``) or a 4x4
    ``T_sensor_model``. ``update`` never raises on bad frames; it returns ``lost``.

    Frames are depth images (:class:`DepthFrame`), camera point clouds
    (:class:`CameraPoints`, or a plain (N, 3) array) or surface traces from a tracked
    pointer (:class:`SurfaceTrace`); registration/frame_kinds.py lists the checks that
    apply to each. A trace is refined from the current pose by the navigation workflow's
    robust refinement (a local search, then robust ICP; registration/refine.py) and
    judged at once, without the stream's three-frame hysteresis.
    """

    def __init__(self, model: SurfaceModel, start: Estimate | F64, config: TrackerConfig | None = None) -> None:
        self.model = model
        self.config = config or TrackerConfig()
        T = start.T_sensor_model if isinstance(start, Estimate) else start
        self._T = as_transform(T, "start T_sensor_model")
        self._velocity = np.zeros(6)  # se(3) per second, left increment in sensor frame
        self._persistence = Persistence()  # how much of it carries into the next frame
        self._last_ts: int | None = None
        self._machine = StatusMachine(self.config.confidence)
        self._rng = np.random.default_rng(self.config.seed)
        self._near_share = 0.02  # unknown before the first frame: gate every point
        self._n_near = 0  # points near the model in the last frame
        self._surface = dense_surface(model)
        # The ray-casting scene builds its hierarchy on the first cast (~0.1 s once per
        # model): cast one ray now rather than in the first frame.
        see_through_fraction(model, np.eye(4), np.array([[0.0, 0.0, 1.0]]), self.config.see_through_margin_mm)
        self._tre_points = model.reference_points()
        lo, hi = model.bounds
        self._corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])

    @property
    def status(self) -> Status:
        return self._machine.status

    def update(self, frame: Frame, timestamp_ns: int) -> Estimate:
        t0 = time.perf_counter()
        if isinstance(frame, SurfaceTrace):
            return self._update_trace(frame, int(timestamp_ns), t0)
        try:
            timestamp_ns = int(timestamp_ns)
            T_pred = self._predict(timestamp_ns)
            got = self._points(frame, T_pred)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("unusable frame at %s: %s", timestamp_ns, exc)
            return self._lost(t0, f"unusable frame: {exc}", None)
        try:
            return self._track(got, T_pred, timestamp_ns, t0)
        except Exception as exc:  # noqa: BLE001 - the guidance loop must never die on a frame
            log.exception("tracking failed at %d", timestamp_ns)
            return self._lost(t0, f"internal error: {exc!r}", timestamp_ns)

    # ------------------------------------------------------------------ steps
    def _update_trace(self, trace: SurfaceTrace, ts: int, t0: float) -> Estimate:
        """A whole pointer trace: robust refinement from the current pose and the trace
        verdict (registration/navigation.py); an accepted result moves the pose."""
        try:
            result = register_trace(self.model, trace, start=self._T, config=self.config.trace)
        except Exception as exc:  # noqa: BLE001 - the guidance loop must never die on a frame
            log.exception("trace refinement failed at %d", ts)
            return self._lost(t0, f"internal error: {exc!r}", ts)
        status = self._machine.set(result.status)
        if status is not Status.LOST:
            self._T = result.T_sensor_model
        self._velocity = np.zeros(6)
        self._last_ts = ts
        return replace(result.estimate(), elapsed_ms=(time.perf_counter() - t0) * 1e3, timestamp_ns=ts)

    def _points(self, frame: Frame, T_pred: F64) -> Gathered:
        """The frame's points near the model at the predicted pose (sensor mm), split into
        fit and holdout sets, and a sample of all its points for the free-space check. A
        depth image is read whole inside the predicted model box; a point cloud is
        thinned first to what the fit and holdout sets can use."""
        # Every k-th near point is held out, k from the last frame's count so that about
        # holdout_points are (at most a fifth), from a random first one.
        every = max(MIN_HOLDOUT_EVERY, self._n_near // max(self.config.holdout_points, 1))
        holdout = (every, int(self._rng.integers(every)))
        T_model_sensor = invert(T_pred)
        if isinstance(frame, DepthFrame):
            stride = self.config.stride
            if stride < 1:
                msg = f"stride must be >= 1, got {stride}"
                raise ValueError(msg)
            return gather_depth(frame, self._surface, T_model_sensor, stride, self._roi(frame, T_pred), holdout)
        if isinstance(frame, CameraPoints):
            pts = every_kth(frame.points_mm, self._candidates())
        else:
            pts = np.asarray(frame, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 3:
                msg = f"points must be (N, 3) mm, got shape {pts.shape}"
                raise ValueError(msg)
            pts = every_kth(pts[np.all(np.isfinite(pts), axis=1) & np.any(pts != 0.0, axis=1)], self._candidates())
        got = gather_points(pts, self._surface, T_model_sensor, holdout)
        self._near_share = got.n_near / max(len(pts), 1)
        return got

    def _candidates(self) -> int:
        """How many points of a point cloud to gate: enough that, at the share of points
        near the model seen in the last frame, the fit and holdout sets stay full."""
        cfg = self.config
        return int(cfg.candidate_margin * (cfg.max_points + cfg.holdout_points) / max(self._near_share, 0.02))

    def _predict(self, ts: int) -> F64:
        if self._last_ts is None:
            return self._T
        dt = (ts - self._last_ts) * 1e-9
        if not 0.0 < dt <= self.config.max_velocity_gap_s:
            return self._T
        return se3_exp(self._persistence.coefficient * self._velocity * dt) @ self._T

    def _roi(self, frame: DepthFrame, T_pred: F64) -> tuple[int, int, int, int] | None:
        """Pixel box of the model's bounding box at the predicted pose plus a margin."""
        P = transform_points(T_pred, self._corners)
        if np.any(P[:, 2] <= 1.0):
            return None  # the box straddles the camera plane: use the whole image
        K = frame.intrinsics
        u = K.fx * P[:, 0] / P[:, 2] + K.cx
        v = K.fy * P[:, 1] / P[:, 2] + K.cy
        m = self.config.roi_margin_px
        return (int(u.min()) - m, int(v.min()) - m, int(u.max()) + m + 1, int(v.max()) + m + 1)

    def _track(self, got: Gathered, T_pred: F64, ts: int, t0: float) -> Estimate:
        """Fit the points near the model at the predicted pose (clutter far away costs
        nothing more) and judge the fit."""
        cfg = self.config
        self._n_near = got.n_near
        if got.n_near < cfg.confidence.min_correspondences:
            return self._lost(t0, f"too few points near the model ({got.n_near})", ts)
        fit = evenly_spaced(got.fit, cfg.max_points)
        dense = fit_pose(
            self._surface,
            fit,
            invert(T_pred),
            max_corr_mm=cfg.tracking_gate_mm if self.status is Status.TRACKING else cfg.gate_mm,
            min_corr_mm=cfg.inlier_mm,
            iterations=cfg.iterations,
            tol_mm=cfg.tol_mm,
            inlier_mm=cfg.inlier_mm,
        )
        if dense.icp.n_correspondences < cfg.confidence.min_correspondences:
            return self._lost(t0, f"too few correspondences ({dense.icp.n_correspondences})", ts)
        probe = got.probe[self._rng.integers(0, len(got.probe), cfg.free_space_rays)]
        return self._finish(dense, T_pred, probe, fit, got.hold, ts, t0)

    def _finish(self, dense: DenseFit, T_pred: F64, probe: F64, fit: F64, hold: F64, ts: int, t0: float) -> Estimate:
        cfg = self.config
        res = dense.icp
        see = see_through_fraction(self.model, res.T_model_sensor, probe, cfg.see_through_margin_mm)
        T_new = invert(res.T_model_sensor)
        fitness, rmse, n_in = dense.fitness, dense.rmse_mm, dense.n_inliers
        h_fit, h_rmse, _ = inlier_stats(self._surface, res.T_model_sensor, hold, cfg.inlier_mm)
        cov = covariance_about_origin(res.information, res.pivot, max(res.sigma_mm, rmse))
        cond = normalised_condition(res.information, max(dense.radius_mm, 1.0))
        tre = float(np.max(predicted_tre(cov, self._tre_points)))
        jump_mm, jump_deg = _jump(T_pred, T_new, self._tre_points)
        q = FrameQuality(n_in, fitness, rmse, cond, tre, jump_mm, jump_deg, h_fit, h_rmse, see)
        entering = self._machine.status is not Status.TRACKING
        problems = failures(q, cfg.confidence, entering=entering)
        # Before a lock, and now and then while a usable fit stays short of one (a face
        # upside down fits almost well enough), the model turned about the patient axes
        # is tried: a turned pose that fits better is taken, and checked again later.
        stuck = self._machine.bad_run > 0 and self._machine.bad_run % cfg.recheck_every == 0
        if (not problems and self._machine.locks_on_next_good()) or stuck:
            rival = self._rival(fit, res.T_model_sensor)
            if rival is not None:  # a turned pose fits as well: no lock; a better one is tried next
                problems = (
                    *problems,
                    f"ambiguous: the model turned about a patient axis fits as well ({rival.ratio:.2f}x)",
                )
                if rival.ratio < 1.0:
                    T_new = invert(rival.T_model_sensor)
        status = self._machine.step(True, problems)
        self._advance(T_new, ts, good=not problems)
        return Estimate(
            T_sensor_model=T_new,
            status=status,
            fitness=fitness,
            rmse_mm=rmse,
            n_correspondences=n_in,
            elapsed_ms=(time.perf_counter() - t0) * 1e3,
            covariance=cov,
            reasons=problems,
            timestamp_ns=ts,
            holdout_rmse_mm=h_rmse,
            condition=cond,
            see_through=see,
        )

    def _rival(self, fit: F64, T_model_sensor: F64) -> TurnedRival | None:
        """Before a lock is reported: a distinct pose of the model turned about a patient
        axis that fits within the ambiguity ratio (registration/turns.py); ~10 ms, once
        per lock."""
        cfg = self.config
        rival = best_turned_rival(
            self.model,
            every_kth(fit, cfg.lock_check_points),
            T_model_sensor,
            distinct_mm=cfg.confidence.jump_mm,
            inlier_mm=cfg.inlier_mm,
            trunc_mm=cfg.lock_check_trunc_mm,
        )
        return rival if rival is not None and rival.ratio < cfg.confidence.ambiguity_ratio else None

    def _advance(self, T_new: F64, ts: int, *, good: bool) -> None:
        """Update the motion model (registration/motion.py); only good frames feed the
        velocity and its persistence."""
        if good and self._last_ts is not None:
            dt = (ts - self._last_ts) * 1e-9
            if 0.0 < dt <= self.config.max_velocity_gap_s:
                velocity = se3_log(T_new @ invert(self._T)) / dt
                self._persistence.observe(velocity, self._velocity)
                self._velocity = velocity
            else:
                self._velocity = np.zeros(6)
        elif not good:
            self._velocity = np.zeros(6)
        self._T = T_new if good or self._machine.status is not Status.LOST else self._T
        self._last_ts = ts

    def _lost(self, t0: float, reason: str, ts: int | None) -> Estimate:
        self._machine.step(False, (reason,))
        self._velocity = np.zeros(6)
        if ts is not None:
            self._last_ts = ts
        return lost((time.perf_counter() - t0) * 1e3, reason, self._T, ts)


def _jump(T_pred: F64, T_new: F64, refs: F64) -> tuple[float, float]:
    """Largest displacement of the reference points and the rotation angle between the
    predicted and fitted poses (measured where it matters, not at the LPS origin)."""
    cos = (float(np.sum(T_pred[:3, :3] * T_new[:3, :3])) - 1.0) / 2.0  # trace(R_pred^T R_new)
    return max_displacement_mm(T_pred, T_new, refs), math.degrees(math.acos(min(1.0, max(-1.0, cos))))
