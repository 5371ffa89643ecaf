"""DICOM series folders: list the series, pick one, read it and check its slice geometry.

GDCM (through SimpleITK) sorts the slices by position. Before pixels are read the header of
the first slice sets the memory estimate; after reading, the per-slice positions are checked
for missing slices, uneven spacing and gantry tilt, which ITK would otherwise average over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imaging.deid import pseudonym
from imaging.dicom_fast import (
    FastSlice,
    SliceHeader,
    has_dicom_preamble,
    is_dicomdir,
    read_fast_header,
    read_fast_pixels,
)
from imaging.errors import InputError
from imaging.geometry import Geometry
from imaging.guarded import run_guarded
from imaging.volume import SourceInfo, Volume

log = logging.getLogger(__name__)

# Relative tolerance on slice spacing: GDCM positions are printed with ~1e-3 mm precision.
SPACING_TOLERANCE = 0.02
TILT_TOLERANCE_DEG = 0.1


_HEADER_TAGS = (
    (0x0020, 0x000E),  # Series Instance UID
    (0x0020, 0x000D),  # Study Instance UID
    (0x0020, 0x0032),  # Image Position (Patient)
    (0x0020, 0x0037),  # Image Orientation (Patient)
    (0x0028, 0x0010),  # Rows
    (0x0028, 0x0011),  # Columns
    (0x0018, 0x1120),  # Gantry/Detector Tilt
    (0x0008, 0x0060),  # Modality
    (0x0028, 0x0008),  # Number of Frames
)
MIN_SLICES_FOR_PARALLEL_READ = 16
# Storage classes whose slices must carry a position (CT, enhanced CT, MR, enhanced MR, PET,
# NM); a file of one of these classes without it is truncated or damaged, never skipped.
_VOLUME_SOP_CLASSES = frozenset(
    "1.2.840.10008.5.1.4.1.1." + suffix for suffix in ("2", "2.1", "2.2", "4", "4.1", "128", "130", "20")
)


@dataclass(frozen=True)
class SeriesEntry:
    """One DICOM series: its slices sorted along the slice normal."""

    uid: str
    study_uid: str
    modality: str
    slices: tuple[SliceHeader, ...]
    fast: tuple[FastSlice, ...] | None = None  # same order as ``slices``, when every file qualifies

    @property
    def n_files(self) -> int:
        return len(self.slices)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(s.file for s in self.slices)


SeriesChoice = Callable[[list[SeriesEntry], SeriesEntry], None]


def list_series(folder: Path) -> list[SeriesEntry]:
    """Every DICOM series in ``folder`` (not recursive), largest first.

    One pass over the headers, no pixels: parsed from the bytes where every file allows it
    (``dicom_fast``), else with pydicom (only the tags needed). Either way it is about twice
    as fast as GDCM's two directory scans and gives the per-slice positions to check before
    any pixel is read. Files that are not DICOM are ignored, as GDCM does.
    """
    files = _folder_files(folder)
    entries = _scan_fast(files)
    if entries is not None:
        return entries
    # pydicom parses whatever it is given (deep nesting, huge lengths): in a guarded child.
    return run_guarded(folder, "reading the DICOM headers", lambda: _scan(files))


def _folder_files(folder: Path) -> list[Path]:
    _refuse_empty_files(folder)
    return sorted(p for p in folder.iterdir() if p.is_file())


def _scan_fast(files: list[Path]) -> list[SeriesEntry] | None:
    """Headers parsed straight from the bytes (see ``dicom_fast``), or None when any DICOM
    file in the folder is not for the fast path (then pydicom reads them all)."""
    groups: dict[str, list[FastSlice]] = {}
    for path in files:
        fast = read_fast_header(path)
        if fast is None:
            if has_dicom_preamble(path) and not is_dicomdir(path):
                return None
            continue  # not DICOM, or a DICOMDIR index: ignored, as GDCM and the pydicom scan do
        groups.setdefault(fast.series_uid, []).append(fast)
    entries = []
    for uid, fasts in groups.items():
        by_file = {f.header.file: f for f in fasts}
        headers = _sorted_slices([f.header for f in fasts])
        ordered = tuple(by_file[h.file] for h in headers)
        entries.append(SeriesEntry(uid, ordered[0].study_uid, ordered[0].modality, headers, ordered))
    return sorted(entries, key=lambda e: (-e.n_files, e.uid))


def _scan(files: list[Path]) -> list[SeriesEntry]:
    groups: dict[str, list[SliceHeader]] = {}
    meta: dict[str, tuple[str, str]] = {}
    for path in files:
        header = _read_header(path)
        if header is None:
            continue
        uid, study, modality, slice_header = header
        groups.setdefault(uid, []).append(slice_header)
        meta.setdefault(uid, (study, modality))
    entries = [SeriesEntry(uid, *meta[uid], _sorted_slices(slices)) for uid, slices in groups.items()]
    return sorted(entries, key=lambda e: (-e.n_files, e.uid))


def _read_header(path: Path) -> tuple[str, str, str, SliceHeader] | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
        meta = getattr(ds, "file_meta", None)
        has_meta = meta is not None and "TransferSyntaxUID" in meta and "MediaStorageSOPClassUID" in meta
        frames = _int_tag(ds, "NumberOfFrames", 1)
        rows, columns = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    except Exception as exc:  # hostile bytes can make a parser raise anything at all
        if has_dicom_preamble(path):  # a DICOM file that cannot be parsed is damaged, not foreign
            msg = f"{path}: damaged DICOM file ({exc.__class__.__name__}: {str(exc)[:120]})"
            raise InputError(msg) from None
        return None
    if not has_meta and has_dicom_preamble(path):
        msg = f"{path}: damaged or incomplete DICOM slice (file meta lacks the transfer syntax or SOP class)"
        raise InputError(msg)
    sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
    if frames != 1 and ("ImagePositionPatient" in ds or sop_class in _VOLUME_SOP_CLASSES):
        msg = f"{path}: (0028,0008) Number of Frames is {frames}; only single-frame slices are supported"
        raise InputError(msg)
    if "ImagePositionPatient" not in ds:
        if sop_class in _VOLUME_SOP_CLASSES:  # a CT/MR/PET slice without position: truncated
            msg = f"{path}: damaged or incomplete DICOM slice (no Image Position (Patient))"
            raise InputError(msg)
        return None  # not an image slice (DICOMDIR, report, presentation state...)
    # Some anonymisers blank the UID; such slices form one series, as GDCM groups them.
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    position = _numbers(ds.get("ImagePositionPatient"), 3, path, "(0020,0032) Image Position (Patient)")
    orientation = _numbers(ds.get("ImageOrientationPatient"), 6, path, "(0020,0037) Image Orientation (Patient)")
    tilt = _tilt(ds.get("GantryDetectorTilt"), path)
    if rows <= 0 or columns <= 0:
        msg = f"{path}: invalid image size Rows={rows} Columns={columns}"
        raise InputError(msg)
    header = SliceHeader(str(path), (position[0], position[1], position[2]), tuple(orientation), rows, columns, tilt)
    return uid, str(ds.get("StudyInstanceUID", "")).strip(), str(ds.get("Modality", "")).strip(), header


def _numbers(value: object, n: int, path: Path, tag: str) -> list[float]:
    try:
        numbers = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != n or not all(np.isfinite(numbers)):
        msg = f"{path}: tag {tag} should hold {n} numbers, got {value!r:.120}"
        raise InputError(msg)
    return numbers


def _int_tag(ds: Any, keyword: str, default: int) -> int:
    """An integer tag, or a ValueError quoting it (the caller reports the file as damaged)."""
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        msg = f"{keyword} must be one integer, got {value!r:.60}"
        raise ValueError(msg) from None


def _tilt(value: object, path: Path) -> float:
    if value is None or value == "":
        return 0.0
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        msg = f"{path}: tag (0018,1120) Gantry/Detector Tilt is not a number, got {value!r}"
        raise InputError(msg) from None


def _sorted_slices(slices: list[SliceHeader]) -> tuple[SliceHeader, ...]:
    orientation = np.asarray(slices[0].orientation)
    normal = np.cross(orientation[:3], orientation[3:])
    return tuple(sorted(slices, key=lambda s: float(np.dot(s.position, normal))))


def _refuse_empty_files(folder: Path) -> None:
    # A 0-byte file in an export is a truncated transfer: GDCM would skip it silently.
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.stat().st_size == 0:
            msg = f"{entry}: empty file (0 bytes) in the DICOM folder"
            raise InputError(msg)


def choose_series(folder: Path, entries: list[SeriesEntry], series_uid: str | None) -> SeriesEntry:
    if not entries:
        msg = f"{folder}: no DICOM image series found"
        raise InputError(msg)
    if series_uid is None:
        if len(entries) > 1:
            log.info("%d series in %s; taking the largest (%d files)", len(entries), folder, entries[0].n_files)
        return entries[0]
    for entry in entries:
        if entry.uid == series_uid:
            return entry
    known = ", ".join(e.uid for e in entries)
    msg = f"{folder}: series {series_uid!r} not found (series here: {known})"
    raise InputError(msg)


def check_series(folder: Path, entry: SeriesEntry, memory_budget_bytes: int) -> None:
    """Everything that can be refused from the headers alone, before pixels are read."""
    from imaging.load import check_memory_budget

    if entry.n_files < 2:
        msg = f"{folder}: series {entry.uid} has a single slice; a 3D volume needs at least 2"
        raise InputError(msg)
    first = entry.slices[0]
    check_memory_budget(folder, (first.columns, first.rows, entry.n_files), memory_budget_bytes)
    for s in entry.slices:
        if abs(s.tilt_deg) > TILT_TOLERANCE_DEG:
            msg = f"{s.file}: gantry tilt of {s.tilt_deg:g} degrees (0018,1120); tilted series are not supported"
            raise InputError(msg)
        if (s.rows, s.columns) != (first.rows, first.columns):
            msg = f"{s.file}: slice size {s.columns}x{s.rows} differs from {first.columns}x{first.rows} in the same series"
            raise InputError(msg)
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            msg = f"{s.file}: image orientation {s.orientation} differs from the rest of the series {first.orientation}"
            raise InputError(msg)
    positions = np.asarray([s.position for s in entry.slices])
    check_slice_positions(folder, positions, np.asarray(first.orientation))


def load_series(
    folder: Path, *, series_uid: str | None, memory_budget_bytes: int, on_series: SeriesChoice | None = None
) -> Volume:
    """Read the chosen series; ``on_series(all_series, chosen)`` lets a caller say which was used."""
    from imaging.load import volume_from_array

    entries = list_series(folder)
    entry = choose_series(folder, entries, series_uid)
    if on_series is not None:
        on_series(entries, entry)
    check_series(folder, entry, memory_budget_bytes)
    fast_voxels = read_fast_pixels(list(entry.fast)) if entry.fast is not None else None
    voxels: npt.NDArray[np.generic]
    if fast_voxels is not None and entry.fast is not None:
        voxels, geometry = fast_voxels, _fast_geometry(entry.fast)
    else:
        voxels, geometry = read_pixels(folder, entry.files)
    source = SourceInfo(
        format="dicom",
        n_files=entry.n_files,
        series_key=pseudonym(entry.uid, "series") if entry.uid else None,
        study_key=pseudonym(entry.study_uid, "study") if entry.study_uid else None,
    )
    return volume_from_array(voxels, geometry, folder, source)


def _fast_geometry(slices: tuple[FastSlice, ...]) -> Geometry:
    """ITK's geometry of a sorted slice stack: axes row, column, normal; origin at slice 0."""
    first, last = slices[0].header, slices[-1].header
    row, column = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, column)
    gap = float(np.dot(np.asarray(last.position) - np.asarray(first.position), normal)) / (len(slices) - 1)
    direction = np.stack([row, column, normal], axis=1)
    pixel_spacing = slices[0].pixel_spacing
    return Geometry(
        size=(first.columns, first.rows, len(slices)),
        spacing=(pixel_spacing[1], pixel_spacing[0], gap),
        origin=first.position,
        direction=tuple(float(v) for v in direction.ravel()),
    )


def read_pixels(folder: Path, files: tuple[str, ...]) -> tuple[npt.NDArray[np.generic], Geometry]:
    """SimpleITK reads the (already checked, sorted) slices; two halves on two threads.

    SimpleITK releases the GIL while GDCM decodes, so halves overlap; spacing along the
    normal was checked uniform above, so each half's geometry is the whole one's.
    """
    import SimpleITK as sitk

    from imaging.load import itk_reason

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # spacing was checked above

    def read(chunk: list[str]) -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(chunk)
        return reader.Execute()

    try:
        if len(files) < MIN_SLICES_FOR_PARALLEL_READ:
            parts = [read(list(files))]
        else:
            half = len(files) // 2
            with ThreadPoolExecutor(max_workers=2) as pool:
                parts = list(pool.map(read, [list(files[:half]), list(files[half:])]))
    except RuntimeError as exc:
        msg = f"{folder}: DICOM pixel data could not be read ({itk_reason(exc)})"
        raise InputError(msg) from None
    if len({(p.GetPixelID(), p.GetSize()[:2]) for p in parts}) != 1:
        msg = f"{folder}: slices of one series decode to different pixel types or sizes"
        raise InputError(msg)
    voxels = np.concatenate([sitk.GetArrayViewFromImage(p) for p in parts], axis=0)
    first = parts[0]
    nz, ny, nx = voxels.shape
    geometry = Geometry(
        size=(nx, ny, nz),
        spacing=tuple(float(v) for v in first.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in first.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in first.GetDirection()),
    )
    return voxels, geometry


def check_slice_positions(
    where: Path, positions: npt.NDArray[np.float64], orientation: npt.NDArray[np.float64]
) -> None:
    """Refuse tilt, duplicate or missing slices and uneven spacing; never average them away."""
    normal = np.cross(orientation[:3], orientation[3:])
    normal /= np.linalg.norm(normal)
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    across = np.linalg.norm(steps - np.outer(along, normal), axis=1)
    tilt = np.degrees(np.arctan2(np.max(across), np.maximum(np.abs(along).max(), 1e-9)))
    if tilt > TILT_TOLERANCE_DEG:
        msg = f"{where}: slices are offset across the slice plane by up to {np.max(across):.2f} mm per slice (gantry tilt of about {tilt:.1f} degrees); tilted series are not supported"
        raise InputError(msg)
    gaps = np.abs(along)
    nominal = float(np.median(gaps))
    if nominal < 1e-3:
        msg = f"{where}: duplicate slice positions (several slices at the same location)"
        raise InputError(msg)
    bad = np.flatnonzero(np.abs(gaps - nominal) > SPACING_TOLERANCE * nominal)
    if bad.size == 0:
        return
    i = int(bad[0])
    z0, z1 = float(positions[i] @ normal), float(positions[i + 1] @ normal)
    ratio = gaps[i] / nominal
    if gaps[i] < SPACING_TOLERANCE * nominal:
        problem = f"duplicate slice position at {z0:.2f} mm"
    elif abs(ratio - round(ratio)) < SPACING_TOLERANCE and round(ratio) >= 2:
        problem = f"{round(ratio) - 1} missing slice(s) between {z0:.2f} mm and {z1:.2f} mm"
    else:
        problem = f"uneven slice spacing: {gaps[i]:.3f} mm between {z0:.2f} and {z1:.2f} mm, nominal {nominal:.3f} mm"
    msg = f"{where}: {problem} ({bad.size} irregular gap(s) in {gaps.size}); refusing to interpolate"
    raise InputError(msg)
