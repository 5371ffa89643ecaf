"""No identifiers in terminal output or logs (issue 15, item 6).

The input folder's name can carry a patient's name and Series UIDs are identifiers: series
are named by their keyed pseudonym (the manifest's ``series_key``) with safe descriptors,
paths by their role (``<input>``, ``<out>``...), unless ``--show-paths`` opts in. ``--series``
takes the pseudonym that ``scrubin series`` shows, or a full UID.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from dicom_factory import head_like_volume, write_series
from imaging_fixtures import error_line, load_manifest, run_cli

from imaging.deid import pseudonym

BIG_UID = "1.2.826.0.1.3680043.8.498.10101010"
SMALL_UID = "1.2.826.0.1.3680043.8.498.20202020"
NAME = "DOE^JOHN 19310704"


def _two_series(tmp_path: Path) -> Path:
    folder = tmp_path / NAME
    write_series(folder, head_like_volume((16, 32, 32), radius=10.0), series_uid=BIG_UID, prefix="A")
    write_series(folder, head_like_volume((8, 32, 32), radius=6.0), series_uid=SMALL_UID, prefix="B")
    return folder


def _no_identifiers(result: subprocess.CompletedProcess[str]) -> None:
    text = result.stdout + result.stderr
    for needle in (BIG_UID, SMALL_UID, "DOE", "JOHN", "19310704"):
        assert needle not in text, (needle, text)
    assert not re.search(r"\b1\.2\.826\.0\.1\.3680043", text), text  # no UID of any object


def test_prepare_names_the_series_by_pseudonym(tmp_path: Path) -> None:
    folder = _two_series(tmp_path)
    result = run_cli("-v", "prepare", str(folder), "--segments", "skin", "--out", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    _no_identifiers(result)
    big, small = pseudonym(BIG_UID, "series"), pseudonym(SMALL_UID, "series")
    assert f"-> {big}  CT  16 slices  32x32" in result.stdout and f"   {small}  CT  8 slices" in result.stdout
    assert "2 DICOM series in <input>" in result.stdout and "wrote <out>" in result.stdout
    assert load_manifest(tmp_path / "m")["source"]["series_key"] == big  # the same name as in the model


@pytest.mark.parametrize("how", ["pseudonym", "uid"])
def test_series_accepts_the_pseudonym_shown_or_a_full_uid(tmp_path: Path, how: str) -> None:
    folder = _two_series(tmp_path)
    listing = run_cli("series", str(folder))
    assert listing.returncode == 0, listing.stderr
    _no_identifiers(listing)
    names = re.findall(r"series-[0-9a-f]{16}", listing.stdout)
    assert names == [pseudonym(BIG_UID, "series"), pseudonym(SMALL_UID, "series")]  # largest first
    chosen = names[1] if how == "pseudonym" else SMALL_UID
    result = run_cli("prepare", str(folder), "--series", chosen, "--segments", "skin", "--out", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    _no_identifiers(result)
    assert load_manifest(tmp_path / "m")["source"]["n_files"] == 8


def test_refusals_name_neither_the_folder_nor_a_uid(tmp_path: Path) -> None:
    folder = _two_series(tmp_path)
    (folder / "B0003.dcm").write_bytes((folder / "B0003.dcm").read_bytes()[:300])  # damaged slice
    result = run_cli("prepare", str(folder), "--out", str(tmp_path / "m"))
    line = error_line(result)
    _no_identifiers(result)
    files = sorted(p.name for p in folder.iterdir())
    assert line.startswith(f"error: <input>/#{files.index('B0003.dcm') + 1}: damaged")


def test_unknown_series_lists_pseudonyms(tmp_path: Path) -> None:
    folder = _two_series(tmp_path)
    result = run_cli("prepare", str(folder), "--series", "1.2.826.0.1.3680043.8.498.999", "--out", str(tmp_path / "m"))
    line = error_line(result)
    _no_identifiers(result)
    big, small = pseudonym(BIG_UID, "series"), pseudonym(SMALL_UID, "series")
    assert line == (
        f"error: <input>: --series: no series here has the UID given "
        f"(series here: {big} CT 16 slices, {small} CT 8 slices)"
    )


def test_show_paths_opts_in_to_paths_but_never_uids(tmp_path: Path) -> None:
    folder = _two_series(tmp_path)
    result = run_cli(
        "prepare", str(folder), "--series", "series-0000000000000000", "--show-paths", "--out", str(tmp_path / "m")
    )
    line = error_line(result)
    assert line.startswith(f"error: {folder}: --series: no series here is named 'series-0000000000000000'")
    assert BIG_UID not in result.stderr


def test_series_command_hides_the_folder_name(tmp_path: Path) -> None:
    folder = _two_series(tmp_path)
    result = run_cli("series", str(folder))
    assert "DICOM series in <input>" in result.stdout
    _no_identifiers(result)
    shown = run_cli("series", str(folder), "--show-paths")
    assert NAME in shown.stdout
