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

from registration.frames import F64, invert, max_displacement_mm, se3_exp, transform_points
from registration.icp import point_to_plane, truncated_cost
from registration.model import SurfaceModel


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
    or None when every turn came back to the same pose."""
    refs = model.reference_points()
    own = max(truncated_cost(model, T_model_sensor, points_sensor, trunc_mm), 1e-6)
    T_here = invert(T_model_sensor)
    c = transform_points(T_model_sensor, points_sensor).mean(axis=0)
    best: TurnedRival | None = None
    for R in TURNS:
        turn = np.eye(4)
        turn[:3, :3] = R
        turn[:3, 3] = c - R @ c  # about the seen surface, in the patient frame
        res = point_to_plane(model, points_sensor, turn @ T_model_sensor, max_corr_mm=15.0,
                             min_corr_mm=inlier_mm, iterations=iterations, tol_mm=0.1)  # fmt: skip
        if max_displacement_mm(T_here, invert(res.T_model_sensor), refs) < distinct_mm:
            continue  # came back to the same pose
        ratio = truncated_cost(model, res.T_model_sensor, points_sensor, trunc_mm) / own
        if best is None or ratio < best.ratio:
            best = TurnedRival(ratio, res.T_model_sensor)
    return best
