"""The result object of every registration stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from registration.frames import F64, skew


class Status(StrEnum):
    """How far a pose can be trusted. ``tracking`` is only ever claimed when every
    detector agrees; ``degraded`` means a pose is given but should not be relied on for
    guidance; ``lost`` means there is no usable pose from this frame."""

    TRACKING = "tracking"
    DEGRADED = "degraded"
    LOST = "lost"


@dataclass(frozen=True)
class Estimate:
    """A registration result.

    ``T_sensor_model`` maps model mm into sensor mm. ``covariance`` is the 6x6 pose
    covariance (rotation rad, translation mm) of the left increment in the model frame,
    from the inverse information matrix of the point-to-plane fit scaled by the residual
    variance; it ignores correlated (bias) errors, so treat predicted TRE as a lower bound.
    """

    T_sensor_model: F64
    status: Status
    fitness: float
    rmse_mm: float
    n_correspondences: int
    elapsed_ms: float
    covariance: F64 = field(default_factory=lambda: np.full((6, 6), np.inf))
    reasons: tuple[str, ...] = ()
    fre_mm: float | None = None
    timestamp_ns: int | None = None
    holdout_rmse_mm: float = float("nan")
    condition: float = float("inf")
    see_through: float = float("nan")

    def predicted_tre_mm(self, targets_model_mm: object) -> F64:
        """Predicted RMS target registration error (mm) at (K, 3) model-frame targets."""
        return predicted_tre(self.covariance, targets_model_mm)

    @property
    def ok(self) -> bool:
        return self.status is Status.TRACKING


def predicted_tre(covariance: F64, targets_model_mm: object) -> F64:
    """Predicted RMS target registration error (mm) at (K, 3) model-frame targets.

    A target ``x`` moves by ``d = omega x x + v = [-[x]x, I] xi`` under a small pose
    error ``xi``, so its error covariance is ``A C A^T`` and RMS error sqrt(trace).
    """
    X = np.atleast_2d(np.asarray(targets_model_mm, dtype=np.float64))
    if X.shape[1] != 3:
        msg = f"targets must be (K, 3) model mm, got shape {X.shape}"
        raise ValueError(msg)
    if not np.all(np.isfinite(covariance)):
        return np.full(len(X), np.inf)
    out = np.empty(len(X))
    for k, x in enumerate(X):
        A = np.hstack([-skew(x), np.eye(3)])
        out[k] = float(np.sqrt(max(np.trace(A @ covariance @ A.T), 0.0)))
    return out


def lost(elapsed_ms: float, reason: str, T: F64 | None = None, ts: int | None = None) -> Estimate:
    """An Estimate for a frame that gave no usable pose (never an exception)."""
    return Estimate(
        T_sensor_model=np.eye(4) if T is None else T.copy(),
        status=Status.LOST,
        fitness=0.0,
        rmse_mm=float("inf"),
        n_correspondences=0,
        elapsed_ms=elapsed_ms,
        reasons=(reason,),
        timestamp_ns=ts,
    )
