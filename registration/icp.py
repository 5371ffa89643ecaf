"""Robust point-to-plane ICP against a prepared :class:`SurfaceModel`, in numpy.

Correspondences come from the model's nearest-vertex grid (one gather per iteration, no
KD-tree search), residuals are signed distances to the vertex tangent planes, and each
Gauss-Newton step is a 6x6 solve with Tukey weights. The information matrix of the
final step is returned so callers can predict target errors and detect degeneracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from registration.frames import F64, se3_exp, skew, transform_points
from registration.model import SurfaceModel

TUKEY_C = 4.685  # 95% efficiency under Gaussian noise
MIN_SIGMA_MM = 0.5  # floor of the robust scale so exact data does not collapse the kernel


@dataclass(frozen=True)
class IcpResult:
    T_model_sensor: F64
    information: F64  # 6x6, increment about ``pivot`` in the model frame
    pivot: F64
    sigma_mm: float  # robust residual scale of the final iteration
    n_correspondences: int
    iterations: int
    converged: bool


def _correspond(model: SurfaceModel, P: F64, max_mm: float) -> tuple[F64, F64, F64]:
    """Grid correspondences for model-frame points within ``max_mm`` of their vertex's
    tangent plane: those points, the plane normals and the signed residuals."""
    idx = model.lookup(P)
    ok = idx >= 0
    if not ok.all():  # skip the copies in the common case: every point is near the model
        P, idx = P[ok], idx[ok]
    n = model.normals[idx]
    r = np.einsum("ij,ij->i", P, n) - model.plane_offsets[idx]
    keep = np.abs(r) < max_mm
    if keep.all():
        return P, n, r
    return P[keep], n[keep], r[keep]


def residuals(model: SurfaceModel, T_model_sensor: F64, points: F64, max_mm: float) -> F64:
    """Point-to-plane residuals (mm) of sensor points within ``max_mm`` of the surface."""
    P = transform_points(T_model_sensor, points)
    return _correspond(model, P, max_mm)[2]


def _tukey_weights(r: F64) -> tuple[F64, float]:
    """Tukey biweights of residuals ``r`` and their robust scale (1.4826 MAD, floored)."""
    a = np.abs(r)
    k = len(a) // 2
    mad = float(np.partition(a, k)[k])  # median |r|: residuals are centred near the optimum
    sigma = max(1.4826 * mad, MIN_SIGMA_MM)
    u2 = np.square(r * (1.0 / (TUKEY_C * sigma)))
    w: F64 = np.square(np.maximum(1.0 - u2, 0.0))  # (1 - u^2)^2 inside, 0 outside
    return w, sigma


def _normal_equations(Pc: F64, n: F64, r: F64, w: F64) -> tuple[F64, F64]:
    """Weighted Gauss-Newton system (info, b) for increments xi = (omega, v) about the
    points' origin: the residual's Jacobian is (p x n, n)."""
    J = np.empty((len(r), 6))
    J[:, 0] = Pc[:, 1] * n[:, 2] - Pc[:, 2] * n[:, 1]
    J[:, 1] = Pc[:, 2] * n[:, 0] - Pc[:, 0] * n[:, 2]
    J[:, 2] = Pc[:, 0] * n[:, 1] - Pc[:, 1] * n[:, 0]
    J[:, 3:] = n
    Jw = J * w[:, None]
    # A 6 x N x 6 product stays on the calling thread in OpenBLAS (far below its threading
    # threshold for the point counts used here) and is 4x faster than einsum.
    info: F64 = Jw.T @ J
    b: F64 = np.einsum("ni,n->i", Jw, r)
    return info, b


def point_to_plane(
    model: SurfaceModel,
    points_sensor: F64,
    T_model_sensor: F64,
    *,
    max_corr_mm: float = 10.0,
    min_corr_mm: float = 3.0,
    iterations: int = 12,
    min_points: int = 12,
    tol_mm: float = 0.01,
) -> IcpResult:
    """Refine ``T_model_sensor`` so sensor points lie on the model surface.

    The correspondence gate shrinks from ``max_corr_mm`` towards ``min_corr_mm`` (never
    below 4 sigma) so a coarse start still converges while clutter is cut late.
    """
    T = T_model_sensor.copy()
    c = model.centroid
    info = np.zeros((6, 6))
    sigma, n_corr, it, converged = float("inf"), 0, 0, False
    gate = max_corr_mm
    damping = 1e-9 * np.eye(6)
    for it in range(1, iterations + 1):  # noqa: B007 - iteration count is reported
        P, n, r = _correspond(model, transform_points(T, points_sensor), gate)
        n_corr = len(r)
        if n_corr < min_points:
            break
        w, sigma = _tukey_weights(r)
        info, b = _normal_equations(P - c, n, r, w)
        try:
            xi = np.negative(np.linalg.solve(info + damping, b), dtype=np.float64)
        except np.linalg.LinAlgError:
            break
        # exp(xi) acts about the centroid c: T <- Tr(c) exp(xi) Tr(-c) T.
        E = se3_exp(xi)
        E[:3, 3] += c - E[:3, :3] @ c
        T = E @ T
        # Converged once the gate has stopped shrinking (it floors at 4 sigma on noisy
        # data, above ``min_corr_mm``) and a step moves points by less than ``tol_mm``.
        shrinking = max(min_corr_mm, 4.0 * sigma, 0.5 * gate) < 0.95 * gate
        gate = max(min_corr_mm, 4.0 * sigma, 0.5 * gate)
        if np.linalg.norm(xi[:3]) * 100.0 + np.linalg.norm(xi[3:]) < tol_mm and not shrinking:
            converged = True
            break
    return IcpResult(T, info, c.copy(), sigma, n_corr, it, converged)


def surface_distance(model: SurfaceModel, P: F64) -> F64:
    """Point-to-plane distance (mm) of model-frame points to their nearest vertex's
    tangent plane; inf off the model's band."""
    idx = model.lookup(P)
    ok = idx >= 0
    d = np.full(len(P), np.inf)
    j = idx[ok]
    d[ok] = np.abs(np.einsum("ij,ij->i", P[ok], model.normals[j]) - model.plane_offsets[j])
    # Guard against a far vertex whose plane happens to pass near the point.
    far = np.linalg.norm(P[ok] - model.vertices[j], axis=1) > 3.0 * model.grid_mm + d[ok]
    d[np.flatnonzero(ok)[far]] = np.inf
    return d


def truncated_cost(model: SurfaceModel, T_model_sensor: F64, points_sensor: F64, trunc_mm: float) -> float:
    """Mean squared surface distance of sensor points at a pose, each capped at
    ``trunc_mm``: the score that compares distinct poses (clutter costs the same in all)."""
    d = np.minimum(surface_distance(model, transform_points(T_model_sensor, points_sensor)), trunc_mm)
    return float(np.mean(d**2))


def covariance_about_origin(info: F64, pivot: F64, sigma_mm: float) -> F64:
    """Pose covariance for increments about the model origin from the information matrix
    about ``pivot``: v_origin = v_pivot + [c]x omega."""
    try:
        C = sigma_mm**2 * np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return np.full((6, 6), np.inf)
    M = np.eye(6)
    M[3:, :3] = skew(pivot)
    out: F64 = M @ C @ M.T
    return out


def normalised_condition(info: F64, length_mm: float) -> float:
    """Condition number of the information matrix with rotations scaled to mm at
    ``length_mm`` lever arm, so flat or rotationally symmetric views show up as large."""
    S = np.diag([1.0 / length_mm] * 3 + [1.0] * 3)
    ev = np.linalg.eigvalsh(S @ info @ S)
    if ev[0] <= 0:
        return float("inf")
    return float(ev[-1] / ev[0])
