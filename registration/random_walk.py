"""Harder depth sequences for the tracker: a head that jitters, and random-depth outliers.

:class:`~registration.simulator.HeadsetSimulator` moves the headset smoothly, which a
constant-velocity prediction follows well. :func:`random_walk_frames` renders the same
scene along a random walk instead (every frame a new random step, so the last velocity
says nothing about the next) and replaces a share of the valid pixels by random depths
over the frame's depth range, on top of the simulator's hands, instrument, drape and
table. It is the outside check of issue 14 (1 mm noise, 5 % outliers, ~3 mm per frame)
made reproducible for the benchmark and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from registration.depth import DepthFrame
from registration.frames import F64, se3_exp, transform_points
from registration.simulator import HeadsetSimulator, SimFrame

OUTLIER_PERCENTILES = (1.0, 99.0)  # outlier depths are drawn between these of the frame's


@dataclass(frozen=True)
class RandomWalk:
    step_mm: float = 3.0  # translation per frame, in a new random direction every frame
    step_deg: float = 0.3  # rotation per frame about the face point, random axis
    outliers: float = 0.05  # share of valid pixels replaced by a random depth


def random_walk_frames(sim: HeadsetSimulator, n: int, walk: RandomWalk, seed: int = 0) -> list[SimFrame]:
    """``n`` frames of ``sim``'s scene from ``sim.pose(0)`` along a random walk of the
    head in the sensor frame (``walk``: steps and outliers; noise and occluders are the
    simulator's). Outlier pixels are not in the frames' ``model_mask``."""
    rng = np.random.default_rng(seed)
    T = sim.pose(0.0)
    frames = []
    for k in range(n):
        f = sim.render(T, int(round(k * 1e9 / sim.rate_hz)))
        depth = f.depth.depth.copy()
        valid = np.flatnonzero(depth)
        lo, hi = np.percentile(depth.flat[valid].astype(np.float64), OUTLIER_PERCENTILES)
        bad = rng.choice(valid, int(walk.outliers * len(valid)), replace=False)
        depth.flat[bad] = rng.uniform(lo, hi, len(bad)).round().astype(depth.dtype)
        mask = f.model_mask.copy()
        mask.flat[bad] = False
        frames.append(SimFrame(DepthFrame(depth, f.depth.intrinsics), f.T_sensor_model, f.timestamp_ns, mask))
        T = _step(rng, walk, transform_points(T, sim.focus[None])[0]) @ T
    return frames


def _step(rng: np.random.Generator, walk: RandomWalk, centre: F64) -> F64:
    """A rigid step in the sensor frame: ``walk.step_deg`` about a random axis through
    ``centre`` (sensor mm) and ``walk.step_mm`` in a random direction."""
    axis, direction = rng.normal(size=(2, 3))
    E = se3_exp(np.concatenate([np.radians(walk.step_deg) * axis / np.linalg.norm(axis), np.zeros(3)]))
    E[:3, 3] = centre - E[:3, :3] @ centre + walk.step_mm * direction / np.linalg.norm(direction)
    return E
