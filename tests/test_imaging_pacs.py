"""DICOM folders as they come from PACS (issue 15, item 5): RT Dose / Structure Set / Plan,
structured reports, presentation states, key-object selections, waveforms, segmentations and
a DICOMDIR lie next to the CT slices. They are skipped with a note and never block the CT;
``--series`` and ``scrubin series`` work in their presence.

The non-image objects are pydicom's own test files (re-saved with a Part 10 preamble where
pydicom ships them bare) plus hand-made presentation state and key-object files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from dicom_factory import head_like_volume, write_series
from imaging_fixtures import error_line, load_manifest, run_cli
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from imaging import dicom_series
from imaging.deid import pseudonym
from imaging.load import load_ct

CT_UID = "1.2.826.0.1.3680043.8.498.31415926535"
SHIPPED = (
    *("rtdose.dcm", "rtdose_1frame.dcm", "rtstruct.dcm", "rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"),
    "liver_1frame.dcm",  # a DICOM Segmentation (SOP class 66.4)
)
N_SKIPPED = len(SHIPPED) + 3  # + DICOMDIR, presentation state, key-object selection


def _shipped(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


def _save_part10(ds: pydicom.Dataset, path: Path) -> None:
    """Write with a preamble and file meta, as a PACS export does."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = FileDataset(str(path), ds, file_meta=meta, preamble=b"\0" * 128)
    out.save_as(path, enforce_file_format=True)


def _hand_made(sop_class: str, modality: str, path: Path) -> None:
    ds = pydicom.Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    _save_part10(ds, path)


def _pacs_folder(folder: Path, *, deflated: bool = False) -> Path:
    paths = write_series(folder, head_like_volume((12, 32, 32), radius=10.0), series_uid=CT_UID)
    if deflated:  # not for the fast path: pydicom reads every header
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            ds.save_as(path, enforce_file_format=True)
    for name in SHIPPED:
        ds = pydicom.dcmread(_shipped(name), force=True)
        if getattr(ds, "preamble", None) is None:
            _save_part10(ds, folder / f"X_{name}")
        else:
            shutil.copy(_shipped(name), folder / f"X_{name}")
    shutil.copy(_shipped("CT_small.dcm").parent / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")
    _hand_made("1.2.840.10008.5.1.4.1.1.11.1", "PR", folder / "X_gsps.dcm")
    _hand_made("1.2.840.10008.5.1.4.1.1.88.59", "KO", folder / "X_ko.dcm")
    return folder


@pytest.mark.parametrize("deflated", [False, True], ids=["fast-path", "pydicom-path"])
def test_non_image_objects_are_skipped_and_counted(tmp_path: Path, deflated: bool) -> None:
    folder = _pacs_folder(tmp_path / "pacs", deflated=deflated)
    scan = dicom_series.scan_folder(folder)
    assert [(e.uid, e.n_files) for e in scan.series] == [(CT_UID, 12)]
    assert (scan.series[0].fast is None) == deflated  # the RT files no longer push the CT off the fast path
    assert sum(scan.skipped.values()) == N_SKIPPED
    assert scan.skipped["RT Dose"] == 2 and scan.skipped["DICOMDIR"] == 1
    for kind in ("RT Structure Set", "RT Plan", "Structured Report", "Presentation State", "Key Object Selection"):
        assert scan.skipped[kind] == 1, (kind, scan.skipped)
    volume = load_ct(folder, series_uid=CT_UID)
    assert volume.voxels.shape == (12, 32, 32)


def test_prepare_with_series_uid_in_a_pacs_folder(tmp_path: Path) -> None:
    """The reported failure: an RT Dose blocked the CT even with --series UID."""
    folder = _pacs_folder(tmp_path / "pacs")
    result = run_cli("prepare", str(folder), "--series", CT_UID, "--segments", "skin", "--out", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert load_manifest(tmp_path / "m")["source"]["n_files"] == 12
    assert f"skipped {N_SKIPPED} DICOM objects that are not image slices" in result.stdout
    assert "RT Dose 2" in result.stdout


def test_series_command_lists_only_image_series_with_a_note(tmp_path: Path) -> None:
    folder = _pacs_folder(tmp_path / "pacs")
    write_series(folder, head_like_volume((5, 16, 16)), prefix="MR", series_uid="1.2.826.0.1.3680043.8.498.2718")
    result = run_cli("series", str(folder))
    assert result.returncode == 0, result.stderr
    assert pseudonym(CT_UID, "series") in result.stdout
    assert pseudonym("1.2.826.0.1.3680043.8.498.2718", "series") in result.stdout
    assert "32x32x12" in result.stdout and "16x16x5" in result.stdout
    assert f"skipped {N_SKIPPED} DICOM objects that are not image slices" in result.stdout
    assert CT_UID not in result.stdout + result.stderr


def test_a_damaged_ct_slice_still_blocks_next_to_rt_objects(tmp_path: Path) -> None:
    folder = _pacs_folder(tmp_path / "pacs")
    victim = folder / "IM0003.dcm"
    victim.write_bytes(victim.read_bytes()[:400])  # a truncated CT slice is damage, not a foreign object
    with pytest.raises(Exception, match=r"IM0003\.dcm: damaged"):
        dicom_series.scan_folder(folder)


def test_only_non_image_objects_is_a_clear_refusal(tmp_path: Path) -> None:
    folder = tmp_path / "rt"
    folder.mkdir()
    shutil.copy(_shipped("rtdose.dcm"), folder / "dose.dcm")
    shutil.copy(_shipped("rtplan.dcm"), folder / "plan.dcm")
    result = run_cli("series", str(folder))
    assert error_line(result) == (
        "error: <input>: no DICOM image series found "
        "(skipped 2 DICOM objects that are not image slices: RT Dose 1, RT Plan 1)"
    )
