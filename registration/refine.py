"""Robust refinement of a pose from a realistic start: a local search, then robust ICP.

A plain point-to-plane ICP started 5 degrees and 10 mm off slides into a neighbouring
minimum 4-15 degrees away on a patch of little curvature (measured on real pointer
traces of skull phantoms), whatever its robust kernel. So the refinement first tries
a ball of starts around the given one (rotations within ``local_deg``, translations
within ``local_mm``), each pulled in by a few robust steps with a shrinking gate on a
subset (registration/batch_fit.py), keeps the lowest truncated cost, runs the full
robust ICP (Tukey weights, shrinking gate) on every point, and settles the result with
ICP on the exact closest points of the triangles (registration/exact_icp.py). Points that stay
farther than ``outlier_mm`` (or 4 robust sigma) from the surface at the result, such as
a pointer lifted off the skin, are rejected and reported.

The result says whether the final ICP converged, and keeps the local search's
distinct runner-up (a basin ``distinct_mm`` away at the reference points) with its
cost ratio: a start region holding two poses that fit about equally well is ambiguous.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from registration.batch_fit import gauss_newton, transform_batch, truncated_costs
from registration.exact_icp import exact_point_to_plane
from registration.frames import F64, invert, transform_points
from registration.icp import point_to_plane
from registration.model import SurfaceModel
from registration.rotations import local_rotations


@dataclass(frozen=True)
class RefineConfig:
    local_deg: float = 10.0  # rotation ball of the local search ...
    local_step_deg: float = 5.0
    local_mm: float = 12.0  # ... and translation ball
    local_step_mm: float = 6.0
    search_points: int = 48
    gates_mm: tuple[float, ...] = (12.0, 8.0, 6.0, 4.0, 3.0, 3.0)
    trunc_mm: float = 2.5
    final_points: int = 20000  # the final ICP uses every point of a trace up to this many
    final_gate_mm: float = 6.0  # the full ICP's gate shrinks from this ...
    final_min_gate_mm: float = 2.0  # ... to this
    final_iterations: int = 20  # grid ICP: close to the optimum, quickly ...
    tol_mm: float = 0.05
    exact_iterations: int = 20  # ... then ICP on exact closest points, which must converge:
    exact_tol_mm: float = 0.01  # a step moving points (100 mm lever) by less than this
    outlier_mm: float = 3.0
    distinct_mm: float = 4.0


@dataclass(frozen=True)
class Refinement:
    """``T_model_sensor`` after refinement; ``inliers`` flags the points kept (the rest
    are rejected outliers, e.g. a lifted pointer); residuals are surface distances of
    the inliers (mm); ``information`` is the 6x6 point-to-plane information about
    ``pivot`` (model frame) for covariance; ``rival_ratio`` is the local runner-up's
    cost over the best's (inf when every start ended in the best basin)."""

    T_model_sensor: F64
    converged: bool
    iterations: int
    inliers: NDArray[np.bool_]
    residual_rms_mm: float
    residual_p90_mm: float
    sigma_mm: float
    information: F64
    pivot: F64
    cost: float
    rival_ratio: float
    rival_T_model_sensor: F64 | None
    elapsed_ms: float

    @property
    def n_rejected(self) -> int:
        return int(np.count_nonzero(~self.inliers))


def spread(points: F64, n: int) -> F64:
    """At most ``n`` of ``points``, evenly spread (every k-th after a random-free order)."""
    if len(points) <= n:
        return points
    return points[:: -(-len(points) // n)]


def refine(
    model: SurfaceModel, points_sensor: F64, T_model_sensor: F64, config: RefineConfig | None = None
) -> Refinement:
    """Refine ``T_model_sensor`` (maps sensor points into the model) so that
    ``points_sensor`` (N, 3, mm) lie on the model surface."""
    cfg = config or RefineConfig()
    t0 = time.perf_counter()
    best, rival, ratio = _local_search(model, points_sensor, T_model_sensor, cfg)
    final = spread(points_sensor, cfg.final_points)
    grid = point_to_plane(model, final, best, max_corr_mm=cfg.final_gate_mm, min_corr_mm=cfg.final_min_gate_mm,
                          iterations=cfg.final_iterations, min_points=6, tol_mm=cfg.tol_mm)  # fmt: skip
    res = exact_point_to_plane(model, final, grid.T_model_sensor, gate_mm=max(cfg.outlier_mm, 4.0 * grid.sigma_mm),
                               iterations=cfg.exact_iterations, tol_mm=cfg.exact_tol_mm)  # fmt: skip
    d = model.distance(transform_points(res.T_model_sensor, points_sensor))
    sigma = max(1.4826 * float(np.median(d)), 0.1)
    inl = d < max(cfg.outlier_mm, 4.0 * sigma)
    rms = float(np.sqrt(np.mean(d[inl] ** 2))) if inl.any() else math.inf
    p90 = float(np.percentile(d[inl], 90)) if inl.any() else math.inf
    cost = float(truncated_costs(model.fit_surface(wide=False), res.T_model_sensor[None, :3, :3],
                                 res.T_model_sensor[None, :3, 3], points_sensor, cfg.trunc_mm)[0])  # fmt: skip
    return Refinement(
        res.T_model_sensor,
        res.converged,
        res.iterations,
        inl,
        rms,
        p90,
        res.sigma_mm,
        res.information,
        res.pivot,
        cost,
        ratio,
        rival,
        (time.perf_counter() - t0) * 1e3,
    )


def _local_search(model: SurfaceModel, points: F64, T_start: F64, cfg: RefineConfig) -> tuple[F64, F64 | None, float]:
    """The best start of the ball around ``T_start`` after a few robust steps, and the
    best start ending ``distinct_mm`` away from it (with its cost ratio)."""
    c = points.mean(axis=0)
    Q = spread(points, cfg.search_points) - c  # centred: the batched poses act about c
    R0, t0 = T_start[:3, :3], T_start[:3, :3] @ c + T_start[:3, 3]
    Rl = local_rotations(cfg.local_deg, cfg.local_step_deg)
    k = int(cfg.local_mm // cfg.local_step_mm)
    ax = np.arange(-k, k + 1) * cfg.local_step_mm
    offs = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)
    offs = offs[np.linalg.norm(offs, axis=1) <= cfg.local_mm + 1e-9]
    R = np.repeat((Rl @ R0)[None], len(offs), axis=0).reshape(-1, 3, 3)
    t = np.repeat(t0 + offs, len(Rl), axis=0)
    fine = model.fit_surface(wide=False)
    R, t = gauss_newton(fine, R, t, Q, cfg.gates_mm)
    cost = truncated_costs(fine, R, t, Q, cfg.trunc_mm)
    order = np.argsort(cost)
    best = _pose(R[order[0]], t[order[0]], c)
    # Poses are compared where it matters: on the trace and at the model's targets.
    probe = np.vstack([spread(points, 16), transform_points(invert(best), model.reference_points())]) - c
    moved = transform_batch(R[order], t[order], probe)
    shift = np.max(np.linalg.norm(moved - moved[0], axis=2), axis=1)
    distinct = np.flatnonzero(shift > cfg.distinct_mm)
    if len(distinct) == 0:
        return best, None, math.inf
    i = order[distinct[0]]
    return best, _pose(R[i], t[i], c), float(cost[i] / max(cost[order[0]], 1e-9))


def _pose(R: F64, t: F64, c: F64) -> F64:
    """T_model_sensor of a batched pose acting on points centred at ``c``."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t - R @ c
    return T
