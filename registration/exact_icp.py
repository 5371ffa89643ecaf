"""Point-to-plane ICP on the exact closest points of the mesh triangles: the last stage.

The grid ICP (registration/icp.py) snaps each point to its nearest *vertex*, which on a
decimated mesh (vertices millimetres apart) leaves a quantised residual: it never quite
settles and its optimum sits a little off. The closest point on the triangles (Open3D's
ray-casting scene) is the mesh's own. Near an edge a point's closest triangle changes
with the pose, and a plain Gauss-Newton step can then hop between the two planes for
ever; each step here is therefore accepted only if the robust cost, with fresh closest
points, goes down (halving it otherwise), so the iteration descends and stops.
It runs last, from a pose already within a millimetre or so.
"""

from __future__ import annotations

import numpy as np

from registration.frames import F64, se3_exp, transform_points
from registration.icp import TUKEY_C, IcpResult, _normal_equations
from registration.model import SurfaceModel

MIN_SIGMA_MM = 0.1
SCALE_ITERATIONS = 3  # the robust scale is estimated in the first iterations only
HALVINGS = 5  # a step that does not lower the cost is halved at most this often


def exact_point_to_plane(
    model: SurfaceModel,
    points_sensor: F64,
    T_model_sensor: F64,
    *,
    gate_mm: float = 3.0,
    iterations: int = 15,
    tol_mm: float = 0.01,
    min_points: int = 6,
) -> IcpResult:
    """Robust (Tukey) point-to-plane Gauss-Newton on exact closest points; points farther
    than ``gate_mm`` from the surface are ignored. The robust scale (1.4826 MAD) is set
    in the first :data:`SCALE_ITERATIONS` iterations and then held. Converged when a
    step that lowers the cost moves points at a 100 mm lever by less than ``tol_mm``, or
    no step longer than that lowers it."""
    T = T_model_sensor.copy()
    c = model.centroid
    info, sigma, n_used, converged, it = np.zeros((6, 6)), float("inf"), 0, False, 0
    P, q, n = _closest(model, T, points_sensor)
    for it in range(1, iterations + 1):  # noqa: B007 - the count is reported
        r = np.einsum("ij,ij->i", P - q, n)
        near = np.abs(r) < gate_mm
        n_used = int(near.sum())
        if n_used < min_points:
            break
        if it <= SCALE_ITERATIONS:
            sigma = max(1.4826 * float(np.median(np.abs(r[near]))), MIN_SIGMA_MM)
        cost = _tukey_cost(r, sigma, gate_mm)
        w = np.square(np.maximum(1.0 - np.square(r[near] / (TUKEY_C * sigma)), 0.0))
        info, b = _normal_equations(P[near] - c, n[near], r[near], w)
        try:
            xi = np.negative(np.linalg.solve(info + 1e-9 * np.eye(6), b), dtype=np.float64)
        except np.linalg.LinAlgError:
            break
        accepted = False
        for _ in range(HALVINGS + 1):
            E = se3_exp(xi)
            E[:3, 3] += c - E[:3, :3] @ c
            P2, q2, n2 = _closest(model, E @ T, points_sensor)
            if _tukey_cost(np.einsum("ij,ij->i", P2 - q2, n2), sigma, gate_mm) <= cost:
                T, P, q, n, accepted = E @ T, P2, q2, n2, True
                break
            xi = 0.5 * xi
        step = float(np.linalg.norm(xi[:3]) * 100.0 + np.linalg.norm(xi[3:]))
        if step < tol_mm or not accepted:  # settled, or no descent left at this resolution
            converged = True
            break
    return IcpResult(T, info, c.copy(), sigma, n_used, it, converged)


def _closest(model: SurfaceModel, T: F64, points_sensor: F64) -> tuple[F64, F64, F64]:
    """Model-frame points, their closest points on the triangles and those triangles'
    unit normals (sign irrelevant)."""
    import open3d as o3d

    P = transform_points(T, points_sensor)
    hit = model.raycasting_scene.compute_closest_points(o3d.core.Tensor.from_numpy(P.astype(np.float32)))
    return P, hit["points"].numpy().astype(np.float64), hit["primitive_normals"].numpy().astype(np.float64)


def _tukey_cost(r: F64, sigma: float, gate_mm: float) -> float:
    """Sum of Tukey's rho over the residuals (points beyond the gate cost the maximum)."""
    k = TUKEY_C * sigma
    u2 = np.square(np.minimum(np.abs(r), gate_mm) / k)
    rho = np.where(u2 < 1.0, 1.0 - np.power(1.0 - np.minimum(u2, 1.0), 3), 1.0)
    return float(np.sum(rho))
