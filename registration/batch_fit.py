"""Robust point-to-plane Gauss-Newton over many poses at once, and their costs.

The pose searches (markerless trace registration, the local search of the refinement)
score tens of thousands of candidate poses of the same few dozen points. Each candidate
is ``p = R q + t``: points ``q`` (M, 3) in their own centred frame, rotations ``R``
(K, 3, 3) and translations ``t`` (K, 3) into the model frame, so ``t`` is where the
points' centroid lands. Correspondences come from a
:class:`~registration.nearest_grid.NearestGrid` (one gather per point, no search).

The loops are compiled with Numba (the engine of this module, used nowhere else): in
numpy every step would allocate K x M x 6 temporaries, and the searches would take
seconds instead of a fraction of one. Poses run in parallel over the cores.

Residuals are distances to the nearest vertex's tangent plane, which does not depend on
the sign of the normal: a mesh that is not consistently oriented (a bony face from a
threshold, a scan) fits the same. Weights are Tukey's biweight at the gate, so points
beyond it (a lifted pointer, clutter) pull nothing. Past the edge of an open mesh the
nearest vertex lies sideways of the point; such points are judged by their distance to
that vertex, not by a plane that passes under them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
from numba import njit, prange

from registration.frames import F64
from registration.nearest_grid import NearestGrid

MAX_STEP_RAD = 0.35  # one step turns a pose by at most ~20 degrees ...
MIN_WEIGHTED_POINTS = 6  # ... and a pose with fewer weighted points does not move
DAMPING = 1e-6  # Levenberg damping relative to the mean diagonal of the normal equations
CHUNKS = 256  # poses are split into this many chunks over the threads

# OpenMP first: thread-safe when two registrations run at once, and Debian's TBB is too old
# for Numba (it would warn on every start before falling back).
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


class Surface:
    """What a batched fit reads: a nearest-vertex grid and, per vertex, one row of
    position and unit normal (sign irrelevant), so a correspondence is two gathers."""

    def __init__(self, grid: NearestGrid, vertices: F64, normals: F64, dtype: type = np.float64) -> None:
        self.grid = grid
        self.cell_mm = float(grid.cell_mm)
        self.table: F64 = np.ascontiguousarray(np.hstack([vertices, normals]), dtype=dtype)  # (V, 6)
        self._dims = np.asarray(grid.dims, dtype=np.int64)
        self._offset = np.ascontiguousarray(grid.offset, dtype=np.float64)

    def _args(self) -> tuple[object, ...]:
        return (self.grid.cells, self._dims, self._offset, self.cell_mm, self.table)


def _poses(R: F64, t: F64, Q: F64) -> tuple[F64, F64, F64]:
    return (
        np.ascontiguousarray(R, dtype=np.float64),
        np.ascontiguousarray(t, dtype=np.float64),
        np.ascontiguousarray(Q, dtype=np.float64),
    )


def transform_batch(R: F64, t: F64, Q: F64) -> F64:
    """Points (K, M, 3): each pose ``R[k], t[k]`` applied to all of ``Q`` (M, 3)."""
    out: F64 = np.einsum("kij,mj->kmi", R, Q) + t[:, None, :]
    return out


def truncated_costs(surface: Surface, R: F64, t: F64, Q: F64, trunc_mm: float) -> F64:
    """Mean over points of min(distance^2, trunc^2) for each pose (K,): the score that
    compares distinct poses (points off the surface cost the same in all)."""
    R, t, Q = _poses(R, t, Q)
    out = np.empty(len(R))
    _costs(*surface._args(), Q, R, t, float(trunc_mm), out)
    return out


def gauss_newton(surface: Surface, R: F64, t: F64, Q: F64, gates_mm: Sequence[float]) -> tuple[F64, F64]:
    """One robust point-to-plane Gauss-Newton step per gate (mm) for every pose; returns
    the moved (R, t). Increments act about each pose's centroid ``t``."""
    R, t, Q = _poses(R, t, Q)
    R_out, t_out = R.copy(), t.copy()
    _gauss_newton(*surface._args(), Q, R_out, t_out, np.asarray(gates_mm, dtype=np.float64))
    return R_out, t_out


def surface_distances(surface: Surface, P: F64) -> F64:
    """Distance (mm) of model-frame points (N, 3) to the surface; inf off the band."""
    P = np.ascontiguousarray(P, dtype=np.float64)
    out = np.empty(len(P))
    _distances(*surface._args(), P, out)
    return out


def warm_up() -> None:
    """Compile (or load from Numba's on-disk cache) every kernel for both table precisions.

    The first compile takes tens of seconds; it happens once per installation (the cache
    lives beside the module), and ``scripts/install.sh`` and
    :meth:`SurfaceModel.prepare_alignment` call this so that no registration in theatre
    waits for it."""
    from registration.trace_search import spread_order

    grid = NearestGrid(4.0, 8.0, np.zeros(27, dtype=np.int32), (3, 3, 3), np.zeros(3))
    Q = np.eye(3) * 2.0
    for dtype in (np.float32, np.float64):
        surface = Surface(grid, np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]]), dtype)
        R, t = np.eye(3)[None], np.zeros((1, 3))
        gauss_newton(surface, R, t, Q, (1.0,))
        truncated_costs(surface, R, t, Q, 1.0)
        surface_distances(surface, Q)
    spread_order(Q, 2)


# ------------------------------------------------------------------ compiled kernels
@njit(cache=True, inline="always")
def _lookup(cells, dims, offset, inv_cell, x, y, z):  # type: ignore[no-untyped-def]
    i = min(max(int(x * inv_cell + offset[0]), 0), dims[0] - 1)
    j = min(max(int(y * inv_cell + offset[1]), 0), dims[1] - 1)
    k = min(max(int(z * inv_cell + offset[2]), 0), dims[2] - 1)
    return cells[(i * dims[1] + j) * dims[2] + k]


@njit(cache=True, inline="always")
def _residual(table, idx, x, y, z):  # type: ignore[no-untyped-def]
    """Plane residual, squared tangential offset and the normal of vertex ``idx``."""
    dx, dy, dz = x - table[idx, 0], y - table[idx, 1], z - table[idx, 2]
    nx, ny, nz = table[idx, 3], table[idx, 4], table[idx, 5]
    r = dx * nx + dy * ny + dz * nz
    return r, dx * dx + dy * dy + dz * dz - r * r, nx, ny, nz


@njit(cache=True, inline="always")
def _distance2(r, tan2, cell_mm):  # type: ignore[no-untyped-def]
    excess = max(math.sqrt(max(tan2, 0.0)) - cell_mm, 0.0)
    return r * r + excess * excess


@njit(cache=True, parallel=True, nogil=True)
def _costs(cells, dims, offset, cell_mm, table, Q, R, t, trunc, out):  # type: ignore[no-untyped-def]
    inv = 1.0 / cell_mm
    t2 = trunc * trunc
    for k in prange(R.shape[0]):
        acc = 0.0
        for m in range(Q.shape[0]):
            qx, qy, qz = Q[m, 0], Q[m, 1], Q[m, 2]
            x = R[k, 0, 0] * qx + R[k, 0, 1] * qy + R[k, 0, 2] * qz + t[k, 0]
            y = R[k, 1, 0] * qx + R[k, 1, 1] * qy + R[k, 1, 2] * qz + t[k, 1]
            z = R[k, 2, 0] * qx + R[k, 2, 1] * qy + R[k, 2, 2] * qz + t[k, 2]
            idx = _lookup(cells, dims, offset, inv, x, y, z)
            if idx < 0:
                acc += t2
                continue
            r, tan2, _, _, _ = _residual(table, idx, x, y, z)
            acc += min(_distance2(r, tan2, cell_mm), t2)
        out[k] = acc / Q.shape[0]


@njit(cache=True, parallel=True, nogil=True)
def _distances(cells, dims, offset, cell_mm, table, P, out):  # type: ignore[no-untyped-def]
    inv = 1.0 / cell_mm
    for i in prange(P.shape[0]):
        idx = _lookup(cells, dims, offset, inv, P[i, 0], P[i, 1], P[i, 2])
        if idx < 0:
            out[i] = np.inf
        else:
            r, tan2, _, _, _ = _residual(table, idx, P[i, 0], P[i, 1], P[i, 2])
            out[i] = math.sqrt(_distance2(r, tan2, cell_mm))


@njit(cache=True, parallel=True, nogil=True)
def _gauss_newton(cells, dims, offset, cell_mm, table, Q, R, t, gates):  # type: ignore[no-untyped-def]
    inv = 1.0 / cell_mm
    n = R.shape[0]
    chunks = min(n, CHUNKS)
    # Scratch arrays once per chunk of poses, not per pose and step: allocations would
    # otherwise cost more than the arithmetic of a 16-point step.
    for c in prange(chunks):
        H = np.empty((6, 6))
        b = np.empty(6)
        L = np.empty((6, 6))
        y = np.empty(6)
        Rk = np.empty((3, 3))
        for k in range(c * n // chunks, (c + 1) * n // chunks):
            for gate in gates:
                used = _normal_equations(cells, dims, offset, inv, cell_mm, table, Q, R, t, k, gate, H, b)
                if used < MIN_WEIGHTED_POINTS or not _solve_step(H, b, L, y):
                    break
                _apply_step(R, t, k, b, Rk)


@njit(cache=True, inline="always")
def _normal_equations(cells, dims, offset, inv, cell_mm, table, Q, R, t, k, gate, H, b):  # type: ignore[no-untyped-def]
    """Tukey-weighted point-to-plane normal equations of pose ``k`` into ``H`` (lower
    triangle) and ``b``; returns the number of points that carried weight. The 27 sums
    are scalars so they stay in registers: this loop is the cost of every pose search."""
    r00 = r01 = r02 = r10 = r11 = r12 = r20 = r21 = r22 = 0.0
    r00, r01, r02 = R[k, 0, 0], R[k, 0, 1], R[k, 0, 2]
    r10, r11, r12 = R[k, 1, 0], R[k, 1, 1], R[k, 1, 2]
    r20, r21, r22 = R[k, 2, 0], R[k, 2, 1], R[k, 2, 2]
    tx, ty, tz = t[k, 0], t[k, 1], t[k, 2]
    h00 = h10 = h11 = h20 = h21 = h22 = h30 = h31 = h32 = h33 = 0.0
    h40 = h41 = h42 = h43 = h44 = h50 = h51 = h52 = h53 = h54 = h55 = 0.0
    b0 = b1 = b2 = b3 = b4 = b5 = 0.0
    used = 0
    tan_lim2 = max(2.0 * cell_mm, 0.5 * gate) ** 2
    inv_gate2 = 1.0 / (gate * gate)
    for m in range(Q.shape[0]):
        qx, qy, qz = Q[m, 0], Q[m, 1], Q[m, 2]
        ax = r00 * qx + r01 * qy + r02 * qz
        ay = r10 * qx + r11 * qy + r12 * qz
        az = r20 * qx + r21 * qy + r22 * qz
        x, y, z = ax + tx, ay + ty, az + tz
        idx = _lookup(cells, dims, offset, inv, x, y, z)
        if idx < 0:
            continue
        r, tan2, nx, ny, nz = _residual(table, idx, x, y, z)
        u2 = r * r * inv_gate2
        if u2 >= 1.0 or tan2 >= tan_lim2:
            continue
        w = (1.0 - u2) * (1.0 - u2)
        j0, j1, j2 = ay * nz - az * ny, az * nx - ax * nz, ax * ny - ay * nx
        w0, w1, w2, w3, w4, w5 = w * j0, w * j1, w * j2, w * nx, w * ny, w * nz
        h00 += w0 * j0
        h10 += w1 * j0
        h11 += w1 * j1
        h20 += w2 * j0
        h21 += w2 * j1
        h22 += w2 * j2
        h30 += w3 * j0
        h31 += w3 * j1
        h32 += w3 * j2
        h33 += w3 * nx
        h40 += w4 * j0
        h41 += w4 * j1
        h42 += w4 * j2
        h43 += w4 * nx
        h44 += w4 * ny
        h50 += w5 * j0
        h51 += w5 * j1
        h52 += w5 * j2
        h53 += w5 * nx
        h54 += w5 * ny
        h55 += w5 * nz
        b0 += w0 * r
        b1 += w1 * r
        b2 += w2 * r
        b3 += w3 * r
        b4 += w4 * r
        b5 += w5 * r
        used += 1
    H[0, 0], H[1, 0], H[1, 1], H[2, 0], H[2, 1], H[2, 2] = h00, h10, h11, h20, h21, h22
    H[3, 0], H[3, 1], H[3, 2], H[3, 3] = h30, h31, h32, h33
    H[4, 0], H[4, 1], H[4, 2], H[4, 3], H[4, 4] = h40, h41, h42, h43, h44
    H[5, 0], H[5, 1], H[5, 2], H[5, 3], H[5, 4], H[5, 5] = h50, h51, h52, h53, h54, h55
    b[0], b[1], b[2], b[3], b[4], b[5] = b0, b1, b2, b3, b4, b5
    return used


@njit(cache=True, inline="always")
def _solve_step(H, b, L, y):  # type: ignore[no-untyped-def]
    """Solve the (lower-triangle filled) damped system H xi = -b in place into ``b`` by
    Cholesky (scratch ``L``, ``y``); False when it is not positive definite."""
    lam = 0.0
    for a in range(6):
        lam += H[a, a]
    lam = DAMPING * lam / 6.0 + 1e-9
    for i in range(6):
        for j in range(i + 1):
            s = H[i, j] + (lam if i == j else 0.0)
            for p in range(j):
                s -= L[i, p] * L[j, p]
            if i == j:
                if s <= 0.0:
                    return False
                L[i, i] = math.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
    for i in range(6):
        s = -b[i]
        for p in range(i):
            s -= L[i, p] * y[p]
        y[i] = s / L[i, i]
    for i in range(5, -1, -1):
        s = y[i]
        for p in range(i + 1, 6):
            s -= L[p, i] * b[p]
        b[i] = s / L[i, i]
    return True


@njit(cache=True, inline="always")
def _apply_step(R, t, k, xi, Rk):  # type: ignore[no-untyped-def]
    """R[k] <- exp(omega) R[k], t[k] <- t[k] + v, the rotation capped at MAX_STEP_RAD
    (``Rk``: scratch)."""
    wx, wy, wz = xi[0], xi[1], xi[2]
    theta = math.sqrt(wx * wx + wy * wy + wz * wz)
    scale = 1.0
    if theta > MAX_STEP_RAD:
        scale = MAX_STEP_RAD / theta
        wx, wy, wz, theta = wx * scale, wy * scale, wz * scale, MAX_STEP_RAD
    if theta < 1e-12:
        a, c = 1.0, 0.5
    else:
        a, c = math.sin(theta) / theta, (1.0 - math.cos(theta)) / (theta * theta)
    e00, e11, e22 = 1.0 - c * (wy * wy + wz * wz), 1.0 - c * (wx * wx + wz * wz), 1.0 - c * (wx * wx + wy * wy)
    e01, e10 = -a * wz + c * wx * wy, a * wz + c * wx * wy
    e02, e20 = a * wy + c * wx * wz, -a * wy + c * wx * wz
    e12, e21 = -a * wx + c * wy * wz, a * wx + c * wy * wz
    Rk[:, :] = R[k]
    for j in range(3):
        R[k, 0, j] = e00 * Rk[0, j] + e01 * Rk[1, j] + e02 * Rk[2, j]
        R[k, 1, j] = e10 * Rk[0, j] + e11 * Rk[1, j] + e12 * Rk[2, j]
        R[k, 2, j] = e20 * Rk[0, j] + e21 * Rk[1, j] + e22 * Rk[2, j]
    for i in range(3):
        t[k, i] += xi[3 + i] * scale
