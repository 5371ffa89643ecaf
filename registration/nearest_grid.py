"""A voxel grid holding, for every cell near a surface, the index of its nearest vertex.

Correspondence search then costs one gather per point instead of a KD-tree search: the
reason tracking and the pose searches are fast. The price is a quantisation of the query
point by half a cell, which for point-to-plane residuals on a surface with radius of
curvature R changes the residual by ~(h/2)^2 / (2R), far below the noise.

Cells farther than ``band_mm`` from every vertex hold -1, and so do the grid's border
cells, so a point off the grid is clipped onto a -1 cell: no separate bounds test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from registration.frames import F64


@dataclass(frozen=True)
class NearestGrid:
    cell_mm: float
    band_mm: float
    cells: NDArray[np.int32]  # flat, C order over ``dims``; -1 = off the band
    dims: tuple[int, int, int]
    offset: F64  # cell index = point / cell_mm + offset, truncated

    @classmethod
    def build(cls, vertices_mm: F64, tree: cKDTree, cell_mm: float, band_mm: float) -> NearestGrid:
        """Nearest-vertex index of every cell centre within ``band_mm`` of a vertex."""
        h, band = float(cell_mm), float(band_mm)
        lo, hi = vertices_mm.min(axis=0), vertices_mm.max(axis=0)
        origin = lo - band
        shape = np.ceil((hi + band - origin) / h).astype(np.int64) + 1
        occ = np.zeros(tuple(shape), dtype=bool)
        ijk = np.floor((vertices_mm - origin) / h + 0.5).astype(np.int64)
        occ[tuple(ijk.T)] = True
        # Euclidean (not city-block) dilation, so diagonal cells of the band are kept.
        occ = ndimage.distance_transform_edt(~occ) * h <= band + h
        where = np.argwhere(occ)
        dist, idx = tree.query(origin + where * h, workers=-1, distance_upper_bound=band)
        grid = np.full(int(np.prod(shape)), -1, dtype=np.int32)
        ok = np.isfinite(dist)
        grid[np.ravel_multi_index(where[ok].T, tuple(shape))] = idx[ok]
        g3 = grid.reshape(tuple(shape))  # border cells must stay -1 (see the module doc)
        g3[[0, -1]] = g3[:, [0, -1]] = g3[:, :, [0, -1]] = -1
        dims = (int(shape[0]), int(shape[1]), int(shape[2]))
        return cls(h, band, grid, dims, 0.5 - origin / h)

    def lookup(self, points_mm: F64) -> NDArray[np.int32]:
        """Nearest-vertex index of each (N, 3) point; -1 off the band."""
        ijk = (points_mm * (1.0 / self.cell_mm) + self.offset).astype(np.intp)
        flat = np.ravel_multi_index(tuple(ijk.T), self.dims, mode="clip")
        out: NDArray[np.int32] = np.take(self.cells, flat)  # take: several times faster than []
        return out
