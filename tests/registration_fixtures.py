"""Synthetic test geometry for the registration tests: an analytic head-like surface.

The head is a star-shaped surface around its centre (so it is closed and outward
oriented by construction) in LPS millimetres: an ellipsoid skull with a nose, brow,
chin and two ears, the face looking towards -y. The nose and ears break the symmetry
that would otherwise make the pose unobservable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from registration.frames import F64, se3_exp
from registration.model import SurfaceModel
from registration.simulator import HeadsetSimulator, NoiseModel, SimFrame

HEAD_CENTRE = np.array([5.0, 20.0, -120.0])  # deliberately not the origin
DEEP_TARGET = HEAD_CENTRE + np.array([10.0, -20.0, 15.0])  # a lesion ~60 mm under the face


def _bump(d: F64, axis: F64, width: float) -> F64:
    """Gaussian bump on the unit sphere around ``axis`` (angular width in radians)."""
    cos = d @ (axis / np.linalg.norm(axis))
    return np.exp(-(1.0 - cos) / (width**2 / 2.0))


def head_radius(d: F64) -> F64:
    """Radius (mm) of the head surface in unit directions ``d`` (N, 3), LPS."""
    a = np.array([75.0, 95.0, 110.0])  # left-right, front-back, up-down semi-axes
    r = 1.0 / np.sqrt(np.sum((d / a) ** 2, axis=1))
    r += 24.0 * _bump(d, np.array([0.0, -1.0, -0.15]), 0.16)  # nose
    r += 6.0 * _bump(d, np.array([0.0, -1.0, 0.35]), 0.35)  # brow
    r += 8.0 * _bump(d, np.array([0.0, -0.8, -0.8]), 0.25)  # chin
    r += 14.0 * _bump(d, np.array([1.0, 0.05, 0.0]), 0.12)  # left ear
    r += 14.0 * _bump(d, np.array([-1.0, 0.05, 0.0]), 0.12)  # right ear
    r -= 7.0 * _bump(d, np.array([0.45, -0.85, 0.1]), 0.12)  # eye sockets
    r -= 7.0 * _bump(d, np.array([-0.45, -0.85, 0.1]), 0.12)
    return r


@lru_cache(maxsize=4)
def head_mesh(resolution: int = 120) -> tuple[F64, NDArray[np.int64]]:
    """(vertices_mm, triangles) of the synthetic head; ~resolution^2 * 2 vertices."""
    import open3d as o3d

    sphere = o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=resolution)
    d = np.asarray(sphere.vertices)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    V = HEAD_CENTRE + d * head_radius(d)[:, None]
    F = np.asarray(sphere.triangles, dtype=np.int64)
    # Keep outward orientation: flip if the signed volume is negative.
    a, b, c = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    if np.sum(np.einsum("ij,ij->i", a - HEAD_CENTRE, np.cross(b - a, c - a))) < 0:
        F = F[:, ::-1].copy()
    return V, F


def plane_mesh(size_mm: float = 300.0, n: int = 120) -> tuple[F64, NDArray[np.int64]]:
    """A flat square in the z=0 plane facing +z: a degenerate view for any registration."""
    u = np.linspace(-size_mm / 2, size_mm / 2, n)
    X, Y = np.meshgrid(u, u)
    V = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], axis=1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    F = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return V, F.astype(np.int64)


def perturbation(rot_deg: float, trans_mm: float, seed: int = 0) -> F64:
    """A rigid transform rotating by ``rot_deg`` about a random axis and translating
    by ``trans_mm`` in a random direction."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    T = se3_exp(np.concatenate([np.radians(rot_deg) * axis, np.zeros(3)]))
    T[:3, 3] = trans_mm * direction
    return T


def about(T: F64, centre: F64) -> F64:
    """Conjugate ``T`` so that its rotation acts about ``centre`` instead of the origin."""
    A = np.eye(4)
    A[:3, 3] = centre
    B = np.eye(4)
    B[:3, 3] = -centre
    out: F64 = A @ T @ B
    return out


@lru_cache(maxsize=2)
def head_model(resolution: int = 120) -> SurfaceModel:
    """The synthetic head prepared once per test session (shared, read-only)."""
    V, F = head_mesh(resolution)
    return SurfaceModel.from_mesh(V, F, targets={"lesion": DEEP_TARGET})


@lru_cache(maxsize=4)
def head_frames(n: int = 30, sigma_mm: float = 1.0, seed: int = 1) -> tuple[SimFrame, ...]:
    """Simulated AHAT frames of the synthetic head with occluders (shared, read-only)."""
    sim = HeadsetSimulator(head_model(), noise=NoiseModel(sigma_mm=sigma_mm), seed=seed)
    return tuple(sim.frames(n))


def target_error_mm(T_est: F64, T_true: F64, target: F64 = DEEP_TARGET) -> float:
    """Distance (mm) between a model-frame target mapped by the two poses."""
    d = (T_est[:3, :3] - T_true[:3, :3]) @ target + T_est[:3, 3] - T_true[:3, 3]
    return float(np.linalg.norm(d))


def prepared_skin_folder(ct_dir: Path, out: Path) -> Path:
    """Run the imaging part's ``scrubin prepare`` on a CT into ``out``; skip if absent."""
    import shutil
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("scrubin")
    if not exe.exists() and shutil.which("scrubin") is None:
        pytest.skip("scrubin prepare is not available")
    cmd = [str(exe if exe.exists() else "scrubin"), "prepare", str(ct_dir), "--out", str(out)]
    done = subprocess.run([*cmd, "--segments", "skin"], capture_output=True, text=True)
    if done.returncode != 0 or not (out / "manifest.json").exists():
        pytest.skip(f"scrubin prepare failed ({done.returncode}): {done.stderr[-300:]}")
    return out
