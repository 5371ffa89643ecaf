"""Reading the patient model's mesh files (binary little-endian triangle PLY, LPS mm):
imaging writes them, Slicer's link and tools read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
    "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}  # fmt: skip


def read_ply(path: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint32]]:
    """Read a binary little-endian triangle PLY (``write_ply``'s, or another tool's with
    scalar vertex properties and a ``vertex_indices`` list): vertices (N, 3), triangles."""
    data = Path(path).read_bytes()
    try:
        end = data.index(b"end_header\n") + len(b"end_header\n")
        header = data[:end].decode("ascii").splitlines()
        vertex_dtype, n_vertices, count_type, index_type, n_faces = _ply_layout(header)
        vertices = np.frombuffer(data, vertex_dtype, n_vertices, end)
        face_dtype = np.dtype([("n", count_type), ("v", index_type, (3,))])
        faces = np.frombuffer(data, face_dtype, n_faces, end + n_vertices * vertex_dtype.itemsize)
    except (ValueError, KeyError, StopIteration, UnicodeDecodeError) as exc:
        msg = f"{path}: not a binary little-endian triangle PLY ({exc})"
        raise ValueError(msg) from None
    if np.any(faces["n"] != 3):
        msg = f"{path}: only triangles are supported, got faces with {sorted(set(faces['n'].tolist()))} vertices"
        raise ValueError(msg)
    xyz = np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1).astype(np.float32)
    return xyz, faces["v"].astype(np.uint32)


def _ply_layout(header: list[str]) -> tuple[np.dtype[Any], int, str, str, int]:
    if "format binary_little_endian 1.0" not in header:
        msg = f"format must be binary_little_endian 1.0, got {header[1] if len(header) > 1 else header!r}"
        raise ValueError(msg)
    fields: list[tuple[str, str]] = []
    element, n_vertices, n_faces, count_type, index_type = "", 0, 0, "", ""
    for line in header:
        words = line.split()
        if words[:1] == ["element"]:
            element = words[1]
            n_vertices = int(words[2]) if element == "vertex" else n_vertices
            n_faces = int(words[2]) if element == "face" else n_faces
        elif words[:2] == ["property", "list"] and element == "face":
            count_type, index_type = _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]
        elif words[:1] == ["property"] and element == "vertex":
            fields.append((words[2], _PLY_TYPES[words[1]]))
    if not count_type or not {"x", "y", "z"} <= {name for name, _ in fields}:
        msg = "needs vertex x, y, z and a face vertex_indices list"
        raise ValueError(msg)
    return np.dtype(fields), n_vertices, count_type, index_type, n_faces
