"""The fast DICOM path agrees with SimpleITK voxel for voxel, and steps aside when unsure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import real_data
from dicom_factory import head_like_volume, write_series

from imaging import dicom_series
from imaging.dicom_fast import read_fast_header
from imaging.load import load_ct

OBLIQUE = (0.9848078, 0.1736482, 0.0, -0.1736482, 0.9848078, 0.0)  # 10 degrees in-plane


def _reference(folder: Path) -> sitk.Image:
    return sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))


def _assert_same_as_simpleitk(folder: Path) -> None:
    volume = load_ct(folder)
    reference = _reference(folder)
    np.testing.assert_array_equal(volume.voxels, sitk.GetArrayViewFromImage(reference))
    np.testing.assert_allclose(volume.geometry.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.geometry.spacing, reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(volume.geometry.direction, reference.GetDirection(), atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"implicit_vr": True},
        {"undefined_length_sequence": True},
        {"implicit_vr": True, "undefined_length_sequence": True, "orientation": OBLIQUE},
    ],
    ids=["explicit", "implicit", "nested-sequence", "implicit-nested-oblique"],
)
def test_fast_path_matches_simpleitk(tmp_path: Path, options: dict[str, object]) -> None:
    write_series(tmp_path, head_like_volume((12, 40, 36)), spacing=(0.6, 0.8, 1.5), **options)  # type: ignore[arg-type]
    entry = dicom_series.list_series(tmp_path)[0]
    assert entry.fast is not None  # the fast path really ran
    _assert_same_as_simpleitk(tmp_path)


def test_compressed_series_falls_back(tmp_path: Path) -> None:
    folder = real_data("ct/totalsegmentator_abdomen/dicom")  # JPEG 2000 lossless
    assert read_fast_header(next(p for p in sorted(folder.iterdir()) if p.is_file())) is None
    assert dicom_series.list_series(folder)[0].fast is None
    _assert_same_as_simpleitk(folder)


@pytest.mark.realdata
def test_real_philips_series_takes_the_fast_path() -> None:
    folder = real_data("ct/bti_demohead_dicom")  # 12-bit stored, large private header, DICOMDIR
    assert dicom_series.list_series(folder)[0].fast is not None
    _assert_same_as_simpleitk(folder)


def test_values_above_bits_stored_fall_back_to_gdcm(tmp_path: Path) -> None:
    import pydicom

    paths = write_series(tmp_path, head_like_volume((6, 16, 16)))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 12, 11
        pixels = ds.pixel_array.copy()
        pixels[0, 0] |= 0x8000  # an overlay bit above BitsStored
        ds.PixelData = pixels.tobytes()
        ds.save_as(path)
    entry = dicom_series.list_series(tmp_path)[0]
    assert entry.fast is not None
    from imaging.dicom_fast import read_fast_pixels

    assert read_fast_pixels(list(entry.fast)) is None  # left to SimpleITK/GDCM
    _assert_same_as_simpleitk(tmp_path)
