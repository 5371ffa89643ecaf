"""Depth frames: pinhole intrinsics, validity filtering and back-projection to points."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from domain.camera import AHAT_FOCAL_PX as AHAT_FOCAL_PX
from domain.camera import AHAT_HEIGHT as AHAT_HEIGHT
from domain.camera import AHAT_RATE_HZ as AHAT_RATE_HZ
from domain.camera import AHAT_WIDTH as AHAT_WIDTH
from domain.camera import PinholeIntrinsics as PinholeIntrinsics
from registration.frames import F64
from registration.thinning import every_kth

# HoloLens 2 AHAT-like articulated-hand-tracking depth camera (domain.camera): range limit.
AHAT_MAX_RANGE_MM = 1000.0  # AHAT aliases beyond ~1 m


@dataclass(frozen=True)
class DepthFrame:
    """A depth image (H, W) with its pinhole intrinsics. ``depth_unit_mm`` converts the
    stored values to millimetres (1.0 for mm uint16, 1000.0 for metres float).
    Values that are NaN, zero, negative or outside [min_mm, max_mm] are invalid."""

    depth: NDArray[np.generic]
    intrinsics: PinholeIntrinsics
    depth_unit_mm: float = 1.0
    min_mm: float = 100.0
    max_mm: float = AHAT_MAX_RANGE_MM


def _pixel_box(K: PinholeIntrinsics, stride: int, roi: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 of the strided pixel grid inside ``roi`` (whole image
    when None); empty when r1 <= r0 or c1 <= c0."""
    rows, cols = -(-K.height // stride), -(-K.width // stride)
    if roi is None:
        return 0, rows, 0, cols
    u0, v0, u1, v1 = roi
    r0, r1 = -(-max(v0, 0) // stride), -(-min(v1, K.height) // stride)
    c0, c1 = -(-max(u0, 0) // stride), -(-min(u1, K.width) // stride)
    return r0, r1, c0, c1


def depth_to_points(
    frame: DepthFrame,
    stride: int = 1,
    roi: tuple[int, int, int, int] | None = None,
    max_points: int | None = None,
) -> F64:
    """Back-project valid pixels of every ``stride``-th row and column to (N, 3) sensor mm.

    ``roi`` = (u0, v0, u1, v1) restricts to a pixel box (the tracker passes the predicted
    projection of the model, so the background is never converted). ``max_points`` keeps
    an evenly spread subset of the valid pixels (every k-th in raster order) and converts
    only those: the tracker fits a few hundred points, so converting and gating thousands
    would be wasted work inside the latency budget."""
    depth = np.asarray(frame.depth)
    K = frame.intrinsics
    if depth.shape != (K.height, K.width):
        msg = f"depth shape must match intrinsics {(K.height, K.width)}, got {depth.shape}"
        raise ValueError(msg)
    if stride < 1:
        msg = f"stride must be >= 1, got {stride}"
        raise ValueError(msg)
    r0, r1, c0, c1 = _pixel_box(K, stride, roi)
    if r1 <= r0 or c1 <= c0:
        return np.zeros((0, 3))
    sub = depth[r0 * stride : r1 * stride : stride, c0 * stride : c1 * stride : stride]
    z = sub.reshape(-1).astype(np.float64) * frame.depth_unit_mm
    # NaN compares false, so this one test drops NaN, zero and out-of-range values.
    idx = every_kth(np.flatnonzero((z >= frame.min_mm) & (z <= frame.max_mm)), max_points)
    width = c1 - c0
    zs = z[idx]
    out = np.empty((len(idx), 3))
    out[:, 0] = ((idx % width + c0) * stride - K.cx) * (zs / K.fx)
    out[:, 1] = ((idx // width + r0) * stride - K.cy) * (zs / K.fy)
    out[:, 2] = zs
    return out


@lru_cache(maxsize=8)
def ray_cosines(K: PinholeIntrinsics) -> F64:
    """Per pixel (H, W): cosine of the angle between its ray and the optical axis, the
    factor from a distance along the ray to a z-depth. Pixel (u, v) is the centre of the
    pixel in column u, row v (OpenCV: the top-left pixel's centre is (0, 0))."""
    v, u = np.mgrid[0 : K.height, 0 : K.width].astype(np.float64)
    out: F64 = 1.0 / np.sqrt(((u - K.cx) / K.fx) ** 2 + ((v - K.cy) / K.fy) ** 2 + 1.0)
    out.setflags(write=False)  # shared between frames through the cache
    return out


def ray_to_z(frame: DepthFrame) -> DepthFrame:
    """The frame with each value turned from a distance along the pixel's ray (what a
    time-of-flight sensor such as HoloLens AHAT measures) into a z-depth, in float32 mm
    (rounding back to the sensor's integer unit would add up to half a unit of error)."""
    depth = np.asarray(frame.depth)
    K = frame.intrinsics
    if depth.shape != (K.height, K.width):
        msg = f"depth shape must match intrinsics {(K.height, K.width)}, got {depth.shape}"
        raise ValueError(msg)
    z = (depth.astype(np.float32) * np.float32(frame.depth_unit_mm)) * _ray_cosines32(K)
    return replace(frame, depth=z, depth_unit_mm=1.0)


@lru_cache(maxsize=8)
def _ray_cosines32(K: PinholeIntrinsics) -> NDArray[np.float32]:
    """:func:`ray_cosines` in float32, made once per camera rather than once per frame."""
    out = ray_cosines(K).astype(np.float32)
    out.setflags(write=False)
    return out
