"""The tracker's per-frame solve: one pose, every depth pixel on the model, in one pass.

A fitted pose's noise falls with the square root of the number of points, so the tracker
uses every pixel near the model (thousands) rather than a sample of a few hundred. In
numpy each of those steps would allocate N x 6 temporaries and cost more than the whole
latency budget; compiled with Numba (the engine of registration/batch_fit.py, which
does the same for many poses of a few points) a point costs nanoseconds per iteration:

* :func:`gather_depth` back-projects the depth pixels of a region of interest, drops
  isolated returns (flying pixels, multipath speckle: a pixel whose depth agrees with
  fewer than :data:`MIN_AGREEING_NEIGHBOURS` of its four neighbours), keeps the points
  in the model's band at the predicted pose and splits off a holdout set;
* :func:`fit_pose` is Tukey-weighted point-to-plane Gauss-Newton on the model's
  nearest-vertex grid, with registration/icp.py's robust scale (1.4826 MAD, here of
  every :data:`SCALE_STRIDE`-th residual), gates and convergence test; one pass over
  the points per step, and correspondences reused while the pose moves less than
  :data:`RELOOKUP_MM` (tests/test_registration_tracker.py checks it against icp.py);
* :func:`inlier_stats` gives the fitness and inlier RMSE the trust checks read.

The costs are cache misses (two random reads per point: grid cell, vertex row), so the
kernels read the grid where no branch waits on the result, and reuse what they read.

Points are sensor-frame millimetres (N, 3), x right, y down, z forward; poses are
``T_model_sensor``. Kernels are single-threaded: the tracker runs beside other work on
the same cores, and one frame is too little work to share out.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
from numba import njit
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from registration.depth import DepthFrame, _pixel_box
from registration.frames import F64
from registration.icp import MIN_SIGMA_MM, TUKEY_C, IcpResult
from registration.model import SurfaceModel

MIN_AGREEING_NEIGHBOURS = 2  # of the 4 pixel neighbours, for a depth return to be kept
AGREE_MM = 4.0  # neighbours agree within this plus ...
AGREE_SLOPE = 3.0  # ... this many pixel footprints (a surface up to ~70 degrees oblique)
SCALE_STRIDE = 4  # every 4th residual estimates the robust scale: ample at thousands
PROBE_EVERY = 8  # one pixel in 8 is a candidate ray of the free-space check
LEVER_MM = 100.0  # a rotation step counts as the motion of a point this far away
RELOOKUP_MM = 0.25  # correspondences are looked up again after the pose moved this much
MIN_POINTS = 12  # fewer weighted points than this: no step
DAMPING = 1e-9  # added to the normal equations' diagonal, as registration/icp.py


@dataclass(frozen=True)
class DenseSurface:
    """The model arrays the kernels read: the nearest-vertex grid (flat cells, dims,
    offset, cell size) and one (position, normal) row per vertex."""

    cells: NDArray[np.int32]
    dims: NDArray[np.int64]
    offset: F64
    cell_mm: float
    table: F64  # (V, 6): x, y, z, nx, ny, nz in model mm
    box: F64  # (2, 3) model mm: the band's bounding box, tested before the grid is read

    def args(self) -> tuple[object, ...]:
        return (self.cells, self.dims, self.offset, self.cell_mm, self.table)


_SURFACES: weakref.WeakKeyDictionary[SurfaceModel, DenseSurface] = weakref.WeakKeyDictionary()


def dense_surface(model: SurfaceModel) -> DenseSurface:
    """The kernels' view of ``model`` (built once per model, ~2 ms for 100k vertices).
    The first call in a process also loads the compiled kernels (see :func:`warm_up`)."""
    if not _SURFACES:
        warm_up()
    if model not in _SURFACES:
        g = model.grid
        table = np.ascontiguousarray(np.hstack([model.vertices, model.normals]), dtype=np.float64)
        box = np.stack([model.bounds[0] - g.band_mm, model.bounds[1] + g.band_mm])
        _SURFACES[model] = DenseSurface(
            g.cells, np.asarray(g.dims, dtype=np.int64), np.ascontiguousarray(g.offset), g.cell_mm, table, box
        )
    return _SURFACES[model]


@dataclass(frozen=True)
class Gathered:
    """A frame's points (sensor mm) as the tracker uses them: those in the model's band
    at the predicted pose, split into the fit set and a holdout set (every k-th of them,
    never fitted), and a sample of all valid points (the free-space check's rays)."""

    fit: F64
    hold: F64
    probe: F64

    @property
    def n_near(self) -> int:
        return len(self.fit) + len(self.hold)


def gather_depth(
    frame: DepthFrame,
    surface: DenseSurface,
    T_model_sensor: F64,
    stride: int,
    roi: tuple[int, int, int, int] | None,
    holdout: tuple[int, int],
) -> Gathered:
    """The valid, non-isolated pixels of every ``stride``-th row and column inside
    ``roi`` = (u0, v0, u1, v1) (whole image when None), raster order: those near the
    model at ``T_model_sensor`` with every ``holdout[0]``-th from ``holdout[1]`` on held
    out, and one pixel in :data:`PROBE_EVERY` (where valid) as a probe ray."""
    depth = np.asarray(frame.depth)
    K = frame.intrinsics
    if depth.shape != (K.height, K.width):
        msg = f"depth shape must match intrinsics {(K.height, K.width)}, got {depth.shape}"
        raise ValueError(msg)
    r0, r1, c0, c1 = _pixel_box(K, stride, roi)
    if r1 <= r0 or c1 <= c0:
        return Gathered(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)))
    sub = depth[r0 * stride : r1 * stride : stride, c0 * stride : c1 * stride : stride]
    z = np.asarray(sub, dtype=np.float32) * np.float32(frame.depth_unit_mm)  # a copy: the frame stays as it was
    rays = np.zeros((2, max(z.shape)))
    rays[0, : z.shape[1]] = (np.arange(c0, c1) * stride - K.cx) / K.fx
    rays[1, : z.shape[0]] = (np.arange(r0, r1) * stride - K.cy) / K.fy
    # Valid depths, and neighbours agree within AGREE_MM plus AGREE_SLOPE pixel footprints.
    tol = np.array([frame.min_mm, frame.max_mm, AGREE_MM, AGREE_SLOPE * stride / K.fx])
    fit, hold, probe = np.empty((z.size, 3)), np.empty((z.size, 3)), np.empty((z.size // PROBE_EVERY + z.shape[0], 3))
    split = np.array(holdout, dtype=np.int64)
    T = np.ascontiguousarray(T_model_sensor)
    counts = _gather(z, rays, T, *surface.args()[:4], surface.box, split, tol, fit, hold, probe)
    return Gathered(fit[: counts[0]], hold[: counts[1]], probe[: counts[2]])


def gather_points(points: F64, surface: DenseSurface, T_model_sensor: F64, holdout: tuple[int, int]) -> Gathered:
    """A point cloud's points (N, 3) near the model at ``T_model_sensor``, split as in
    :func:`gather_depth`; every point is a probe ray (no image to thin it by)."""
    P = np.ascontiguousarray(points, dtype=np.float64)
    fit, hold = np.empty_like(P), np.empty_like(P)
    split = np.array(holdout, dtype=np.int64)
    counts = _split_near(P, np.ascontiguousarray(T_model_sensor), *surface.args()[:4], surface.box, split, fit, hold)
    return Gathered(fit[: counts[0]], hold[: counts[1]], P)


@dataclass(frozen=True)
class DenseFit:
    """A fitted pose (``icp``: as registration/icp.py reports it) and what the trust
    checks read of its points: the inlier share, inlier RMSE (mm, inf without inliers)
    and inlier count at the fitted pose, and their RMS distance from their centroid."""

    icp: IcpResult
    fitness: float
    rmse_mm: float
    n_inliers: int
    radius_mm: float


def fit_pose(
    surface: DenseSurface,
    points: F64,
    T_model_sensor: F64,
    *,
    max_corr_mm: float,
    min_corr_mm: float,
    iterations: int,
    tol_mm: float,
    inlier_mm: float,
) -> DenseFit:
    """Refine ``T_model_sensor`` so the sensor ``points`` (N, 3) lie on the model surface.

    Tukey-weighted point-to-plane Gauss-Newton with registration/icp.py's schedule: the
    correspondence gate starts at ``max_corr_mm`` and shrinks to ``max(min_corr_mm,
    4 sigma)``; converged once it has stopped shrinking and a step moves points by less
    than ``tol_mm`` (a rotation counted at :data:`LEVER_MM`). Increments act about the
    points' centroid in the model frame (``pivot``), where the information matrix of
    the last step is taken (``sigma_mm``: the robust scale of its residuals). Inliers
    as in :func:`inlier_stats`, at the fitted pose."""
    P = np.ascontiguousarray(points, dtype=np.float64)
    T = np.ascontiguousarray(T_model_sensor, dtype=np.float64).copy()
    scratch = np.empty(len(P) // SCALE_STRIDE + 1)
    info, pivot = np.zeros((6, 6)), np.zeros(3)
    limits = np.array([max_corr_mm, min_corr_mm, tol_mm, inlier_mm], dtype=np.float64)
    st = _fit(*surface.args(), P, T, limits, int(iterations), scratch, info, pivot)
    icp = IcpResult(T, info, pivot, float(st[0]), int(st[1]), int(st[2]), bool(st[3]))
    n_in = int(st[4])
    rmse = math.sqrt(st[5] / n_in) if n_in else float("inf")
    return DenseFit(icp, n_in / max(len(P), 1), rmse, n_in, float(st[6]))


def inlier_stats(surface: DenseSurface, T_model_sensor: F64, points: F64, inlier_mm: float) -> tuple[float, float, int]:
    """Fitness (inlier share), inlier RMSE (mm, inf without inliers) and inlier count of
    sensor points at a pose: an inlier lies within ``inlier_mm`` of its vertex's tangent
    plane and within ``inlier_mm`` + one grid cell of the vertex itself."""
    if len(points) == 0:
        return 0.0, float("inf"), 0
    P = np.ascontiguousarray(points, dtype=np.float64)
    n_in, sum_sq = _inliers(np.ascontiguousarray(T_model_sensor), *surface.args(), P, float(inlier_mm))
    rmse = math.sqrt(sum_sq / n_in) if n_in else float("inf")
    return n_in / len(P), rmse, int(n_in)


def warm_up() -> None:
    """Run every kernel once on a few made-up points, so that loading them from Numba's
    cache (tens of milliseconds) happens when the tracker is made, not in its first
    frame. The types match the real calls: each signature is compiled separately."""
    from registration.depth import PinholeIntrinsics
    from registration.nearest_grid import NearestGrid

    V = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    g = NearestGrid.build(V, cKDTree(V), 1.0, 2.0)
    table = np.hstack([V, np.tile([0.0, 0.0, 1.0], (4, 1))])
    s = DenseSurface(
        g.cells, np.asarray(g.dims, dtype=np.int64), g.offset, g.cell_mm, table, np.array([[-3.0] * 3, [4.0] * 3])
    )
    T = np.eye(4)
    T[2, 3] = -100.0
    K = PinholeIntrinsics(4, 4, 2.0, 2.0, 1.5, 1.5)
    gather_depth(DepthFrame(np.full((4, 4), 100, dtype=np.uint16), K), s, T, 1, None, (5, 0))
    P = np.tile([[0.5, 0.5, 0.1]], (16, 1))
    gather_points(P, s, np.eye(4), (5, 0))
    fit_pose(s, P, np.eye(4), max_corr_mm=1.0, min_corr_mm=1.0, iterations=1, tol_mm=1.0, inlier_mm=1.0)
    inlier_stats(s, np.eye(4), P, 1.0)


# ------------------------------------------------------------------ compiled kernels
@njit(cache=True, inline="always")
def _to_model(M, x, y, z):  # type: ignore[no-untyped-def]
    """M (x, y, z): ``M`` is a pose's top 3x4 rows as a 12-tuple (see :func:`_rows`)."""
    return (
        M[0] * x + M[1] * y + M[2] * z + M[3],
        M[4] * x + M[5] * y + M[6] * z + M[7],
        M[8] * x + M[9] * y + M[10] * z + M[11],
    )


@njit(cache=True, inline="always")
def _rows(T):  # type: ignore[no-untyped-def]
    """The top 3x4 of a 4x4 pose as a tuple: held in registers through a loop, where the
    array would be read again after every store (Numba cannot tell they do not alias)."""
    return (
        T[0, 0], T[0, 1], T[0, 2], T[0, 3],
        T[1, 0], T[1, 1], T[1, 2], T[1, 3],
        T[2, 0], T[2, 1], T[2, 2], T[2, 3],
    )  # fmt: skip


@njit(cache=True, inline="always")
def _cell(cells, G, x, y, z):  # type: ignore[no-untyped-def]
    """Nearest-vertex index of a model-frame point from the grid (``G``: see :func:`_grid`);
    -1 off the band (the grid's border cells are -1: clipping needs no bounds test)."""
    i = min(max(int(x * G[0] + G[1]), 0), G[4] - 1)
    j = min(max(int(y * G[0] + G[2]), 0), G[5] - 1)
    k = min(max(int(z * G[0] + G[3]), 0), G[6] - 1)
    return cells[(i * G[5] + j) * G[6] + k]


@njit(cache=True, inline="always")
def _grid(dims, offset, cell_mm):  # type: ignore[no-untyped-def]
    """The grid's scalars as a tuple (1 / cell, offset x y z, dims x y z), for the same
    reason as :func:`_rows`."""
    return (1.0 / cell_mm, offset[0], offset[1], offset[2], dims[0], dims[1], dims[2])


@njit(cache=True, inline="always")
def _plane(table, v, x, y, z):  # type: ignore[no-untyped-def]
    """Signed distance of a point to vertex ``v``'s tangent plane and the squared offset
    along the plane (large past the edge of an open mesh)."""
    dx, dy, dz = x - table[v, 0], y - table[v, 1], z - table[v, 2]
    r = dx * table[v, 3] + dy * table[v, 4] + dz * table[v, 5]
    return r, dx * dx + dy * dy + dz * dz - r * r


@njit(cache=True, inline="always")
def _agrees(z, i, j, d, tol):  # type: ignore[no-untyped-def]
    """Whether pixel (i, j) exists and its depth is within ``tol`` of ``d`` (NaN: no)."""
    if i < 0 or j < 0 or i >= z.shape[0] or j >= z.shape[1]:
        return 0
    return 1 if abs(z[i, j] - d) < tol else 0


@njit(cache=True, inline="always")
def _in_box(box, x, y, z):  # type: ignore[no-untyped-def]
    return box[0, 0] <= x <= box[1, 0] and box[0, 1] <= y <= box[1, 1] and box[0, 2] <= z <= box[1, 2]


@njit(cache=True, inline="always")
def _near(M, cells, G, box, x, y, z):  # type: ignore[no-untyped-def]
    """Whether a sensor point lies in the model's band at pose ``M`` (box test first: most
    background points need no grid read)."""
    px, py, pz = _to_model(M, x, y, z)
    return _in_box(box, px, py, pz) and _cell(cells, G, px, py, pz) >= 0


@njit(cache=True, inline="always")
def _put(fit, hold, n_fit, n_hold, until, every, x, y, z):  # type: ignore[no-untyped-def]
    """Append a near point to the holdout set when ``until`` (points to the next held-out
    one) has counted down to 0, else to the fit set; returns the three counters."""
    if until == 0:
        hold[n_hold, 0], hold[n_hold, 1], hold[n_hold, 2] = x, y, z
        return n_fit, n_hold + 1, every - 1
    fit[n_fit, 0], fit[n_fit, 1], fit[n_fit, 2] = x, y, z
    return n_fit + 1, n_hold, until - 1


@njit(cache=True)
def _gather(z, rays, T, cells, dims, offset, cell_mm, box, split, tol, fit, hold, probe):  # type: ignore[no-untyped-def]
    """``z``: depth (mm); ``rays``: per column (row 0) and row (row 1) the pixel's x / z
    and y / z; ``tol``: valid depths (min, max mm) and the speckle test's tolerance (mm,
    mm per mm of depth).

    Three passes, each without a branch that waits on memory: the probes (one pixel in
    PROBE_EVERY, on a diagonal lattice); the pixels inside the model's box (arithmetic
    only, kept without a branch); the grid reads for those, whose cache misses then
    overlap (reading the grid in the raster pass costs five times more)."""
    M, G = _rows(T), _grid(dims, offset, cell_mm)
    z_lo, z_hi, t0, t1 = tol[0], tol[1], tol[2], tol[3]
    n_probe = 0
    for i in range(z.shape[0]):
        for j in range(i % PROBE_EVERY, z.shape[1], PROBE_EVERY):
            d = z[i, j]
            if d >= z_lo and d <= z_hi and _coherent(z, i, j, d, t0, t1):  # NaN fails
                probe[n_probe, 0], probe[n_probe, 1], probe[n_probe, 2] = rays[0, j] * d, rays[1, i] * d, d
                n_probe += 1
    rows, cols = np.empty(z.size, dtype=np.int32), np.empty(z.size, dtype=np.int32)  # in-box pixels
    n_box = 0
    lo_x, lo_y, lo_z, hi_x, hi_y, hi_z = box[0, 0], box[0, 1], box[0, 2], box[1, 0], box[1, 1], box[1, 2]
    for i in range(z.shape[0]):
        ry = rays[1, i]
        for j in range(z.shape[1]):
            d = z[i, j]
            px, py, pz = _to_model(M, rays[0, j] * d, ry * d, d)
            rows[n_box], cols[n_box] = i, j
            # & not and: no branches to mispredict at the edges of the head (NaN: False).
            keep = (d >= z_lo) & (d <= z_hi) & (lo_x <= px) & (px <= hi_x) & (lo_y <= py) & (py <= hi_y)
            n_box += keep & (lo_z <= pz) & (pz <= hi_z)
    n_fit, n_hold, until = 0, 0, split[1]
    for m in range(n_box):
        i, j = rows[m], cols[m]
        d = z[i, j]
        x, y = rays[0, j] * d, rays[1, i] * d
        px, py, pz = _to_model(M, x, y, d)
        if _cell(cells, G, px, py, pz) >= 0 and _coherent(z, i, j, d, t0, t1):
            n_fit, n_hold, until = _put(fit, hold, n_fit, n_hold, until, split[0], x, y, d)
    return n_fit, n_hold, n_probe


@njit(cache=True, inline="always")
def _coherent(z, i, j, d, t0, t1):  # type: ignore[no-untyped-def]
    """Whether at least MIN_AGREEING_NEIGHBOURS of pixel (i, j)'s four neighbours have a
    depth within t0 + t1 d of its depth ``d``: not an isolated return."""
    t = t0 + t1 * d
    agree = _agrees(z, i - 1, j, d, t) + _agrees(z, i + 1, j, d, t)
    agree += _agrees(z, i, j - 1, d, t) + _agrees(z, i, j + 1, d, t)
    return agree >= MIN_AGREEING_NEIGHBOURS


@njit(cache=True)
def _split_near(P, T, cells, dims, offset, cell_mm, box, split, fit, hold):  # type: ignore[no-untyped-def]
    M, G = _rows(T), _grid(dims, offset, cell_mm)
    n_fit, n_hold, until = 0, 0, split[1]
    for m in range(P.shape[0]):
        if _near(M, cells, G, box, P[m, 0], P[m, 1], P[m, 2]):
            n_fit, n_hold, until = _put(fit, hold, n_fit, n_hold, until, split[0], P[m, 0], P[m, 1], P[m, 2])
    return n_fit, n_hold


@njit(cache=True)
def _robust_scale(cells, dims, offset, cell_mm, table, P, T, gate, scratch):  # type: ignore[no-untyped-def]
    """1.4826 x the median |residual| of every SCALE_STRIDE-th point within ``gate``
    (see :func:`_scale`): the scale of the first iteration's weights."""
    M, G = _rows(T), _grid(dims, offset, cell_mm)
    tan_lim2 = max(2.0 * cell_mm, 0.5 * gate) ** 2
    k = 0
    for m in range(0, P.shape[0], SCALE_STRIDE):
        x, y, z = _to_model(M, P[m, 0], P[m, 1], P[m, 2])
        v = _cell(cells, G, x, y, z)
        if v < 0:
            continue
        r, tan2 = _plane(table, v, x, y, z)
        if abs(r) < gate and tan2 < tan_lim2:
            scratch[k] = abs(r)
            k += 1
    return _scale(scratch, k)


@njit(cache=True, inline="always")
def _scale(scratch, k):  # type: ignore[no-untyped-def]
    """1.4826 MAD of the ``k`` absolute residuals in ``scratch``, floored at MIN_SIGMA_MM
    (as registration/icp.py); inf when they stand for too few points."""
    if k * SCALE_STRIDE < MIN_POINTS:
        return np.inf
    return max(1.4826 * np.median(scratch[:k]), MIN_SIGMA_MM)


@njit(cache=True)
def _accumulate(cells, dims, offset, cell_mm, table, P, T, c, gate, tukey, A, H, b, scratch, corr, fresh):  # type: ignore[no-untyped-def]
    """Normal equations (H, b) of the points' plane residuals, with Tukey
    biweights at ``tukey`` mm, for increments (omega, v) about ``c``: the residual's
    Jacobian is ((x - c) x n, n). A point whose vertex lies more than max(2 cells,
    tukey / 2) along the plane (past the edge of an open mesh) carries no weight.
    Every SCALE_STRIDE-th |residual| within ``gate`` goes to ``scratch`` for the next
    iteration's scale. Returns the weighted count and the count in ``scratch``.

    Correspondences: each point's vertex row (position, normal) in ``corr`` (N, 6; NaN
    off the band), read in order; looked up first when ``fresh`` (see :func:`_fit`).

    One pass writes sqrt(w) (J, r) per weighted point into the columns of ``A`` (7, N);
    the sums are then SIMD dot products over its rows (:func:`_gram`): three times
    cheaper than 27 running sums per point."""
    M, G = _rows(T), _grid(dims, offset, cell_mm)
    tan_w2 = max(2.0 * cell_mm, 0.5 * tukey) ** 2
    tan_g2 = max(2.0 * cell_mm, 0.5 * gate) ** 2
    inv_t2 = 1.0 / (tukey * tukey)
    cx, cy, cz = c[0], c[1], c[2]
    used = k = visited = 0
    if fresh:
        _look_up(cells, G, table, P, M, corr)
    for m in range(P.shape[0]):
        x, y, z = _to_model(M, P[m, 0], P[m, 1], P[m, 2])
        if math.isnan(corr[m, 0]):  # off the band
            continue
        r, tan2 = _plane(corr, m, x, y, z)
        visited += 1
        if visited % SCALE_STRIDE == 0 and abs(r) < gate and tan2 < tan_g2:
            scratch[k] = abs(r)
            k += 1
        u2 = r * r * inv_t2
        if u2 >= 1.0 or tan2 >= tan_w2:
            continue
        s = 1.0 - u2  # sqrt of Tukey's biweight (1 - u^2)^2
        nx, ny, nz = corr[m, 3], corr[m, 4], corr[m, 5]
        A[0, used] = s * ((y - cy) * nz - (z - cz) * ny)
        A[1, used] = s * ((z - cz) * nx - (x - cx) * nz)
        A[2, used] = s * ((x - cx) * ny - (y - cy) * nx)
        A[3, used], A[4, used], A[5, used], A[6, used] = s * nx, s * ny, s * nz, s * r
        used += 1
    _gram(A, used, H, b)
    return used, k


@njit(cache=True)
def _look_up(cells, G, table, P, M, corr):  # type: ignore[no-untyped-def]
    """Each point's vertex row at pose ``M`` into ``corr`` (NaN off the band). Two plain
    loops, cells then rows: each read is independent of the last, so their cache misses
    overlap (20 % faster than reading both inside the accumulation)."""
    v = np.empty(P.shape[0], dtype=np.int32)
    for m in range(P.shape[0]):
        x, y, z = _to_model(M, P[m, 0], P[m, 1], P[m, 2])
        v[m] = _cell(cells, G, x, y, z)
    for m in range(P.shape[0]):
        if v[m] < 0:
            corr[m, 0] = np.nan
        else:
            for q in range(6):
                corr[m, q] = table[v[m], q]


@njit(cache=True, fastmath=True)
def _gram(A, n, H, b):  # type: ignore[no-untyped-def]
    """H = A[:6] A[:6]^T and b = A[:6] A[6] over the first ``n`` columns (fastmath lets
    the sums vectorise; their order does not matter at this precision)."""
    for i in range(6):
        for j in range(i + 1):
            acc = 0.0
            for m in range(n):
                acc += A[i, m] * A[j, m]
            H[i, j] = H[j, i] = acc
        acc = 0.0
        for m in range(n):
            acc += A[i, m] * A[6, m]
        b[i] = acc


@njit(cache=True)
def _move(T, xi, c):  # type: ignore[no-untyped-def]
    """T <- exp(xi) T with the rotation about ``c`` (Rodrigues); the step's size in mm
    (rotation counted at LEVER_MM)."""
    wx, wy, wz = xi[0], xi[1], xi[2]
    theta = math.sqrt(wx * wx + wy * wy + wz * wz)
    K = np.array([[0.0, -wz, wy], [wz, 0.0, -wx], [-wy, wx, 0.0]])
    E = np.eye(3)
    if theta > 1e-12:
        E += (math.sin(theta) / theta) * K + ((1.0 - math.cos(theta)) / theta**2) * (K @ K)
    M = T.copy()
    for i in range(3):
        for j in range(3):
            T[i, j] = E[i, 0] * M[0, j] + E[i, 1] * M[1, j] + E[i, 2] * M[2, j]
        T[i, 3] = c[i] + xi[3 + i]
        for j in range(3):
            T[i, 3] += E[i, j] * (M[j, 3] - c[j])
    return LEVER_MM * theta + math.sqrt(xi[3] ** 2 + xi[4] ** 2 + xi[5] ** 2)


@njit(cache=True)
def _fit(cells, dims, offset, cell_mm, table, P, T, limits, iterations, scratch, info, pivot):  # type: ignore[no-untyped-def]
    gate, min_gate, tol = limits[0], limits[1], limits[2]
    sx = sy = sz = s2 = 0.0
    for m in range(P.shape[0]):
        sx, sy, sz = sx + P[m, 0], sy + P[m, 1], sz + P[m, 2]
        s2 += P[m, 0] ** 2 + P[m, 1] ** 2 + P[m, 2] ** 2
    n = max(P.shape[0], 1)
    centre = (sx / n, sy / n, sz / n)  # the points' centroid, sensor frame
    radius = math.sqrt(max(s2 / n - centre[0] ** 2 - centre[1] ** 2 - centre[2] ** 2, 0.0))
    H, b, A, corr = np.empty((6, 6)), np.empty(6), np.empty((7, P.shape[0])), np.empty((P.shape[0], 6))
    damping = DAMPING * np.eye(6)
    used, it, converged = 0, 0, False
    # Correspondences are looked up again once the pose has moved RELOOKUP_MM since the
    # last lookup: smaller moves change few points' grid cells, and the vertices of
    # neighbouring cells lie on nearly the same plane.
    since_lookup = np.inf
    # Weights use the scale of the previous iteration's residuals (the first: of a pass
    # of their own), so that one pass over the points makes a step.
    sigma = _robust_scale(cells, dims, offset, cell_mm, table, P, T, gate, scratch)
    for it in range(1, iterations + 1):  # noqa: B007 - the count is reported
        if not np.isfinite(sigma):
            used = 0
            break
        c = np.array(_to_model(_rows(T), centre[0], centre[1], centre[2]))
        # Tukey's biweight at TUKEY_C sigma, never wider than the correspondence gate.
        tukey = min(gate, TUKEY_C * sigma)
        fresh = since_lookup > RELOOKUP_MM
        if fresh:
            since_lookup = 0.0
        used, k = _accumulate(cells, dims, offset, cell_mm, table, P, T, c, gate, tukey, A, H, b, scratch, corr, fresh)
        if used < MIN_POINTS:
            break
        info[:, :] = H
        pivot[:] = c
        moved = _move(T, -np.linalg.solve(H + damping, b), c)
        since_lookup += moved
        sigma = _scale(scratch, k)
        # The gate shrinks (never grows: clutter stays out) to 4 sigma, not below min_gate.
        gate = min(gate, max(min_gate, 4.0 * sigma, 0.5 * gate))
        # Converged on a small step whose weights the next step would keep: the gate only
        # matters where it cuts closer than the biweight (a shrinking gate that still lies
        # outside it changes nothing, unlike in icp.py, which tests the gate alone).
        if moved < tol and abs(min(gate, TUKEY_C * sigma) - tukey) < 0.05 * tukey:
            converged = True
            break
    # Inliers at the fitted pose, on the correspondences of the last lookup (or a new
    # one where the pose has moved since): read in order, not through the grid again.
    if since_lookup > RELOOKUP_MM:
        _look_up(cells, _grid(dims, offset, cell_mm), table, P, _rows(T), corr)
    n_in, sum_sq = _inlier_sums(_rows(T), corr, P, limits[3], cell_mm)
    return np.array([sigma, used, it, 1.0 if converged else 0.0, n_in, sum_sq, radius])


@njit(cache=True)
def _inliers(T, cells, dims, offset, cell_mm, table, P, inlier_mm):  # type: ignore[no-untyped-def]
    corr = np.empty((P.shape[0], 6))
    M = _rows(T)
    _look_up(cells, _grid(dims, offset, cell_mm), table, P, M, corr)
    return _inlier_sums(M, corr, P, inlier_mm, cell_mm)


@njit(cache=True)
def _inlier_sums(M, corr, P, inlier_mm, cell_mm):  # type: ignore[no-untyped-def]
    """Count and sum of squared plane residuals of the points within ``inlier_mm`` of
    their vertex's plane and ``inlier_mm`` + a cell of the vertex (``corr``: rows)."""
    full_lim2 = (inlier_mm + cell_mm) ** 2
    n_in, sum_sq = 0, 0.0
    for m in range(P.shape[0]):
        if math.isnan(corr[m, 0]):
            continue
        x, y, z = _to_model(M, P[m, 0], P[m, 1], P[m, 2])
        r, tan2 = _plane(corr, m, x, y, z)
        if abs(r) < inlier_mm and r * r + tan2 < full_lim2:
            n_in += 1
            sum_sq += r * r
    return n_in, sum_sq
