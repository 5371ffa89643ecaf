"""Rigid transforms as plain 4x4 arrays: ``T_a_b`` maps frame b into frame a (mm)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Mat4 = npt.NDArray[np.float64]


def as_transform(value: Any, name: str) -> Mat4:
    """A finite 4x4 float64 copy of ``value`` or a ValueError quoting it."""
    arr = np.array(value, dtype=np.float64)
    if arr.shape != (4, 4):
        msg = f"{name} must be 4x4, got shape {arr.shape!r}"
        raise ValueError(msg)
    if not np.all(np.isfinite(arr)):
        msg = f"{name} must be finite, got {arr.tolist()!r}"
        raise ValueError(msg)
    return arr


def invert(T: Mat4) -> Mat4:
    """Inverse of a rigid transform without a general matrix inverse."""
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out
