"""Coordinate and unit conventions of the registration package, declared once.

* Lengths are millimetres, times seconds (timestamps in integer nanoseconds).
* ``T_a_b`` is a 4x4 float64 homogeneous transform that maps points expressed in
  frame ``b`` into frame ``a``: ``p_a = T_a_b @ p_b``.
* The *model* frame is the patient frame of the patient-model folder (LPS, mm).
* The *sensor* frame is the depth camera's optical frame: x right, y down, z forward
  along the optical axis (OpenCV / pinhole convention), mm.
* Small pose increments are 6-vectors ``xi = (omega, v)`` (rotation first, radians then
  mm) applied on the left in the model frame: ``T_model_sensor <- exp(xi) @ T_model_sensor``.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numpy.typing import NDArray

from domain.transforms import invert as invert  # one implementation, below the parts

MM_PER_M: Final = 1000.0
SENSOR_FRAME_CONVENTION: Final = "opencv: x right, y down, z forward (mm)"
MODEL_FRAME_CONVENTION: Final = "patient LPS (mm)"

F64 = NDArray[np.float64]


def as_transform(T: object, name: str = "T") -> F64:
    """Validate and copy a 4x4 rigid transform."""
    arr = np.asarray(T, dtype=np.float64)
    if arr.shape != (4, 4) or not np.all(np.isfinite(arr)):
        msg = f"{name} must be a finite 4x4 transform, got shape {arr.shape}"
        raise ValueError(msg)
    R = arr[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
        msg = f"{name} rotation block is not a proper rotation: det={np.linalg.det(R):.4f}"
        raise ValueError(msg)
    return arr.copy()


def transform_points(T: F64, points: F64) -> F64:
    """Apply ``T`` to (N, 3) points.

    Written out per column rather than as a matmul: BLAS would spread a tall-skinny
    product over threads, which costs milliseconds of spin-waiting on a busy 2-core box.
    """
    R, t = T[:3, :3], T[:3, 3]
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    out = np.empty((len(points), 3))
    out[:, 0] = R[0, 0] * x + R[0, 1] * y + R[0, 2] * z + t[0]
    out[:, 1] = R[1, 0] * x + R[1, 1] * y + R[1, 2] * z + t[1]
    out[:, 2] = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z + t[2]
    return out


def skew(v: F64) -> F64:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def se3_exp(xi: F64) -> F64:
    """Exponential map of a 6-vector (omega, v) to a 4x4 transform.

    Scalars go through ``math`` and the 3x3 products are written once: this runs several
    times per tracked frame, where numpy's per-call overhead is most of the cost."""
    wx, wy, wz = float(xi[0]), float(xi[1]), float(xi[2])
    t2 = wx * wx + wy * wy + wz * wz
    theta = math.sqrt(t2)
    if theta < 1e-4:  # series: 1 - cos(theta) underflows to 0 for tiny angles
        a, b, c = 1.0 - t2 / 6.0, 0.5 - t2 / 24.0, 1.0 / 6.0 - t2 / 120.0
    else:
        a = math.sin(theta) / theta
        b = (1.0 - math.cos(theta)) / t2
        c = (1.0 - a) / t2
    K = np.array([[0.0, -wz, wy], [wz, 0.0, -wx], [-wy, wx, 0.0]])
    K2 = K @ K
    T = np.eye(4)
    T[:3, :3] += a * K + b * K2
    V = b * K + c * K2
    V[0, 0] += 1.0
    V[1, 1] += 1.0
    V[2, 2] += 1.0
    T[:3, 3] = V @ xi[3:]
    return T


def se3_log(T: F64) -> F64:
    """Logarithm of a 4x4 rigid transform as a 6-vector (omega, v)."""
    R = T[:3, :3]
    cos_theta = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    theta = float(np.arccos(cos_theta))
    if theta < 1e-4:
        # Small angle: the closed form divides by theta**2 and loses precision; its series
        # (1 - (t/2) / tan(t/2)) / t**2 = 1/12 + t**2/720 is exact to double precision here.
        omega = 0.5 * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
        K = skew(omega)
        V_inv = np.eye(3) - 0.5 * K + (1.0 / 12.0 + theta**2 / 720.0) * (K @ K)
    else:
        if np.pi - theta < 1e-6:
            # Near pi the antisymmetric part vanishes; take the axis from R + I.
            M = R + np.eye(3)
            axis = M[:, int(np.argmax(np.linalg.norm(M, axis=0)))]
            omega = theta * axis / np.linalg.norm(axis)
        else:
            omega = theta / (2.0 * np.sin(theta)) * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
        K = skew(omega)
        half = theta / 2.0
        V_inv = np.eye(3) - 0.5 * K + (1.0 - half / np.tan(half)) / theta**2 * (K @ K)
    return np.concatenate([omega, V_inv @ T[:3, 3]])


def pose_difference(T_a: F64, T_b: F64) -> tuple[float, float]:
    """Rotation angle (degrees) and translation distance (mm) of ``T_a^-1 T_b``."""
    D = invert(T_a) @ T_b
    cos_theta = np.clip((np.trace(D[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos_theta))), float(np.linalg.norm(D[:3, 3]))


def max_displacement_mm(T_a: F64, T_b: F64, points: F64) -> float:
    """Largest distance (mm) between where ``T_a`` and ``T_b`` put ``points`` (N, 3): how far
    apart two poses are where it matters, not at the origin of their frame."""
    D = T_a - T_b
    d = points @ D[:3, :3].T + D[:3, 3]
    return float(np.sqrt(np.max(np.sum(d * d, axis=1))))
