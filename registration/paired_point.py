"""Paired-point rigid registration of landmarks (Arun / Umeyama without scale).

Landmarks come as a mapping from the model's landmark names (the manifest's fiducials
and targets) to measured sensor positions, or as two (K, 3) arrays. FRE is the RMS
residual of the pairs; the covariance follows Fitzpatrick's FLE estimate
(FLE^2 ~ FRE^2 K / (K - 2)), so with three pairs it is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from registration.frames import F64, skew, transform_points
from registration.icp import normalised_condition
from registration.model import SurfaceModel

MIN_PAIRS = 3

Landmarks = Mapping[str, object] | tuple[object, object]


@dataclass(frozen=True)
class PairedPoint:
    """``T_sensor_model`` of the least-squares fit, its FRE (mm), the pairs, the
    normalised condition of the fit and its 6x6 pose covariance (about the model origin;
    inf when unknown)."""

    T_sensor_model: F64
    fre_mm: float
    model_points: F64
    sensor_points: F64
    condition: float
    covariance: F64


def landmark_pairs(model: SurfaceModel, landmarks: Landmarks) -> tuple[F64, F64]:
    """(model points, sensor points), each (K, 3) mm, from a name mapping or two arrays."""
    if isinstance(landmarks, tuple):
        X = np.asarray(landmarks[0], dtype=np.float64)
        Y = np.asarray(landmarks[1], dtype=np.float64)
    else:
        names = list(landmarks)
        X = np.array([model.target(k) for k in names], dtype=np.float64).reshape(-1, 3)
        Y = np.array([landmarks[k] for k in names], dtype=np.float64).reshape(-1, 3)
    if X.shape != Y.shape or X.ndim != 2 or X.shape[1] != 3:
        msg = f"landmark pairs must be two (K, 3) arrays, got {X.shape} and {Y.shape}"
        raise ValueError(msg)
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(Y))):
        msg = "landmark positions must be finite"
        raise ValueError(msg)
    if len(X) < MIN_PAIRS:
        msg = f"paired-point registration needs >= {MIN_PAIRS} landmark pairs, got {len(X)}"
        raise ValueError(msg)
    return X, Y


def kabsch(X: F64, Y: F64) -> F64:
    """T minimising sum |T x_i - y_i|^2 over proper rigid transforms."""
    cx, cy = X.mean(0), Y.mean(0)
    U, _, Vt = np.linalg.svd((X - cx).T @ (Y - cy))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = cy - R @ cx
    return T


def paired_point_fit(X: F64, Y: F64) -> PairedPoint:
    """Fit model points ``X`` to sensor points ``Y`` (K >= 3 pairs)."""
    T = kabsch(X, Y)
    resid = np.linalg.norm(transform_points(T, X) - Y, axis=1)
    fre = float(np.sqrt(np.mean(resid**2)))
    n = len(X)
    fle2 = fre**2 * n / (n - 2) if n > MIN_PAIRS else max(fre**2, 1.0)
    J = np.vstack([np.hstack([-skew(x), np.eye(3)]) for x in X])
    info = J.T @ J
    cond = normalised_condition(info, float(np.sqrt(np.mean(np.sum((X - X.mean(0)) ** 2, 1)))))
    cov = fle2 * np.linalg.pinv(info) if np.isfinite(cond) else np.full((6, 6), np.inf)
    return PairedPoint(T, fre, X, Y, cond, cov)
