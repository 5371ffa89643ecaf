"""Occupancy fields: the fraction of each (block of) voxel(s) inside a segment, 0..1.

Meshing a block-averaged occupancy field at 0.5 instead of a binary mask gives a sub-voxel
surface (partial volume is kept) on a coarser grid, which is what makes meshing fast without
the staircase of a binary mask. Arrays are numpy [z, y, x]; geometry is (x, y, z) order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imaging.geometry import Geometry

ISO_LEVEL = 0.5
# Working grid spacing aimed at for meshing: about 1 mm suits a headset model of ~200k
# triangles and keeps the surface within a fraction of a voxel of the full-resolution one.
WORKING_SPACING_MM = 1.0


@dataclass(frozen=True)
class Field:
    values: npt.NDArray[np.float32]  # [z, y, x], 0 outside .. 1 inside
    geometry: Geometry  # grid of ``values`` (cropped, block-averaged)

    def crop(self, box: tuple[slice, slice, slice], values: npt.NDArray[np.float32] | None = None) -> Field:
        """The field within a [z, y, x] box (optionally with new values of the box's shape)."""
        cropped = self.values[box] if values is None else values
        start = (box[2].start, box[1].start, box[0].start)
        size = (cropped.shape[2], cropped.shape[1], cropped.shape[0])
        return Field(cropped, self.geometry.sub_grid(start, (1, 1, 1), size))


def block_factor(spacing: tuple[float, float, float], target_mm: float = WORKING_SPACING_MM) -> tuple[int, int, int]:
    """Voxels per block along (x, y, z) so that blocks are about ``target_mm`` wide."""
    f = [max(1, int(round(target_mm / s))) for s in spacing]
    return (f[0], f[1], f[2])


def bounding_box(mask: npt.NDArray[np.bool_], pad: int = 0) -> tuple[slice, slice, slice] | None:
    """The [z, y, x] slices enclosing the true voxels of ``mask`` (grown by ``pad``), or None."""
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        lo = max(0, int(hits[0]) - pad)
        hi = min(mask.shape[axis], int(hits[-1]) + 1 + pad)
        out.append(slice(lo, hi))
    return out[0], out[1], out[2]


def block_mean(
    mask: npt.NDArray[np.bool_],
    geometry: Geometry,
    factor: tuple[int, int, int],
    crop: tuple[slice, slice, slice] | None = None,
) -> Field:
    """Average ``mask`` (full grid [z, y, x]) over blocks of ``factor`` (x, y, z) voxels.

    ``crop`` restricts the work to a [z, y, x] box; it is first aligned to the block grid.
    """
    fx, fy, fz = factor
    if crop is None:
        crop = (slice(0, mask.shape[0]), slice(0, mask.shape[1]), slice(0, mask.shape[2]))
    starts = [(s.start // f) * f for s, f in zip(crop, (fz, fy, fx), strict=True)]
    stops = [min(dim, -(-s.stop // f) * f) for s, f, dim in zip(crop, (fz, fy, fx), mask.shape, strict=True)]
    sub = mask[starts[0] : stops[0], starts[1] : stops[1], starts[2] : stops[2]]
    pad = [(0, (-n) % f) for n, f in zip(sub.shape, (fz, fy, fx), strict=True)]
    if any(p[1] for p in pad):
        sub = np.pad(sub, pad)
    nz, ny, nx = (n // f for n, f in zip(sub.shape, (fz, fy, fx), strict=True))
    if factor == (1, 1, 1):
        values = sub.astype(np.float32)
    else:
        values = _strided_block_sum(sub, (fz, fy, fx)).astype(np.float32)
        values *= np.float32(1.0 / (fx * fy * fz))
    grid = geometry.sub_grid((starts[2], starts[1], starts[0]), factor, (nx, ny, nz))
    return Field(values, grid)


def _strided_block_sum(mask: npt.NDArray[np.bool_], factor_zyx: tuple[int, int, int]) -> npt.NDArray[np.uint16]:
    """Sum of each block, as a sum of strided views: 5-10x faster than reshape().sum() here."""
    fz, fy, fx = factor_zyx
    dtype = np.uint8 if fx * fy * fz < 256 else np.uint16
    raw = mask.view(np.uint8)
    total: npt.NDArray[np.uint16] | None = None
    for dz in range(fz):
        for dy in range(fy):
            for dx in range(fx):
                part = raw[dz::fz, dy::fy, dx::fx]
                if total is None:
                    total = part.astype(dtype)
                else:
                    total += part
    assert total is not None
    return total


MAX_COARSE_SPACING_MM = 2.0


def coarsen_in_plane(field: Field) -> Field | None:
    """Halve the in-plane (x, y) resolution by averaging 2x2 blocks, or None if that would
    exceed ``MAX_COARSE_SPACING_MM``. The slice axis is left alone: CT slices are rarely
    thinner than pixels, and averaging across them was seen to move the caps of open
    structures (the neck, a hollow phantom's base) by several millimetres."""
    sx, sy, _ = field.geometry.spacing
    if max(sx, sy) * 2 > MAX_COARSE_SPACING_MM:
        return None
    values = field.values
    nz, ny, nx = values.shape
    values = np.pad(values, ((0, 0), (0, ny % 2), (0, nx % 2)))
    coarse = 0.25 * (values[:, 0::2, 0::2] + values[:, 1::2, 0::2] + values[:, 0::2, 1::2] + values[:, 1::2, 1::2])
    size = (coarse.shape[2], coarse.shape[1], coarse.shape[0])
    return Field(coarse.astype(np.float32), field.geometry.sub_grid((0, 0, 0), (2, 2, 1), size))
