"""The built-in SYNTHETIC head CT phantom: deterministic, generated in well under 2 s.

Nothing here comes from a patient. The head is a union of ellipsoids (cranium, face, nose,
brow, ears, neck) of soft tissue around a 7 mm skull, a brain with ventricles, a deep lesion
(the surgical target) and five radiopaque skin fiducials, lying on a head rest separated by an
air gap (so the skin segmentation must drop it). HU values follow typical CT numbers; noise is
Gaussian (12 HU) from a fixed seed. All positions are patient LPS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imaging.geometry import Geometry
from imaging.volume import SourceInfo, Volume

SYNTHETIC_STUDY_ID = "SYNTHETIC-HEAD-PHANTOM-v1"
SEED = 20261122
SPACING_MM = 1.0
# Grid in (x, y, z) voxels; 1 mm isotropic, patient centred near the origin.
SIZE_XYZ = (192, 256, 252)
ORIGIN_MM = (-95.5, -135.5, -127.5)

HU_AIR, HU_TISSUE, HU_BRAIN, HU_CSF = -1000.0, 35.0, 32.0, 8.0
HU_BONE, HU_LESION, HU_FIDUCIAL, HU_HEADREST = 1200.0, 75.0, 2400.0, 120.0
NOISE_HU = 12.0
SKULL_OFFSET_MM, SKULL_THICKNESS_MM = 5.0, 7.0
FIDUCIAL_RADIUS_MM = 3.0

# Ellipsoids (centre, semi-axes) in LPS mm: +x left, +y posterior, +z superior.
CRANIUM = ((0.0, 8.0, 35.0), (74.0, 92.0, 82.0))
SOFT_PARTS = {
    "face": ((0.0, -18.0, -28.0), (60.0, 72.0, 66.0)),
    "nose": ((0.0, -84.0, -10.0), (11.0, 20.0, 24.0)),
    "brow": ((0.0, -76.0, 26.0), (36.0, 10.0, 13.0)),
    "chin": ((0.0, -60.0, -78.0), (26.0, 16.0, 14.0)),
    "ear_left": ((74.0, 10.0, 0.0), (8.0, 15.0, 26.0)),
    "ear_right": ((-74.0, 10.0, 0.0), (8.0, 15.0, 26.0)),
}
NECK = ((0.0, 18.0), 48.0, (-125.0, -60.0))  # centre (x, y), radius, z range
VENTRICLES = (((10.0, 10.0, 45.0), (7.0, 22.0, 10.0)), ((-10.0, 10.0, 45.0), (7.0, 22.0, 10.0)))
LESION_CENTRE_MM, LESION_RADIUS_MM = (22.0, 12.0, 28.0), 8.0
# Head rest behind the occiput (cranium reaches y = 100 mm): an 8 mm air gap, like a foam pad.
HEADREST_BOX_MM = ((-85.0, 108.0, -100.0), (85.0, 118.0, 110.0))
# Fiducial directions from the cranium centre (unnormalised), deliberately asymmetric.
FIDUCIAL_DIRECTIONS = {
    "F1": (0.35, -0.9, 0.35),  # left forehead
    "F2": (-0.85, -0.35, 0.25),  # right temple
    "F3": (0.6, 0.3, 0.75),  # left parietal
    "F4": (-0.3, 0.2, 0.95),  # near the vertex, right
    "F5": (0.55, 0.8, -0.05),  # left occiput
}

LABELS = {1: "brain", 2: "lesion"}
LABEL_COLORS = {1: (0.93, 0.75, 0.72, 0.35), 2: (0.95, 0.15, 0.1, 1.0)}


@dataclass(frozen=True)
class Phantom:
    """The synthetic CT, its ground-truth labels (brain, lesion) and landmark positions."""

    volume: Volume
    labels: npt.NDArray[np.uint8]  # [z, y, x], values of ``LABELS``
    fiducials_mm: dict[str, tuple[float, float, float]]
    target_mm: tuple[float, float, float]


def make_phantom() -> Phantom:
    geometry = Geometry(SIZE_XYZ, (SPACING_MM,) * 3, ORIGIN_MM, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    grid = _Grid(geometry)
    fiducials = _fiducial_positions()
    cranium_centre, cranium_axes = CRANIUM

    head = grid.zeros()
    for centre, axes in (CRANIUM, *SOFT_PARTS.values()):
        grid.paint_ellipsoid(head, centre, axes)
    grid.paint_neck(head)
    inner, brain = grid.zeros(), grid.zeros()
    grid.paint_ellipsoid(inner, cranium_centre, _shrink(cranium_axes, SKULL_OFFSET_MM))
    grid.paint_ellipsoid(brain, cranium_centre, _shrink(cranium_axes, SKULL_OFFSET_MM + SKULL_THICKNESS_MM))
    csf, lesion, markers = grid.zeros(), grid.zeros(), grid.zeros()
    for centre, axes in VENTRICLES:
        grid.paint_ellipsoid(csf, centre, axes)
    grid.paint_ellipsoid(lesion, LESION_CENTRE_MM, (LESION_RADIUS_MM,) * 3)
    for centre in fiducials.values():
        grid.paint_ellipsoid(markers, centre, (FIDUCIAL_RADIUS_MM,) * 3)

    hu = head * (HU_TISSUE - HU_AIR) + HU_AIR
    hu += (inner - brain) * (HU_BONE - HU_TISSUE)
    hu += brain * (HU_BRAIN - HU_TISSUE) + csf * (HU_CSF - HU_BRAIN) + lesion * (HU_LESION - HU_BRAIN)
    hu += markers * (HU_FIDUCIAL - hu)
    grid.box(hu, HEADREST_BOX_MM)[...] = HU_HEADREST
    rng = np.random.default_rng(SEED)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * NOISE_HU
    voxels = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    labels = (brain >= 0.5).astype(np.uint8)
    labels[lesion >= 0.5] = 2
    source = SourceInfo(format="synthetic", study_key=SYNTHETIC_STUDY_ID, synthetic=True, notes=("synthetic phantom",))
    return Phantom(Volume(voxels, geometry, source), labels, fiducials, LESION_CENTRE_MM)


class _Grid:
    """Paints partial-volume shapes into [z, y, x] float32 arrays, each only within its box."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        nx, ny, nz = geometry.size
        self.shape = (nz, ny, nx)
        ox, oy, oz = geometry.origin
        self.coords = [o + SPACING_MM * np.arange(n, dtype=np.float32) for o, n in ((ox, nx), (oy, ny), (oz, nz))]

    def zeros(self) -> npt.NDArray[np.float32]:
        return np.zeros(self.shape, dtype=np.float32)

    def _slices(self, lo: npt.ArrayLike, hi: npt.ArrayLike) -> tuple[slice, slice, slice]:
        lo_i = np.floor((np.asarray(lo) - np.asarray(self.geometry.origin)) / SPACING_MM).astype(int)
        hi_i = np.ceil((np.asarray(hi) - np.asarray(self.geometry.origin)) / SPACING_MM).astype(int) + 1
        size = np.asarray(self.geometry.size)
        lo_i, hi_i = np.clip(lo_i, 0, size), np.clip(hi_i, 0, size)
        return slice(lo_i[2], hi_i[2]), slice(lo_i[1], hi_i[1]), slice(lo_i[0], hi_i[0])

    def _local_axes(self, zs: slice, ys: slice, xs: slice) -> tuple[npt.NDArray[np.float32], ...]:
        x = self.coords[0][xs].reshape(1, 1, -1)
        y = self.coords[1][ys].reshape(1, -1, 1)
        z = self.coords[2][zs].reshape(-1, 1, 1)
        return x, y, z

    def box(
        self, array: npt.NDArray[np.float32], box_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    ) -> npt.NDArray[np.float32]:
        return array[self._slices(*box_mm)]

    def paint_ellipsoid(
        self, out: npt.NDArray[np.float32], centre: tuple[float, float, float], axes: tuple[float, float, float]
    ) -> None:
        c, a = np.asarray(centre), np.asarray(axes)
        zs, ys, xs = self._slices(c - a - 2, c + a + 2)
        x, y, z = self._local_axes(zs, ys, xs)
        q = ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2
        # (sqrt(q) - 1) * min axis approximates the signed distance (mm) near the surface.
        np.maximum(out[zs, ys, xs], _edge((np.sqrt(q) - 1.0) * float(a.min())), out=out[zs, ys, xs])

    def paint_neck(self, out: npt.NDArray[np.float32]) -> None:
        (cx, cy), radius, (z0, z1) = NECK
        zs, ys, xs = self._slices(
            (cx - radius - 2, cy - radius - 2, z0 - 2), (cx + radius + 2, cy + radius + 2, z1 + 2)
        )
        x, y, z = self._local_axes(zs, ys, xs)
        radial = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - radius
        signed = np.maximum(radial, np.maximum(z0 - z, z - z1))
        np.maximum(out[zs, ys, xs], _edge(signed), out=out[zs, ys, xs])


def _shrink(axes: tuple[float, float, float], by: float) -> tuple[float, float, float]:
    return (axes[0] - by, axes[1] - by, axes[2] - by)


def _edge(signed_mm: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Partial-volume fraction from a signed distance (mm, negative inside), 1 mm wide ramp."""
    fraction: npt.NDArray[np.float32] = np.clip(0.5 - signed_mm / SPACING_MM, 0.0, 1.0).astype(np.float32)
    return fraction


def _fiducial_positions() -> dict[str, tuple[float, float, float]]:
    """Marker centres sitting on the cranium skin (radius outside the surface, half embedded)."""
    centre = np.asarray(CRANIUM[0])
    axes = np.asarray(CRANIUM[1])
    out = {}
    for name, direction in FIDUCIAL_DIRECTIONS.items():
        d = np.asarray(direction) / np.linalg.norm(direction)
        t = 1.0 / np.sqrt(np.sum((d / axes) ** 2))  # ray from centre hits the ellipsoid at t
        surface = centre + t * d
        normal = (surface - centre) / axes**2
        normal /= np.linalg.norm(normal)
        p = surface + normal * (FIDUCIAL_RADIUS_MM * 0.5)
        out[name] = (round(float(p[0]), 3), round(float(p[1]), 3), round(float(p[2]), 3))
    return out
