"""Point thinning: fewer points, still spread over the whole set."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from registration.frames import F64


def every_kth(items: NDArray[Any], max_items: int | None) -> NDArray[Any]:
    """At most ``max_items`` of ``items``, evenly spread: every k-th in their order (a
    depth image's raster order spreads them over the image). None keeps everything."""
    if max_items is None or max_items <= 0 or len(items) <= max_items:
        return items
    return items[:: -(-len(items) // max_items)]


def evenly_spaced(items: NDArray[Any], max_items: int) -> NDArray[Any]:
    """At most ``max_items`` of ``items``, evenly spaced in their order (a depth image's
    raster order spreads them over the view); unlike :func:`every_kth`, it keeps the
    number asked for (every 2nd of 6,100 would leave 3,050)."""
    n = len(items)
    if n <= max_items:
        return items
    return items[(np.arange(max_items) * n) // max_items]


def first_per_voxel(points_mm: F64, voxel_mm: float) -> NDArray[np.int64]:
    """Indices (ascending) of the first point in each occupied ``voxel_mm`` cube: a cheap
    uniform thinning that keeps real points (no averaging across a depth edge)."""
    if len(points_mm) == 0:
        return np.zeros(0, dtype=np.int64)
    cells = np.floor(points_mm / voxel_mm).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    flat = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]  # one key per cell
    _, first = np.unique(flat, return_index=True)
    out: NDArray[np.int64] = np.sort(first)
    return out
