"""``manifest.json`` of a patient-model folder: what is in it, in which frame, and hashes.

Nothing patient-identifying goes in: no names, IDs, dates of birth, institution, input
paths or DICOM UIDs (study and series appear only as keyed pseudonyms, see ``deid``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging.geometry import PATIENT_FRAME, UNITS
from imaging.gltf import T_GLTF_LPS
from imaging.mesh import Mesh
from imaging.volume import Volume

SCHEMA_VERSION = 1
MANIFEST_KIND = "scrubin.patient_model"
MANIFEST_NAME = "manifest.json"
GLB_NAME = "model.glb"
MESH_DIR = "meshes"


@dataclass(frozen=True)
class Landmark:
    name: str
    position_mm: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "position_mm": [round(float(v), 3) for v in self.position_mm]}


@dataclass(frozen=True)
class MeshEntry:
    mesh: Mesh
    source: str  # "skin", "bone" or "label"
    label: int | None = None


@dataclass
class ManifestData:
    study_id: str
    synthetic: bool
    volume: Volume
    meshes: list[MeshEntry]
    triangle_budget: int
    fiducials: list[Landmark] = field(default_factory=list)
    targets: list[Landmark] = field(default_factory=list)
    landmark_source: dict[str, str] | None = None  # format and coordinate system of a --landmarks file
    timings_s: dict[str, float] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mesh_files(name: str) -> dict[str, str]:
    return {"ply": f"{MESH_DIR}/{name}.ply", "stl": f"{MESH_DIR}/{name}.stl"}


def build_manifest(data: ManifestData, folder: Path) -> dict[str, Any]:
    from imaging import __version__

    source = data.volume.source
    files = [GLB_NAME] + [f for entry in data.meshes for f in mesh_files(entry.mesh.name).values()]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": MANIFEST_KIND,
        "generator": f"scrubin {__version__}",
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "synthetic": data.synthetic,
        "study_id": data.study_id,
        "units": UNITS,
        "frame": PATIENT_FRAME,
        "gltf": {
            "file": GLB_NAME,
            "units": "m",
            "axes": "x = patient left, y = superior, z = anterior",
            "T_gltf_lps": T_GLTF_LPS.tolist(),
        },
        "triangle_budget": data.triangle_budget,
        "meshes": [_mesh_dict(entry) for entry in data.meshes],
        "landmarks": _landmarks_dict(data),
        "source": {
            "format": source.format,
            "n_files": source.n_files,
            "series_key": source.series_key,
            "warnings": list(source.warnings),
            "geometry": data.volume.geometry.to_dict(),
        },
        "timings_s": {k: round(v, 4) for k, v in data.timings_s.items()},
        "files": {
            name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size} for name in files
        },
    }


def _landmarks_dict(data: ManifestData) -> dict[str, Any]:
    """Fiducials (touched by the surgeon) and targets, in LPS mm; ``from`` says what file
    format and coordinate system they were read from (positions are LPS either way)."""
    marks: dict[str, Any] = {
        "fiducials": [lm.to_dict() for lm in data.fiducials],
        "targets": [lm.to_dict() for lm in data.targets],
    }
    if data.landmark_source is not None:
        marks["from"] = dict(data.landmark_source)
    return marks


def _mesh_dict(entry: MeshEntry) -> dict[str, Any]:
    lo, hi = entry.mesh.bounds_mm()
    return {
        "name": entry.mesh.name,
        "source": entry.source,
        "label": entry.label,
        "color_rgba": [round(c, 4) for c in entry.mesh.color],
        "triangles": entry.mesh.n_triangles,
        "vertices": int(entry.mesh.vertices.shape[0]),
        "bounds_mm": [lo, hi],
        "files": mesh_files(entry.mesh.name),
    }


def write_manifest(manifest: dict[str, Any], folder: Path) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
