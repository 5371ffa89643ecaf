"""Detectors that decide whether a fitted pose may be trusted, and the status hysteresis.

Fitness and inlier RMSE alone do not reveal wrong alignments (a face fits well slid
along itself), so a frame is *good* only if every detector passes:

* enough correspondences and enough of them inliers (fitness) with a small RMSE;
* a well-conditioned information matrix (flat or symmetric views are degenerate);
* predicted TRE at the model targets below a bound (from the same matrix);
* the result agrees with the constant-velocity prediction (no pose jump);
* a held-back subset of points, not used in the fit, agrees with the fit;
* free space: the camera must not see *through* the model at the fitted pose (points
  measured well behind the rendered model surface). This catches a face slid along
  itself, which fits well but leaves background visible where the head should be;
* before a lock is first reported, no distinct pose of the model turned about a patient
  axis (a face upside down, or turned) fits about as well (registration/turns.py): an
  upside-down face passes every per-frame detector above.

Which detectors run depends on the frame's kind (registration/frame_kinds.py): a
pointer trace has no camera, so free space does not apply, and it is one acquisition,
not a stream, so neither does the jump check.

Thresholds have hysteresis: to *enter* tracking a frame must pass stricter limits
(``enter_scale``) than to *stay*, and must do so ``frames_to_track`` times in a row.
Leaving tracking is immediate: a wrong pose must never be reported as tracking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from registration.estimate import Status
from registration.frame_kinds import CHECKS, Check, FrameKind
from registration.frames import F64, transform_points
from registration.model import SurfaceModel


@dataclass(frozen=True)
class ConfidenceConfig:
    min_correspondences: int = 150
    min_fitness: float = 0.85
    max_rmse_mm: float = 2.0
    max_condition: float = 60.0
    max_predicted_tre_mm: float = 1.0
    jump_mm: float = 8.0
    jump_deg: float = 4.0
    holdout_min_ratio: float = 0.8  # holdout fitness / fit fitness
    holdout_rmse_ratio: float = 1.5
    max_see_through: float = 0.05  # share of rays through the model that see behind it
    ambiguity_ratio: float = 1.5  # a distinct pose within this cost ratio blocks a lock
    enter_scale: float = 0.8
    frames_to_track: int = 3
    frames_to_lose: int = 15


@dataclass(frozen=True)
class FrameQuality:
    n_correspondences: int
    fitness: float
    rmse_mm: float
    condition: float
    predicted_tre_mm: float
    jump_mm: float
    jump_deg: float
    holdout_fitness: float
    holdout_rmse_mm: float
    see_through: float


def failures(
    q: FrameQuality, cfg: ConfidenceConfig, *, entering: bool, checks: frozenset[Check] = CHECKS[FrameKind.DEPTH_IMAGE]
) -> tuple[str, ...]:
    """Names of the detectors this frame fails among ``checks`` (those that apply to the
    frame's kind, registration/frame_kinds.py); stricter limits when ``entering``."""
    s = cfg.enter_scale if entering else 1.0
    out = []
    if Check.CORRESPONDENCES in checks and q.n_correspondences < cfg.min_correspondences:
        out.append(f"few correspondences ({q.n_correspondences})")
    if Check.FITNESS in checks and q.fitness < 1.0 - (1.0 - cfg.min_fitness) * s:
        out.append(f"low fitness ({q.fitness:.2f})")
    if Check.RMSE in checks and not q.rmse_mm <= cfg.max_rmse_mm * s:
        out.append(f"high rmse ({q.rmse_mm:.2f} mm)")
    if Check.CONDITION in checks and not q.condition <= cfg.max_condition * s:
        out.append(f"degenerate geometry (condition {q.condition:.0f})")
    if Check.PREDICTED_TRE in checks and not q.predicted_tre_mm <= cfg.max_predicted_tre_mm * s:
        out.append(f"high predicted TRE ({q.predicted_tre_mm:.2f} mm)")
    if Check.JUMP in checks and (q.jump_mm > cfg.jump_mm or q.jump_deg > cfg.jump_deg):
        out.append(f"pose jump ({q.jump_mm:.1f} mm, {q.jump_deg:.1f} deg)")
    if Check.HOLDOUT in checks and (
        q.holdout_fitness < cfg.holdout_min_ratio * q.fitness
        or not (q.holdout_rmse_mm <= cfg.holdout_rmse_ratio * q.rmse_mm + 0.2)
    ):
        out.append(f"held-back points disagree ({q.holdout_fitness:.2f}, {q.holdout_rmse_mm:.2f} mm)")
    if Check.FREE_SPACE in checks and not q.see_through <= cfg.max_see_through * s:
        out.append(f"free-space violation ({q.see_through:.2f} of rays see through the model)")
    return tuple(out)


def see_through_fraction(model: SurfaceModel, T_model_sensor: F64, points: F64, margin_mm: float) -> float:
    """Share of sensor rays that hit the model at this pose but return a point more than
    ``margin_mm`` behind the model surface (sensor at the origin of ``points``)."""
    if len(points) == 0:
        return 0.0
    import open3d as o3d

    rng = np.linalg.norm(points, axis=1)
    R_only = T_model_sensor.copy()
    R_only[:3, 3] = 0.0
    dirs = transform_points(R_only, points / rng[:, None])
    origin = np.broadcast_to(T_model_sensor[:3, 3], dirs.shape)
    rays = o3d.core.Tensor.from_numpy(np.hstack([origin, dirs]).astype(np.float32))
    t_hit = model.raycasting_scene.cast_rays(rays)["t_hit"].numpy()
    hits = np.isfinite(t_hit)
    if hits.sum() < 20:
        return 0.0
    return float(np.mean(rng[hits] > t_hit[hits] + margin_mm))


class StatusMachine:
    """Hysteresis over per-frame verdicts."""

    def __init__(self, cfg: ConfidenceConfig) -> None:
        self.cfg = cfg
        self.status = Status.DEGRADED
        self.good_run = 0
        self.bad_run = 0

    def locks_on_next_good(self) -> bool:
        """Whether one more good frame would turn the status into tracking."""
        return self.status is not Status.TRACKING and self.good_run + 1 >= self.cfg.frames_to_track

    def set(self, status: Status) -> Status:
        """Take a verdict that needs no hysteresis (a whole surface trace, judged at once)."""
        self.status = status
        self.good_run = self.cfg.frames_to_track if status is Status.TRACKING else 0
        self.bad_run = 0 if status is Status.TRACKING else self.bad_run + 1
        return status

    def step(self, usable: bool, problems: tuple[str, ...]) -> Status:
        if usable and not problems:
            self.good_run += 1
            self.bad_run = 0
            if self.good_run >= self.cfg.frames_to_track:
                self.status = Status.TRACKING
            elif self.status is Status.LOST:
                self.status = Status.DEGRADED
            return self.status
        self.good_run = 0
        self.bad_run += 1
        lose = not usable or self.bad_run >= self.cfg.frames_to_lose
        self.status = Status.LOST if lose else Status.DEGRADED
        return self.status
