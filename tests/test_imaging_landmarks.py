"""``scrubin prepare --landmarks``: Slicer markups JSON, Slicer .fcsv and plain CSV read into the
manifest in LPS mm, the refusals (one line each, the file named by role), and the registration
side finding the landmarks by name in the written model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import real_data
from dicom_factory import head_like_volume, write_series
from imaging_fixtures import error_line, load_manifest, run_cli

from imaging.errors import InputError
from imaging.geometry import Geometry
from imaging.landmarks import (
    FIDUCIAL,
    MAX_LANDMARKS,
    SCAN_MARGIN_MM,
    TARGET,
    check_in_scan,
    distance_outside_mm,
    parse_landmarks,
    read_landmarks,
)

SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"
FCSV_COLUMNS = "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"
# (name, x, y, z, description) in the file's own frame; "target" in the description makes a target
POINTS_RAS = [
    ("nasion", 1.29, -40.18, 60.15, ""),
    ("left canthus", 31.5, -30.25, 55.0, "lateral, left"),
    ("right canthus", -30.75, -29.5, 54.5, ""),
    ("lesion", 10.0, 5.5, 40.0, "Target"),
]


def slicer_markups_json(
    points: list[tuple[str, float, float, float, str]],
    frame: str = "LPS",
    *,
    units: object = "mm",
    status: dict[str, str] | None = None,
    unplaced: str = "",
) -> str:
    """A point list as Slicer 5 saves it (.mrk.json, schema v1.0.3), display block and all."""
    controls = [
        {
            "id": str(i),
            "label": name,
            "description": desc,
            "associatedNodeID": "vtkMRMLScalarVolumeNode1",
            "position": [x, y, z],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": (status or {}).get(name, "defined"),
        }
        for i, (name, x, y, z, desc) in enumerate(points, start=1)
    ]
    for control in controls:
        if control["label"] == unplaced:
            del control["position"]
    markup = {
        "type": "Fiducial",
        "coordinateSystem": frame,
        "coordinateUnits": units,
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points),
        "controlPoints": controls,
        "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0], "glyphType": "Sphere3D"},
    }
    return json.dumps({"@schema": SCHEMA, "markups": [markup]}, indent=4)


def slicer_fcsv(points: list[tuple[str, float, float, float, str]], frame_line: str | None = "LPS") -> str:
    """A point list as Slicer's fiducial storage node writes it (a label with a comma quoted)."""
    lines = ["# Markups fiducial file version = 5.6"]
    if frame_line is not None:
        lines.append(f"# CoordinateSystem = {frame_line}")
    lines.append(FCSV_COLUMNS)
    for i, (name, x, y, z, desc) in enumerate(points, start=1):
        label = f'"{name}"' if "," in name else name
        shown = f'"{desc}"' if "," in desc else desc
        lines.append(f"{i},{x},{y},{z},0,0,0,1,1,1,0,{label},{shown},vtkMRMLScalarVolumeNode1")
    return "\n".join(lines) + "\n"


def as_lps(points: list[tuple[str, float, float, float, str]]) -> dict[str, tuple[float, float, float]]:
    return {name: (-x, -y, z) for name, x, y, z, _ in points}


def flipped(points: list[tuple[str, float, float, float, str]]) -> list[tuple[str, float, float, float, str]]:
    return [(n, -x, -y, z, d) for n, x, y, z, d in points]


def positions(marks: Any) -> dict[str, tuple[float, float, float]]:
    return {p.name: p.position_mm for p in marks.points}


# --- each format, RAS and LPS --------------------------------------------------------------------


@pytest.mark.parametrize("frame", ["RAS", "LPS"])
def test_slicer_markups_json_round_trips(tmp_path: Path, frame: str) -> None:
    given = POINTS_RAS if frame == "RAS" else flipped(POINTS_RAS)
    path = tmp_path / "F.mrk.json"
    path.write_text(slicer_markups_json(given, frame))
    marks = read_landmarks(path)
    assert marks.format == "slicer-markups-json"
    assert positions(marks) == as_lps(POINTS_RAS)  # a sign change is exact
    assert [lm.name for lm in marks.fiducials] == ["nasion", "left canthus", "right canthus"]
    assert [lm.name for lm in marks.targets] == ["lesion"]
    assert marks.source() == {"format": "slicer-markups-json", "coordinate_system": frame}


@pytest.mark.parametrize("frame_line", ["RAS", "0", "LPS", "1", None])
def test_slicer_fcsv_round_trips(tmp_path: Path, frame_line: str | None) -> None:
    """Slicer 4.11+ writes RAS/LPS, earlier versions 0 (RAS) / 1 (LPS); no line reads as RAS."""
    ras = frame_line in ("RAS", "0", None)
    path = tmp_path / "F.fcsv"
    path.write_text(slicer_fcsv(POINTS_RAS if ras else flipped(POINTS_RAS), frame_line))
    marks = read_landmarks(path)
    assert marks.format == "slicer-fcsv"
    assert positions(marks) == as_lps(POINTS_RAS)  # a sign change is exact
    assert {p.name: p.kind for p in marks.points} == {
        "nasion": FIDUCIAL,
        "left canthus": FIDUCIAL,  # a description that is not the word "target"
        "right canthus": FIDUCIAL,
        "lesion": TARGET,
    }


def test_plain_csv_is_lps_with_an_optional_header_and_kind(tmp_path: Path) -> None:
    body = "nasion,-1.29,40.18,60.15\n# the deep target\n\nlesion , -10, -5.5, 40, target\n"
    for text in (body, "name,x,y,z,kind\n" + body, "\ufeffName, X, Y, Z\n" + body):  # a spreadsheet's BOM too
        path = tmp_path / "marks.csv"
        path.write_text(text, encoding="utf-8")
        marks = read_landmarks(path)
        assert marks.format == "csv"
        assert positions(marks) == {"nasion": (-1.29, 40.18, 60.15), "lesion": (-10.0, -5.5, 40.0)}
        assert [lm.name for lm in marks.targets] == ["lesion"]


def test_ras_to_lps_known_point_from_slicers_documentation() -> None:
    """Slicer's documented example row, RAS (1.29, -40.18, 60.15): LPS is (-1.29, 40.18, 60.15)."""
    text = "# Markups fiducial file version = 4.11\n# CoordinateSystem = 0\n" + FCSV_COLUMNS + "\n"
    text += "vtkMRMLMarkupsFiducialNode_0,1.29,-40.18,60.15,0,0,0,1,1,1,0,F-1,,\n"
    marks = parse_landmarks(text, "doc.fcsv")
    assert marks.points[0].name == "F-1" and marks.points[0].position_mm == (-1.29, 40.18, 60.15)


def test_ras_point_from_nibabel_lands_where_simpleitk_puts_the_voxel(tmp_path: Path) -> None:
    """Two outside conventions: nibabel's affine gives RAS (what Slicer shows), SimpleITK gives
    LPS. A landmark marked at a voxel in RAS must come out at SimpleITK's point for it."""
    nib = pytest.importorskip("nibabel")
    import SimpleITK as sitk

    ct = real_data("ct/dicom2stl_head/ct_example.nii.gz")
    voxel = (100, 140, 12)
    ras = nib.load(str(ct)).affine @ np.array([*voxel, 1.0])
    lps = sitk.ReadImage(str(ct)).TransformIndexToPhysicalPoint(voxel)
    path = tmp_path / "voxel.mrk.json"
    path.write_text(slicer_markups_json([("voxel", float(ras[0]), float(ras[1]), float(ras[2]), "")], "RAS"))
    assert read_landmarks(path).points[0].position_mm == pytest.approx(lps, abs=1e-4)


def test_micrometre_units_are_converted_to_mm(tmp_path: Path) -> None:
    path = tmp_path / "um.mrk.json"
    path.write_text(slicer_markups_json([("nasion", 1500.0, -2000.0, 500.0, "")], "LPS", units="um"))
    assert read_landmarks(path).points[0].position_mm == pytest.approx((1.5, -2.0, 0.5))


# --- the bounds check, by itself -----------------------------------------------------------------


GRID = Geometry(
    size=(64, 64, 24), spacing=(2.0, 2.0, 4.0), origin=(10.0, 20.0, -50.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
)


def test_distance_outside_counts_from_the_voxel_edges_along_the_grid_axes() -> None:
    inside, edge, off = (70.0, 80.0, 0.0), (9.0, 20.0, -50.0), (10.0 - 1.0 - 30.0, 80.0, 0.0)
    assert distance_outside_mm(GRID, [inside, edge, off]) == pytest.approx([0.0, 0.0, 30.0])
    turned = Geometry(GRID.size, GRID.spacing, GRID.origin, (0, -1, 0, 1, 0, 0, 0, 0, 1))  # x along LPS y
    assert distance_outside_mm(turned, [(10.0, 20.0 + 127.0 + 5.0, 0.0)]) == pytest.approx([5.0])


def test_a_ras_file_read_as_lps_is_named_in_the_message() -> None:
    inside = "nasion,70,80,0\ntragus,100,60,10\n"
    check_in_scan(parse_landmarks(inside, "marks.csv"), GRID, "marks.csv")  # no error
    mirrored = "nasion,-70,-80,0\ntragus,-100,-60,10\n"  # the same points in RAS, read as LPS
    with pytest.raises(
        InputError, match=r"'nasion' \(line 1\) .* outside the scan \(2 of 2 landmarks are\): is the file RAS\?"
    ):
        check_in_scan(parse_landmarks(mirrored, "marks.csv"), GRID, "marks.csv")
    just_outside = f"nasion,70,80,{42 + SCAN_MARGIN_MM - 1}\n"
    check_in_scan(parse_landmarks(just_outside, "marks.csv"), GRID, "marks.csv")


# --- refusals, each one line from `scrubin prepare` ------------------------------------------------


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CT whose box (x 9..137, y 19..147, z -52..44 mm LPS) does not hold its own mirror."""
    folder = tmp_path_factory.mktemp("ct") / "ct"
    write_series(folder, head_like_volume((24, 64, 64)), spacing=(2.0, 2.0, 4.0), origin=(10.0, 20.0, -50.0))
    return folder


def json_points(n: int) -> list[tuple[str, float, float, float, str]]:
    return [(f"P-{i}", 70.0 + i * 0.1, 80.0, 0.0, "") for i in range(n)]


REFUSALS: list[tuple[str, str | bytes, str]] = [
    ("nan.csv", "nasion,1,nan,3\n", r"landmark 'nasion' \(line 1\): position \(1.0, nan, 3.0\) is not finite"),
    (
        "inf.mrk.json",
        slicer_markups_json([("nasion", 70.0, 1e400, 0.0, "")]),
        r"'nasion' \(markup 1 point 1\).*not finite",
    ),
    (
        "text.csv",
        "nasion,70,eighty,0\n",
        r"landmark 'nasion' \(line 1\): x,y,z must be numbers in mm, got '70,eighty,0'",
    ),
    (
        "dup.csv",
        "nasion,70,80,0\ntragus,80,80,0\nNasion ,71,80,0\n",
        r"landmark 'Nasion' \(line 3\): the name is taken by 'nasion' \(line 1\)",
    ),
    ("empty.fcsv", slicer_fcsv([("", 70.0, 80.0, 0.0, "")], "LPS"), r"the landmark at line 4 has no name"),
    (
        "long.csv",
        "n" * 65 + ",70,80,0\n",
        r"landmark 'nnnnnnnnnnnnnnnnnnnnnnnn'\.\.\. \(line 1\): name of 65 characters; at most 64",
    ),
    (
        "ctrl.csv",
        "nas\x1b[31mion,70,80,0\n",
        r"landmark 'nas\\x1b\[31mion' \(line 1\): the name holds a control character",
    ),
    (
        "many.mrk.json",
        slicer_markups_json(json_points(MAX_LANDMARKS + 1)),
        rf"{MAX_LANDMARKS + 1} landmarks; at most {MAX_LANDMARKS}",
    ),
    (
        "undef.mrk.json",
        slicer_markups_json(json_points(3), status={"P-1": "undefined"}),
        r"landmark 'P-1' \(markup 1 point 2\): position is 'undefined', not defined",
    ),
    (
        "nopos.mrk.json",
        slicer_markups_json(json_points(2), unplaced="P-1"),
        r"landmark 'P-1' \(markup 1 point 2\): has no position",
    ),
    (
        "curve.mrk.json",
        slicer_markups_json(json_points(3)).replace('"Fiducial"', '"Curve"'),
        r"markup 1 is of type 'Curve', not a point list",
    ),
    ("broken.mrk.json", slicer_markups_json(json_points(3))[:-20], r"not valid JSON \(line \d+: "),
    ("latin1.csv", "n\xe4sion,70,80,0\n".encode("latin-1"), r"landmark file is not UTF-8 text \(byte 1\)"),
    ("fields.csv", "nasion,70,80\n", r"line 1: expected name,x,y,z\[,kind\] \(LPS mm\), got 3 fields"),
    ("kind.csv", "nasion,70,80,0,fiducal\n", r"line 1: kind must be 'fiducial' or 'target', got 'fiducal'"),
    ("frame.fcsv", slicer_fcsv(json_points(3), "IJK"), r"line 2: CoordinateSystem 'IJK' is not RAS \(0\) or LPS \(1\)"),
    ("slicer3.fcsv", "F-1,70,80,0,1,1\n", r"no '# Markups fiducial file version = \.\.\.' line before line 1"),
    ("none.csv", "name,x,y,z\n", r"holds no landmarks"),
    (
        "ras.csv",
        "nasion,-70,-80,0\ntragus,-100,-60,10\n",
        r"'nasion' \(line 1\) at \(-70.0, -80.0, 0.0\) mm LPS lies \d+ mm outside the scan \(2 of 2 landmarks are\): is the file RAS\? \(read as RAS it would lie inside\)",
    ),
    (
        "lps.mrk.json",
        slicer_markups_json([("nasion", 70.0, 80.0, 0.0, "")], "RAS"),
        r"outside the scan: is the file LPS\?",
    ),
    (
        "far.csv",
        "nasion,70,80,500\n",
        r"lies \d+ mm outside the scan: is the file RAS, or were the landmarks marked on another scan\?",
    ),
]


@pytest.mark.parametrize(("name", "content", "expected"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_is_one_line_naming_the_file_by_role(
    tmp_path: Path, small_ct: Path, name: str, content: str | bytes, expected: str
) -> None:
    path = tmp_path / "private-Doe-John" / name
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = tmp_path / "model"
    line = error_line(
        run_cli("prepare", str(small_ct), "--segments", "skin", "--landmarks", str(path), "--out", str(out))
    )
    assert line.startswith("error: <landmarks>: "), line
    assert "Doe" not in line and str(tmp_path) not in line
    assert re.search(expected, line), line
    assert not out.exists()


def test_show_paths_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "marks.csv"
    path.write_text("nasion,1,2\n")
    line = error_line(
        run_cli("prepare", "--phantom", "--landmarks", str(path), "--out", str(tmp_path / "m"), "--show-paths")
    )
    assert line.startswith(f"error: {path}: line 1: ")


def test_the_file_is_read_before_any_volume(tmp_path: Path) -> None:
    """A bad landmark file is refused before the CT is loaded (minutes for a large series)."""
    not_a_ct = tmp_path / "scan.nii.gz"
    not_a_ct.write_bytes(b"not a volume at all")
    marks = tmp_path / "marks.csv"
    marks.write_text("nasion,1,2\n")
    line = error_line(run_cli("prepare", str(not_a_ct), "--landmarks", str(marks), "--out", str(tmp_path / "m")))
    assert line == "error: <landmarks>: line 1: expected name,x,y,z[,kind] (LPS mm), got 3 fields"


@pytest.mark.parametrize("where", ["file", "folder"])
def test_out_never_replaces_the_landmark_file_or_its_folder(tmp_path: Path, where: str) -> None:
    folder = tmp_path / "marks"
    folder.mkdir()
    marks = folder / "marks.csv"
    marks.write_text("nasion,0,-95,40\n")
    (folder / "manifest.json").write_text("{}")  # even a folder with a manifest in it
    out = marks if where == "file" else folder
    line = error_line(run_cli("prepare", "--phantom", "--landmarks", str(marks), "--out", str(out)))
    assert ("is the input itself" if where == "file" else "holds the input") in line
    assert marks.read_text() == "nasion,0,-95,40\n" and (folder / "manifest.json").read_text() == "{}"


# --- end to end: the registration side finds them by name ---------------------------------------


def _registration_finds(
    out: Path, lps: dict[str, tuple[float, float, float]], fiducials: list[str], targets: list[str]
) -> None:
    from registration import SurfaceModel
    from registration.paired_point import landmark_pairs

    model = SurfaceModel.from_folder(out, prepare_alignment=False)
    assert [f.name for f in model.fiducials] == fiducials and [t.name for t in model.targets] == targets
    touched = {name: np.asarray(lps[name]) + 5.0 for name in fiducials}  # touched 8.7 mm off
    X, Y = landmark_pairs(model, touched)
    np.testing.assert_allclose(X, [lps[n] for n in fiducials], atol=1e-3)  # the manifest keeps 3 decimals
    np.testing.assert_allclose(Y - X, 5.0, atol=1e-3)


def test_phantom_with_a_slicer_markups_file_end_to_end(tmp_path: Path) -> None:
    points = [
        ("nasion", 0.0, 100.0, 40.0, ""),
        ("left canthus", -35.0, 85.0, 45.0, ""),
        ("right canthus", 35.0, 85.0, 45.0, ""),
        ("left tragus", -80.0, -5.0, 20.0, ""),
        ("deep", 22.0, -12.0, 28.0, "target"),
    ]
    marks = tmp_path / "head.mrk.json"
    marks.write_text(slicer_markups_json(points, "RAS"))
    out = tmp_path / "model"
    result = run_cli("prepare", "--phantom", "--budget", "20000", "--landmarks", str(marks), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = "landmarks: 4 fiducials (nasion, left canthus, right canthus, left tragus), 1 target (deep); "
    assert summary + "read from slicer-markups-json in RAS, converted to LPS" in result.stdout
    manifest = load_manifest(out)
    assert manifest["landmarks"]["from"] == {"format": "slicer-markups-json", "coordinate_system": "RAS"}
    assert manifest["landmarks"]["fiducials"][0] == {"name": "nasion", "position_mm": [-0.0, -100.0, 40.0]}
    lps = as_lps(points)
    _registration_finds(out, lps, ["nasion", "left canthus", "right canthus", "left tragus"], ["deep"])


def test_real_ct_with_an_fcsv_end_to_end(tmp_path: Path) -> None:
    ct = real_data("ct/dicom2stl_head/ct_example.nii.gz")  # LPS x, y 0..319 mm, z 0..100 mm
    points = [
        ("nasion", -160.0, -40.0, 60.0, ""),
        ("tragus, left", -250.0, -150.0, 50.0, ""),
        ("vertex", -160.0, -160.0, 98.0, ""),
    ]
    marks = tmp_path / "head.fcsv"
    marks.write_text(slicer_fcsv(points, "RAS"))
    out = tmp_path / "model"
    result = run_cli("prepare", str(ct), "--segments", "skin", "--landmarks", str(marks), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "landmarks: 3 fiducials (nasion, tragus, left, vertex), 0 targets" in result.stdout
    _registration_finds(out, as_lps(points), ["nasion", "tragus, left", "vertex"], [])
    read_as_lps = tmp_path / "wrong.fcsv"
    read_as_lps.write_text(slicer_fcsv(points, "LPS"))  # the same numbers declared LPS: mirrored out of the scan
    line = error_line(run_cli("prepare", str(ct), "--landmarks", str(read_as_lps), "--out", str(tmp_path / "m2")))
    assert "outside the scan (3 of 3 landmarks are): is the file RAS? (read as RAS it would lie inside)" in line
