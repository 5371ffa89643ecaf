"""``--out`` never destroys what scrubin did not write (issue 15, item 1).

A folder is replaced only when it is a complete patient model by its own manifest (schema,
file list, sizes and sha256); never the input, a folder above it or one inside it; never a
folder holding files its manifest does not list. ``--force`` only lets a scrubin model whose
files were changed or removed be replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import head_like_volume, write_series
from imaging_fixtures import error_line, load_manifest, run_cli

from imaging.errors import ImagingError, OutputError
from imaging.geometry import Geometry
from imaging.output_folder import check_destination, remove_staging_left_by, staging_folder
from imaging.prepare import PrepareOptions, prepare_path, prepare_volume
from imaging.volume import SourceInfo, Volume

SMALL = PrepareOptions(segments=("skin",), triangle_budget=2_000)


def _volume() -> Volume:
    voxels = head_like_volume((12, 32, 32), radius=10.0)
    geometry = Geometry((32, 32, 12), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return Volume(voxels, geometry, SourceInfo("nrrd"))


def _model(out: Path, options: PrepareOptions = SMALL) -> dict[str, object]:
    return prepare_volume(_volume(), out, options, study_id="study-test").manifest


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (relative name -> sha256), to prove nothing changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _ct(folder: Path) -> Path:
    write_series(folder, head_like_volume((12, 32, 32), radius=10.0))
    return folder


# --- the input is never the destination --------------------------------------------------------


def test_cli_out_is_the_input_folder_with_a_manifest_keeps_every_input_file(tmp_path: Path) -> None:
    """The reported data loss: any file named manifest.json made the input folder 'a model'."""
    ct = _ct(tmp_path / "ct")
    _model(tmp_path / "real")
    shutil.copy(tmp_path / "real" / "manifest.json", ct / "manifest.json")  # even a genuine manifest
    before = _snapshot(ct)
    line = error_line(run_cli("prepare", str(ct), "--out", str(ct), "--segments", "skin"))
    assert "is the input itself" in line
    assert _snapshot(ct) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "real"]  # no staging debris


def test_cli_out_above_the_input_is_refused(tmp_path: Path) -> None:
    ct = _ct(tmp_path / "patient" / "ct")
    (tmp_path / "patient" / "manifest.json").write_text("{}")
    before = _snapshot(tmp_path / "patient")
    line = error_line(run_cli("prepare", str(ct), "--out", str(tmp_path / "patient"), "--segments", "skin"))
    assert "holds the input" in line
    assert _snapshot(tmp_path / "patient") == before


def test_cli_out_inside_the_input_is_refused_and_not_created(tmp_path: Path) -> None:
    ct = _ct(tmp_path / "ct")
    before = _snapshot(ct)
    line = error_line(run_cli("prepare", str(ct), "--out", str(ct / "model"), "--segments", "skin"))
    assert "inside the input folder" in line
    assert _snapshot(ct) == before and not (ct / "model").exists()


@pytest.mark.parametrize("which", ["labels", "label_names"])
def test_folder_of_a_label_input_is_refused_before_anything_is_read(tmp_path: Path, which: str) -> None:
    ct = _ct(tmp_path / "ct")
    folder = tmp_path / "inputs"
    folder.mkdir()
    extra = folder / ("seg.nrrd" if which == "labels" else "names.json")
    extra.write_text("{}")
    (folder / "manifest.json").write_text("{}")
    options = PrepareOptions(segments=("skin",), **{f"{which}_path": extra})  # type: ignore[arg-type]
    with pytest.raises(OutputError, match=rf"inputs: holds the input .*{extra.name}"):
        prepare_path(ct, folder, options)
    assert extra.read_text() == "{}" and (folder / "manifest.json").read_text() == "{}"


def test_relative_and_symlinked_spellings_of_the_input_are_recognised(tmp_path: Path) -> None:
    ct = _ct(tmp_path / "ct")
    (tmp_path / "link").symlink_to(ct)
    with pytest.raises(OutputError, match="is the input itself"):
        check_destination(tmp_path / "link", (ct,))
    with pytest.raises(OutputError, match="is the input itself"):
        check_destination(ct / ".." / "ct", (ct,))


# --- what may be replaced ------------------------------------------------------------------------


def test_complete_model_is_replaced_without_force(tmp_path: Path) -> None:
    out = tmp_path / "model"
    first = _model(out)
    second = _model(out, PrepareOptions(segments=("skin",), triangle_budget=3_000))
    assert load_manifest(out)["triangle_budget"] == 3_000 != first["triangle_budget"]
    assert second["files"] == load_manifest(out)["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_empty_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    _model(out)
    assert (out / "model.glb").is_file()


def test_unlisted_files_are_named_and_never_replaced_even_with_force(tmp_path: Path) -> None:
    out = tmp_path / "model"
    _model(out)
    (out / "notes.txt").write_text("surgeon's notes")
    (out / "scan").mkdir()
    (out / "scan" / "IM0001.dcm").write_bytes(b"precious")
    before = _snapshot(out)
    for force in (False, True):
        with pytest.raises(
            OutputError,
            match=rf"model: holds 2 files its manifest does not list \({re.escape(f'{out}/notes.txt, {out}/scan/IM0001.dcm')}\)",
        ):
            _model(out, PrepareOptions(segments=("skin",), triangle_budget=2_000, force=force))
    assert _snapshot(out) == before


def test_cli_names_unlisted_files_by_number_unless_show_paths(tmp_path: Path) -> None:
    """--out pointed at a folder holding another patient's files: the refusal names them by
    role and number (their names can carry the patient's name), the real names only with
    --show-paths; nothing else is printed."""
    ct = _ct(tmp_path / "ct")
    out = tmp_path / "model"
    _model(out)
    (out / "Doe_John_1970.dcm").write_bytes(b"another patient")
    (out / "Doe_Jane").mkdir()
    (out / "Doe_Jane" / "Doe_Jane_1971.dcm").write_bytes(b"and another")
    before = _snapshot(out)
    args = ["prepare", str(ct), "--out", str(out), "--segments", "skin"]
    result = run_cli(*args)
    # entries of --out in name order: #1 Doe_Jane (its #1 Doe_Jane_1971.dcm), #2 Doe_John_1970.dcm
    assert (result.returncode, result.stdout) == (2, "\n")  # stdout: the transient progress bar's line end
    assert result.stderr == (
        "error: <out>: holds 2 files its manifest does not list (<out>/#1/#1, <out>/#2); "
        "refusing to replace it (move them elsewhere, or choose another --out)\n"
    )
    shown = run_cli(*args, "--show-paths")
    assert (shown.returncode, shown.stdout) == (2, "\n")
    assert f"({out}/Doe_Jane/Doe_Jane_1971.dcm, {out}/Doe_John_1970.dcm)" in error_line(shown)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "model"]


def test_unlisted_empty_folder_and_symlink_are_named(tmp_path: Path) -> None:
    out = tmp_path / "model"
    _model(out)
    (out / "keep").mkdir()
    (out / "link.glb").symlink_to(tmp_path)
    with pytest.raises(OutputError, match=rf"\({re.escape(f'{out}/keep, {out}/link.glb')}\)"):
        check_destination(out, (), force=True)


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        (None, "no manifest.json"),
        ("{}", "manifest.json is not a scrubin patient-model manifest"),
        ("[1, 2", "manifest.json is not valid JSON"),
        ('{"kind": "scrubin.patient_model", "schema_version": 99, "files": {}}', "schema version 99"),
        ('{"kind": "scrubin.patient_model", "schema_version": 1, "files": {"../x": {}}}', "'../x'"),
    ],
)
def test_folder_that_is_not_a_model_is_refused_even_with_force(
    tmp_path: Path, manifest: str | None, reason: str
) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.docx").write_text("precious")
    if manifest is not None:
        (out / "manifest.json").write_text(manifest)
    before = _snapshot(out)
    for force in (False, True):
        with pytest.raises(OutputError, match=r"thesis: exists and is not a patient-model folder \(") as info:
            _model(out, PrepareOptions(segments=("skin",), triangle_budget=2_000, force=force))
        assert reason in str(info.value)
    assert _snapshot(out) == before


@pytest.mark.parametrize("damage", ["changed", "missing", "resized"])
def test_model_whose_files_changed_needs_force(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "model"
    _model(out)
    stl = out / "meshes" / "skin.stl"
    if damage == "changed":
        data = bytearray(stl.read_bytes())
        data[100] ^= 0xFF
        stl.write_bytes(bytes(data))
    elif damage == "missing":
        stl.unlink()
    else:
        stl.write_bytes(stl.read_bytes() + b"edited")
    before = _snapshot(out)
    expected = {"changed": "sha256 differs", "missing": "missing", "resized": "size differs"}[damage]
    with pytest.raises(OutputError, match=rf"no longer match its manifest \(meshes/skin\.stl: {expected}\).*--force"):
        _model(out)
    assert _snapshot(out) == before
    _model(out, PrepareOptions(segments=("skin",), triangle_budget=2_000, force=True))
    assert set(_snapshot(out)) == {"manifest.json", "model.glb", "meshes/skin.ply", "meshes/skin.stl"}
    check_destination(out)  # a complete model again


def test_out_that_is_a_file_or_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"file: exists and is not a folder"):
        check_destination(tmp_path / "file")
    _model(tmp_path / "model")
    (tmp_path / "alias").symlink_to(tmp_path / "model")
    with pytest.raises(OutputError, match=r"alias: is a symbolic link"):
        check_destination(tmp_path / "alias")


def test_files_added_while_preparing_are_never_replaced(tmp_path: Path) -> None:
    """The check is repeated just before the swap: a file copied in meanwhile survives."""
    from imaging.prepare import _Timer

    out = tmp_path / "model"
    _model(out)

    def drop_a_file(stage: str) -> None:
        if stage == "write":
            (out / "late.dcm").write_bytes(b"copied in while meshing")

    with pytest.raises(
        OutputError, match=rf"holds 1 file its manifest does not list \({re.escape(f'{out}/late.dcm')}\)"
    ):
        prepare_volume(_volume(), out, SMALL, study_id="study-test", timer=_Timer(drop_a_file))
    assert (out / "late.dcm").read_bytes() == b"copied in while meshing"
    assert json.loads((out / "manifest.json").read_text())["kind"] == "scrubin.patient_model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging debris


def test_replacement_removes_only_what_the_old_manifest_listed(tmp_path: Path) -> None:
    out = tmp_path / "model"
    _model(out)
    np.save(tmp_path / "unrelated.npy", np.arange(3))
    _model(out)
    assert (tmp_path / "unrelated.npy").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "unrelated.npy"]


def test_cli_force_replaces_a_changed_model_and_error_is_one_line_without(tmp_path: Path) -> None:
    ct = _ct(tmp_path / "ct")
    out = tmp_path / "model"
    _model(out)
    (out / "model.glb").write_bytes(b"glTF edited")
    line = error_line(run_cli("prepare", str(ct), "--out", str(out), "--segments", "skin"))
    assert "no longer match its manifest (model.glb: size differs)" in line and "--force" in line
    result = run_cli("prepare", str(ct), "--out", str(out), "--segments", "skin", "--force")
    assert result.returncode == 0, result.stderr
    assert load_manifest(out)["source"]["format"] == "dicom"


def test_staging_left_by_a_process_is_removed_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with staging_folder(out) as staging:  # named for this process, as in the prepare child
        (staging / "meshes").mkdir()
        (staging / "meshes" / "skin.ply").write_bytes(b"half written")
        moved_aside = staging.with_name(f"{staging.name}-old")  # a swap's previous model
        moved_aside.mkdir()
        other_pid = tmp_path / f".scrubin-staging-{os.getpid() + 1}-abcdefgh"
        other_pid.mkdir()
        (tmp_path / f".scrubin-staging-{os.getpid()}-link").symlink_to(other_pid)
        (tmp_path / f".scrubin-staging-{os.getpid()}-file").write_text("a user's")
        assert remove_staging_left_by(out, os.getpid()) == [staging]
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            moved_aside.name,
            other_pid.name,
            f".scrubin-staging-{os.getpid()}-link",
            f".scrubin-staging-{os.getpid()}-file",
        ]
    )
    assert remove_staging_left_by(tmp_path / "absent" / "model", os.getpid()) == []


def test_output_error_is_an_imaging_error() -> None:
    assert issubclass(OutputError, ImagingError)
