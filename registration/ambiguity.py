"""How much worse a distinct rival pose fits: the ambiguity verdict's statistic."""

from __future__ import annotations

import numpy as np

from registration.frames import F64, transform_points
from registration.model import SurfaceModel


def fair_cost_ratio(model: SurfaceModel, pts: F64, T_best: F64, T_rival: F64, trunc_mm: float) -> float:
    """The rival's cost over the best's (T_model_sensor each), both truncated at 3 robust
    sigma of the best fit (at least ``trunc_mm``), on the points that fit at least one of
    the two: a point off the surface in both (a lifted pointer) says nothing about which
    is right, and a loose truncation would let far points drown the difference."""
    d2 = [np.square(model.distance(transform_points(T, pts))) for T in (T_best, T_rival)]
    sigma = 1.4826 * float(np.median(np.sqrt(d2[0])))
    cap = max(3.0 * sigma, trunc_mm) ** 2
    c = [np.minimum(d, cap) for d in d2]
    informative = (c[0] < cap) | (c[1] < cap)
    if not informative.any():
        return 1.0
    return float(np.sum(c[1][informative]) / max(np.sum(c[0][informative]), 1e-9))
