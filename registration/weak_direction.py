"""Where more trace points would help: the weakest direction of a surface fit.

A trace constrains the pose through the normals it touches; points on one smooth patch
leave a slide or a turn unconstrained. The weakest eigenvector of the fit's
information matrix (rotations scaled to millimetres at the trace's size) is that
motion; model surface points whose point-to-plane Jacobian is most aligned with it are
where a new point constrains it most. The hint names the region by its LPS direction
from the trace's centre, in words an operator can act on.
"""

from __future__ import annotations

import numpy as np

from registration.frames import F64, transform_points
from registration.model import SurfaceModel

SEARCH_RADIUS_MM = 90.0  # suggest regions this close to the traced area
TOP_SHARE = 0.05
SAMPLE_SPACING = 512  # model points considered (farthest-point spread)
_DIRECTIONS = (("left", "right"), ("posterior", "anterior"), ("superior", "inferior"))  # LPS +/- per axis


def where_points_help(model: SurfaceModel, T_model_sensor: F64, kept_sensor: F64) -> str | None:
    """A one-line hint naming where on the model new trace points would constrain the
    pose most, or None when the trace is empty."""
    if len(kept_sensor) == 0:
        return None
    P = transform_points(T_model_sensor, kept_sensor)
    c = P.mean(axis=0)
    length = max(float(np.sqrt(np.mean(np.sum((P - c) ** 2, axis=1)))), 10.0)
    idx = model.lookup(P)
    on = idx >= 0
    weak = _weakest(P[on], model.normals[idx[on]], c, length)
    cand = model.seeds(SAMPLE_SPACING)
    near = np.linalg.norm(cand - c, axis=1) < SEARCH_RADIUS_MM
    if weak is None or not near.any():
        return None
    cand = cand[near]
    _, j = model.nearest(cand)
    J = _jacobians(cand, model.normals[j], c, length)
    gain = np.square(J @ weak)
    top = cand[np.argsort(gain)[-max(1, int(TOP_SHARE * len(cand))) :]]
    return f"more trace points would help {_describe(top.mean(axis=0) - c)} of the traced area"


def _jacobians(points: F64, normals: F64, c: F64, length: float) -> F64:
    """Rows (omega * length, v) of point-to-plane residuals about ``c``."""
    arm = points - c
    return np.hstack([np.cross(arm, normals) / length, normals])


def _weakest(points: F64, normals: F64, c: F64, length: float) -> F64 | None:
    if len(points) < 6:
        return None
    J = _jacobians(points, normals, c, length)
    _, vecs = np.linalg.eigh(J.T @ J)
    out: F64 = vecs[:, 0]
    return out


def _describe(d: F64) -> str:
    """``d`` (LPS mm) in words: its one or two largest components, e.g. '40 mm superior
    and left'."""
    order = np.argsort(-np.abs(d))
    words = [_DIRECTIONS[k][0 if d[k] > 0 else 1] for k in order[:2] if abs(d[k]) > 0.4 * abs(d[order[0]])]
    return f"{np.linalg.norm(d):.0f} mm {' and '.join(words)}"
