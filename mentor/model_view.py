"""The patient model as the mentors' 3D view sees it, and marks placed on it directly.

The page's 3D view loads the session's GLB (glTF metres, +Y superior, +Z anterior: the
mapping of :mod:`imaging.gltf`), so it shows what the headsets show. A room given no GLB
(tests, tools) serves the mesh it ray-casts against, written here in the same frame.

A click on the 3D view arrives as a model point (mm). It is trusted only as far as it lies on
the anatomy: within ``MAX_OFF_SURFACE_MM`` of the ray-casting mesh, it is moved onto that
mesh (the GLB the page picked on and the ray-casting mesh may differ by their decimation), so
the mark is anchored exactly as a video click would be; further away it is refused.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from domain.gltf_frame import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, FLOAT, UINT32, lps_mm_to_gltf_m, pack_glb
from mentor.anchoring import Anchor

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
MAX_OFF_SURFACE_MM: Final = 5.0
GLB_CONTENT_TYPE: Final = "model/gltf-binary"


# Served under /static/ (the CSP allows scripts from the server only): the 3D view, the
# occlusion drawing of the video marks, and three.js (vendor/three/README.md says how it is built).
VIEW3D_FILES: Final = {
    "mentor3d.js": "text/javascript",
    "mentor3d.css": "text/css",
    "occlusion.js": "text/javascript",
    "vendor/three/three.min.js": "text/javascript",
}


class SurfaceQuery(Protocol):
    def closest_points(self, points_mm: F64) -> F64: ...


class _Mesh(Protocol):
    vertices_mm: npt.NDArray[np.float32]
    triangles: npt.NDArray[np.uint32]


class _Room(Protocol):
    model_glb: bytes | None

    @property
    def caster(self) -> _Mesh: ...


def room_glb(room: _Room) -> bytes:
    """The room's GLB, or (written once, then kept) its ray-casting mesh as a GLB."""
    if room.model_glb is None:
        room.model_glb = mesh_glb(room.caster.vertices_mm, room.caster.triangles)
    return room.model_glb


def anchor_model_point(caster: SurfaceQuery, point_model_mm: tuple[float, float, float]) -> Anchor:
    """The mark for a click on the 3D view, on the ray-casting mesh (ValueError if off it)."""
    p = np.asarray(point_model_mm, np.float64)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        msg = f"a model point must be 3 finite mm, got {point_model_mm!r}"
        raise ValueError(msg)
    on = caster.closest_points(p[None])[0]
    off = float(np.linalg.norm(on - p))
    if not off <= MAX_OFF_SURFACE_MM:
        msg = f"point {tuple(round(c, 1) for c in point_model_mm)} is {off:.1f} mm off the model surface (at most {MAX_OFF_SURFACE_MM:.0f})"
        raise ValueError(msg)
    return Anchor(
        True, (float(on[0]), float(on[1]), float(on[2])), (float("nan"), float("nan")), "placed on the 3D model"
    )


def mesh_glb(vertices_mm: npt.ArrayLike, triangles: npt.ArrayLike, name: str = "model") -> bytes:
    """A GLB of one mesh (positions and indices) in glTF metres, as the imaging GLB writer
    puts patient LPS mm; the viewer computes its normals."""
    v = lps_mm_to_gltf_m(np.asarray(vertices_mm, np.float64)).astype(np.float32)
    f = np.asarray(triangles, np.uint32).ravel()
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or len(f) % 3 or (len(f) and int(f.max()) >= len(v)):
        msg = f"mesh must be (N, 3) vertices and (M, 3) triangles indexing them, got {v.shape!r} and {len(f)!r} indices"
        raise ValueError(msg)
    positions, indices = v.tobytes(), f.tobytes()  # both multiples of 4 bytes: no padding between
    document = {
        "asset": {"version": "2.0", "generator": "scrubin mentor"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"name": name, "mesh": 0}],
        "meshes": [{"name": name, "primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "material": 0}]}],
        "materials": [{"name": name, "pbrMetallicRoughness": {"baseColorFactor": [0.9, 0.78, 0.7, 1.0], "metallicFactor": 0.0}}],
        "accessors": [
            {"bufferView": 0, "componentType": FLOAT, "count": len(v), "type": "VEC3",
             "min": v.min(axis=0).tolist(), "max": v.max(axis=0).tolist()},
            {"bufferView": 1, "componentType": UINT32, "count": len(f), "type": "SCALAR"},
        ],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(positions), "target": ARRAY_BUFFER},
            {"buffer": 0, "byteOffset": len(positions), "byteLength": len(indices), "target": ELEMENT_ARRAY_BUFFER},
        ],
        "buffers": [{"byteLength": len(positions) + len(indices)}],
    }  # fmt: skip
    return pack_glb(document, positions + indices)
