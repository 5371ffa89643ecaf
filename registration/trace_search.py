"""Markerless registration of a surface trace: a global search that finds the right basin
or says it cannot.

A trace (pointer touches or sweeps, 6 to a few thousand points) has no camera, no
sensor-frame prior and often no usable normals, so the search assumes nothing about
its frame: the points are moved to their own canonical frame (centroid, principal
axes), and every orientation of SO(3) on a uniform grid is tried at translation seeds
spread over the model, each start pulled in by a few robust point-to-plane steps on a
wide nearest-vertex grid (registration/batch_fit.py, compiled). Coarse to fine: all
starts on a small subset, the best few thousand on a larger one, and the best distinct
basins on every point (the navigation workflow then refines the best two with a local
search, registration/refine.py). A trace in any tracker frame is therefore scored the
same.

The result is the best basin and its best *distinct* rival (a pose that moves the
trace or the model's reference points by more than ``distinct_mm``); the navigation
workflow (registration/navigation.py) refines both and gives the verdict. Traces too
small to decide (fewer than ``min_points``, or a patch under ``min_radius_mm``) are
refused with the reason before any search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit
from numpy.typing import NDArray

from registration.batch_fit import Surface, gauss_newton, transform_batch, truncated_costs
from registration.frames import F64, invert, max_displacement_mm
from registration.model import SurfaceModel
from registration.rotations import uniform_rotations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    min_points: int = 6
    min_radius_mm: float = 12.0  # RMS distance from the centroid; smaller patches are refused
    rotations: int = 2048  # uniform grid over SO(3) (~22 degrees apart)
    seeds: int = 64  # translation seeds over the model surface
    coarse_points: int = 16
    coarse_gates_mm: tuple[float, ...] = (30.0, 20.0, 12.0)
    coarse_trunc_mm: float = 10.0
    first_step_keep: float = 0.3  # share of starts kept after the first coarse step
    keep: int = 1500  # starts passed from the coarse to the fine stage
    fine_points: int = 64
    fine_gates_mm: tuple[float, ...] = (10.0, 7.0, 5.0, 4.0, 3.0)
    basins: int = 8  # distinct basins refined on every point
    final_points: int = 1500
    final_gates_mm: tuple[float, ...] = (5.0, 4.0, 3.0, 3.0, 2.5, 2.5, 2.5, 2.5)
    trunc_mm: float = 2.5  # truncation of the costs that rank converged basins (~5 sigma of pointer noise)
    distinct_mm: float = 6.0
    seed: int = 0


@dataclass(frozen=True)
class Basin:
    """One local optimum of the search: ``T_model_sensor`` and its truncated cost."""

    T_model_sensor: F64
    cost: float


@dataclass(frozen=True)
class SearchResult:
    """The best basin and its best distinct rival (None if every start ended in the
    best, or the trace was ``refused`` with the reason), all distinct basins best first,
    and how many starts were tried."""

    best: Basin | None
    rival: Basin | None
    refused: str | None = None
    elapsed_ms: float = 0.0
    starts: int = 0
    basins: tuple[Basin, ...] = field(default=())


def canonical_frame(points: F64) -> F64:
    """T_canonical_sensor: the centroid to the origin, principal axes (largest spread
    first) onto x, y, z, each axis signed by the third moment so the frame is the same
    whatever rigid frame the points arrive in."""
    c = points.mean(axis=0)
    d = points - c
    _, vecs = np.linalg.eigh(d.T @ d)
    V = vecs[:, ::-1].copy()
    for k in range(2):
        if np.sum((d @ V[:, k]) ** 3) < 0:
            V[:, k] = -V[:, k]
    V[:, 2] = np.cross(V[:, 0], V[:, 1])
    T = np.eye(4)
    T[:3, :3] = V.T
    T[:3, 3] = -V.T @ c
    return T


def spread_order(Q: F64, k: int) -> NDArray[np.int64]:
    """Indices of the first ``k`` points of ``Q`` in farthest-point order within the plane
    of the two largest principal axes (canonical x, y): every prefix is a well-spread
    subset, and points lifted off the skin, which stand out along the third axis only,
    are not preferred."""
    out: NDArray[np.int64] = _farthest_point_order(np.ascontiguousarray(Q[:, :2]), min(k, len(Q)))
    return out


@njit(cache=True, nogil=True)
def _farthest_point_order(xy, k):  # type: ignore[no-untyped-def]
    n = xy.shape[0]
    order = np.empty(k, dtype=np.int64)
    d2 = np.empty(n)
    start = 0
    best = np.inf
    for i in range(n):  # start nearest the centroid (the origin of the canonical frame)
        r = xy[i, 0] ** 2 + xy[i, 1] ** 2
        if r < best:
            best, start = r, i
    for i in range(n):
        d2[i] = (xy[i, 0] - xy[start, 0]) ** 2 + (xy[i, 1] - xy[start, 1]) ** 2
    order[0] = start
    for m in range(1, k):
        j = int(np.argmax(d2))
        order[m] = j
        for i in range(n):
            d = (xy[i, 0] - xy[j, 0]) ** 2 + (xy[i, 1] - xy[j, 1]) ** 2
            if d < d2[i]:
                d2[i] = d
    return order


class _Trace:
    """A trace in its canonical frame with its spread order: ``take(n)`` is a subset."""

    def __init__(self, Q: F64, most: int) -> None:
        self.Q = Q
        self.order = spread_order(Q, most)

    def take(self, n: int) -> F64:
        """``n`` spread points (all when there are fewer; at most the ``most`` ordered)."""
        return self.Q if len(self.Q) <= n else self.Q[np.sort(self.order[:n])]


def search(model: SurfaceModel, points_sensor: F64, config: SearchConfig | None = None) -> SearchResult:
    """Global search for ``T_model_sensor`` of trace points (N, 3) in any frame (mm)."""
    cfg = config or SearchConfig()
    t0 = time.perf_counter()
    refused = _refusal(points_sensor, cfg)
    if refused:
        return SearchResult(None, None, refused, (time.perf_counter() - t0) * 1e3)
    T_can = canonical_frame(points_sensor)
    trace = _Trace(points_sensor @ T_can[:3, :3].T + T_can[:3, 3], cfg.final_points)
    coarse = _coarse(model, trace, cfg)
    basins = _basins(model, trace, coarse, cfg)
    # Back to the sensor frame: T_model_sensor = T_model_canonical @ T_canonical_sensor.
    basins = [Basin(b.T_model_sensor @ T_can, b.cost) for b in basins]
    best = basins[0]
    refs = _reference_points(model, trace, best.T_model_sensor @ invert(T_can))
    rival = next((b for b in basins[1:] if _shift(best, b, refs) > cfg.distinct_mm), None)
    ms = (time.perf_counter() - t0) * 1e3
    log.info(
        "trace search: %d points, best cost %.2f, %d basins, %.0f ms", len(points_sensor), best.cost, len(basins), ms
    )
    return SearchResult(best, rival, None, ms, cfg.rotations * cfg.seeds, tuple(basins))


def _refusal(points: F64, cfg: SearchConfig) -> str | None:
    if len(points) < cfg.min_points:
        return f"too few trace points ({len(points)}; at least {cfg.min_points})"
    radius = float(np.sqrt(np.mean(np.sum((points - points.mean(axis=0)) ** 2, axis=1))))
    if radius < cfg.min_radius_mm:
        return (
            f"the trace covers too small a patch (RMS radius {radius:.1f} mm, at least {cfg.min_radius_mm:.0f}): "
            "trace over a wider area of distinct anatomy"
        )
    return None


def _search_surface(model: SurfaceModel) -> Surface:
    return model.fit_surface(wide=True)


def _fine_surface(model: SurfaceModel) -> Surface:
    return model.fit_surface(wide=False)


def _coarse(model: SurfaceModel, trace: _Trace, cfg: SearchConfig) -> tuple[F64, F64]:
    """Every grid rotation at every seed, a few wide steps on a small subset; then the
    best ``keep`` starts a few narrower steps on a larger one. Returns (R, t) sorted by
    cost."""
    surf = _search_surface(model)
    R0 = uniform_rotations(cfg.rotations)
    seeds = model.seeds(cfg.seeds)
    R = np.repeat(R0[None], len(seeds), axis=0).reshape(-1, 3, 3)
    t = np.repeat(seeds, len(R0), axis=0)
    small = trace.take(cfg.coarse_points)
    # Successive halving: one wide step for every start, then the rest of the coarse
    # steps only for the best share (a start that ends in the right basin ranked within
    # the best 4 % after one step on every trace tried).
    R, t = gauss_newton(surf, R, t, small, cfg.coarse_gates_mm[:1])
    cost = truncated_costs(surf, R, t, small, cfg.coarse_gates_mm[0] / 2.0)
    alive = np.argsort(cost)[: int(cfg.first_step_keep * len(cost))]
    R, t = gauss_newton(surf, R[alive], t[alive], small, cfg.coarse_gates_mm[1:])
    cost = truncated_costs(surf, R, t, small, cfg.coarse_trunc_mm)
    top = np.argsort(cost)[: cfg.keep]
    mid = trace.take(cfg.fine_points)
    R, t = gauss_newton(surf, R[top], t[top], mid, cfg.fine_gates_mm)
    cost = truncated_costs(_fine_surface(model), R, t, mid, cfg.trunc_mm)
    order = np.argsort(cost)
    return R[order], t[order]


def _basins(model: SurfaceModel, trace: _Trace, starts: tuple[F64, F64], cfg: SearchConfig) -> list[Basin]:
    """The best distinct starts (non-maximum suppression by displacement of the trace's
    own points), refined on up to ``final_points`` points and scored on all of them."""
    R, t = starts
    placed = transform_batch(R, t, trace.take(8))  # (K, 8, 3): where each start puts the trace
    picked: list[int] = []
    for k in range(len(R)):
        if all(np.max(np.linalg.norm(placed[k] - placed[i], axis=1)) > cfg.distinct_mm for i in picked):
            picked.append(k)
            if len(picked) == cfg.basins:
                break
    fine = _fine_surface(model)
    Rf, tf = gauss_newton(fine, R[picked], t[picked], trace.take(cfg.final_points), cfg.final_gates_mm)
    cost = truncated_costs(fine, Rf, tf, trace.Q, cfg.trunc_mm)
    return sorted((Basin(_transform(Rf[i], tf[i]), float(cost[i])) for i in range(len(picked))), key=lambda b: b.cost)


def _reference_points(model: SurfaceModel, trace: _Trace, T_model_canonical: F64) -> F64:
    """Where two poses are compared: the model's reference points and the trace itself."""
    seen = trace.take(16) @ T_model_canonical[:3, :3].T + T_model_canonical[:3, 3]
    return np.vstack([model.reference_points(), seen])


def _shift(a: Basin, b: Basin, refs_model: F64) -> float:
    """Largest displacement (mm) of model-frame reference points between two poses."""
    return max_displacement_mm(invert(a.T_model_sensor), invert(b.T_model_sensor), refs_model)


def _transform(R: F64, t: F64) -> F64:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T
