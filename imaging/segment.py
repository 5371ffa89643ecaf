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

from imaging.errors import SegmentationError
from imaging.field import ISO_LEVEL, Field, block_factor, block_mean, bounding_box
from imaging.volume import Volume

log = logging.getLogger(__name__)

SKIN_THRESHOLD_HU = -300.0  # air/tissue boundary: halfway between air and fat
BONE_THRESHOLD_HU = 300.0  # cancellous bone and above
MIN_BONE_COMPONENT_MM3 = 1000.0  # islands under 1 mL: noise, markers, calcifications

# Morphology runs in SimpleITK (already loaded to read the CT, multi-threaded): importing
# scipy.ndimage alone cost 0.38 s, an eighth of the 3 s budget for a skin model.


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
    field, solid = _crop_to_solid(field, solid)
    filled = fill_holes_per_slice(solid)
    body = largest_component(filled)
    return _restrict(field, body, solid)


def bone_field(volume: Volume, where: Path | str) -> Field:
    """Bone by HU threshold, without islands smaller than ``MIN_BONE_COMPONENT_MM3``."""
    bone = volume.voxels > BONE_THRESHOLD_HU
    field = block_mean(bone, volume.geometry, block_factor(volume.geometry.spacing))
    del bone
    solid = field.values >= ISO_LEVEL
    if solid.any():
        field, solid = _crop_to_solid(field, solid)
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
    present = label_boxes(values)
    if not present:
        msg = f"{where}: label map is empty (every voxel is 0)"
        raise SegmentationError(msg)
    for label, box in present:
        padded = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
        mask = values[padded] == label
        start = (padded[2].start, padded[1].start, padded[0].start)
        size = (mask.shape[2], mask.shape[1], mask.shape[0])
        yield label, block_mean(mask, labels.geometry.sub_grid(start, (1, 1, 1), size), factor)


def label_boxes(values: npt.NDArray[np.integer]) -> list[tuple[int, tuple[slice, slice, slice]]]:
    """Each label > 0 present, with its [z, y, x] bounding box."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(values.astype(np.uint32, copy=False))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputePerimeterOff()
    stats.ComputeFeretDiameterOff()
    stats.ComputeOrientedBoundingBoxOff()
    stats.Execute(image)
    boxes = []
    for label in sorted(int(v) for v in stats.GetLabels() if v > 0):
        x, y, z, sx, sy, sz = stats.GetBoundingBox(label)
        boxes.append((label, (slice(z, z + sz), slice(y, y + sy), slice(x, x + sx))))
    return boxes


def fill_holes_per_slice(solid: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Fill background regions of each [z] slice that do not touch the slice border.

    All slices are laid out as one 2D image, each framed by a row/column of background: the
    frames join into a single 'outside' component, and no region can leak between slices
    because only frame rows separate them.
    """
    import SimpleITK as sitk

    nz, ny, nx = solid.shape
    background = np.ones((nz, ny + 2, nx + 2), dtype=np.uint8)
    background[:, 1:-1, 1:-1] = ~solid
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(background.reshape(nz * (ny + 2), nx + 2)), False)
    labelled = sitk.GetArrayViewFromImage(labels).reshape(nz, ny + 2, nx + 2)
    filled: npt.NDArray[np.bool_] = labelled[:, 1:-1, 1:-1] != labelled[0, 0, 0]
    return filled


def _components(mask: npt.NDArray[np.bool_], min_voxels: int = 0) -> npt.NDArray[np.integer]:
    """Face-connected components, relabelled 1, 2, ... by decreasing size (smaller than
    ``min_voxels`` removed)."""
    import SimpleITK as sitk

    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8)), False)
    relabelled = sitk.RelabelComponent(components, sortByObjectSize=True, minimumObjectSize=min_voxels)
    labels: npt.NDArray[np.integer] = sitk.GetArrayFromImage(relabelled)
    return labels


def largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    largest: npt.NDArray[np.bool_] = _components(mask) == 1
    return largest


def drop_small_components(mask: npt.NDArray[np.bool_], min_voxels: float) -> npt.NDArray[np.bool_]:
    kept: npt.NDArray[np.bool_] = _components(mask, int(np.ceil(min_voxels))) > 0
    return kept


def dilate_six_connected(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Grow by one voxel along each axis (6-neighbourhood), with shifted ORs: ~20x faster
    here than SimpleITK's BinaryDilate for this one-voxel case."""
    grown = mask.copy()
    for axis in range(3):
        lead = [slice(None)] * 3
        lag = [slice(None)] * 3
        lead[axis], lag[axis] = slice(1, None), slice(None, -1)
        grown[tuple(lead)] |= mask[tuple(lag)]
        grown[tuple(lag)] |= mask[tuple(lead)]
    return grown


def _crop_to_solid(field: Field, solid: npt.NDArray[np.bool_]) -> tuple[Field, npt.NDArray[np.bool_]]:
    """Crop to the solid voxels plus one voxel of margin: the air around a patient is often
    half the grid, and the margin keeps every hole that touched the border touching it."""
    box = bounding_box(solid, pad=1)
    assert box is not None, "caller checked that something is solid"
    return field.crop(box), solid[box]


def _restrict(field: Field, kept: npt.NDArray[np.bool_], solid: npt.NDArray[np.bool_]) -> Field:
    """Field of the kept voxels only: filled holes count as inside, and the partial-volume
    ring just outside is kept (below the iso level) for a sub-voxel surface; anything else
    (other components) becomes 0."""
    box = bounding_box(kept, pad=1)
    assert box is not None, "caller checked that something is kept"
    kept, solid, partial = kept[box], solid[box], field.values[box]
    ring = dilate_six_connected(kept) & ~kept
    values = np.zeros_like(partial)
    values[kept] = np.maximum(partial[kept], np.where(solid[kept], 0.0, 1.0))
    values[ring] = np.minimum(partial[ring], np.float32(ISO_LEVEL - 1e-3))
    return field.crop(box, values)
