"""Synthetic tracked-pointer traces on a patient model, with ground truth.

Real pointer data (a tracked stylus touched or swept over the face, in the tracker's
frame) looks like this, and these traces are generated to match it:

* *dots*: 20-200 single touches 3-13 mm apart over the upper face;
* *lines*: continuous sweeps at 0.2-0.4 mm spacing along a few lines over the forehead,
  the orbital rims and the nose (1,000-4,000 points);
* ~0.5 mm isotropic noise, a few *lifted* points (the tip lifted 10-40 mm off the skin
  while the pedal was down), and the whole trace in a random rigid tracker frame far
  from the model's origin.

Surface points are found by casting rays from in front of the face towards the back of
the head, so only skin a pointer can touch is traced, whatever the mesh's normals say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from registration.frames import F64, invert, se3_exp, transform_points
from registration.model import SurfaceModel

ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])  # the face looks towards -y
SUPERIOR_LPS = np.array([0.0, 0.0, 1.0])
LEFT_LPS = np.array([1.0, 0.0, 0.0])
UPPER_FACE_HALF_WIDTH_MM = 55.0  # either side of the nose
UPPER_FACE_BELOW_MM = 10.0  # below the nose tip
UPPER_FACE_ABOVE_MM = 75.0  # above the nose tip (the forehead)

TraceKind = Literal["dots", "lines"]


@dataclass(frozen=True)
class SimTrace:
    """A synthetic trace: ``points_mm`` in the tracker frame, ``T_sensor_model`` maps
    model mm into it, ``lifted`` flags the points lifted off the skin."""

    points_mm: F64
    T_sensor_model: F64
    lifted: NDArray[np.bool_]
    kind: TraceKind


def nose_tip(model: SurfaceModel) -> F64:
    """The most anterior skin point of the central third of the head (LPS mm)."""
    c = model.centroid
    lateral = np.abs(model.vertices[:, 0] - c[0])
    central = model.vertices[lateral < 0.2 * (model.bounds[1, 0] - model.bounds[0, 0])]
    out: F64 = central[np.argmin(central[:, 1])].copy()
    return out


def face_hits(model: SurfaceModel, xz: F64) -> F64:
    """Skin points seen from the front at (x, z) positions (K, 2): a ray from in front
    of the face along +y (posterior); misses are dropped."""
    import open3d as o3d

    y0 = model.bounds[0, 1] - 50.0
    rays = np.zeros((len(xz), 6), dtype=np.float32)
    rays[:, 0], rays[:, 1], rays[:, 2] = xz[:, 0], y0, xz[:, 1]
    rays[:, 4] = 1.0
    t = model.raycasting_scene.cast_rays(o3d.core.Tensor.from_numpy(rays))["t_hit"].numpy().astype(np.float64)
    ok = np.isfinite(t)
    out = np.stack([xz[ok, 0], y0 + t[ok], xz[ok, 1]], axis=1)
    return out


def _dots(model: SurfaceModel, n: int, rng: np.random.Generator) -> F64:
    """``n`` touches over the upper face, none closer than 3 mm, neighbours 3-13 mm."""
    tip = nose_tip(model)
    grid = np.stack(
        np.meshgrid(
            np.arange(-UPPER_FACE_HALF_WIDTH_MM, UPPER_FACE_HALF_WIDTH_MM, 1.0),
            np.arange(-UPPER_FACE_BELOW_MM, UPPER_FACE_ABOVE_MM, 1.0),
        ),
        axis=-1,
    ).reshape(-1, 2)
    cand = face_hits(model, grid + tip[[0, 2]])
    cand = cand[rng.permutation(len(cand))]
    # Spacing chosen so that n dots cover the region: about area / n per dot.
    area = 2 * UPPER_FACE_HALF_WIDTH_MM * (UPPER_FACE_BELOW_MM + UPPER_FACE_ABOVE_MM)
    spacing = float(np.clip(np.sqrt(area / max(n, 1)), 3.0, 13.0))
    picked: list[F64] = []
    for p in cand:
        if all(np.linalg.norm(p - q) >= spacing for q in picked):
            picked.append(p)
            if len(picked) == n:
                break
    return np.asarray(picked)


# Sweeps over the upper face, (x0, z0) -> (x1, z1) mm relative to the nose tip, in the
# order a surgeon would trace them: forehead, brows / orbital rims, nose, then more rows.
SWEEPS = (
    ((-50.0, 55.0), (50.0, 55.0)),  # forehead
    ((-45.0, 32.0), (-8.0, 28.0)),  # right brow / upper orbital rim
    ((8.0, 28.0), (45.0, 32.0)),  # left brow / upper orbital rim
    ((0.0, 40.0), (0.0, -5.0)),  # nose, bridge to tip
    ((-45.0, 8.0), (-15.0, 5.0)),  # right lower orbital rim
    ((15.0, 5.0), (45.0, 8.0)),  # left lower orbital rim
    ((-50.0, 68.0), (50.0, 68.0)),  # upper forehead
    ((-30.0, 70.0), (-30.0, 30.0)),  # forehead verticals
    ((30.0, 70.0), (30.0, 30.0)),
    ((-50.0, 45.0), (50.0, 45.0)),
    ((-15.0, 70.0), (-15.0, 35.0)),
    ((15.0, 70.0), (15.0, 35.0)),
)


def _lines(model: SurfaceModel, n: int, rng: np.random.Generator) -> F64:
    """About ``n`` points 0.2-0.4 mm apart along sweeps over the upper face; as many
    sweeps as that takes (the step shrinks when all are used)."""
    tip = nose_tip(model)
    step = rng.uniform(0.2, 0.4)
    chosen, length = [], 0.0
    for (x0, z0), (x1, z1) in SWEEPS:
        if length >= n * step:
            break
        dz = rng.uniform(-4.0, 4.0)
        chosen.append(((x0, z0 + dz), (x1, z1 + dz)))
        length += float(np.hypot(x1 - x0, z1 - z0))
    per_mm = n / length  # 2D samples per mm: the 3D curve is a little longer, so close to n
    out = []
    for (x0, z0), (x1, z1) in chosen:
        k = max(int(np.hypot(x1 - x0, z1 - z0) * per_mm), 2)
        s = np.linspace(0.0, 1.0, k)
        xz = np.stack([x0 + s * (x1 - x0), z0 + s * (z1 - z0)], axis=1) + tip[[0, 2]]
        out.append(face_hits(model, xz))
    return np.concatenate(out)


# Where the imaging team marks anatomical landmarks on a face, as (x, z) offsets (mm) from
# the nose tip seen from the front; the skin point behind each is the landmark.
FACE_LANDMARKS = {
    "nose_tip": (0.0, 0.0),
    "nasion": (0.0, 45.0),
    "right_canthus": (-45.0, 30.0),
    "left_canthus": (45.0, 30.0),
}


def face_landmarks(model: SurfaceModel) -> dict[str, F64]:
    """The :data:`FACE_LANDMARKS` on the model's skin (model mm); missed rays are left out."""
    tip = nose_tip(model)
    out = {}
    for name, (dx, dz) in FACE_LANDMARKS.items():
        hit = face_hits(model, np.array([[tip[0] + dx, tip[2] + dz]]))
        if len(hit):
            out[name] = hit[0]
    return out


def touched_landmarks(
    landmarks_model: dict[str, F64], T_sensor_model: F64, error_mm: tuple[float, float], seed: int
) -> dict[str, F64]:
    """Where a surgeon touches each landmark, in the sensor frame: the true position off by
    ``error_mm`` (low, high) in a random direction."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, p in landmarks_model.items():
        d = rng.normal(size=3)
        d *= rng.uniform(*error_mm) / np.linalg.norm(d)
        out[name] = transform_points(T_sensor_model, (p + d)[None])[0]
    return out


def random_tracker_pose(rng: np.random.Generator, distance_mm: float, centre: F64) -> F64:
    """A uniformly random rotation about ``centre`` and a translation putting the model
    ``distance_mm`` from the tracker origin: T_sensor_model."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    d = rng.normal(size=3)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = distance_mm * d / np.linalg.norm(d) - R @ centre
    return T


def simulate_trace(
    model: SurfaceModel,
    kind: TraceKind,
    n_points: int,
    *,
    seed: int = 0,
    noise_mm: float = 0.5,
    lifted: int = 3,
    distance_mm: float = 1500.0,
    T_sensor_model: F64 | None = None,
) -> SimTrace:
    """A ``kind`` trace of about ``n_points`` on the model's upper face, ``lifted``
    points lifted 10-40 mm off the skin, in a random tracker frame ``distance_mm`` from
    the tracker origin (or the given ``T_sensor_model``)."""
    rng = np.random.default_rng(seed)
    pts = _dots(model, n_points, rng) if kind == "dots" else _lines(model, n_points, rng)
    pts = pts + rng.normal(scale=noise_mm, size=pts.shape)
    flags = np.zeros(len(pts), dtype=bool)
    if lifted:
        idx = rng.choice(len(pts), min(lifted, len(pts)), replace=False)
        off = ANTERIOR_LPS + 0.3 * rng.normal(size=(len(idx), 3))
        off /= np.linalg.norm(off, axis=1, keepdims=True)
        pts[idx] += off * rng.uniform(10.0, 40.0, size=(len(idx), 1))
        flags[idx] = True
    T = random_tracker_pose(rng, distance_mm, model.centroid) if T_sensor_model is None else T_sensor_model
    return SimTrace(transform_points(T, pts), T.copy(), flags, kind)


def moved(T: F64, rot_deg: float, trans_mm: float, centre: F64, seed: int) -> F64:
    """``T`` (T_sensor_model) with the model turned by ``rot_deg`` about a random axis
    through ``centre`` (model mm) and shifted by ``trans_mm`` in a random direction."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    shift = rng.normal(size=3)
    shift *= trans_mm / np.linalg.norm(shift)
    D = se3_exp(np.concatenate([axis * np.radians(rot_deg), np.zeros(3)]))
    D[:3, 3] = centre - D[:3, :3] @ centre + shift
    return T @ D


def target_error_mm(T_estimate: F64, T_truth: F64, target_model_mm: F64) -> float:
    """Distance (mm) between where two T_sensor_model put a model-frame target."""
    p = np.asarray(target_model_mm, dtype=np.float64)[None]
    return float(np.linalg.norm(transform_points(T_estimate, p) - transform_points(T_truth, p)))


__all__ = ["SimTrace", "face_hits", "invert", "moved", "nose_tip", "simulate_trace", "target_error_mm"]
