"""Content checks on a CT before it becomes a patient model: refuse, or flag; never guess.

A reader that cannot tell fills the gap with a default (1 mm for a missing or zero spacing,
0 for a NaN origin, a slope of 1, zeros for pixels that are not there), and a volume that is
not a CT in Hounsfield units still thresholds into "skin" and "bone": the volume's box. Each
check here turns one such case into an ``InputError`` whose message is one line,
``WHERE: FIELD VALUE: PROBLEM``, naming the file or folder and the field.

The plausible ranges are named constants below; lengths are in mm, values in HU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from imaging.errors import InputError
from imaging.geometry import Geometry

# Voxel spacing of any CT, micro-CT of a bone sample to the thickest scout slices.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
# Length of the scanned volume along any axis: a whole-body CT is under 2 m; a 4.8 m "patient"
# is slices 400 mm apart, not a person.
MAX_EXTENT_MM = 2500.0
# The origin is where the first voxel sits in the scanner's frame: metres away at most.
MAX_ORIGIN_MM = 100_000.0
ORTHONORMAL_TOLERANCE = 1e-4
SLICE_SPACING_TOLERANCE = 0.02  # relative: DICOM pixel spacings printed with ~4 digits

# Content: a CT in HU has air (-1000) around the patient and tissue (-100..80) inside.
AIR_HU = -500.0  # below: air (or lung); MR and unscaled CT have nothing below 0
TISSUE_HU = -300.0  # above: fat, soft tissue, bone (the skin threshold of ``segment``)
MIN_BORDER_AIR_FRACTION = 0.05  # of the voxels on the four in-plane faces; a real chest crop had 0.30
MIN_TISSUE_FRACTION = 0.002  # of all voxels; a hollow head phantom had 0.031
CONTENT_SAMPLE_VOXELS = 1 << 20  # the tissue fraction is estimated on about this many voxels

CT_MODALITY = "CT"


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def check_spacing(where: object, spacing: Sequence[float], field: str = "voxel spacing") -> None:
    """Each spacing finite and within ``MIN_SPACING_MM``..``MAX_SPACING_MM``."""
    values = [float(s) for s in spacing]
    if not all(math.isfinite(s) and s > 0 for s in values):
        problem = "not a positive number; refusing to guess one"
    elif min(values) < MIN_SPACING_MM or max(values) > MAX_SPACING_MM:
        problem = f"outside the plausible {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm of a CT"
    else:
        return
    msg = f"{where}: invalid {field} {tuple(values)} mm: {problem}"
    raise InputError(msg)


def check_direction(where: object, direction: Sequence[float]) -> None:
    """A 3x3 direction matrix (row-major) that is finite, orthonormal and not degenerate."""
    d = np.asarray(direction, dtype=np.float64)
    if (
        d.size != 9
        or not np.all(np.isfinite(d))
        or not np.allclose(d.reshape(3, 3).T @ d.reshape(3, 3), np.eye(3), atol=ORTHONORMAL_TOLERANCE)
    ):
        msg = f"{where}: direction matrix is not orthonormal (sheared or tilted grid): {tuple(direction)}"
        raise InputError(msg)


def check_origin(where: object, origin: Sequence[float]) -> None:
    values = [float(v) for v in origin]
    if not all(math.isfinite(v) for v in values):
        problem = "not a finite position; refusing to guess one"
    elif max(abs(v) for v in values) > MAX_ORIGIN_MM:
        problem = f"over {MAX_ORIGIN_MM / 1000:g} m from the scanner's origin"
    else:
        return
    msg = f"{where}: invalid origin {_fmt(values)} mm: {problem}"
    raise InputError(msg)


def check_extent(where: object, size: Sequence[int], spacing: Sequence[float]) -> None:
    """The scanned length along each axis is that of a human body at most."""
    extent = [int(n) * float(s) for n, s in zip(size, spacing, strict=True)]
    if max(extent) > MAX_EXTENT_MM:
        msg = (
            f"{where}: physical size {_fmt(round(e, 1) for e in extent)} mm "
            f"({'x'.join(str(n) for n in size)} voxels of {_fmt(spacing)} mm): over the "
            f"{MAX_EXTENT_MM / 1000:g} m of any patient"
        )
        raise InputError(msg)


def check_geometry(where: object, geometry: Geometry) -> None:
    """Size, spacing, direction, origin and physical size of a voxel grid."""
    if min(geometry.size) < 2:
        msg = f"{where}: expected a 3D volume, got size {geometry.size}"
        raise InputError(msg)
    check_spacing(where, geometry.spacing)
    check_direction(where, geometry.direction)
    check_origin(where, geometry.origin)
    check_extent(where, geometry.size, geometry.spacing)


def check_rescale(where: object, slope: float, intercept: float, field: str = "rescale") -> None:
    """A DICOM RescaleSlope (or NIfTI scl_slope, when scaling applies) maps stored values to HU:
    zero or non-finite is not a slope, and 1 is not a safe guess for it."""
    if not math.isfinite(slope) or slope == 0 or not math.isfinite(intercept):
        msg = f"{where}: invalid {field} slope {slope:g} / intercept {intercept:g}: the stored values cannot be turned into HU"
        raise InputError(msg)


def check_modality(where: object, modality: str, allowed: Sequence[str] = ()) -> str | None:
    """CT, or a modality the user named with ``--allow-modality``; then a warning for the manifest."""
    value = modality.strip().upper()
    if value == CT_MODALITY:
        return None
    if value and value in {a.strip().upper() for a in allowed}:
        return f"modality {value} accepted with --allow-modality: thresholds assume CT Hounsfield units"
    shown = value or "missing"
    msg = f"{where}: (0008,0060) Modality is {shown}, not CT: only CT is prepared (--allow-modality {value or 'NAME'} to accept it)"
    raise InputError(msg)


def check_finite_voxels(where: object, voxels: npt.NDArray[Any]) -> None:
    if np.issubdtype(voxels.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(voxels)))
        if n_bad:
            msg = f"{where}: {n_bad} voxels are NaN or infinite"
            raise InputError(msg)


def check_ct_content(where: object, voxels: npt.NDArray[Any]) -> None:
    """Air around the patient and tissue inside: without both, thresholds give the volume's box.

    Air is looked for on the four in-plane faces of the grid ([z, y, x] numpy order: the y and x
    borders of every slice), where a CT has the air around the patient and an MR, an unscaled
    volume or a crop inside the body has none; the tissue fraction is estimated on a strided
    sample of about ``CONTENT_SAMPLE_VOXELS``.
    """
    faces = (voxels[:, 0, :], voxels[:, -1, :], voxels[:, :, 0], voxels[:, :, -1])
    n_border = sum(f.size for f in faces)
    air = sum(int(np.count_nonzero(f < AIR_HU)) for f in faces) / n_border
    if air < MIN_BORDER_AIR_FRACTION:
        low = float(min(np.min(f) for f in faces))
        msg = (
            f"{where}: voxel values: no air/tissue boundary ({air:.1%} of the in-plane border is below {AIR_HU:g} HU, "
            f"lowest border value {low:g}): not a CT in Hounsfield units with air around the patient "
            "(MR, an unscaled volume, or a crop inside the body?)"
        )
        raise InputError(msg)
    stride = max(1, round((voxels.size / CONTENT_SAMPLE_VOXELS) ** (1 / 3)))
    sample = voxels[::stride, ::stride, ::stride]
    tissue = int(np.count_nonzero(sample > TISSUE_HU)) / sample.size
    if tissue < MIN_TISSUE_FRACTION:
        msg = f"{where}: voxel values: no tissue ({tissue:.2%} of the voxels above {TISSUE_HU:g} HU): nothing to model"
        raise InputError(msg)


def check_uniform(where: object, values: Sequence[Sequence[float]], field: str, files: Sequence[str]) -> None:
    """One value of a per-slice field (pixel spacing, rescale) for every slice of a series."""
    try:
        table = np.asarray(values, dtype=np.float64)
    except ValueError:  # ragged: some slice has another number of values
        table = np.full((len(values), 1), np.nan)
    differs = ~np.all(np.isclose(table, table[:1], rtol=SLICE_SPACING_TOLERANCE, atol=0.0), axis=1)
    if differs.any():
        i = int(np.argmax(differs))
        msg = f"{files[i]}: {field} {_fmt(np.ravel(values[i]))} differs from {_fmt(table[0])} of the first slice of {where}; refusing to guess one"
        raise InputError(msg)
