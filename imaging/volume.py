"""A checked CT volume: voxels in Hounsfield units plus its LPS geometry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from imaging.geometry import Geometry


@dataclass(frozen=True)
class SourceInfo:
    """Where a volume came from, without anything that could identify the patient.

    ``series_key`` is a keyed pseudonym of the DICOM series UID (never the UID itself).
    """

    format: str  # "dicom", "nifti", "nrrd", "metaimage", "synthetic"
    n_files: int = 1
    series_key: str | None = None
    study_key: str | None = None
    synthetic: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)  # accepted with a caveat (--allow-modality)


@dataclass(frozen=True)
class Volume:
    """CT voxels (numpy, indexed [z, y, x], HU) with the grid geometry (x, y, z order)."""

    voxels: npt.NDArray[Any]
    geometry: Geometry
    source: SourceInfo

    def __post_init__(self) -> None:
        expected = tuple(reversed(self.geometry.size))
        if self.voxels.shape != expected:
            msg = f"voxel array shape {self.voxels.shape} does not match geometry size (z,y,x) {expected}"
            raise ValueError(msg)
