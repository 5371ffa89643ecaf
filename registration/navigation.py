"""The navigation workflow surgeons know (Brainlab, StealthStation, NousNav, CustusX):
coarse paired points, a surface trace, a robust refinement, and a verdict.

1. *Coarse*: the surgeon touches 3-4 anatomical landmarks that the imaging team marked
   on the model (the manifest's fiducials / targets, e.g. nasion, lateral canthi,
   tragus), each with 5-10 mm of touching error: a paired-point fit gives the start.
   Without landmarks the start comes from the markerless global search
   (registration/trace_search.py), where the data allow it.
2. *Trace*: the pointer is swept or dotted over the skin (a :class:`SurfaceTrace`).
3. *Refinement* (registration/refine.py): a local search around the start, then robust
   ICP; lifted points are rejected.
4. *Result*: the pose, FRE of the landmarks, the trace residual, the predicted TRE at the
   model's targets, and a verdict: ``tracking`` (accepted), ``degraded`` (a pose is
   given but must not be relied on: each reason says why) or ``lost`` (no pose: the
   reason says what to do, and where more points would help).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from registration.ambiguity import fair_cost_ratio
from registration.estimate import Estimate, Status, predicted_tre
from registration.frame_kinds import SurfaceTrace
from registration.frames import F64, as_transform, invert, max_displacement_mm, transform_points
from registration.icp import covariance_about_origin, normalised_condition
from registration.model import SurfaceModel
from registration.paired_point import PairedPoint, landmark_pairs, paired_point_fit
from registration.refine import RefineConfig, Refinement, refine
from registration.trace_search import SearchConfig, search
from registration.turns import best_turned_rival
from registration.weak_direction import where_points_help

log = logging.getLogger(__name__)

Landmarks = Mapping[str, object] | tuple[object, object]


@dataclass(frozen=True)
class NavigationConfig:
    refine: RefineConfig = field(default_factory=RefineConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    max_residual_rms_mm: float = 2.0  # RMS surface distance of the kept trace points
    max_rejected_share: float = 0.3  # lifted or off-model points
    max_condition: float = 200.0
    max_predicted_tre_mm: float = 3.0
    max_landmark_error_mm: float = 15.0  # a touched landmark this far from the fitted pose
    ambiguity_ratio: float = 2.0  # the best distinct rival must cost this many times more
    # Markerless, a pose fitted to fewer points is never trusted: 8 touches on a skull fit a
    # wrong pose 20-35 mm off with no distinct rival found (bench_trace_registration.py).
    min_markerless_points: int = 15
    verdict_trunc_mm: float = 2.5  # least truncation of the verdict's costs (registration/ambiguity.py)
    distinct_mm: float = 6.0
    turn_retries: int = 2  # from a given start: a better turned pose is taken this often


@dataclass(frozen=True)
class Rival:
    """A distinct pose that fits the trace too: its cost over the best's, and how far it
    would move the model's targets (mm)."""

    T_sensor_model: F64
    cost_ratio: float
    target_shift_mm: float


@dataclass(frozen=True)
class NavigationResult:
    """The outcome of a landmark + trace (or trace-only) registration.

    ``T_sensor_model`` maps model mm into the tracker's frame. ``reasons`` lists every
    check that failed (empty when ``status`` is tracking). ``trace_residual_rms_mm`` /
    ``_p90_mm`` are exact surface distances of the kept points; ``rejected`` counts the
    points dropped as lifted or off the model; ``predicted_tre_mm`` maps each model
    target (or ``"centroid"``) to its predicted RMS error (a lower bound: it assumes
    independent point errors); ``hint`` says where more points would help when the
    geometry is weak or the result refused; ``kept`` flags the trace points used (the
    others were rejected as lifted or off the model)."""

    T_sensor_model: F64
    status: Status
    reasons: tuple[str, ...]
    method: str  # "landmarks + trace" or "trace only"
    fre_mm: float | None
    landmark_error_mm: float | None  # RMS distance of the touched landmarks at the final pose
    trace_residual_rms_mm: float
    trace_residual_p90_mm: float
    n_points: int
    rejected: int
    predicted_tre_mm: dict[str, float]
    condition: float
    converged: bool
    rival: Rival | None
    hint: str | None
    elapsed_ms: float
    covariance: F64 = field(default_factory=lambda: np.full((6, 6), np.inf))
    kept: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per trace point

    @property
    def verdict(self) -> str:
        """One line for the operator."""
        if self.status is Status.TRACKING:
            tre = max(self.predicted_tre_mm.values(), default=float("nan"))
            return (
                f"accepted ({self.method}): residual {self.trace_residual_rms_mm:.2f} mm RMS, "
                f"predicted TRE {tre:.2f} mm, {self.rejected} of {self.n_points} points rejected"
            )
        head = "refused" if self.status is Status.LOST else "not trusted"
        tail = f"; {self.hint}" if self.hint else ""
        return f"{head} ({self.method}): {'; '.join(self.reasons)}{tail}"

    def estimate(self) -> Estimate:
        """The result as an :class:`Estimate` (to start a Tracker or publish it)."""
        return Estimate(
            T_sensor_model=self.T_sensor_model,
            status=self.status,
            fitness=1.0 - self.rejected / max(self.n_points, 1),
            rmse_mm=self.trace_residual_rms_mm,
            n_correspondences=self.n_points - self.rejected,
            elapsed_ms=self.elapsed_ms,
            covariance=self.covariance,
            reasons=self.reasons,
            fre_mm=self.fre_mm,
            condition=self.condition,
        )


def register_trace(
    model: SurfaceModel,
    trace: SurfaceTrace | object,
    landmarks: Landmarks | None = None,
    config: NavigationConfig | None = None,
    *,
    start: F64 | None = None,
) -> NavigationResult:
    """Register ``model`` to a surface trace (a :class:`SurfaceTrace` or (N, 3) mm in the
    tracker frame). The start is, in order: touched ``landmarks`` (a mapping from model
    landmark names to measured tracker positions, or ``(model_points, tracker_points)``
    with K >= 3), a given ``start`` T_sensor_model (e.g. the last trusted pose), else
    the markerless global search. Bad data gives ``lost``, never an exception; only
    malformed landmarks raise ValueError."""
    cfg = config or NavigationConfig()
    t0 = time.perf_counter()
    pts = trace.points_mm if isinstance(trace, SurfaceTrace) else SurfaceTrace(trace).points_mm
    coarse = paired_point_fit(*landmark_pairs(model, landmarks)) if landmarks is not None else None
    method = "landmarks + trace" if coarse else "trace from a start" if start is not None else "trace only"
    if len(pts) < cfg.search.min_points:
        return _refused(model, pts, f"too few trace points ({len(pts)}; at least {cfg.search.min_points})", method,
                        t0, coarse)  # fmt: skip
    T0 = coarse.T_sensor_model if coarse else start
    if T0 is not None:
        refined = refine(model, pts, invert(as_transform(T0, "start T_sensor_model")), cfg.refine)
        if coarse is None:  # nothing but the start vouches for the basin: try the turned model
            refined = _better_turned(model, pts, refined, cfg)
        return _finish(model, pts, refined, None, coarse, method, cfg, t0)
    found = search(model, pts, cfg.search)
    if found.best is None:
        return _refused(model, pts, found.refused or "no pose found", method, t0, None)
    # The best basin and its rival are refined the same way; whichever fits better then is
    # the result (the search's ranking is on fewer points and coarser correspondences).
    both = sorted(
        (refine(model, pts, b.T_model_sensor, cfg.refine) for b in (found.best, found.rival) if b is not None),
        key=lambda r: r.cost,
    )
    return _finish(model, pts, both[0], both[1] if len(both) > 1 else None, None, method, cfg, t0,
                   found_markerless=True)  # fmt: skip


def _finish(
    model: SurfaceModel,
    pts: F64,
    ref: Refinement,
    searched_rival: Refinement | None,
    coarse: PairedPoint | None,
    method: str,
    cfg: NavigationConfig,
    t0: float,
    *,
    found_markerless: bool = False,
) -> NavigationResult:
    T = invert(ref.T_model_sensor)
    kept = pts[ref.inliers]
    length = float(np.sqrt(np.mean(np.sum((kept - kept.mean(0)) ** 2, 1)))) if len(kept) else 1.0
    cond = normalised_condition(ref.information, max(length, 1.0))
    cov = covariance_about_origin(ref.information, ref.pivot, max(ref.sigma_mm, ref.residual_rms_mm))
    targets = model.targets or ()
    names = [t.name for t in targets] or ["centroid"]
    tre_values = predicted_tre(cov, model.reference_points())
    tre = {n: float(v) for n, v in zip(names, tre_values, strict=True)}
    lm_err = None if coarse is None else _landmark_error(T, coarse)
    rival = _rival(model, pts, ref, searched_rival, cfg)
    reasons = _reasons(ref, len(pts), cond, tre, lm_err, rival, cfg)
    kept_n = len(pts) - ref.n_rejected
    if coarse is None and found_markerless and kept_n < cfg.min_markerless_points:
        reasons = (*reasons, f"too few points to rule out other poses without landmarks ({kept_n}; "
                   f"at least {cfg.min_markerless_points})")  # fmt: skip
    status = Status.TRACKING if not reasons else Status.DEGRADED
    hint = where_points_help(model, ref.T_model_sensor, kept) if reasons else None
    result = NavigationResult(
        T, status, reasons, method, None if coarse is None else coarse.fre_mm, lm_err, ref.residual_rms_mm,
        ref.residual_p90_mm, len(pts), ref.n_rejected, tre, cond, ref.converged, rival, hint,
        (time.perf_counter() - t0) * 1e3, cov, ref.inliers,
    )  # fmt: skip
    log.info("trace registration %s", result.verdict)
    return result


def _better_turned(model: SurfaceModel, pts: F64, ref: Refinement, cfg: NavigationConfig) -> Refinement:
    """A start may sit in the basin of the model turned about a patient axis (a face upside
    down fits a trace well): when a turned pose fits better it is taken, refined, and
    checked again (at most ``turn_retries`` times)."""
    for _ in range(cfg.turn_retries):
        rival = best_turned_rival(model, pts[ref.inliers], ref.T_model_sensor, distinct_mm=cfg.distinct_mm)
        if rival is None or rival.ratio >= 1.0:
            return ref
        log.info("trace refinement: a turned pose fits better (%.2fx); taking it", rival.ratio)
        ref = refine(model, pts, rival.T_model_sensor, cfg.refine)
    return ref


def _reasons(
    ref: Refinement,
    n: int,
    cond: float,
    tre: dict[str, float],
    lm_err: float | None,
    rival: Rival | None,
    cfg: NavigationConfig,
) -> tuple[str, ...]:
    out = []
    if not ref.converged:
        out.append(f"the refinement did not converge in {ref.iterations} iterations")
    if not ref.residual_rms_mm <= cfg.max_residual_rms_mm:
        out.append(f"high trace residual ({ref.residual_rms_mm:.2f} mm RMS)")
    if ref.n_rejected > cfg.max_rejected_share * n:
        out.append(f"{ref.n_rejected} of {n} points off the model")
    if not cond <= cfg.max_condition:
        out.append(f"degenerate geometry (condition {cond:.0f})")
    worst = max(tre.values(), default=0.0)
    if not worst <= cfg.max_predicted_tre_mm:
        out.append(f"high predicted TRE ({worst:.2f} mm)")
    if lm_err is not None and not lm_err <= cfg.max_landmark_error_mm:
        out.append(f"the touched landmarks lie {lm_err:.1f} mm RMS from the surface fit")
    if rival is not None and rival.cost_ratio < cfg.ambiguity_ratio:
        out.append(
            f"ambiguous: a distinct pose fits almost as well ({rival.cost_ratio:.2f}x the cost) "
            f"and would move the targets by {rival.target_shift_mm:.0f} mm"
        )
    return tuple(out)


def _rival(
    model: SurfaceModel, pts: F64, ref: Refinement, searched: Refinement | None, cfg: NavigationConfig
) -> Rival | None:
    """The best distinct rival: the global search's (refined like the best) when there was
    a search, else the refinement's local runner-up."""
    T_best = ref.T_model_sensor
    T_rival = searched.T_model_sensor if searched is not None else ref.rival_T_model_sensor
    if T_rival is None:
        return None
    shift = max_displacement_mm(invert(T_best), invert(T_rival), model.reference_points())
    if shift < cfg.distinct_mm:
        return None
    ratio = fair_cost_ratio(model, pts, T_best, T_rival, cfg.verdict_trunc_mm)
    return Rival(invert(T_rival), ratio, shift)


def _landmark_error(T_sensor_model: F64, coarse: PairedPoint) -> float:
    """RMS distance (mm) between the touched landmarks and where the final pose puts the
    model's landmarks."""
    d = transform_points(T_sensor_model, coarse.model_points) - coarse.sensor_points
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def _refused(
    model: SurfaceModel, pts: F64, reason: str, method: str, t0: float, coarse: PairedPoint | None
) -> NavigationResult:
    T = coarse.T_sensor_model if coarse is not None else np.eye(4)
    return NavigationResult(
        T, Status.LOST, (reason,), method, None if coarse is None else coarse.fre_mm, None, math.inf, math.inf,
        len(pts), 0, {}, math.inf, False, None,
        "trace at least 20 points over distinct anatomy (e.g. brow, orbital rims, nose), not one smooth patch",
        (time.perf_counter() - t0) * 1e3, kept=np.zeros(len(pts), dtype=bool),
    )  # fmt: skip
