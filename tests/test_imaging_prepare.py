"""The patient-model folder: phantom, manifest, GLB, PLY/STL, budget, labels, atomic writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import real_data
from imaging_fixtures import glb_mesh_positions, load_manifest, run_cli

from imaging.errors import InputError, OutputError, SegmentationError
from imaging.geometry import Geometry
from imaging.mesh_io import read_ply
from imaging.phantom import HEADREST_BOX_MM, SYNTHETIC_STUDY_ID, make_phantom
from imaging.prepare import PrepareOptions, prepare_path, prepare_phantom, prepare_volume, share_budget
from imaging.surface_distance import _distances
from imaging.volume import SourceInfo, Volume


@pytest.fixture(scope="module")
def phantom_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "model"
    prepare_phantom(out, PrepareOptions())
    return out


def test_phantom_is_deterministic_and_synthetic() -> None:
    a, b = make_phantom(), make_phantom()
    assert hashlib.sha256(a.volume.voxels.tobytes()).digest() == hashlib.sha256(b.volume.voxels.tobytes()).digest()
    assert a.volume.source.synthetic and a.volume.source.study_key == SYNTHETIC_STUDY_ID
    v = a.volume.voxels
    assert v.min() >= -1024 and v.max() <= 3071
    air, tissue = v[:5, :5, :5], v[a.labels == 1]
    assert abs(air.mean() + 1000) < 5 and 8 < air.std() < 16  # realistic noise in air
    assert 20 < tissue.mean() < 45  # brain HU
    assert len(a.fiducials_mm) >= 4


def test_manifest_describes_folder(phantom_model: Path) -> None:
    manifest = load_manifest(phantom_model)
    assert manifest["schema_version"] == 1
    assert manifest["synthetic"] is True and "SYNTHETIC" in manifest["study_id"]
    assert manifest["units"] == "mm" and manifest["frame"] == "LPS"
    names = [m["name"] for m in manifest["meshes"]]
    assert names == ["skin", "bone", "brain", "lesion"]
    assert sum(m["triangles"] for m in manifest["meshes"]) <= manifest["triangle_budget"] == 200_000
    for name, entry in manifest["files"].items():
        data = (phantom_model / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    for mesh in manifest["meshes"]:
        vertices, triangles = read_ply(phantom_model / mesh["files"]["ply"])
        assert len(triangles) == mesh["triangles"] and len(vertices) == mesh["vertices"]
        np.testing.assert_allclose(mesh["bounds_mm"], [vertices.min(0), vertices.max(0)], atol=1e-3)
    assert len(manifest["landmarks"]["fiducials"]) == 5
    assert manifest["landmarks"]["targets"][0]["name"] == "lesion"
    assert set(manifest["timings_s"]) >= {"synthesize", "segment", "surface"}


def _closed_and_consistently_oriented(triangles: np.ndarray) -> bool:
    """Every directed edge appears once and its reverse once: a closed, oriented surface."""
    t = triangles.astype(np.int64)
    directed = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    n = int(t.max()) + 1
    keys = directed[:, 0] * n + directed[:, 1]
    reverse = directed[:, 1] * n + directed[:, 0]
    return bool(np.unique(keys).size == keys.size and np.isin(reverse, keys).all())


def _signed_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
    v = vertices.astype(np.float64)[triangles.astype(np.int64)]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def test_meshes_readable_by_open3d_closed_and_outward(phantom_model: Path) -> None:
    import open3d as o3d

    for name in ("skin", "bone", "lesion"):
        ply = o3d.io.read_triangle_mesh(str(phantom_model / "meshes" / f"{name}.ply"))
        stl = o3d.io.read_triangle_mesh(str(phantom_model / "meshes" / f"{name}.stl"))
        assert len(ply.triangles) == len(stl.triangles) > 1000
        vertices, triangles = np.asarray(ply.vertices), np.asarray(ply.triangles)
        assert _closed_and_consistently_oriented(triangles)
        assert _signed_volume(vertices, triangles) > 0  # positive: normals point outwards
    lesion_v, lesion_t = read_ply(phantom_model / "meshes" / "lesion.ply")
    assert _signed_volume(lesion_v, lesion_t) == pytest.approx(4 / 3 * np.pi * 8.0**3, rel=0.1)
    assert (phantom_model / "meshes" / "skin.stl").read_bytes()[:80].count(b"SPACE=LPS") == 1


def test_skin_drops_headrest_and_carries_fiducials(phantom_model: Path) -> None:
    manifest = load_manifest(phantom_model)
    skin = next(m for m in manifest["meshes"] if m["name"] == "skin")
    assert skin["bounds_mm"][1][1] < HEADREST_BOX_MM[0][1]  # nothing at or behind the rest
    # extents of the analytic head: ears at x = +-82, nose tip at y = -104, vertex at z = 117
    np.testing.assert_allclose([skin["bounds_mm"][0][0], skin["bounds_mm"][1][0]], [-82.0, 82.0], atol=1.5)
    assert skin["bounds_mm"][0][1] == pytest.approx(-104.0, abs=1.5)
    assert skin["bounds_mm"][1][2] == pytest.approx(117.0, abs=1.5)
    vertices, triangles = read_ply(phantom_model / "meshes" / "skin.ply")
    fiducials = np.array([f["position_mm"] for f in manifest["landmarks"]["fiducials"]])
    distance = _distances(fiducials, vertices, triangles)
    assert np.all(distance < 4.0), distance  # markers sit on the skin
    lesion, lesion_tris = read_ply(phantom_model / "meshes" / "lesion.ply")
    target = np.array(manifest["landmarks"]["targets"][0]["position_mm"])
    np.testing.assert_allclose(lesion.mean(0), target, atol=0.5)
    assert _distances(target[None], vertices, triangles)[0] > 40.0  # a deep target


def test_glb_nodes_named_coloured_and_consistent(phantom_model: Path) -> None:
    import pygltflib

    gltf = pygltflib.GLTF2().load(str(phantom_model / "model.glb"))
    assert [n.name for n in gltf.nodes] == ["skin", "bone", "brain", "lesion"]
    assert "SYNTHETIC" in gltf.scenes[0].name
    colours = {m.name: m.pbrMetallicRoughness.baseColorFactor for m in gltf.materials}
    assert colours["lesion"][0] > 0.9 and colours["brain"][3] < 1.0
    assert gltf.materials[2].alphaMode == "BLEND"
    positions = glb_mesh_positions(phantom_model / "model.glb")
    skin, _ = read_ply(phantom_model / "meshes" / "skin.ply")
    assert positions["skin"].shape == skin.shape


def test_budget_is_respected(tmp_path: Path) -> None:
    result = prepare_phantom(tmp_path / "m", PrepareOptions(triangle_budget=20_000))
    counts = [m["triangles"] for m in result.manifest["meshes"]]
    assert sum(counts) <= 20_000 and min(counts) >= 2_000
    assert share_budget([10, 10**6], 10_000) == [2000, 7999]
    with pytest.raises(InputError, match=r"--budget: at least 2000 triangles, got 10"):
        PrepareOptions(triangle_budget=10)


def _air_volume() -> Volume:
    geometry = Geometry((16, 16, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))  # type: ignore[arg-type]
    return Volume(np.full((16, 16, 16), -1000, np.int16), geometry, SourceInfo("nrrd"))


def test_empty_segmentation_refused_and_old_model_kept(phantom_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    prepare_phantom(out, PrepareOptions(segments=("skin",)))
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(SegmentationError, match=r"air\.nrrd: skin segmentation is empty \(no voxel above -300 HU\)"):
        prepare_volume(_air_volume(), out, PrepareOptions(segments=("skin",)), study_id="s", where="air.nrrd")
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging debris


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.docx").write_text("precious")
    with pytest.raises(OutputError, match=r"thesis: exists and is not a patient-model folder"):
        prepare_phantom(tmp_path / "thesis", PrepareOptions())


def test_cli_phantom_summary(tmp_path: Path) -> None:
    result = run_cli("prepare", "--phantom", "--out", str(tmp_path / "m"), "--budget", "30000")
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC" in result.stdout and "skin" in result.stdout and "total" in result.stdout
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["triangle_budget"] == 30000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prepare", "--out", "X"], "error: give either INPUT or --phantom (exactly one)"),
        (["prepare", "/no/such/scan.nii.gz", "--out", "X"], "error: <input>: no such file or folder"),
        (
            ["prepare", "/no/such/scan.nii.gz", "--out", "X", "--show-paths"],
            "error: /no/such/scan.nii.gz: no such file or folder",
        ),
        (
            ["prepare", "--phantom", "--segments", "skin,liver", "--out", "X"],
            "error: --segments: unknown segment 'liver' (choose from skin, bone)",
        ),
        (["prepare", "--phantom", "--budget", "5", "--out", "X"], "error: --budget: at least 2000 triangles, got 5"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a if a != "X" else str(tmp_path / "out") for a in args]
    result = run_cli(*args)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [message]
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_bad_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"\x00" * 100)
    result = run_cli("prepare", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: <input>: not a readable nifti image")


@pytest.mark.realdata
def test_totalsegmentator_label_map_meshes(tmp_path: Path) -> None:
    ct = real_data("ct/totalsegmentator_abdomen/example_ct.nii.gz")
    seg = real_data("ct/totalsegmentator_abdomen/example_seg.nii.gz")
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "spleen", "5": {"name": "liver", "color": [0.6, 0.2, 0.2, 1.0]}}))
    result = prepare_path(
        ct, tmp_path / "m", PrepareOptions(segments=("skin",), labels_path=seg, label_names_path=names)
    )
    meshes = {m["name"]: m for m in result.manifest["meshes"]}
    import SimpleITK as sitk

    present = sorted(int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(seg)))) if v > 0)
    assert len(meshes) == 1 + len(present)
    assert "spleen" in meshes and "liver" in meshes and f"label_{present[-1]}" in meshes
    assert meshes["liver"]["color_rgba"] == [0.6, 0.2, 0.2, 1.0]
    skin = meshes["skin"]["bounds_mm"]
    for mesh in meshes.values():  # every organ sits inside the body
        assert np.all(np.asarray(mesh["bounds_mm"][0]) >= np.asarray(skin[0]) - 1.0)
        assert np.all(np.asarray(mesh["bounds_mm"][1]) <= np.asarray(skin[1]) + 1.0)


def test_cli_lists_series_and_prepares_the_chosen_one(tmp_path: Path) -> None:
    from dicom_factory import head_like_volume, write_series

    from imaging.deid import pseudonym

    dicom = tmp_path / "dicom"
    write_series(dicom, head_like_volume((20, 48, 48)), series_uid="1.2.3.4.500", prefix="A")
    write_series(dicom, head_like_volume((10, 48, 48), radius=12.0), series_uid="1.2.3.4.600", prefix="B")
    big, small = pseudonym("1.2.3.4.500", "series"), pseudonym("1.2.3.4.600", "series")
    listing = run_cli("series", str(dicom))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.index(big) < listing.stdout.index(small)  # largest first
    assert "48x48x20" in listing.stdout and "48x48x10" in listing.stdout
    result = run_cli("prepare", str(dicom), "--series", small, "--segments", "skin", "--out", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert "2 DICOM series" in result.stdout and f"-> {small}  CT  10 slices" in result.stdout
    skin = load_manifest(tmp_path / "m")["meshes"][0]
    assert skin["bounds_mm"][1][0] - skin["bounds_mm"][0][0] < 30.0  # the small (radius 12) series
    assert load_manifest(tmp_path / "m")["source"]["n_files"] == 10


def test_glb_passes_khronos_validator(phantom_model: Path) -> None:
    import shutil
    import subprocess

    tools = Path(__file__).parent / "tools"
    if shutil.which("node") is None or not (tools / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("Khronos glTF validator not installed (scripts/test.sh installs it when node is present)")
    result = subprocess.run(
        ["node", str(tools / "validate_gltf.js"), str(phantom_model / "model.glb")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == 0 and report["warnings"] == 0, report["messages"]
