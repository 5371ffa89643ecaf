"""Sets of rotations for pose searches, as (K, 3, 3) float64 arrays.

* :func:`uniform_rotations`: a deterministic, near-uniform covering of all of SO(3)
  (super-Fibonacci spirals, Alexa, CVPR 2022): no preferred axis, so a search over it
  scores an input the same whatever frame it arrives in.
* :func:`local_rotations`: a ball of rotations of a given radius about the identity, for
  a local search around a given start.
* :func:`exp_so3`: batched exponential map (Rodrigues) of rotation vectors (radians).
"""

from __future__ import annotations

import math

import numpy as np

from registration.frames import F64

SO3_VOLUME = 8.0 * math.pi**2  # Haar measure of SO(3) in the metric where angles are radians
_PHI = math.sqrt(2.0)
_PSI = 1.533751168755204288118041  # the super-Fibonacci constants of Alexa (2022)


def quaternions_to_matrices(q: F64) -> F64:
    """(K, 4) unit quaternions (w, x, y, z) to (K, 3, 3) rotation matrices."""
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    R = np.empty((len(q), 3, 3))
    R[:, 0, 0] = 1 - 2 * (y * y + z * z)
    R[:, 0, 1] = 2 * (x * y - w * z)
    R[:, 0, 2] = 2 * (x * z + w * y)
    R[:, 1, 0] = 2 * (x * y + w * z)
    R[:, 1, 1] = 1 - 2 * (x * x + z * z)
    R[:, 1, 2] = 2 * (y * z - w * x)
    R[:, 2, 0] = 2 * (x * z - w * y)
    R[:, 2, 1] = 2 * (y * z + w * x)
    R[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return R


def uniform_rotations(n: int) -> F64:
    """``n`` rotations spread near-uniformly over SO(3) (super-Fibonacci sampling)."""
    s = np.arange(n) + 0.5
    r = np.sqrt(s / n)
    big_r = np.sqrt(1.0 - s / n)
    alpha = 2.0 * math.pi * s / _PHI
    beta = 2.0 * math.pi * s / _PSI
    q = np.stack([r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)], axis=1)
    return quaternions_to_matrices(q)


def grid_spacing_rad(n: int) -> float:
    """Typical angle (radians) between neighbours of an ``n``-rotation uniform grid."""
    return float((SO3_VOLUME / n) ** (1.0 / 3.0))


def exp_so3(omega: F64) -> F64:
    """Rotation matrices (K, 3, 3) of rotation vectors (K, 3) in radians."""
    theta = np.linalg.norm(omega, axis=1)
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0, np.sin(theta) / safe)
    b = np.where(small, 0.5, (1.0 - np.cos(theta)) / (safe * safe))
    K = np.zeros((len(omega), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -omega[:, 2], omega[:, 1], -omega[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = omega[:, 2], -omega[:, 1], omega[:, 0]
    out: F64 = np.eye(3) + a[:, None, None] * K + b[:, None, None] * (K @ K)
    return out


def local_rotations(radius_deg: float, step_deg: float) -> F64:
    """Rotations within ``radius_deg`` of the identity on a cubic grid of rotation vectors
    ``step_deg`` apart (the identity included)."""
    k = int(radius_deg // step_deg)
    ax = np.arange(-k, k + 1) * math.radians(step_deg)
    w = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)
    w = w[np.linalg.norm(w, axis=1) <= math.radians(radius_deg) + 1e-12]
    return exp_so3(w)


def angle_between_deg(A: F64, B: F64) -> F64:
    """Angles (degrees) between rotation stacks ``A`` (K, 3, 3) and ``B`` (3, 3) or (K, 3, 3)."""
    tr = np.einsum("kij,...ij->k", A, B) if B.ndim == 2 else np.einsum("kij,kij->k", A, B)
    out: F64 = np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))
    return out
