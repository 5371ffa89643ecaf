"""DICOM series folders: list the series, pick one, read it and check its slice geometry.

GDCM (through SimpleITK) sorts the slices by position. Before pixels are read the header of
the first slice sets the memory estimate; after reading, the per-slice positions are checked
for missing slices, uneven spacing and gantry tilt, which ITK would otherwise average over.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imaging.deid import pseudonym
from imaging.dicom_checks import check_slice_format
from imaging.dicom_fast import (
    FastSlice,
    SliceHeader,
    has_dicom_preamble,
    read_fast_header,
    read_fast_pixels,
    sop_class_of,
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
    (0x0008, 0x0016),  # SOP Class UID (for files whose meta group lacks it)
    (0x0028, 0x0008),  # Number of Frames
    (0x0028, 0x0002),  # Samples per Pixel
    (0x0028, 0x0004),  # Photometric Interpretation
)
MIN_SLICES_FOR_PARALLEL_READ = 16
# What a PACS export puts next to the slices that is not an image slice: skipped with a note,
# never read as a series. (SOP Class UID, kind); a UID ending in "." names a whole family.
_NON_IMAGE_SOP_CLASSES = (
    ("1.2.840.10008.1.3.10", "DICOMDIR"),
    ("1.2.840.10008.5.1.4.1.1.481.1", "RT Image"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "RT Dose"),
    ("1.2.840.10008.5.1.4.1.1.481.3", "RT Structure Set"),
    ("1.2.840.10008.5.1.4.1.1.481.5", "RT Plan"),
    ("1.2.840.10008.5.1.4.1.1.481.8", "RT Plan"),  # RT Ion Plan
    ("1.2.840.10008.5.1.4.1.1.481.", "RT object"),
    ("1.2.840.10008.5.1.4.1.1.88.59", "Key Object Selection"),
    ("1.2.840.10008.5.1.4.1.1.88.", "Structured Report"),
    ("1.2.840.10008.5.1.4.1.1.11.", "Presentation State"),
    ("1.2.840.10008.5.1.4.1.1.9.", "Waveform"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation"),
    ("1.2.840.10008.5.1.4.1.1.66", "Raw Data"),
    ("1.2.840.10008.5.1.4.1.1.66.", "Registration"),
    ("1.2.840.10008.5.1.4.1.1.104.", "Encapsulated Document"),
)
# The same kinds by Modality, for files that do not say their SOP class.
_NON_IMAGE_MODALITIES = {
    "RTDOSE": "RT Dose",
    "RTSTRUCT": "RT Structure Set",
    "RTPLAN": "RT Plan",
    "RTIMAGE": "RT Image",
    "RTRECORD": "RT object",
    "SR": "Structured Report",
    "KO": "Key Object Selection",
    "PR": "Presentation State",
    "SEG": "Segmentation",
    "REG": "Registration",
    "DOC": "Encapsulated Document",
    "ECG": "Waveform",
}
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

    @property
    def name(self) -> str:
        """The series' keyed pseudonym (the manifest's ``series_key``): shown, never the UID."""
        return pseudonym(self.uid, "series") if self.uid else BLANK_UID_NAME

    @property
    def description(self) -> str:
        """Safe descriptors: modality and slice count."""
        return f"{self.modality or '?'} {self.n_files} slices"


BLANK_UID_NAME = "series-without-uid"  # some anonymisers blank the UID; GDCM groups such slices


@dataclass(frozen=True)
class FolderScan:
    """What one pass over a DICOM folder found: image series, largest first, and what it skipped."""

    series: list[SeriesEntry]
    skipped: dict[str, int]  # DICOM objects that are not image slices, by kind (RT Dose, ...)
    not_dicom: int = 0  # files that are not DICOM at all

    def note(self) -> str:
        """One line on what was skipped, or "" when nothing was."""
        parts = []
        if self.skipped:
            n = sum(self.skipped.values())
            kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.skipped.items()))
            what = "DICOM object that is not an image slice" if n == 1 else "DICOM objects that are not image slices"
            parts.append(f"skipped {n} {what}: {kinds}")
        if self.not_dicom:
            parts.append(
                f"ignored {self.not_dicom} {'file that is' if self.not_dicom == 1 else 'files that are'} not DICOM"
            )
        return "; ".join(parts)


SeriesChoice = Callable[[FolderScan, SeriesEntry], None]


def non_image_kind(sop_class: str, modality: str) -> str | None:
    """What a DICOM object is when it is not an image slice (RT Dose, Structured Report...)."""
    for uid, kind in _NON_IMAGE_SOP_CLASSES:
        if sop_class == uid or (uid.endswith(".") and sop_class.startswith(uid)):
            return kind
    return None if sop_class else _NON_IMAGE_MODALITIES.get(modality.strip().upper())


def list_series(folder: Path) -> list[SeriesEntry]:
    """Every DICOM image series in ``folder`` (not recursive), largest first."""
    return scan_folder(folder).series


def scan_folder(folder: Path) -> FolderScan:
    """The image series in ``folder`` (not recursive), largest first, and what was skipped.

    One pass over the headers, no pixels: parsed from the bytes where every file allows it
    (``dicom_fast``), else with pydicom (only the tags needed). Either way it is about twice
    as fast as GDCM's two directory scans and gives the per-slice positions to check before
    any pixel is read. Files that are not DICOM are ignored, as GDCM does; DICOM objects that
    are not image slices (RT, reports, presentation states, DICOMDIR) are skipped and counted.
    """
    files = _folder_files(folder)
    scan = _scan_fast(files)
    if scan is not None:
        return scan
    # pydicom parses whatever it is given (deep nesting, huge lengths): in a guarded child.
    return run_guarded(folder, "reading the DICOM headers", lambda: _scan(files))


def _folder_files(folder: Path) -> list[Path]:
    _refuse_empty_files(folder)
    return sorted(p for p in folder.iterdir() if p.is_file())


def _scan_fast(files: list[Path]) -> FolderScan | None:
    """Headers parsed straight from the bytes (see ``dicom_fast``), or None when any DICOM
    image file in the folder is not for the fast path (then pydicom reads them all)."""
    groups: dict[str, list[FastSlice]] = {}
    skipped: Counter[str] = Counter()
    not_dicom = 0
    for path in files:
        fast = read_fast_header(path)
        if fast is not None:
            kind = non_image_kind(fast.sop_class, fast.modality)
        elif has_dicom_preamble(path):
            kind = non_image_kind(sop_class_of(path), "")
            if kind is None:
                return None  # an image, or damage: pydicom reads it (and names the damage)
        else:
            not_dicom += 1  # ignored, as GDCM and the pydicom scan do
            continue
        if kind is not None:
            skipped[kind] += 1
            continue
        assert fast is not None
        groups.setdefault(fast.series_uid, []).append(fast)
    entries = []
    for uid, fasts in groups.items():
        by_file = {f.header.file: f for f in fasts}
        headers = _sorted_slices([f.header for f in fasts])
        ordered = tuple(by_file[h.file] for h in headers)
        entries.append(SeriesEntry(uid, ordered[0].study_uid, ordered[0].modality, headers, ordered))
    return FolderScan(_largest_first(entries), dict(skipped), not_dicom)


def _largest_first(entries: list[SeriesEntry]) -> list[SeriesEntry]:
    return sorted(entries, key=lambda e: (-e.n_files, e.uid))


def _scan(files: list[Path]) -> FolderScan:
    groups: dict[str, list[SliceHeader]] = {}
    meta: dict[str, tuple[str, str]] = {}
    skipped: Counter[str] = Counter()
    not_dicom = 0
    for path in files:
        header = _read_header(path)
        if header is None:
            not_dicom += 1
            continue
        if isinstance(header, str):
            skipped[header] += 1
            continue
        uid, study, modality, slice_header = header
        groups.setdefault(uid, []).append(slice_header)
        meta.setdefault(uid, (study, modality))
    entries = [SeriesEntry(uid, *meta[uid], _sorted_slices(slices)) for uid, slices in groups.items()]
    return FolderScan(_largest_first(entries), dict(skipped), not_dicom)


def _read_header(path: Path) -> tuple[str, str, str, SliceHeader] | str | None:
    """(series UID, study UID, modality, slice header) of an image slice; the kind of a DICOM
    object that is not one (skipped); None for a file that is not DICOM (ignored)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
        meta = getattr(ds, "file_meta", None)
        has_meta = meta is not None and "TransferSyntaxUID" in meta and "MediaStorageSOPClassUID" in meta
        frames = _int_tag(ds, "NumberOfFrames", 1)
        rows, columns = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
        samples = _int_tag(ds, "SamplesPerPixel", 1)
    except Exception as exc:  # hostile bytes can make a parser raise anything at all
        if has_dicom_preamble(path):  # a DICOM file that cannot be parsed is damaged, not foreign
            msg = f"{path}: damaged DICOM file ({exc.__class__.__name__}: {str(exc)[:120]})"
            raise InputError(msg) from None
        return None
    if not has_meta and has_dicom_preamble(path):
        msg = f"{path}: damaged or incomplete DICOM slice (file meta lacks the transfer syntax or SOP class)"
        raise InputError(msg)
    sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip()
    kind = non_image_kind(sop_class, modality)
    if kind is not None:
        return kind
    if frames != 1 and ("ImagePositionPatient" in ds or sop_class in _VOLUME_SOP_CLASSES):
        msg = f"{path}: (0028,0008) Number of Frames is {frames}; only single-frame slices are supported"
        raise InputError(msg)
    if "ImagePositionPatient" not in ds:
        if sop_class in _VOLUME_SOP_CLASSES:  # a CT/MR/PET slice without position: truncated
            msg = f"{path}: damaged or incomplete DICOM slice (no Image Position (Patient))"
            raise InputError(msg)
        return f"{modality or 'DICOM'} object without Image Position (Patient)"  # e.g. a screenshot
    # Some anonymisers blank the UID; such slices form one series, as GDCM groups them.
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    position = _numbers(ds.get("ImagePositionPatient"), 3, path, "(0020,0032) Image Position (Patient)")
    orientation = _numbers(ds.get("ImageOrientationPatient"), 6, path, "(0020,0037) Image Orientation (Patient)")
    tilt = _tilt(ds.get("GantryDetectorTilt"), path)
    if rows <= 0 or columns <= 0:
        msg = f"{path}: invalid image size Rows={rows} Columns={columns}"
        raise InputError(msg)
    header = SliceHeader(
        str(path),
        (position[0], position[1], position[2]),
        tuple(orientation),
        rows,
        columns,
        tilt,
        samples=samples,
        photometric=str(ds.get("PhotometricInterpretation", "") or "").strip(),
    )
    return uid, str(ds.get("StudyInstanceUID", "")).strip(), modality, header


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


def choose_series(folder: Path, scan: FolderScan, wanted: str | None) -> SeriesEntry:
    """The series named ``wanted`` (its pseudonym, as ``scrubin series`` shows it, or its
    full Series Instance UID), else the largest. A UID given is never quoted back."""
    entries = scan.series
    if not entries:
        note = scan.note()
        msg = f"{folder}: no DICOM image series found" + (f" ({note})" if note else "")
        raise InputError(msg)
    if wanted is None:
        if len(entries) > 1:
            log.info("%d series in the folder; taking the largest, %s", len(entries), entries[0].name)
        return entries[0]
    for entry in entries:
        if wanted.strip() in (entry.uid, entry.name):
            return entry
    known = ", ".join(f"{e.name} {e.description}" for e in entries)
    given = f"is named {wanted!r}" if wanted.startswith("series-") else "has the UID given"
    msg = f"{folder}: --series: no series here {given} (series here: {known})"
    raise InputError(msg)


def check_series(folder: Path, entry: SeriesEntry, memory_budget_bytes: int) -> None:
    """The slice geometry that can be refused from the headers alone, before pixels are read
    (the slice format, ``dicom_checks.check_slice_format``, was checked already)."""
    from imaging.load import check_memory_budget

    if entry.n_files < 2:
        msg = f"{folder}: series {entry.name} has a single slice; a 3D volume needs at least 2"
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
    """Read the chosen series; ``on_series(scan, chosen)`` lets a caller say which was used
    (and check more) once its slice format is known to be a grey, properly oriented stack.

    ``series_uid`` is the series' full UID or its pseudonym (``SeriesEntry.name``)."""
    from imaging.load import volume_from_array

    scan = scan_folder(folder)
    entry = choose_series(folder, scan, series_uid)
    check_slice_format(entry)
    if on_series is not None:
        on_series(scan, entry)
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
