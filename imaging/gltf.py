"""The GLB writer. Patient LPS millimetres become glTF metres (+Y superior, +Z anterior)
by the one convention declared in domain/gltf_frame.py (``T_GLTF_LPS``), re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from domain.gltf_frame import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, FLOAT, UINT32, pack_glb
from domain.gltf_frame import MM_PER_M as MM_PER_M
from domain.gltf_frame import R_GLTF_LPS as R_GLTF_LPS
from domain.gltf_frame import T_GLTF_LPS as T_GLTF_LPS
from domain.gltf_frame import T_LPS_GLTF as T_LPS_GLTF
from domain.gltf_frame import gltf_m_to_lps_mm as gltf_m_to_lps_mm
from domain.gltf_frame import lps_mm_to_gltf_m as lps_mm_to_gltf_m
from imaging.mesh import Mesh


def write_glb(meshes: Sequence[Mesh], path: Path, *, scene_name: str, extras: dict[str, object] | None = None) -> None:
    """One node per mesh, named after it, with its colour as a PBR material (blended if
    translucent); positions and normals are converted with ``T_GLTF_LPS``."""
    blob = bytearray()
    views: list[dict[str, int]] = []
    accessors: list[dict[str, object]] = []

    def add(array: npt.NDArray[np.generic], target: int, component: int, kind: str, minmax: bool = False) -> int:
        while len(blob) % 4:
            blob.append(0)
        data = np.ascontiguousarray(array).tobytes()
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data), "target": target})
        blob.extend(data)
        accessor: dict[str, object] = {
            "bufferView": len(views) - 1,
            "componentType": component,
            "count": int(array.shape[0]),
            "type": kind,
        }
        if minmax:
            accessor["min"] = [float(v) for v in array.min(axis=0)]
            accessor["max"] = [float(v) for v in array.max(axis=0)]
        accessors.append(accessor)
        return len(accessors) - 1

    gl_meshes, nodes, materials = [], [], []
    for mesh in meshes:
        positions = lps_mm_to_gltf_m(mesh.vertices).astype(np.float32)
        normals = (mesh.vertex_normals.astype(np.float64) @ R_GLTF_LPS.T).astype(np.float32)
        pos = add(positions, ARRAY_BUFFER, FLOAT, "VEC3", minmax=True)
        nrm = add(normals, ARRAY_BUFFER, FLOAT, "VEC3")
        idx = add(mesh.triangles.astype(np.uint32).ravel(), ELEMENT_ARRAY_BUFFER, UINT32, "SCALAR")
        materials.append(_material(mesh))
        gl_meshes.append(
            {
                "name": mesh.name,
                "primitives": [
                    {"attributes": {"POSITION": pos, "NORMAL": nrm}, "indices": idx, "material": len(materials) - 1}
                ],
            }
        )
        nodes.append({"name": mesh.name, "mesh": len(gl_meshes) - 1})
    while len(blob) % 4:
        blob.append(0)
    document = {
        "asset": {"version": "2.0", "generator": "scrubin", "extras": extras or {}},
        "scene": 0,
        "scenes": [{"name": scene_name, "nodes": list(range(len(nodes)))}],
        "nodes": nodes,
        "meshes": gl_meshes,
        "materials": materials,
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob)}],
    }
    _write_container(path, document, bytes(blob))


def _material(mesh: Mesh) -> dict[str, object]:
    material: dict[str, object] = {
        "name": mesh.name,
        "pbrMetallicRoughness": {
            "baseColorFactor": [float(c) for c in mesh.color],
            "metallicFactor": 0.0,
            "roughnessFactor": 0.8,
        },
        "doubleSided": False,
    }
    if mesh.color[3] < 1.0:
        material["alphaMode"] = "BLEND"
    return material


def _write_container(path: Path, document: dict[str, object], blob: bytes) -> None:
    path.write_bytes(pack_glb(document, blob))
