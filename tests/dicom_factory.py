"""Write small, controllable CT DICOM series with pydicom (for reader and PHI tests).

Every test series is synthetic; ``PHI`` holds obviously fake identifying values that the
de-identification test seeds into the tags and then searches for in every output byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

PHI = {
    "PatientName": "Zyxwvu^Qwertyname^Plonk",
    "PatientID": "MRN-8675309-ZQX",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ACC7781234Q",
    "InstitutionName": "Saint Hypothetical Infirmary",
    "InstitutionAddress": "42 Nowhere Lane Gotham",
    "ReferringPhysicianName": "Drquack^Hieronymus",
    "OtherPatientIDs": "ALT-5550199-PQ",
    "StudyID": "STUDY-ID-99817",
    "PatientAddress": "7 Imaginary Road Springfield",
}


def write_series(
    folder: Path,
    voxels: npt.NDArray[np.int16],
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    origin: tuple[float, float, float] = (-50.0, -60.0, -20.0),
    positions: Sequence[tuple[float, float, float]] | None = None,
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    series_uid: str | None = None,
    study_uid: str | None = None,
    phi: bool = False,
    gantry_tilt: float | None = None,
    prefix: str = "IM",
    implicit_vr: bool = False,
    undefined_length_sequence: bool = False,
) -> list[Path]:
    """One file per [z] slice of ``voxels`` (stored HU + 1024, intercept -1024)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    if positions is None:
        positions = [tuple(np.asarray(origin) + k * spacing[2] * normal) for k in range(voxels.shape[0])]
    paths = []
    for k, position in enumerate(positions):
        ds = _slice_dataset(voxels[k], spacing, position, orientation, series_uid, study_uid, k)
        if phi:
            for key, value in PHI.items():
                setattr(ds, key, value)
        if gantry_tilt is not None:
            ds.GantryDetectorTilt = gantry_tilt
        if undefined_length_sequence:
            _add_nested_sequence(ds)
        if implicit_vr:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        path = folder / f"{prefix}{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _add_nested_sequence(ds: FileDataset) -> None:
    """A two-level sequence of undefined length before the pixel data (as scanners write)."""
    inner = Dataset()
    inner.CodeValue = "113691"
    inner.CodingSchemeDesignator = "DCM"
    outer = Dataset()
    outer.ReferencedSOPClassUID = CTImageStorage
    outer.ReferencedSOPInstanceUID = generate_uid()
    outer.PurposeOfReferenceCodeSequence = DicomSequence([inner])
    ds.ReferencedImageSequence = DicomSequence([outer])
    for element in (ds["ReferencedImageSequence"], outer["PurposeOfReferenceCodeSequence"]):
        element.is_undefined_length = True
        for item in element.value:
            item.is_undefined_length_sequence_item = True


def _slice_dataset(
    pixels: npt.NDArray[np.int16],
    spacing: tuple[float, float, float],
    position: tuple[float, float, float],
    orientation: tuple[float, ...],
    series_uid: str,
    study_uid: str,
    index: int,
) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("slice", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = study_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]
    ds.SliceThickness = f"{spacing[2]:.4f}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    stored = np.clip(pixels.astype(np.int32) + 1024, 0, 65535).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    return ds


def head_like_volume(shape: tuple[int, int, int] = (24, 64, 64), radius: float = 22.0) -> npt.NDArray[np.int16]:
    """A soft-tissue cylinder-ish blob in air with a bone core, [z, y, x] HU."""
    z, y, x = np.indices(shape, dtype=np.float32)
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    hu = np.full(shape, -1000, np.int16)
    inside = (r < radius) & (z > 1) & (z < shape[0] - 2)
    hu[inside] = 40
    hu[inside & (r < radius * 0.5)] = 900
    return hu
