"""Checks on the chosen DICOM series before its pixels are read: what GDCM would fill in.

GDCM reads a slice without PixelSpacing as 1 mm, a RescaleSlope of 0 or NaN as 1, a pixel
data element shorter than the image as that many pixels plus padding, and an MR, US or
Secondary Capture image as readily as a CT. Here every slice of the chosen series is checked
for those (modality, pixel spacing present, plausible and the same on every slice, rescale
slope and intercept, pixel bytes present), from the fast path's parsed headers where every
file took it, else from pydicom in a guarded child (hostile headers).

``check_slice_format`` (colour, Image Orientation) needs only the folder scan's slice headers:
``dicom_series.load_series`` runs it for every caller, before anything else is checked.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imaging import checks
from imaging.errors import InputError
from imaging.guarded import run_guarded

if TYPE_CHECKING:  # dicom_series calls check_slice_format: no import cycle at run time
    from imaging.dicom_series import SeriesEntry

PIXEL_DATA_TAG = 0x7FE00010
DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED_LENGTH = 0xFFFFFFFF
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Image Orientation (Patient) must be two perpendicular unit vectors; DICOM writes them with
# about 6 decimals, and the geometry check after reading is stricter (1e-4 on D^T D).
ORIENTATION_TOLERANCE = 1e-3
_DEFER_BYTES = 1024  # pixel data is located, never read, while checking


@dataclass(frozen=True)
class SliceFacts:
    """What one slice declares about its pixels (None: absent or not numbers)."""

    file: str
    modality: str
    pixel_spacing: tuple[float, ...] | None  # (row, column) spacing in mm
    slope: float
    intercept: float
    pixel_problem: str | None = None  # why the pixel data element cannot hold the image


def series_facts(folder: Path, entry: SeriesEntry) -> list[SliceFacts]:
    """Facts of every slice: from the fast path's headers, else pydicom in a guarded child."""
    if entry.fast is not None:
        return [SliceFacts(f.header.file, f.modality, f.pixel_spacing, f.slope, f.intercept) for f in entry.fast]
    files = entry.files
    return run_guarded(folder, "reading the DICOM slice headers", lambda: [read_slice_facts(Path(f)) for f in files])


def check_series_content(folder: Path, entry: SeriesEntry, allowed_modalities: Sequence[str] = ()) -> list[str]:
    """Refuse the series if any slice is not a usable CT slice; returns warnings for the manifest."""
    facts = series_facts(folder, entry)
    notes: set[str] = set()
    distinct = {(f.modality, f.pixel_problem, f.pixel_spacing, f.slope, f.intercept): f for f in reversed(facts)}
    for f in sorted(distinct.values(), key=facts.index):  # the first slice of each kind, in order
        note = checks.check_modality(f.file, f.modality, allowed_modalities)
        if note:
            notes.add(note)
        if f.pixel_problem is not None:
            msg = f"{folder}: DICOM pixel data could not be read ({Path(f.file).name}: (7FE0,0010) Pixel Data {f.pixel_problem})"
            raise InputError(msg)
        if f.pixel_spacing is None:
            msg = f"{f.file}: (0028,0030) Pixel Spacing is missing or not two numbers; refusing to guess one"
            raise InputError(msg)
        checks.check_spacing(f.file, f.pixel_spacing, "(0028,0030) Pixel Spacing")
        checks.check_rescale(f.file, f.slope, f.intercept, "(0028,1053) Rescale")
    names = [f.file for f in facts]
    checks.check_uniform(folder, [f.pixel_spacing or () for f in facts], "(0028,0030) Pixel Spacing", names)
    return sorted(notes)


def check_slice_format(entry: SeriesEntry) -> None:
    """Refuse a series whose slices are not one grey sample per pixel, or whose first slice's
    row and column direction cosines are not perpendicular unit vectors (GDCM would read a
    colour image as a 4D array, and divide by a zero slice normal)."""
    for s in entry.slices:
        if s.samples != 1 or s.photometric not in MONOCHROME:
            msg = f"{s.file}: (0028,0002) Samples per Pixel {s.samples}, (0028,0004) Photometric Interpretation {s.photometric}: a colour image, not a CT slice"
            raise InputError(msg)
    first = entry.slices[0]
    rows_cols = np.asarray(first.orientation, dtype=np.float64).reshape(2, 3)
    if not np.allclose(rows_cols @ rows_cols.T, np.eye(2), atol=ORIENTATION_TOLERANCE):
        shown = tuple(float(v) for v in first.orientation)
        msg = f"{first.file}: (0020,0037) Image Orientation (Patient) {shown}: not two perpendicular unit vectors"
        raise InputError(msg)


def read_slice_facts(path: Path) -> SliceFacts:
    """One slice's facts with pydicom; the pixel data is located, not read."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid DS text ("NaN") is reported below, as a value
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        return SliceFacts(
            file=str(path),
            modality=str(ds.get("Modality", "") or ""),
            pixel_spacing=_numbers(ds, "PixelSpacing", 2),
            slope=_number(ds, "RescaleSlope", 1.0),
            intercept=_number(ds, "RescaleIntercept", 0.0),
            pixel_problem=_pixel_problem(ds, path),
        )


def _numbers(ds: object, keyword: str, n: int) -> tuple[float, ...] | None:
    try:
        value = ds.get(keyword)  # type: ignore[attr-defined]
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == n else None


def _number(ds: object, keyword: str, default: float) -> float:
    """The tag as a number (NaN when it is text that is not one); ``default`` when absent."""
    try:
        value = ds.get(keyword)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return math.nan
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _pixel_problem(ds: object, path: Path) -> str | None:
    """Why the pixel data element cannot hold Rows x Columns x frames x samples, or None."""
    element = ds.get_item(PIXEL_DATA_TAG) if PIXEL_DATA_TAG in ds else None  # type: ignore[attr-defined,operator]
    if element is None:
        return "is missing"
    if getattr(element, "length", 0) == UNDEFINED_LENGTH or ds.file_meta.TransferSyntaxUID.is_encapsulated:  # type: ignore[attr-defined]
        return None  # compressed fragments: the decoder checks what it decodes
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)  # type: ignore[attr-defined]
    frames = int(ds.get("NumberOfFrames", 1) or 1)  # type: ignore[attr-defined]
    samples = int(ds.get("SamplesPerPixel", 1) or 1)  # type: ignore[attr-defined]
    bits = int(ds.get("BitsAllocated", 16) or 16)  # type: ignore[attr-defined]
    needed = (rows * columns * frames * samples * bits + 7) // 8
    length = int(getattr(element, "length", 0) or 0)
    if length < needed and getattr(element, "value", None) is None:
        return f"declares {length} bytes, the image needs {needed}"
    if getattr(element, "value", None) is not None:  # read already (small, or a deflated file)
        present = len(element.value)
    elif ds.file_meta.TransferSyntaxUID == DEFLATED:  # type: ignore[attr-defined]
        return None  # positions are in the inflated stream; pydicom reads it whole when it decodes
    else:
        present = path.stat().st_size - element.value_tell
    if present < needed:
        return f"is truncated: the file holds {max(present, 0)} of the {needed} bytes the image needs"
    return None
