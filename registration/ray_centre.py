"""Where a depth frame's camera was, recovered from the frame's own points.

A time-of-flight camera reports each pixel's range from its centre in whole units (HoloLens
2 research mode: millimetres). Points of one frame, however they were later moved into a
world frame (rigidly), therefore lie at whole-millimetre distances from one point: the
camera centre. Exported scans often keep the points but not the camera pose; the centre is
what a depth-bias correction scales about, so it is recovered here:

1. coarse: neighbouring points see almost the same ray, so the *difference* of their ranges
   is a whole number for any centre roughly in the right direction: candidates on spheres
   of 0.3-1.3 m around the points are scored by how close to whole those differences are;
2. fine: the best candidate is refined on shrinking grids (10 mm to 0.01 mm) by how close
   to whole the ranges themselves are.

The score is |mean exp(2 pi i r / quantum)|: 1 when every range is whole, about
1/sqrt(N) for points with no common centre (a fusion of many frames, a resampled cloud).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from registration.calibration import CalibrationView
from registration.frames import F64, as_transform, invert

COARSE_DISTANCES_MM = (300.0, 450.0, 600.0, 800.0, 1000.0, 1300.0)
COARSE_DIRECTIONS = 1500
# Pattern search: (pair separation in quanta, 0 = the ranges themselves; step sizes). A
# pair d apart stays whole within ~0.2 quanta while the centre is off by less than about
# 0.2 * range / d sideways: short pairs find the basin, the ranges pin it.
FINE_STAGES = ((2.0, (20.0, 10.0)), (10.0, (5.0, 2.0)), (40.0, (1.0, 0.5)), (0.0, (0.3, 0.1, 0.03, 0.01)))
SAMPLE = 2000  # points (and pairs) scored per candidate
COARSE_PAIRS = 500  # enough: a right candidate scores ~0.95, a wrong one ~1/sqrt(500)
CHUNK = 256  # candidates scored at once (memory: CHUNK x SAMPLE x 3 doubles)


@dataclass(frozen=True)
class RayCentre:
    centre_mm: F64  # in the points' frame
    score: float  # 1: every range a whole quantum; ~1/sqrt(N): no common centre
    median_range_mm: float


def ray_centre(points_mm: F64, quantum_mm: float = 1.0, seed: int = 0) -> RayCentre:
    """The camera centre of one depth frame's points (N, 3) mm, any rigid frame, assuming
    the camera stood 0.2-1.5 m from them (arm's length) and quantised range by ``quantum_mm``."""
    P = np.asarray(points_mm, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3 or len(P) < 50 or not np.all(np.isfinite(P)):
        msg = f"ray_centre needs (N >= 50, 3) finite points, got shape {P.shape}"
        raise ValueError(msg)
    P = P / quantum_mm
    rng = np.random.default_rng(seed)
    c = _coarse(P, rng)
    for separation, steps in FINE_STAGES:
        A, B = _pairs(P, separation, rng)
        for step in steps:
            c = _pattern_search(A, B, c, step / quantum_mm)
    r = np.linalg.norm(P - c, axis=1)
    return RayCentre(c * quantum_mm, _whole(r), float(np.median(r)) * quantum_mm)


def world_scan_view(
    points_world_mm: F64, T_world_model: F64, min_score: float = 0.9
) -> tuple[CalibrationView, RayCentre]:
    """A depth frame exported in the headset's world frame (no camera pose kept) and its
    trusted registration, as a calibration view: the camera centre recovered here, the
    points about it (the camera's orientation does not matter to a range correction).
    ``ValueError`` (one line) when the points have no single camera centre."""
    found = ray_centre(points_world_mm)
    if not found.score >= min_score:
        msg = f"the points have no single camera centre (score {found.score:.2f} < {min_score:g}): a fusion of frames, or resampled"
        raise ValueError(msg)
    T_world_sensor = np.eye(4)
    T_world_sensor[:3, 3] = found.centre_mm
    T_sensor_model = invert(T_world_sensor) @ as_transform(T_world_model, "T_world_model")
    points = np.asarray(points_world_mm, dtype=np.float64) - found.centre_mm
    return CalibrationView(points, T_world_sensor, T_sensor_model), found


def _whole(x: F64, axis: int | None = None) -> Any:
    """|mean exp(2 pi i x)|: 1 when every x is a whole number."""
    return np.abs(np.mean(np.exp(2j * np.pi * x), axis=axis))


def _pairs(P: F64, separation: float, rng: np.random.Generator) -> tuple[F64, F64 | None]:
    """Up to SAMPLE point pairs about ``separation`` apart (B None: the points alone)."""
    if separation == 0.0:
        return P[rng.choice(len(P), min(SAMPLE, len(P)), replace=False)], None
    i = rng.integers(0, len(P), 50 * SAMPLE)
    if separation <= 2.0:  # nearest neighbours: random pairs are rarely this close
        d, j = cKDTree(P).query(P[i[:SAMPLE]], k=2)
        i, j, d = i[:SAMPLE], j[:, 1], d[:, 1]
        keep = d < 4.0 * np.median(d)  # not across depth edges
    else:
        j = rng.integers(0, len(P), len(i))
        d = np.linalg.norm(P[i] - P[j], axis=1)
        keep = (d > separation / 2) & (d < 2 * separation)
    i, j = i[keep][:SAMPLE], j[keep][:SAMPLE]
    return P[i], P[j]


def _scores(A: F64, B: F64 | None, cand: F64) -> F64:
    out = np.empty(len(cand))
    for k in range(0, len(cand), CHUNK):
        C = cand[k : k + CHUNK, None, :]
        r = np.linalg.norm(A[None] - C, axis=2)
        if B is not None:
            r -= np.linalg.norm(B[None] - C, axis=2)
        out[k : k + CHUNK] = _whole(r, axis=1)
    return out


def _coarse(P: F64, rng: np.random.Generator) -> F64:
    """Best candidate on spheres around the points by neighbours' range differences."""
    A, B = _pairs(P, 2.0, rng)
    A, B = A[:COARSE_PAIRS], B[:COARSE_PAIRS] if B is not None else None
    dirs = _sphere(COARSE_DIRECTIONS)
    cand = np.concatenate([P.mean(axis=0) + D * dirs for D in COARSE_DISTANCES_MM])
    out: F64 = cand[int(np.argmax(_scores(A, B, cand)))]
    return out


def _pattern_search(A: F64, B: F64 | None, c: F64, step: float, max_moves: int = 30) -> F64:
    """Move to the best of the 27 neighbours ``step`` apart until the centre is best (a
    grid would stall on the long ridge along the view axis, where whole-ness varies slowly)."""
    for _ in range(max_moves):
        s = _scores(A, B, c + step * _NEIGHBOURS)
        best = int(np.argmax(s))
        if best == _CENTRE:
            break
        c = c + step * _NEIGHBOURS[best]
    return c


_NEIGHBOURS = np.stack(np.meshgrid(*[np.arange(-1.0, 2.0)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
_CENTRE = 13  # index of (0, 0, 0) in _NEIGHBOURS


def _sphere(n: int) -> F64:
    """``n`` near-uniform unit vectors (Fibonacci sphere)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)
