"""Robust point-to-plane ICP against a prepared :class:`SurfaceModel`, in numpy.

Correspondences come from the model's nearest-vertex grid (one gather per iteration, no
KD-tree search), residuals are signed distances to the vertex tangent planes, and each
Gauss-Newton step is a 6x6 solve with Tukey weights. The information matrix of the
final step is returned so callers can predict target errors and detect degeneracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

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


def _correspond(model: SurfaceModel, P: F64, max_mm: float) -> tuple[NDArray[np.bool_], F64, F64]:
    """Grid correspondences for model-frame points: mask, plane normal, signed residual."""
    idx = model.lookup(P)
    ok = idx >= 0
    j = idx[ok]
    n = model.normals[j]
    r = np.einsum("ij,ij->i", P[ok], n) - model.plane_offsets[j]
    keep = np.abs(r) < max_mm
    mask = ok.copy()
    mask[ok] = keep
    return mask, n[keep], r[keep]


def residuals(model: SurfaceModel, T_model_sensor: F64, points: F64, max_mm: float) -> F64:
    """Point-to-plane residuals (mm) of sensor points within ``max_mm`` of the surface."""
    P = transform_points(T_model_sensor, points)
    _, _, r = _correspond(model, P, max_mm)
    return r


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
    for it in range(1, iterations + 1):  # noqa: B007 - iteration count is reported
        P = transform_points(T, points_sensor)
        mask, n, r = _correspond(model, P, gate)
        n_corr = int(mask.sum())
        if n_corr < min_points:
            break
        Pc = P[mask] - c
        a = np.abs(r)
        k = len(a) // 2
        mad = float(np.partition(a, k)[k])  # median |r|: residuals are centred near the optimum
        sigma = max(1.4826 * mad, MIN_SIGMA_MM)
        u = r / (TUKEY_C * sigma)
        w = np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)
        J = np.empty((len(r), 6))
        J[:, 0] = Pc[:, 1] * n[:, 2] - Pc[:, 2] * n[:, 1]
        J[:, 1] = Pc[:, 2] * n[:, 0] - Pc[:, 0] * n[:, 2]
        J[:, 2] = Pc[:, 0] * n[:, 1] - Pc[:, 1] * n[:, 0]
        J[:, 3:] = n
        Jw = J * w[:, None]
        info = np.einsum("ni,nj->ij", Jw, J)  # einsum: no BLAS threads (see frames)
        b = np.einsum("ni,n->i", Jw, r)
        try:
            xi = -np.linalg.solve(info + 1e-9 * np.eye(6), b)
        except np.linalg.LinAlgError:
            break
        step = np.eye(4)
        step[:3, 3] = c
        back = np.eye(4)
        back[:3, 3] = -c
        T = step @ se3_exp(xi) @ back @ T
        gate = max(min_corr_mm, 4.0 * sigma, 0.5 * gate)
        if np.linalg.norm(xi[:3]) * 100.0 + np.linalg.norm(xi[3:]) < tol_mm and gate <= min_corr_mm:
            converged = True
            break
    return IcpResult(T, info, c.copy(), sigma, n_corr, it, converged)


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
