"""The pose check against the model turned about the patient's axes.

A head fits upside down, or turned about its long axis, well enough to pass per-frame
detectors (fitness, RMSE, conditioning): smooth skull and cheek patches fit elsewhere.
Before a pose is trusted, the model is turned by 90, 180 and 270 degrees about each
patient (LPS) axis through the seen surface, each turn is refined briefly, and the
best distinct result's truncated cost is compared with the pose's own. A turned pose
that fits about as well (or better) means the pose cannot be trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from registration.batch_fit import gauss_newton, truncated_costs
from registration.frames import F64, invert, max_displacement_mm, se3_exp, transform_points
from registration.model import SurfaceModel
from registration.rotations import local_rotations

BALL_DEG = 8.0  # each turn is started from a ball of rotations ...
BALL_STEP_DEG = 8.0
BALL_MM = 6.0  # ... and shifts around it


@dataclass(frozen=True)
class TurnedRival:
    ratio: float  # its truncated cost / the pose's own (below 1: it fits better)
    T_model_sensor: F64


def _turns() -> tuple[F64, ...]:
    """Rotations by 90, 180 and 270 degrees about the patient's L-R, A-P and S-I axes."""
    out = []
    for axis in np.eye(3):
        for k in (1, 2, 3):
            out.append(se3_exp(np.concatenate([axis * (k * math.pi / 2), np.zeros(3)]))[:3, :3])
    return tuple(out)


TURNS = _turns()


def best_turned_rival(
    model: SurfaceModel,
    points_sensor: F64,
    T_model_sensor: F64,
    *,
    distinct_mm: float,
    iterations: int = 6,
    inlier_mm: float = 3.0,
    trunc_mm: float = 5.0,
) -> TurnedRival | None:
    """The turned pose with the lowest truncated cost among those that end more than
    ``distinct_mm`` from ``T_model_sensor`` (at the model's targets, else its centroid),
    or None when every turn came back to the same pose.

    Each turn (and the pose itself, for a fair comparison) is started from a small ball
    of rotations and shifts around it and refined in one batch (registration/batch_fit.py):
    a single ICP from a half turn about a rough centre often stops short of the turned
    basin's bottom and would make a better turned pose look worse than it is."""
    c = transform_points(T_model_sensor, points_sensor).mean(axis=0)
    Q = transform_points(T_model_sensor, points_sensor) - c  # centred in the model frame
    ball = local_rotations(BALL_DEG, BALL_STEP_DEG)
    shifts = np.vstack([np.zeros(3), BALL_MM * np.vstack([np.eye(3), -np.eye(3)])])
    groups = [np.eye(3), *TURNS]
    R = np.concatenate([np.repeat((ball @ G)[None], len(shifts), axis=0).reshape(-1, 3, 3) for G in groups])
    t = np.tile(np.repeat(c + shifts, len(ball), axis=0), (len(groups), 1))
    fine = model.fit_surface(wide=False)
    gates = np.linspace(15.0, inlier_mm, max(iterations, 2))
    R, t = gauss_newton(fine, R, t, Q, tuple(gates) + (inlier_mm,) * 2)
    cost = truncated_costs(fine, R, t, Q, trunc_mm).reshape(len(groups), -1)
    pick = np.argmin(cost, axis=1)
    own = max(float(cost[0, pick[0]]), 1e-6)
    refs = model.reference_points()
    best: TurnedRival | None = None
    for g in range(1, len(groups)):
        k = g * cost.shape[1] + pick[g]
        T = np.eye(4)
        T[:3, :3] = R[k]
        T[:3, 3] = t[k] - R[k] @ c
        T = T @ T_model_sensor  # the batch moved the model-frame points; back to sensor points
        if max_displacement_mm(invert(T_model_sensor), invert(T), refs) < distinct_mm:
            continue  # came back to the same pose
        ratio = float(cost[g, pick[g]]) / own
        if best is None or ratio < best.ratio:
            best = TurnedRival(ratio, T)
    return best
