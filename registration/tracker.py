"""Real-time frame-to-model tracking with a constant-velocity motion model."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from registration.confidence import (
    ConfidenceConfig,
    FrameQuality,
    StatusMachine,
    failures,
    see_through_fraction,
)
from registration.depth import DepthFrame, depth_to_points
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
from registration.icp import (
    IcpResult,
    covariance_about_origin,
    normalised_condition,
    point_to_plane,
)
from registration.model import SurfaceModel
from registration.navigation import NavigationConfig, register_trace
from registration.thinning import every_kth
from registration.turns import TurnedRival, best_turned_rival

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackerConfig:
    stride: int = 2  # every 2nd row and column inside the predicted model box
    max_points: int = 500  # points used in the fit
    candidate_margin: float = 1.5  # pixels converted per frame: this x (fit + holdout) / near share
    holdout_points: int = 200  # points kept back to check the fit
    gate_mm: float = 10.0  # initial correspondence gate around the predicted pose
    tracking_gate_mm: float = 6.0  # tighter while tracking: the motion model is good
    tol_mm: float = 0.1  # stop when the step moves points by less than this (well below the noise-limited TRE)
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
        self._last_ts: int | None = None
        self._machine = StatusMachine(self.config.confidence)
        self._rng = np.random.default_rng(self.config.seed)
        self._near_share = 0.02  # unknown before the first frame: convert every pixel
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
            points = self._points(frame, T_pred)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("unusable frame at %s: %s", timestamp_ns, exc)
            return self._lost(t0, f"unusable frame: {exc}", None)
        try:
            return self._track(points, T_pred, timestamp_ns, t0)
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

    def _points(self, frame: Frame, T_pred: F64) -> F64:
        if isinstance(frame, DepthFrame):
            return depth_to_points(frame, self.config.stride, self._roi(frame, T_pred), self._candidates())
        if isinstance(frame, CameraPoints):
            return every_kth(frame.points_mm, self._candidates())
        pts = np.asarray(frame, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            msg = f"points must be (N, 3) mm, got shape {pts.shape}"
            raise ValueError(msg)
        keep: F64 = pts[np.all(np.isfinite(pts), axis=1) & np.any(pts != 0.0, axis=1)]
        return every_kth(keep, self._candidates())

    def _candidates(self) -> int:
        """How many points to convert and gate: enough that, at the share of points near
        the model seen in the last frame, the fit and holdout sets stay full."""
        cfg = self.config
        return int(cfg.candidate_margin * (cfg.max_points + cfg.holdout_points) / max(self._near_share, 0.02))

    def _predict(self, ts: int) -> F64:
        if self._last_ts is None:
            return self._T
        dt = (ts - self._last_ts) * 1e-9
        if not 0.0 < dt <= self.config.max_velocity_gap_s:
            return self._T
        return se3_exp(self._velocity * dt) @ self._T

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

    def _track(self, points: F64, T_pred: F64, ts: int, t0: float) -> Estimate:
        cfg = self.config
        T_model_sensor = invert(T_pred)
        # Keep only points near the model at the predicted pose: clutter far away costs
        # nothing more, and the random split below then is all near-surface points.
        near = self.model.lookup(transform_points(T_model_sensor, points)) >= 0
        cand = points[near]
        self._near_share = len(cand) / max(len(points), 1)
        if len(cand) < cfg.confidence.min_correspondences:
            return self._lost(t0, f"too few points near the model ({len(cand)})", ts)
        order = self._rng.permutation(len(cand))
        n_hold = min(cfg.holdout_points, len(cand) // 5)
        hold = cand[order[:n_hold]]
        fit = cand[order[n_hold : n_hold + cfg.max_points]]
        res = point_to_plane(
            self.model,
            fit,
            T_model_sensor,
            max_corr_mm=cfg.tracking_gate_mm if self.status is Status.TRACKING else cfg.gate_mm,
            tol_mm=cfg.tol_mm,
            min_corr_mm=cfg.inlier_mm,
            iterations=cfg.iterations,
        )
        if res.n_correspondences < cfg.confidence.min_correspondences:
            return self._lost(t0, f"too few correspondences ({res.n_correspondences})", ts)
        probe = points[self._rng.integers(0, len(points), cfg.free_space_rays)]
        return self._finish(res, T_pred, probe, fit, hold, ts, t0)

    def _finish(self, res: IcpResult, T_pred: F64, probe: F64, fit: F64, hold: F64, ts: int, t0: float) -> Estimate:
        cfg = self.config
        see = see_through_fraction(self.model, res.T_model_sensor, probe, cfg.see_through_margin_mm)
        T_new = invert(res.T_model_sensor)
        (fitness, rmse, n_in), (h_fit, h_rmse, _) = _inlier_stats(
            self.model, res.T_model_sensor, fit, hold, cfg.inlier_mm
        )
        cov = covariance_about_origin(res.information, res.pivot, max(res.sigma_mm, rmse))
        length = float(np.sqrt(np.sum(np.var(fit, axis=0))))  # RMS distance from the centroid
        cond = normalised_condition(res.information, max(length, 1.0))
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
                problems = (*problems, f"ambiguous: the model turned about a patient axis fits as well ({rival.ratio:.2f}x)")
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
        """Update the motion model; only good frames feed the velocity estimate."""
        if good and self._last_ts is not None:
            dt = (ts - self._last_ts) * 1e-9
            if 0.0 < dt <= self.config.max_velocity_gap_s:
                self._velocity = se3_log(T_new @ invert(self._T)) / dt
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


def _inlier_stats(
    model: SurfaceModel, T_model_sensor: F64, fit: F64, hold: F64, inlier_mm: float
) -> tuple[tuple[float, float, int], tuple[float, float, int]]:
    """Fitness (inlier share of near-surface points), inlier RMSE and inlier count of the
    fitted and the held-back points, in one pass over both."""
    P = transform_points(T_model_sensor, np.concatenate([fit, hold]))
    idx = model.lookup(P)
    ok = idx >= 0
    j = np.where(ok, idx, 0)  # off-band points gather vertex 0 and are masked out below
    diff = P - model.vertices[j]
    d = np.abs(np.einsum("ij,ij->i", diff, model.normals[j]))
    full2 = np.einsum("ij,ij->i", diff, diff)
    inl = ok & (d < inlier_mm) & (full2 < (inlier_mm + model.grid_mm) ** 2)
    return _share(d[: len(fit)], inl[: len(fit)]), _share(d[len(fit) :], inl[len(fit) :])


def _share(d: F64, inl: NDArray[np.bool_]) -> tuple[float, float, int]:
    if len(d) == 0:
        return 0.0, float("inf"), 0
    n_in = int(inl.sum())
    rmse = float(np.sqrt(np.mean(np.square(d[inl])))) if n_in else float("inf")
    return n_in / len(d), rmse, n_in


def _jump(T_pred: F64, T_new: F64, refs: F64) -> tuple[float, float]:
    """Largest displacement of the reference points and the rotation angle between the
    predicted and fitted poses (measured where it matters, not at the LPS origin)."""
    cos = (float(np.sum(T_pred[:3, :3] * T_new[:3, :3])) - 1.0) / 2.0  # trace(R_pred^T R_new)
    return max_displacement_mm(T_pred, T_new, refs), math.degrees(math.acos(min(1.0, max(-1.0, cos))))
