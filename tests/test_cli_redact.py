"""The redactor that keeps paths and UIDs off the terminal (issue 15, item 6), by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging.deid import pseudonym
from scrubin.redact import Redactor

UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"


@pytest.fixture
def patient(tmp_path: Path) -> Path:
    folder = tmp_path / "DOE^JANE CT"
    folder.mkdir()
    for name in ("IM0002.dcm", "IM0001.dcm", f"{UID}.dcm"):
        (folder / name).write_bytes(b"x")
    return folder


def test_the_input_and_its_files_are_named_by_role_and_number(patient: Path) -> None:
    redact = Redactor.for_paths(input=patient)
    assert redact(f"{patient}: no series") == "<input>: no series"
    assert redact(f"{patient}/IM0002.dcm: damaged") == "<input>/#3: damaged"  # 3rd in name order
    assert redact(f"'{patient}/{UID}.dcm' truncated") == "'<input>/#1' truncated"
    assert redact(f"{patient}/deeper/x y") == "<input>/... y"


def test_entries_inside_entries_and_entries_made_later_are_numbered_too(tmp_path: Path) -> None:
    out = tmp_path / "model"
    (out / "Doe_Jane").mkdir(parents=True)
    (out / "Doe_Jane" / "Doe Jane 1971.dcm").write_bytes(b"x")
    redact = Redactor.for_paths(out=out)
    assert redact(f"({out}/Doe_Jane/Doe Jane 1971.dcm, x)") == "(<out>/#1/#1, x)"  # a space in a name too
    (out / "Doe_John_1970.dcm").write_bytes(b"x")  # after the folder was first listed
    assert redact(f"{out}/Doe_John_1970.dcm: kept") == "<out>/#2: kept"
    assert redact(f"{out}/Doe_Jane/absent/Doe: x") == "<out>/#1/...: x"


def test_every_spelling_of_a_path_is_recognised(patient: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(patient.parent)
    relative = Path(patient.name)
    redact = Redactor.for_paths(input=relative)
    assert redact(f"{patient}: x") == "<input>: x"  # absolute, as a library may quote it
    assert redact(f"{relative}: x") == "<input>: x"
    link = patient.parent / "link"
    link.symlink_to(patient)
    assert Redactor.for_paths(input=link)(f"{patient}: x") == "<input>: x"  # the resolved target


def test_only_whole_names_are_replaced(tmp_path: Path) -> None:
    redact = Redactor.for_paths(input=Path("ct"), out=tmp_path / "m")
    assert redact("ct: objects that are not image slices, act") == "<input>: objects that are not image slices, act"
    assert redact(f"{tmp_path}/m2/x") == "<out>/../..."  # a sibling is not the --out folder, nor shown
    assert redact(f"{tmp_path}/m/x") == "<out>/..."


def test_uids_become_pseudonyms_even_with_show_paths(patient: Path) -> None:
    for show in (False, True):
        redact = Redactor.for_paths(show, input=patient)
        assert (
            redact(f"series {UID} and 1.2.3.4.5: x")
            == f"series {pseudonym(UID, 'uid')} and {pseudonym('1.2.3.4.5', 'uid')}: x"
        )
    assert Redactor.for_paths(True, input=patient)(f"{patient}/IM0001.dcm: x") == f"{patient}/IM0001.dcm: x"


def test_numbers_that_are_not_uids_stay(patient: Path) -> None:
    redact = Redactor.for_paths(input=patient)
    text = "scrubin 0.1.0, spacing (0.5, 0.5, 2.0), 10.0.0.1, 2024.01.02, -1.2.3.4"
    assert redact(text) == text
