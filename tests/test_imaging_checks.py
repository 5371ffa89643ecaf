"""Content checks that refuse or flag, never guess (issue 15 item 2): one test per defect.

Each input is built the way tests/corpus.py builds it (nibabel, pynrrd and pydicom write the
files; the raw header fields a writer would normalise are set afterwards), loaded with
``load_ct``, and the one-line message must name the file and the field.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    MR_STORAGE,
    RESCALE_SLOPE,
    SC_STORAGE,
    US_STORAGE,
    _corrupt_gzip_nrrd,
    _corrupt_zlib,
    _edit_each,
    _no_spacing,
    _nonuniform_spacing,
    _raw_ds,
    _relabel,
    _rgb,
    _set,
    _truncate_last,
    _truncated_zlib,
    ct_volume,
    mha_bytes,
    no_air_volume,
    write_nifti,
)
from dicom_factory import write_series
from imaging_fixtures import load_manifest, run_cli

from imaging import checks
from imaging.errors import InputError
from imaging.geometry import Geometry
from imaging.load import load_ct


def _series(tmp_path: Path, damage=None, **kw) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "series"
    paths = write_series(folder, kw.pop("voxels", ct_volume()), **kw)
    if damage is not None:
        damage(paths)
    return folder


def _refused(path: Path, pattern: str, **kw: object) -> str:
    with pytest.raises(InputError) as info:
        load_ct(path, **kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    assert re.search(pattern, message), message
    return message


# ------------------------------------------------------------------ DICOM
def test_truncated_last_slice_is_refused_not_padded(tmp_path: Path) -> None:
    folder = _series(tmp_path, _truncate_last(0.5))
    _refused(folder, r"IM0023\.dcm: \(7FE0,0010\) Pixel Data is truncated: the file holds 4096 of the 8192 bytes")


def test_a_few_missing_bytes_of_the_last_slice_are_refused(tmp_path: Path) -> None:
    _refused(_series(tmp_path, _truncate_last(0.01)), r"Pixel Data is truncated")


def test_missing_pixel_spacing_is_not_one_millimetre(tmp_path: Path) -> None:
    folder = _series(tmp_path, _edit_each(lambda ds, _k: delattr(ds, "PixelSpacing")))
    _refused(folder, r"IM0000\.dcm: \(0028,0030\) Pixel Spacing is missing or not two numbers; refusing to guess")


def test_pixel_spacing_that_differs_between_slices_is_refused(tmp_path: Path) -> None:
    folder = _series(tmp_path, _edit_each(_nonuniform_spacing))
    message = _refused(folder, r"\(0028,0030\) Pixel Spacing \(0\.5, 0\.5\) differs from \(1, 1\)")
    assert "IM0003.dcm" in message


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ("NaN", "nan"), ("inf", "inf")])
def test_rescale_slope_zero_or_not_finite_is_refused(tmp_path: Path, value: str, shown: str) -> None:
    folder = _series(tmp_path, _edit_each(_raw_ds(RESCALE_SLOPE, value)))
    _refused(
        folder, rf"\(0028,1053\) Rescale slope {shown} / intercept -1024: the stored values cannot be turned into HU"
    )


def test_slices_400_mm_apart_are_not_a_patient(tmp_path: Path) -> None:
    positions = [(-50.0, -60.0, 400.0 * k) for k in range(ct_volume().shape[0])]
    _refused(
        _series(tmp_path, positions=positions),
        r"invalid voxel spacing \(1\.0, 1\.0, 400\.0\) mm: outside the plausible 0\.05\.\.20 mm",
    )


@pytest.mark.parametrize(
    ("spacing", "problem"), [(["1e30", "1e30"], "outside the plausible"), (["0", "0"], "not a positive number")]
)
def test_implausible_pixel_spacing_is_refused(tmp_path: Path, spacing: list[str], problem: str) -> None:
    folder = _series(tmp_path, _edit_each(_set(PixelSpacing=spacing)))
    _refused(folder, rf"\(0028,0030\) Pixel Spacing .* mm: {problem}")


@pytest.mark.parametrize(("modality", "sop_class"), [("MR", MR_STORAGE), ("OT", SC_STORAGE), ("US", US_STORAGE)])
def test_other_modalities_are_refused(tmp_path: Path, modality: str, sop_class: str) -> None:
    folder = _series(tmp_path, _edit_each(_relabel(modality, sop_class)))
    _refused(
        folder,
        rf"\(0008,0060\) Modality is {modality}, not CT: only CT is prepared \(--allow-modality {modality} to accept it\)",
    )


def test_allowed_modality_loads_with_a_warning(tmp_path: Path) -> None:
    folder = _series(tmp_path, _edit_each(_relabel("OT", SC_STORAGE)))
    volume = load_ct(folder, allowed_modalities=("OT",))
    assert volume.source.warnings == (
        "modality OT accepted with --allow-modality: thresholds assume CT Hounsfield units",
    )
    assert load_ct(_series(tmp_path / "ct")).source.warnings == ()


def test_cli_allow_modality_records_the_warning_in_the_manifest(tmp_path: Path) -> None:
    folder = _series(tmp_path, _edit_each(_relabel("OT", SC_STORAGE)))
    refused = run_cli("prepare", str(folder), "--out", str(tmp_path / "no"), "--segments", "skin")
    assert refused.returncode == 2 and "Modality is OT, not CT" in refused.stderr
    out = tmp_path / "model"
    result = run_cli("prepare", str(folder), "--out", str(out), "--segments", "skin", "--allow-modality", "ot")
    assert result.returncode == 0, result.stderr
    assert load_manifest(out)["source"]["warnings"] == [
        "modality OT accepted with --allow-modality: thresholds assume CT Hounsfield units"
    ]


def test_rgb_series_is_one_clean_refusal(tmp_path: Path) -> None:
    _refused(
        _series(tmp_path, _rgb),
        r"\(0028,0002\) Samples per Pixel 3, \(0028,0004\) Photometric Interpretation RGB: a colour image",
    )


def test_zero_orientation_is_refused_by_name(tmp_path: Path) -> None:
    folder = _series(tmp_path, _edit_each(_set(ImageOrientationPatient=["0"] * 6)))
    _refused(folder, r"\(0020,0037\) Image Orientation \(Patient\) .*: not two perpendicular unit vectors")


_COLOUR = r"IM0000\.dcm: \(0028,0002\) Samples per Pixel 3, \(0028,0004\) Photometric Interpretation RGB: a colour image, not a CT slice$"
_ORIENTATION = r"IM0000\.dcm: \(0020,0037\) Image Orientation \(Patient\) \(0\.0, 0\.0, 0\.0, 0\.0, 0\.0, 0\.0\): not two perpendicular unit vectors$"


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [(_rgb, _COLOUR), (_edit_each(_set(ImageOrientationPatient=["0"] * 6)), _ORIENTATION)],
    ids=["colour", "orientation"],
)
def test_colour_and_orientation_have_one_rule_that_every_caller_meets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: object, pattern: str
) -> None:
    """The series reader itself refuses, before any pixel is read and without a numpy
    warning, with the very line ``load_ct`` (``prepare``) gives; ``scrubin series`` still
    lists the folder."""
    from imaging import dicom_series

    folder = _series(tmp_path, damage)
    prepared = _refused(folder, pattern)

    def no_pixels(*_args: object) -> None:
        raise AssertionError("pixels were read before the slices were refused")

    monkeypatch.setattr(dicom_series, "read_pixels", no_pixels)
    monkeypatch.setattr(dicom_series, "read_fast_pixels", no_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError) as direct:
            dicom_series.load_series(folder, series_uid=None, memory_budget_bytes=1 << 30)
    assert str(direct.value) == prepared
    listed = run_cli("series", str(folder))
    assert (listed.returncode, listed.stderr) == (0, ""), listed.stderr
    assert "CT" in listed.stdout and "64x64x24" in listed.stdout


@pytest.mark.parametrize("fmt", ["dicom", "nifti", "mha"])
def test_volume_without_air_is_not_a_box_model(tmp_path: Path, fmt: str) -> None:
    if fmt == "dicom":
        path = _series(tmp_path, voxels=no_air_volume())
    elif fmt == "nifti":
        path = write_nifti(tmp_path / "no_air.nii.gz", no_air_volume())
    else:
        path = tmp_path / "no_air.mha"
        path.write_bytes(mha_bytes(no_air_volume()))
    _refused(path, r"voxel values: no air/tissue boundary \(0\.0% of the in-plane border is below -500 HU")


def test_unscaled_ct_without_negative_values_is_refused(tmp_path: Path) -> None:
    unscaled = (ct_volume().astype(np.int32) + 1024).astype(np.uint16)
    _refused(write_nifti(tmp_path / "raw.nii", unscaled), r"no air/tissue boundary .*lowest border value 24")


# ------------------------------------------------------------------ NIfTI
def test_nifti_pixdim_zero_is_not_one_millimetre(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "p.nii.gz", ct_volume(), spacing=(1.0, 1.0, 0.0), qform_only=True)
    _refused(path, r"pixdim\[1\.\.3\] \(1\.0, 1\.0, 0\.0\): a voxel size must be a positive number")


def test_nifti_nan_origin_is_not_zero(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "o.nii.gz", ct_volume(), origin=(math.nan, 0.0, 0.0))
    _refused(
        path, r"(invalid origin \(nan, -?0, 0\) mm: not a finite position|qform .*nan.*: not finite); refusing to guess"
    )


def test_nifti_without_qform_or_sform_is_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "f.nii", ct_volume())
    raw = bytearray(path.read_bytes())
    raw[252:256] = b"\0\0\0\0"  # qform_code = sform_code = 0
    path.write_bytes(bytes(raw))
    _refused(path, r"qform_code and sform_code are both 0: the orientation in the patient is unknown")


@pytest.mark.parametrize("slope", [math.nan, math.inf])
def test_nifti_scl_slope_not_finite_is_refused(tmp_path: Path, slope: float) -> None:
    path = write_nifti(tmp_path / "s.nii.gz", ct_volume(), slope=slope)
    _refused(path, r"scl_slope (nan|inf) / scl_inter 0: not finite")


def test_nifti_scl_slope_zero_means_unscaled(tmp_path: Path) -> None:
    """NIfTI-1 says so (unlike DICOM's RescaleSlope): the stored values are the values."""
    volume = load_ct(write_nifti(tmp_path / "z.nii.gz", ct_volume(), slope=0.0))
    np.testing.assert_array_equal(volume.voxels, ct_volume())


def test_nifti_nan_voxels_are_found_in_the_raw_data(tmp_path: Path) -> None:
    voxels = ct_volume().astype(np.float32)
    voxels[5:8, 20:30, 20:30] = np.nan
    for name in ("n.nii", "n.nii.gz"):
        _refused(write_nifti(tmp_path / name, voxels), r"300 voxels are NaN or infinite \(raw float data")


def test_nifti_2d_is_refused(tmp_path: Path) -> None:
    _refused(write_nifti(tmp_path / "flat.nii.gz", ct_volume()[:1]), r"expected a 3D volume, got size \(64, 64, 1\)")


def test_huge_spacing_never_reaches_a_manifest_as_infinity(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "h.nii.gz", ct_volume(), spacing=(1e30, 1e30, 1e30))
    out = tmp_path / "model"
    result = run_cli("prepare", str(path), "--out", str(out), "--segments", "skin")
    assert result.returncode == 2, result.stderr
    assert "invalid voxel spacing" in result.stderr and "outside the plausible" in result.stderr
    assert not out.exists()
    assert "Infinity" not in json.dumps(result.stdout)


# ------------------------------------------------------------------ MetaImage, NRRD
def test_corrupt_zlib_metaimage_is_not_zeros(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    _refused(_corrupt_zlib(tmp_path), r"pixel data truncated \(the compressed pixel data is corrupt \(zlib: ")


def test_truncated_zlib_metaimage_is_one_line(tmp_path: Path) -> None:
    _refused(_truncated_zlib(tmp_path), r"the compressed pixel data inflates to \d+ bytes, the header declares 196608")


def test_metaimage_nan_offset_is_not_zero(tmp_path: Path) -> None:
    path = tmp_path / "o.mha"
    path.write_bytes(mha_bytes(ct_volume(), origin="nan 0 0"))
    _refused(path, r"Offset \(nan, 0\.0, 0\.0\): not finite; refusing to guess an origin")


def test_metaimage_without_element_spacing_is_not_one_millimetre(tmp_path: Path) -> None:
    _refused(_no_spacing(tmp_path), r"header has no ElementSpacing \(nor ElementSize\): the voxel size is unknown")


def test_corrupt_gzip_nrrd_is_one_line(tmp_path: Path) -> None:
    _refused(_corrupt_gzip_nrrd(tmp_path), r"not a readable nrrd image|pixel data could not be read")


def test_metaimage_rgb_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((*ct_volume().shape, 3), np.uint8)
    path = tmp_path / "rgb.mha"
    path.write_bytes(mha_bytes(rgb, channels=3))
    _refused(path, r"expected a 3D single-channel volume, got size \(64, 64, 24\) with 3 components")


def test_nrrd_without_space_directions_is_refused(tmp_path: Path) -> None:
    import nrrd

    path = tmp_path / "s.nrrd"
    nrrd.write(str(path), np.ascontiguousarray(ct_volume().transpose(2, 1, 0)), {"spacings": [1.0, 1.0, 2.0]})
    _refused(path, r"header has spacings only: the voxel size and orientation in the patient are unknown")


def test_nrrd_nan_voxels_are_refused(tmp_path: Path) -> None:
    import nrrd

    voxels = ct_volume().astype(np.float64)
    voxels[3, 10, 10:13] = np.nan
    path = tmp_path / "n.nrrd"
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([1.0, 1.0, 2.0]),
        "space origin": np.zeros(3),
    }
    nrrd.write(str(path), np.ascontiguousarray(voxels.transpose(2, 1, 0)), header)
    _refused(path, r"3 voxels are NaN or infinite")


# ------------------------------------------------------------------ the checks themselves
def test_physical_size_beyond_any_patient_is_refused() -> None:
    geometry = Geometry((64, 64, 1300), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(
        InputError,
        match=r"^scan: physical size \(64, 64, 2600\) mm \(64x64x1300 voxels of \(1, 1, 2\) mm\): over the 2\.5 m",
    ):
        checks.check_geometry("scan", geometry)


@pytest.mark.parametrize("origin", [(math.nan, 0.0, 0.0), (0.0, math.inf, 0.0), (0.0, 0.0, 1e9)])
def test_origin_not_finite_or_far_away_is_refused(origin: tuple[float, float, float]) -> None:
    with pytest.raises(InputError, match=r"^scan: invalid origin .* mm: (not a finite position|over 100 m)"):
        checks.check_origin("scan", origin)


def test_plausible_ranges_are_the_named_constants() -> None:
    checks.check_spacing("s", (checks.MIN_SPACING_MM, 1.0, checks.MAX_SPACING_MM))
    for bad in (checks.MIN_SPACING_MM * 0.99, checks.MAX_SPACING_MM * 1.01, 0.0, -1.0, math.nan, math.inf):
        with pytest.raises(InputError, match=r"^s: invalid voxel spacing"):
            checks.check_spacing("s", (1.0, 1.0, bad))
