"""Read a CT (DICOM series folder, NIfTI, NRRD, MetaImage) into a checked ``Volume``.

Every refusal is an ``InputError`` whose message is one line naming the file and the
problem. The memory budget is decided from the header, before any pixel is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imaging import dicom_series
from imaging.errors import InputError
from imaging.geometry import Geometry
from imaging.guarded import run_guarded
from imaging.truncation import data_truncation
from imaging.volume import SourceInfo, Volume

log = logging.getLogger(__name__)

# Peak bytes the prepare pipeline holds per input voxel (int16 voxels, masks, working copies),
# measured on bti_demohead_dicom; the budget check multiplies the header's voxel count by it.
PEAK_BYTES_PER_VOXEL = 8
DEFAULT_MEMORY_BUDGET_BYTES = 6 * 1024**3

_FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}


def file_format(path: Path) -> str:
    """The format named by the file suffix, or an ``InputError`` naming the suffix."""
    name = path.name.lower()
    for suffix, fmt in _FORMATS.items():
        if name.endswith(suffix):
            return fmt
    msg = f"{path}: unsupported file type {path.suffix!r} (expected a DICOM folder, .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd)"
    raise InputError(msg)


def check_memory_budget(path: Path, size_xyz: tuple[int, ...], budget_bytes: int) -> None:
    n_voxels = int(np.prod(np.asarray(size_xyz, dtype=np.int64)))
    need = n_voxels * PEAK_BYTES_PER_VOXEL
    if need > budget_bytes:
        msg = (
            f"{path}: volume of {'x'.join(str(s) for s in size_xyz)} voxels needs about "
            f"{need / 1024**3:.1f} GiB, over the memory budget of {budget_bytes / 1024**3:.1f} GiB"
        )
        raise InputError(msg)


def load_ct(
    path: str | Path,
    *,
    series_uid: str | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    on_series: dicom_series.SeriesChoice | None = None,
) -> Volume:
    """Load and check a CT volume; geometry stays in patient LPS millimetres.

    For a DICOM folder, ``on_series(all_series, chosen)`` is told which series was taken."""
    path = Path(path)
    if not path.exists():
        msg = f"{path}: no such file or folder"
        raise InputError(msg)
    if path.is_dir():
        return dicom_series.load_series(
            path, series_uid=series_uid, memory_budget_bytes=memory_budget_bytes, on_series=on_series
        )
    if series_uid is not None:
        msg = f"{path}: --series applies to a DICOM folder, not to a single file"
        raise InputError(msg)
    return _load_file(path, memory_budget_bytes)


def _load_file(path: Path, budget_bytes: int) -> Volume:
    import SimpleITK as sitk

    if path.stat().st_size == 0:
        msg = f"{path}: empty file (0 bytes)"
        raise InputError(msg)
    fmt = file_format(path)
    # The header is parsed in a guarded child (memory cap, deadline): a hostile header
    # cannot hang or exhaust this process; pixels are read here only once it is checked.
    header = run_guarded(path, f"reading the {fmt} header", lambda: read_header(path, fmt))
    check_header(path, header, budget_bytes)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        msg = f"{path}: pixel data could not be read ({itk_reason(exc)})"
        raise InputError(msg) from None
    return volume_from_image(image, path, SourceInfo(format=fmt))


@dataclass(frozen=True)
class FileHeader:
    """What the header of an image file declares, read before any pixel."""

    size: tuple[int, ...]
    components: int
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    truncation: str | None = None  # why the file holds fewer voxel bytes than declared


def read_header(path: Path, fmt: str) -> FileHeader:
    """Parse the header only (runs in the guarded child)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        msg = f"{path}: not a readable {fmt} image ({itk_reason(exc)})"
        raise InputError(msg) from None
    return FileHeader(
        size=tuple(int(s) for s in reader.GetSize()),
        components=int(reader.GetNumberOfComponents()),
        spacing=tuple(float(s) for s in reader.GetSpacing()),
        origin=tuple(float(s) for s in reader.GetOrigin()),
        direction=tuple(float(d) for d in reader.GetDirection()),
        truncation=data_truncation(path, fmt),
    )


MAX_AXIS_VOXELS = 1 << 20  # no scanner writes a million voxels along one axis


def check_header(path: Path, header: FileHeader, budget_bytes: int) -> None:
    """Everything refused from the header alone: shape, memory budget, geometry, truncation."""
    size = header.size
    if len(size) != 3 or header.components != 1:
        msg = f"{path}: expected a 3D single-channel volume, got size {size} with {header.components} components"
        raise InputError(msg)
    if not all(1 <= s <= MAX_AXIS_VOXELS for s in size):
        msg = f"{path}: header declares an impossible size {size} (each axis must be 1..{MAX_AXIS_VOXELS})"
        raise InputError(msg)
    check_memory_budget(path, size, budget_bytes)
    # ITK flips a negative spacing into the direction matrix without a word: for a patient
    # that can mirror left and right, so it is refused here, where the header still says it.
    sp, org = header.spacing, header.origin
    geometry = Geometry((size[0], size[1], size[2]), (sp[0], sp[1], sp[2]), (org[0], org[1], org[2]), header.direction)
    check_geometry(path, geometry)
    if header.truncation is not None:
        msg = f"{path}: pixel data truncated ({header.truncation})"
        raise InputError(msg)


def volume_from_image(image: object, path: Path, source: SourceInfo) -> Volume:
    """Wrap a SimpleITK image as a ``Volume`` after the voxel checks (NaN, size, direction)."""
    import SimpleITK as sitk

    assert isinstance(image, sitk.Image)
    geometry = Geometry(
        size=tuple(int(s) for s in image.GetSize()),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(s) for s in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in image.GetDirection()),
    )
    check_geometry(path, geometry)
    return volume_from_array(sitk.GetArrayFromImage(image), geometry, path, source)


def volume_from_array(voxels: np.ndarray, geometry: Geometry, path: Path, source: SourceInfo) -> Volume:
    check_geometry(path, geometry)
    check_voxels(path, voxels)
    return Volume(voxels=voxels, geometry=geometry, source=source)


def check_geometry(path: Path, geometry: Geometry) -> None:
    if min(geometry.size) < 2:
        msg = f"{path}: expected a 3D volume, got size {geometry.size}"
        raise InputError(msg)
    if not all(np.isfinite(geometry.spacing)) or min(geometry.spacing) <= 0:
        msg = f"{path}: invalid voxel spacing {geometry.spacing}"
        raise InputError(msg)
    d = geometry.direction_matrix
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        msg = f"{path}: direction matrix is not orthonormal (sheared or tilted grid): {geometry.direction}"
        raise InputError(msg)


def check_voxels(path: Path, voxels: np.ndarray) -> None:
    if np.issubdtype(voxels.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(voxels)))
        if n_bad:
            msg = f"{path}: {n_bad} voxels are NaN or infinite"
            raise InputError(msg)


def itk_reason(exc: RuntimeError) -> str:
    """The last meaningful line of an ITK exception, without the C++ file/line noise."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return lines[-1][:200] if lines else "unknown error"
