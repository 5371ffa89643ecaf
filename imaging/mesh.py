"""Triangle meshes in patient LPS millimetres."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

RGBA = tuple[float, float, float, float]


@dataclass(frozen=True)
class Mesh:
    """``vertices`` (N, 3) float32 LPS mm; ``triangles`` (M, 3) uint32, counter-clockwise
    seen from outside (normals point out of the structure)."""

    name: str
    vertices: npt.NDArray[np.float32]
    triangles: npt.NDArray[np.uint32]
    color: RGBA

    @property
    def n_triangles(self) -> int:
        return int(self.triangles.shape[0])

    def bounds_mm(self) -> tuple[list[float], list[float]]:
        lo = self.vertices.min(axis=0)
        hi = self.vertices.max(axis=0)
        return [round(float(v), 3) for v in lo], [round(float(v), 3) for v in hi]

    @cached_property
    def vertex_normals(self) -> npt.NDArray[np.float32]:
        """Area-weighted unit vertex normals (computed once per mesh)."""
        v = self.vertices.astype(np.float64)
        t = self.triangles.astype(np.int64)
        face = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
        n = v.shape[0]
        corners = t.ravel()
        normals = np.stack([np.bincount(corners, np.repeat(face[:, axis], 3), n) for axis in range(3)], axis=1)
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = (normals / np.maximum(length, 1e-12)).astype(np.float32)
        return unit

    def signed_volume_mm3(self) -> float:
        v = self.vertices.astype(np.float64)
        t = self.triangles.astype(np.int64)
        return float(np.einsum("ij,ij->i", v[t[:, 0]], np.cross(v[t[:, 1]], v[t[:, 2]])).sum() / 6.0)
