"""Read a CT (DICOM series folder, NIfTI, NRRD, MetaImage) into a checked ``Volume``.

Every refusal is an ``InputError`` whose message is one line naming the file and the
problem. The memory budget is decided from the header, before any pixel is read; the content
checks (``checks``, ``dicom_checks``, ``raw_header``) refuse what a reader would fill in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imaging import checks, dicom_series, memory
from imaging.errors import InputError
from imaging.geometry import Geometry
from imaging.guarded import run_guarded
from imaging.raw_header import nifti_nonfinite_voxels, raw_field_problem, read_nifti_header
from imaging.truncation import data_truncation
from imaging.volume import SourceInfo, Volume

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET_BYTES = 6 * 1024**3
CT, LABEL_MAP = "ct", "label map"  # what a loaded volume is for: only a CT is checked as one
DICOM_ITEMSIZE = 2  # GDCM gives 16-bit voxels for a 16-bit CT with an integer rescale
# Item size of SimpleITK's pixel types, by pixel ID value (scalar types only).
_ITEMSIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 8, 7: 8, 8: 4, 9: 8}

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


def check_memory_budget(
    path: Path, size_xyz: tuple[int, ...], budget_bytes: int, itemsize: int = DICOM_ITEMSIZE
) -> None:
    """Refuse from the header a volume whose measured peak per voxel is over the budget."""
    memory.check_budget(path, size_xyz, itemsize, budget_bytes)


def load_ct(
    path: str | Path,
    *,
    series_uid: str | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    on_series: dicom_series.SeriesChoice | None = None,
    allowed_modalities: Sequence[str] = (),
    kind: str = CT,
) -> Volume:
    """Load and check a CT volume; geometry stays in patient LPS millimetres.

    For a DICOM folder, ``on_series(scan, chosen)`` is told which series was taken.
    A ``kind=CT`` volume must be CT (or a modality in ``allowed_modalities``: then a warning
    is kept in ``source.warnings`` for the manifest) with air around the patient; a
    ``LABEL_MAP`` gets the same geometry and data checks, not the CT content ones."""
    path = Path(path)
    if not path.exists():
        msg = f"{path}: no such file or folder"
        raise InputError(msg)
    if path.is_dir():
        volume = _load_series(path, series_uid, memory_budget_bytes, on_series, allowed_modalities, kind)
    elif series_uid is not None:
        msg = f"{path}: --series applies to a DICOM folder, not to a single file"
        raise InputError(msg)
    else:
        volume = _load_file(path, memory_budget_bytes)
    if kind == CT:
        checks.check_ct_content(path, volume.voxels)
    return volume


def _load_series(
    folder: Path,
    series_uid: str | None,
    budget_bytes: int,
    on_series: dicom_series.SeriesChoice | None,
    allowed_modalities: Sequence[str],
    kind: str,
) -> Volume:
    """The series reader, with the content checks of ``dicom_checks`` on the chosen series
    before its pixels are read (it tells us the choice through ``on_series``)."""
    from imaging.dicom_checks import check_series_content

    notes: list[str] = []

    def checked(scan: dicom_series.FolderScan, chosen: dicom_series.SeriesEntry) -> None:
        if on_series is not None:
            on_series(scan, chosen)
        first = chosen.slices[0]
        check_memory_budget(folder, (first.columns, first.rows, chosen.n_files), budget_bytes)
        if kind == CT:
            notes.extend(check_series_content(folder, chosen, allowed_modalities))
        else:  # a label map has no modality of its own to check; its pixels still do
            check_series_content(folder, chosen, (chosen.modality,))

    volume = dicom_series.load_series(
        folder, series_uid=series_uid, memory_budget_bytes=budget_bytes, on_series=checked
    )
    if not notes:
        return volume
    return dataclasses.replace(volume, source=dataclasses.replace(volume.source, warnings=tuple(notes)))


def _load_file(path: Path, budget_bytes: int) -> Volume:
    import SimpleITK as sitk

    if path.stat().st_size == 0:
        msg = f"{path}: empty file (0 bytes)"
        raise InputError(msg)
    fmt = file_format(path)
    # The header is parsed and checked in a guarded child (memory cap, deadline): a hostile
    # header cannot hang or exhaust this process; pixels are read here only once it passed.
    run_guarded(path, f"reading the {fmt} header", lambda: inspect_file(path, fmt, budget_bytes))
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
    itemsize: int = DICOM_ITEMSIZE  # bytes per voxel component as SimpleITK will load it


def inspect_file(path: Path, fmt: str, budget_bytes: int) -> None:
    """Everything decided before pixels are read (runs in the guarded child): ITK's view of the
    header, the memory budget, then what ITK would hide (raw fields, truncated or corrupt data,
    NaN voxels of a float NIfTI)."""
    check_header(path, read_header(path, fmt), budget_bytes)
    problem = raw_field_problem(path, fmt)
    if problem is not None:
        msg = f"{path}: {problem}"
        raise InputError(msg)
    truncation = data_truncation(path, fmt)
    if truncation is not None:
        msg = f"{path}: pixel data truncated ({truncation})"
        raise InputError(msg)
    nifti = read_nifti_header(path) if fmt == "nifti" else None
    n_bad = nifti_nonfinite_voxels(path, nifti) if nifti is not None else 0
    if n_bad:
        msg = f"{path}: {n_bad} voxels are NaN or infinite (raw float data; ITK would read them as numbers)"
        raise InputError(msg)


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
        itemsize=_ITEMSIZE.get(int(reader.GetPixelIDValue()), 8),
    )


MAX_AXIS_VOXELS = 1 << 20  # no scanner writes a million voxels along one axis


def check_header(path: Path, header: FileHeader, budget_bytes: int) -> None:
    """What ITK's reading of the header refuses: shape, memory budget, geometry."""
    size = header.size
    if len(size) != 3 or header.components != 1:
        msg = f"{path}: expected a 3D single-channel volume, got size {size} with {header.components} components"
        raise InputError(msg)
    if not all(1 <= s <= MAX_AXIS_VOXELS for s in size):
        msg = f"{path}: header declares an impossible size {size} (each axis must be 1..{MAX_AXIS_VOXELS})"
        raise InputError(msg)
    check_memory_budget(path, size, budget_bytes, header.itemsize)
    # ITK flips a negative spacing into the direction matrix without a word: for a patient
    # that can mirror left and right, so it is refused here, where the header still says it.
    sp, org = header.spacing, header.origin
    geometry = Geometry((size[0], size[1], size[2]), (sp[0], sp[1], sp[2]), (org[0], org[1], org[2]), header.direction)
    checks.check_geometry(path, geometry)


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
    return volume_from_array(sitk.GetArrayFromImage(image), geometry, path, source)


def volume_from_array(voxels: np.ndarray, geometry: Geometry, path: Path, source: SourceInfo) -> Volume:
    checks.check_geometry(path, geometry)
    checks.check_finite_voxels(path, voxels)
    return Volume(voxels=voxels, geometry=geometry, source=source)


def itk_reason(exc: RuntimeError) -> str:
    """The last meaningful line of an ITK exception, without the C++ file/line noise."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return lines[-1][:200] if lines else "unknown error"
