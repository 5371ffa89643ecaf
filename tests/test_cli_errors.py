"""One clean line for every failure of ``scrubin prepare`` (issue 15, item 4).

The error printer cannot itself fail: markup in paths and values is printed, never
interpreted; control characters and undecodable bytes are escaped onto one line; every
option is validated with one line naming it; what libraries print (ITK, numpy warnings)
never reaches the terminal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import typer
from dicom_factory import head_like_volume, write_series
from imaging_fixtures import error_line, run_cli
from pydicom.data import get_testdata_file

from imaging.deid import pseudonym
from imaging.errors import InputError
from imaging.label_table import load_label_table
from scrubin.console import one_line, one_line_errors


def _junk_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "readme.txt").write_text("not DICOM")
    return folder


# --- the printer ---------------------------------------------------------------------------------


def test_printer_shows_markup_and_control_characters_literally(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as info, one_line_errors((ValueError,)):
        raise ValueError("a [/] b [bold]c[/bold] :smile: d\ne\x1b[31m")
    assert info.value.exit_code == 2
    assert capsys.readouterr().err == "error: a [/] b [bold]c[/bold] :smile: d\\ne\\x1b[31m\n"


def test_printer_survives_an_exception_that_cannot_be_printed(capsys: pytest.CaptureFixture[str]) -> None:
    class Unprintable(ValueError):
        def __str__(self) -> str:
            raise RuntimeError("no")

    with pytest.raises(typer.Exit) as info, one_line_errors((ValueError,)):
        raise Unprintable
    assert info.value.exit_code == 2
    assert capsys.readouterr().err == "error: Unprintable (its message could not be printed)\n"


def test_internal_errors_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as info, one_line_errors((ValueError,)):
        raise KeyError("x[/]\ny")
    assert info.value.exit_code == 3
    assert capsys.readouterr().err == "internal error: KeyError: 'x[/]\\ny' (run with --debug for details)\n"


def test_one_line_escapes_what_would_break_a_line_or_a_terminal() -> None:
    assert one_line("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert one_line("x\x1b[2Jy\x7f\u2028z\u202e") == "x\\x1b[2Jy\\x7f\\u2028z\\u202e"
    assert one_line("bad\udcffname") == "bad\\udcffname"  # an undecodable byte of a file name
    assert one_line("Ünïcode ok [/]") == "Ünïcode ok [/]"


def test_markup_in_an_input_path_is_one_line(tmp_path: Path) -> None:
    folder = _junk_folder(tmp_path / "a[" / "]b [bold]c")  # the path holds "[/]", which broke rich
    line = error_line(run_cli("prepare", str(folder), "--out", str(tmp_path / "o"), "--show-paths"))
    assert line == f"error: {folder}: no DICOM image series found (ignored 1 file that is not DICOM)"


def test_markup_in_the_out_path_of_a_success(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", head_like_volume((12, 32, 32), radius=10.0))
    out = tmp_path / "m[/]x [red]"
    result = run_cli("prepare", str(tmp_path / "ct"), "--segments", "skin", "--out", str(out), "--show-paths")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and (out / "model.glb").is_file()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_markup_in_a_series_uid_is_never_printed(tmp_path: Path) -> None:
    """A Series Instance UID holding "[/]" crashed the series listing; now no UID is shown."""
    folder = tmp_path / "ct"
    write_series(folder, head_like_volume((12, 32, 32), radius=10.0), series_uid="1.2.3[/]4", prefix="A")
    write_series(folder, head_like_volume((6, 32, 32), radius=10.0), series_uid="1.2.3[bold]5", prefix="B")
    result = run_cli("prepare", str(folder), "--segments", "skin", "--out", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert "[/]" not in result.stdout and "Traceback" not in result.stderr
    assert f"-> {pseudonym('1.2.3[/]4', 'series')}" in result.stdout
    listing = run_cli("series", str(folder))
    assert listing.returncode == 0 and pseudonym("1.2.3[bold]5", "series") in listing.stdout, listing.stderr


def test_newline_and_escape_in_a_folder_name_stay_on_one_line(tmp_path: Path) -> None:
    folder = _junk_folder(tmp_path / "line1\nline2\x1b[31m")
    line = error_line(run_cli("prepare", str(folder), "--out", str(tmp_path / "o"), "--show-paths"))
    assert "line1\\nline2\\x1b[31m: no DICOM image series found" in line


def test_undecodable_folder_name_is_one_line(tmp_path: Path) -> None:
    folder = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xffname")
    _junk_folder(Path(folder))
    line = error_line(run_cli("prepare", folder, "--out", str(tmp_path / "o"), "--show-paths"))
    assert "bad\\udcffname: no DICOM image series found" in line


# --- options -------------------------------------------------------------------------------------

NOT_GB = "error: --max-memory-gb: must be a finite number of GB above 0"


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--max-memory-gb", "nan"], NOT_GB),
        (["--max-memory-gb", "inf"], NOT_GB),
        (["--max-memory-gb", "-1"], NOT_GB),
        (["--max-memory-gb", "0"], NOT_GB),
        (["--max-memory-gb", "lots"], NOT_GB),
        (["--max-memory-gb", "5000"], "error: --max-memory-gb: at most 1024 GB"),
        (["--budget", "1e20"], "error: --budget: must be a whole number of triangles, got '1e20'"),
        (["--budget", "2.5"], "error: --budget: must be a whole number of triangles, got '2.5'"),
        (["--budget", "100000000000000000000"], "error: --budget: at most 10,000,000 triangles"),
        (["--budget", "10000000000"], "error: --budget: at most 10,000,000 triangles"),
        (["--budget", "-5"], "error: --budget: at least 2000 triangles, got -5"),
        (["--series", ""], "error: --series: must name a series"),
    ],
)
def test_options_are_validated_on_one_line(tmp_path: Path, args: list[str], start: str) -> None:
    line = error_line(run_cli("prepare", "--phantom", "--out", str(tmp_path / "o"), *args))
    assert line.startswith(start), line
    assert not (tmp_path / "o").exists()


# --- content that used to escape as internal errors or library noise -----------------------------


def test_rgb_series_is_a_clean_refusal(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "rgb", head_like_volume((6, 16, 16)))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.zeros((16, 16, 3), np.uint8).tobytes()
        del ds.RescaleIntercept, ds.RescaleSlope
        ds.save_as(path)
    line = error_line(run_cli("prepare", str(tmp_path / "rgb"), "--out", str(tmp_path / "o")))
    assert "(0028,0002) Samples per Pixel 3, (0028,0004) Photometric Interpretation RGB: a colour image" in line


def test_short_detached_metaimage_data_is_one_line_without_itk_output(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(head_like_volume((10, 32, 32))), str(tmp_path / "ct.mhd"))
    raw = tmp_path / "ct.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    result = run_cli("prepare", str(tmp_path / "ct.mhd"), "--out", str(tmp_path / "o"))
    line = error_line(result)
    assert "MetaImage" not in result.stderr and "ideal" not in result.stderr
    assert "No such file or directory" not in line


def test_zero_image_orientation_is_named_without_a_numpy_warning(tmp_path: Path) -> None:
    write_series(tmp_path / "iop", head_like_volume((6, 16, 16)), orientation=(0.0,) * 6)
    result = run_cli("prepare", str(tmp_path / "iop"), "--out", str(tmp_path / "o"))
    line = error_line(result)
    assert "(0020,0037) Image Orientation (Patient)" in line and "two perpendicular unit vectors" in line
    assert "RuntimeWarning" not in result.stderr


_NOISY = """
import logging, os, sys, warnings
from scrubin.console import configure_logging, library_output_to_log
configure_logging(verbose=sys.argv[1] == "-v")
with library_output_to_log():
    os.write(2, b"MetaImage: M_ReadElementsData: data not read completely\\n")  # as C++ writes it
    warnings.warn("invalid value encountered in divide", RuntimeWarning)
    logging.getLogger("pydicom").warning("Expected explicit VR, but found implicit VR")  # as pydicom logs
    logging.getLogger("pydicom.pixels.utils").warning("a pixel data warning")  # its modules' loggers too
logging.getLogger("pydicom").warning("after the command")  # pydicom's logger is left as it was
print("error: the one line", file=sys.stderr)  # as one_line_errors prints it, after the command
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_output_goes_to_the_log_only(verbose: bool) -> None:
    """What C++ libraries write to fd 2, numpy warnings and pydicom's log records: in the
    verbose log, never raw."""
    flag = "-v" if verbose else "-q"
    result = subprocess.run([sys.executable, "-c", _NOISY, flag], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-2:] == [ln for ln in lines if "after the command" in ln] + ["error: the one line"]
    assert "WARNING pydicom: after the command" in lines[-2]
    assert not any(ln.startswith("MetaImage") or "RuntimeWarning:" in ln and "library" not in ln for ln in lines)
    assert not any("WARNING pydicom" in ln for ln in lines[:-2]), result.stderr
    logged = [ln for ln in lines if "INFO scrubin.console: library" in ln]
    assert len(logged) == (4 if verbose else 0), result.stderr
    if verbose:
        assert "library output: MetaImage: M_ReadElementsData: data not read completely" in result.stderr
        assert "library warning: RuntimeWarning: invalid value encountered in divide" in result.stderr
        assert "library log: pydicom: Expected explicit VR, but found implicit VR" in result.stderr
        assert "library log: pydicom.pixels.utils: a pixel data warning" in result.stderr


@pytest.mark.parametrize("command", ["prepare", "series"])
def test_pydicom_warnings_while_scanning_stay_in_the_log(tmp_path: Path, command: str) -> None:
    """pydicom's own test file makes it warn (through ``logging`` and ``warnings``) while the
    headers are scanned: the refusal is still exactly one line; ``--verbose`` shows the warning."""
    folder = tmp_path / "sc"
    folder.mkdir()
    shutil.copy(get_testdata_file("SC_rgb_jpeg.dcm"), folder / "IM0001.dcm")
    args = [command, str(folder)] + (["--out", str(tmp_path / "o")] if command == "prepare" else [])
    line = error_line(run_cli(*args))
    skipped = "skipped 1 DICOM object that is not an image slice: OT object without Image Position (Patient) 1"
    assert line == f"error: <input>: no DICOM image series found ({skipped})"
    verbose = run_cli("--verbose", *args)
    assert "library log: pydicom: Expected explicit VR, but found implicit VR" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == line
    assert not (tmp_path / "o").exists()


# --- label tables --------------------------------------------------------------------------------


def test_label_name_too_long_is_refused(tmp_path: Path) -> None:
    table = tmp_path / "names.json"
    table.write_text('{"1": "%s"}' % ("a" * 256))
    with pytest.raises(InputError, match=r"names\.json: label '1': name of 256 characters; at most 64"):
        load_label_table(table)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("1 liver red green blue 255", "'red green blue 255'"),
        ("1 liver 10 20 300 255", "'10 20 300 255'"),
        ("1 liver 10 20 nan 255", "'10 20 nan 255'"),
    ],
)
def test_slicer_colour_table_with_bad_colours_is_refused(tmp_path: Path, line: str, problem: str) -> None:
    table = tmp_path / "colors.txt"
    table.write_text("# id name r g b a\n" + line + "\n")
    with pytest.raises(
        InputError, match=rf"colors\.txt line 2: colour of label 1 must be 4 numbers 0-255, got {problem}"
    ):
        load_label_table(table)


def test_bad_colour_table_is_one_line_from_the_cli(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", head_like_volume((12, 32, 32), radius=10.0))
    labels = np.zeros((12, 32, 32), np.uint8)
    labels[3:8, 10:20, 10:20] = 1
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin((-50.0, -60.0, -20.0))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(tmp_path / "labels.nrrd"))
    (tmp_path / "colors.txt").write_text("1 liver red green blue 255\n")
    args = ["--labels", str(tmp_path / "labels.nrrd"), "--label-names", str(tmp_path / "colors.txt")]
    result = run_cli("prepare", str(tmp_path / "ct"), *args, "--segments", "none", "--out", str(tmp_path / "o"))
    assert error_line(result).startswith("error: <label-names> line 1: colour of label 1 must be 4 numbers 0-255")
