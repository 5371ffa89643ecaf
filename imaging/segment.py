"""Segment skin, bone and label-map structures into occupancy ``Field`` objects.

HU conventions: air is -1000, fat about -100, soft tissue 20..80, bone above ~300.
Segmentation runs on the block-averaged working grid (about 1 mm, see ``field``), where
the connected-component and hole-filling steps are 4-8x cheaper than at full resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from imaging.errors import SegmentationError
from imaging.field import ISO_LEVEL, Field, block_factor, block_mean, bounding_box
from imaging.volume import Volume

log = logging.getLogger(__name__)

SKIN_THRESHOLD_HU = -300.0  # air/tissue boundary: halfway between air and fat
BONE_THRESHOLD_HU = 300.0  # cancellous bone and above
MIN_BONE_COMPONENT_MM3 = 1000.0  # islands under 1 mL: noise, markers, calcifications

_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)
_IN_SLICE_ONLY = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE_ONLY[1] = ndimage.generate_binary_structure(2, 1)


def skin_field(volume: Volume, where: Path | str) -> Field:
    """Outer air/tissue boundary: holes filled slice by slice, largest connected component.

    Holes are filled per axial slice (not in 3D) because a head is open at the neck: a 3D fill
    would leave the airways and the inside of a hollow phantom as inner 'skin'. The largest
    component drops head holders, tables and cables separated from the patient by air.
    """
    tissue = volume.voxels > SKIN_THRESHOLD_HU
    field = block_mean(tissue, volume.geometry, block_factor(volume.geometry.spacing))
    del tissue
    solid = field.values >= ISO_LEVEL
    if not solid.any():
        msg = f"{where}: skin segmentation is empty (no voxel above {SKIN_THRESHOLD_HU:g} HU)"
        raise SegmentationError(msg)
    filled = fill_holes_per_slice(solid)
    body = largest_component(filled)
    return _restrict(field, body, solid)


def bone_field(volume: Volume, where: Path | str) -> Field:
    """Bone by HU threshold, without islands smaller than ``MIN_BONE_COMPONENT_MM3``."""
    bone = volume.voxels > BONE_THRESHOLD_HU
    field = block_mean(bone, volume.geometry, block_factor(volume.geometry.spacing))
    del bone
    solid = field.values >= ISO_LEVEL
    kept = drop_small_components(solid, MIN_BONE_COMPONENT_MM3 / field.geometry.voxel_volume_mm3)
    if not kept.any():
        msg = f"{where}: bone segmentation is empty (no structure over {MIN_BONE_COMPONENT_MM3 / 1000:g} mL above {BONE_THRESHOLD_HU:g} HU); use --segments skin for scans without bone"
        raise SegmentationError(msg)
    return _restrict(field, kept, solid)


def label_fields(labels: Volume, where: Path | str) -> Iterator[tuple[int, Field]]:
    """One field per label value > 0 of an integer label map, each cropped to its box."""
    values = labels.voxels
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.equal(np.mod(values, 1), 0)):
            msg = f"{where}: label map holds non-integer values (dtype {values.dtype})"
            raise SegmentationError(msg)
        values = values.astype(np.int32)
    if values.min() < 0:
        msg = f"{where}: label map holds negative label {int(values.min())}"
        raise SegmentationError(msg)
    factor = block_factor(labels.geometry.spacing)
    boxes = ndimage.find_objects(values.astype(np.int32, copy=False))
    present = [(i + 1, box) for i, box in enumerate(boxes) if box is not None]
    if not present:
        msg = f"{where}: label map is empty (every voxel is 0)"
        raise SegmentationError(msg)
    for label, box in present:
        padded = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
        mask = values[padded] == label
        sub_geometry = labels.geometry.sub_grid(
            (padded[2].start, padded[1].start, padded[0].start), (1, 1, 1), tuple(reversed(mask.shape))
        )
        yield label, block_mean(mask, sub_geometry, factor)


def fill_holes_per_slice(solid: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Fill background regions of each [z] slice that do not touch the slice border."""
    background, _ = ndimage.label(~solid, structure=_IN_SLICE_ONLY)
    border = np.concatenate(
        [
            background[:, 0, :].ravel(),
            background[:, -1, :].ravel(),
            background[:, :, 0].ravel(),
            background[:, :, -1].ravel(),
        ]
    )
    outside = np.zeros(int(background.max()) + 1, dtype=bool)
    outside[border] = True
    outside[0] = False
    filled: npt.NDArray[np.bool_] = ~outside[background]
    return filled


def largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    labelled, n = ndimage.label(mask, structure=_SIX_CONNECTED)
    if n <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    keep: npt.NDArray[np.bool_] = labelled == int(np.argmax(sizes))
    return keep


def drop_small_components(mask: npt.NDArray[np.bool_], min_voxels: float) -> npt.NDArray[np.bool_]:
    labelled, n = ndimage.label(mask, structure=_SIX_CONNECTED)
    if n == 0:
        return mask
    sizes = np.bincount(labelled.ravel())
    big = sizes >= min_voxels
    big[0] = False
    kept: npt.NDArray[np.bool_] = big[labelled]
    return kept


def _restrict(field: Field, kept: npt.NDArray[np.bool_], solid: npt.NDArray[np.bool_]) -> Field:
    """Field of the kept voxels only: filled holes count as inside, and the partial-volume
    ring just outside is kept (below the iso level) for a sub-voxel surface; anything else
    (other components) becomes 0."""
    box = bounding_box(kept, pad=1)
    assert box is not None, "caller checked that something is kept"
    kept, solid, partial = kept[box], solid[box], field.values[box]
    ring = ndimage.binary_dilation(kept, structure=_SIX_CONNECTED) & ~kept
    values = np.zeros_like(partial)
    values[kept] = np.maximum(partial[kept], np.where(solid[kept], 0.0, 1.0))
    values[ring] = np.minimum(partial[ring], np.float32(ISO_LEVEL - 1e-3))
    start = (box[2].start, box[1].start, box[0].start)
    return Field(values, field.geometry.sub_grid(start, (1, 1, 1), tuple(reversed(values.shape))))
