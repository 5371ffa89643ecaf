"""Physical geometry of a voxel grid in patient LPS millimetres.

Axis conventions, declared once:
- SimpleITK and this class index voxels as (i, j, k) = (x, y, z) order.
- numpy arrays taken from SimpleITK are indexed [k, j, i] (ZYX); see ``NUMPY_AXIS_ORDER``.
- A voxel index maps to the patient frame (LPS: +x left, +y posterior, +z superior, mm) as
  ``p = origin + direction @ (spacing * ijk)``; the voxel centre sits at integer ijk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NUMPY_AXIS_ORDER = "ZYX"
PATIENT_FRAME = "LPS"
UNITS = "mm"

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Geometry:
    """Grid geometry: ``size`` and ``spacing`` in (x, y, z) order, lengths in mm."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major, columns are the grid axes in LPS

    @property
    def direction_matrix(self) -> FloatArray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def voxel_volume_mm3(self) -> float:
        sx, sy, sz = self.spacing
        return float(sx * sy * sz)

    @property
    def n_voxels(self) -> int:
        x, y, z = self.size
        return int(x) * int(y) * int(z)

    def index_to_lps(self, ijk: npt.ArrayLike) -> FloatArray:
        """Continuous voxel indices (..., 3) in (i, j, k) order to LPS mm points (..., 3)."""
        idx = np.asarray(ijk, dtype=np.float64)
        scaled = idx * np.asarray(self.spacing)
        points: FloatArray = scaled @ self.direction_matrix.T + np.asarray(self.origin)
        return points

    def sub_grid(
        self, start_ijk: tuple[int, int, int], factor: tuple[int, int, int], size: tuple[int, int, int]
    ) -> Geometry:
        """Geometry of a block-averaged crop: block (0,0,0) covers voxels start..start+factor-1.

        The centre of a block of ``f`` voxels lies at index ``start + (f - 1) / 2``.
        """
        centre = np.asarray(start_ijk, dtype=np.float64) + (np.asarray(factor) - 1) / 2.0
        origin = self.index_to_lps(centre)
        spacing = tuple(float(s * f) for s, f in zip(self.spacing, factor, strict=True))
        return Geometry(
            size=size,
            spacing=(spacing[0], spacing[1], spacing[2]),
            origin=(float(origin[0]), float(origin[1]), float(origin[2])),
            direction=self.direction,
        )

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return {
            "size_xyz": list(self.size),
            "spacing_mm": list(self.spacing),
            "origin_mm": list(self.origin),
            "direction": list(self.direction),
        }
