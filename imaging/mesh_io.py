"""Binary PLY and STL writers (and a PLY reader) for meshes in patient LPS millimetres.

3D Slicer reads the coordinate system of a mesh file from a ``SPACE=LPS`` comment in its
header (PLY comment line, STL 80-byte header), so both files say so explicitly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from domain.ply import read_ply as read_ply  # the patient model's mesh files: read by every part
from imaging.mesh import Mesh

SLICER_SPACE_TAG = "SPACE=LPS"


def write_ply(mesh: Mesh, path: Path) -> None:
    """Binary little-endian PLY: float32 x y z + nx ny nz, uchar RGBA, uint32 triangle lists."""
    normals = mesh.vertex_normals
    r, g, b, a = (int(round(c * 255)) for c in mesh.color)
    header = "\n".join(
        [
            "ply",
            "format binary_little_endian 1.0",
            f"comment {SLICER_SPACE_TAG} units=mm generator=scrubin",
            f"comment name={mesh.name} color={r},{g},{b},{a}",
            f"element vertex {mesh.vertices.shape[0]}",
            "property float x",
            "property float y",
            "property float z",
            "property float nx",
            "property float ny",
            "property float nz",
            f"element face {mesh.n_triangles}",
            "property list uchar uint vertex_indices",
            "end_header",
        ]
    )
    vertex_data = np.hstack([mesh.vertices, normals]).astype("<f4")
    faces = np.empty(mesh.n_triangles, dtype=[("n", "u1"), ("v", "<u4", (3,))])
    faces["n"] = 3
    faces["v"] = mesh.triangles
    with path.open("wb") as handle:
        handle.write(header.encode("ascii") + b"\n")
        handle.write(vertex_data.tobytes())
        handle.write(faces.tobytes())


def write_stl(mesh: Mesh, path: Path) -> None:
    """Binary STL (one normal + three vertices per facet, LPS mm)."""
    v = mesh.vertices.astype(np.float32)
    t = mesh.triangles.astype(np.int64)
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    normal = np.cross(b - a, c - a)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    record = np.zeros(t.shape[0], dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    record["n"] = normal
    record["v"] = np.stack([a, b, c], axis=1)
    header = f"scrubin {mesh.name} {SLICER_SPACE_TAG} units=mm".encode("ascii")[:80].ljust(80, b" ")
    with path.open("wb") as handle:
        handle.write(header)
        handle.write(np.uint32(t.shape[0]).tobytes())
        handle.write(record.tobytes())
