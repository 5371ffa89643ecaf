"""Reading CTs: formats, geometry in LPS mm, and every refusal as one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import real_data
from dicom_factory import head_like_volume, write_series

from imaging.errors import InputError
from imaging.load import load_ct


def _write_image(
    path: Path, voxels: np.ndarray, spacing=(0.8, 0.9, 2.5), origin=(-12.0, 30.0, -40.0), direction=None
) -> None:
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_file_formats_keep_geometry(tmp_path: Path, suffix: str) -> None:
    voxels = head_like_volume()
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated 90 degrees in-plane
    path = tmp_path / f"ct{suffix}"
    _write_image(path, voxels, direction=direction)
    volume = load_ct(path)
    np.testing.assert_array_equal(volume.voxels, voxels)
    assert volume.geometry.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert volume.geometry.origin == pytest.approx((-12.0, 30.0, -40.0), abs=1e-4)
    assert volume.geometry.direction == pytest.approx(direction, abs=1e-6)


def test_dicom_series_geometry_and_hu(tmp_path: Path) -> None:
    voxels = head_like_volume()
    write_series(tmp_path, voxels, spacing=(0.7, 0.7, 2.0), origin=(-20.0, -25.0, 100.0))
    volume = load_ct(tmp_path)
    np.testing.assert_array_equal(volume.voxels, voxels)
    assert volume.geometry.spacing == pytest.approx((0.7, 0.7, 2.0))
    assert volume.geometry.origin == pytest.approx((-20.0, -25.0, 100.0))
    assert volume.source.format == "dicom" and volume.source.n_files == voxels.shape[0]
    assert volume.source.series_key.startswith("series-")


def test_dicom_slices_sorted_by_position_not_name(tmp_path: Path) -> None:
    voxels = head_like_volume()
    n = voxels.shape[0]
    positions = [(0.0, 0.0, 2.0 * (n - 1 - k)) for k in range(n)]  # file 0 is the top slice
    write_series(tmp_path, voxels, positions=positions)
    volume = load_ct(tmp_path)
    np.testing.assert_array_equal(volume.voxels, voxels[::-1])
    assert volume.geometry.origin[2] == pytest.approx(0.0)


def test_several_series_takes_largest_unless_told(tmp_path: Path) -> None:
    big, small = head_like_volume((20, 32, 32)), head_like_volume((8, 32, 32)) + 5
    write_series(tmp_path, big, series_uid="1.2.3.4.100", prefix="A")
    write_series(tmp_path, small, series_uid="1.2.3.4.200", prefix="B")
    assert load_ct(tmp_path).voxels.shape[0] == 20
    chosen = load_ct(tmp_path, series_uid="1.2.3.4.200")
    np.testing.assert_array_equal(chosen.voxels, small)
    from imaging.deid import pseudonym

    np.testing.assert_array_equal(load_ct(tmp_path, series_uid=pseudonym("1.2.3.4.200", "series")).voxels, small)
    names = [pseudonym(uid, "series") for uid in ("1.2.3.4.100", "1.2.3.4.200")]
    with pytest.raises(InputError) as info:
        load_ct(tmp_path, series_uid="9.9.9.9.9")
    assert str(info.value).endswith(
        f"--series: no series here has the UID given (series here: {names[0]} CT 20 slices, {names[1]} CT 8 slices)"
    )


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, head_like_volume(), spacing=(1.0, 1.0, 2.0))
    paths[7].unlink()
    with pytest.raises(InputError, match=r"1 missing slice\(s\) between .* mm and .* mm"):
        load_ct(tmp_path)


def test_uneven_spacing_is_refused(tmp_path: Path) -> None:
    n = 12
    z = np.cumsum([0.0] + [2.0] * 5 + [2.7] + [2.0] * (n - 7))
    write_series(tmp_path, head_like_volume((n, 32, 32)), positions=[(0.0, 0.0, float(v)) for v in z])
    with pytest.raises(InputError, match=r"uneven slice spacing: 2\.700 mm .* nominal 2\.000 mm"):
        load_ct(tmp_path)


def test_gantry_tilt_tag_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, head_like_volume((6, 16, 16)), gantry_tilt=12.5)
    with pytest.raises(InputError, match=r"IM0000\.dcm: gantry tilt of 12\.5 degrees"):
        load_ct(tmp_path)


def test_tilted_slice_stack_is_refused_even_without_the_tag(tmp_path: Path) -> None:
    n = 8
    positions = [(0.0, 0.35 * k, 2.0 * k) for k in range(n)]  # sheared: ~10 degrees
    write_series(tmp_path, head_like_volume((n, 16, 16)), positions=positions)
    with pytest.raises(InputError, match=r"gantry tilt of about 9\.9 degrees"):
        load_ct(tmp_path)


def test_empty_file_in_dicom_folder_is_named(tmp_path: Path) -> None:
    write_series(tmp_path, head_like_volume((6, 16, 16)))
    (tmp_path / "IM9999.dcm").write_bytes(b"")
    with pytest.raises(InputError, match=r"IM9999\.dcm: empty file \(0 bytes\)"):
        load_ct(tmp_path)


def test_empty_image_file(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"ct\.nii\.gz: empty file \(0 bytes\)$"):
        load_ct(path)


def test_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.nrrd"
    path.write_text("this is a shopping list, not a volume\n" * 20)
    with pytest.raises(InputError, match=r"notes\.nrrd: not a readable nrrd image"):
        load_ct(path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG....")
    with pytest.raises(InputError, match=r"scan\.png: unsupported file type '\.png'"):
        load_ct(path)


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError, match=r"no DICOM image series found"):
        load_ct(tmp_path)


def test_memory_budget_decided_from_header_before_pixels(tmp_path: Path) -> None:
    # A detached NRRD header declaring 4000^3 voxels whose data file holds 16 bytes: reading
    # pixels would fail on the short file, so the budget message proves the header decided.
    (tmp_path / "tiny.raw").write_bytes(bytes(16))
    header = tmp_path / "huge.nhdr"
    header.write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 4000 4000 4000\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nencoding: raw\n"
        "endian: little\ndata file: tiny.raw\n"
    )
    with pytest.raises(
        InputError,
        match=r"huge\.nhdr: volume of 4000x4000x4000 voxels needs about .* GiB, over the memory budget of 6\.0 GiB",
    ):
        load_ct(header)


def test_memory_budget_for_dicom_series(tmp_path: Path) -> None:
    write_series(tmp_path, head_like_volume((6, 64, 64)))
    with pytest.raises(InputError, match=r"over the memory budget"):
        load_ct(tmp_path, memory_budget_bytes=6 * 64 * 64 * 2)


def test_nan_voxels_refused(tmp_path: Path) -> None:
    voxels = head_like_volume().astype(np.float32)
    voxels[3, 10, 10:13] = np.nan
    path = tmp_path / "ct.nrrd"
    _write_image(path, voxels)
    with pytest.raises(InputError, match=r"ct\.nrrd: 3 voxels are NaN or infinite"):
        load_ct(path)


def test_two_dimensional_image_refused(tmp_path: Path) -> None:
    path = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(path))
    with pytest.raises(InputError, match=r"slice\.mha: expected a 3D single-channel volume, got size \(8, 8\)"):
        load_ct(path)


@pytest.mark.realdata
def test_real_dicom_bti_demohead() -> None:
    volume = load_ct(real_data("ct/bti_demohead_dicom"))
    assert volume.voxels.shape == (186, 512, 512)
    assert volume.geometry.spacing == pytest.approx((0.48828125, 0.48828125, 1.0))
    assert int(volume.voxels.min()) == -1024 and int(volume.voxels.max()) == 1710
    assert volume.source.n_files == 186


@pytest.mark.realdata
def test_real_dicom_totalsegmentator_siemens() -> None:
    folder = real_data("ct/totalsegmentator_abdomen/dicom")
    volume = load_ct(folder)
    assert volume.voxels.shape == (20, 512, 512)
    assert volume.geometry.spacing[0] == pytest.approx(volume.geometry.spacing[1])
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    np.testing.assert_allclose(volume.geometry.origin, reference.GetOrigin(), atol=1e-3)
    np.testing.assert_array_equal(volume.voxels, sitk.GetArrayViewFromImage(reference))


def test_truncated_dicom_header_is_named(tmp_path: Path) -> None:
    paths = write_series(tmp_path, head_like_volume((6, 16, 16)))
    data = paths[-1].read_bytes()  # the last slice: silently dropping it would go unnoticed
    paths[-1].write_bytes(data[:200])
    with pytest.raises(InputError, match=r"IM0005\.dcm: damaged or incomplete DICOM slice"):
        load_ct(tmp_path)


def test_truncated_pixel_data_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, head_like_volume((6, 32, 32)))
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 900])
    with pytest.raises(InputError, match=r"DICOM pixel data could not be read"):
        load_ct(tmp_path)
