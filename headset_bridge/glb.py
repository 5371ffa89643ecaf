"""Just enough GLB (binary glTF 2.0) to get the model's vertices back in LPS mm.

The bridge ships GLB bytes untouched; this reader exists for the reference
client's renderer. Node transforms are not applied (scrubin's GLB writer puts
vertices in the root frame).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

# glTF metres (x_g, y_g, z_g) = (x, z, -y) / 1000 for LPS mm (x, y, z); see the protocol doc.
from domain.gltf_frame import T_GLTF_LPS as T_GLTF_LPS
from domain.gltf_frame import T_LPS_GLTF as T_LPS_GLTF
from domain.gltf_frame import pack_glb

_MAGIC, _JSON, _BIN, _FLOAT = 0x46546C67, 0x4E4F534A, 0x004E4942, 5126


def _chunks(glb: bytes) -> tuple[dict[str, Any], bytes]:
    if len(glb) < 20:
        msg = f"GLB too short, got {len(glb)!r} bytes"
        raise ValueError(msg)
    magic, version, length = struct.unpack_from("<III", glb, 0)
    if magic != _MAGIC or version != 2 or length > len(glb):
        msg = f"not a GLB 2.0 file, got header {(hex(magic), version, length)!r}"
        raise ValueError(msg)
    doc: dict[str, Any] | None = None
    binary = b""
    offset = 12
    while offset + 8 <= length:
        size, kind = struct.unpack_from("<II", glb, offset)
        data = glb[offset + 8 : offset + 8 + size]
        if kind == _JSON:
            doc = json.loads(data.decode("utf-8"))
        elif kind == _BIN:
            binary = bytes(data)
        offset += 8 + size
    if doc is None:
        msg = f"GLB has no JSON chunk, got {len(glb)!r} bytes"
        raise ValueError(msg)
    return doc, binary


def positions_lps_mm(glb: bytes) -> npt.NDArray[np.float64]:
    """All POSITION vertices of all mesh primitives, as (N, 3) LPS mm."""
    doc, binary = _chunks(glb)
    out = []
    for mesh in doc.get("meshes", []):
        for prim in mesh.get("primitives", []):
            index = prim.get("attributes", {}).get("POSITION")
            if index is not None:
                out.append(_accessor_vec3(doc, binary, int(index)))
    if not out:
        return np.zeros((0, 3))
    pts_m = np.concatenate(out)
    result: npt.NDArray[np.float64] = pts_m @ T_LPS_GLTF[:3, :3].T
    return result


def _accessor_vec3(doc: dict[str, Any], binary: bytes, index: int) -> npt.NDArray[np.float64]:
    acc = doc["accessors"][index]
    if acc.get("componentType") != _FLOAT or acc.get("type") != "VEC3":
        msg = f"POSITION accessor must be float VEC3, got {acc!r}"
        raise ValueError(msg)
    view = doc["bufferViews"][acc["bufferView"]]
    start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
    stride = int(view.get("byteStride", 12))
    count = int(acc["count"])
    raw = np.frombuffer(binary, dtype=np.uint8, count=max(0, (count - 1) * stride + 12), offset=start)
    rows = np.lib.stride_tricks.as_strided(raw, shape=(count, 12), strides=(stride, 1))
    return np.ascontiguousarray(rows).view("<f4").reshape(count, 3).astype(np.float64)


def pack_points_glb(points_lps_mm: npt.ArrayLike) -> bytes:
    """A minimal GLB holding one point primitive (tests and demos)."""
    pts = np.asarray(points_lps_mm, dtype=np.float64).reshape(-1, 3)
    pts_m = (pts @ T_GLTF_LPS[:3, :3].T).astype("<f4")
    blob = pts_m.tobytes()
    doc = {
        "asset": {"version": "2.0", "generator": "scrubin headset_bridge"},
        "buffers": [{"byteLength": len(blob)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": len(blob)}],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": _FLOAT,
                "count": len(pts_m),
                "type": "VEC3",
                "min": pts_m.min(0).tolist() if len(pts_m) else [0, 0, 0],
                "max": pts_m.max(0).tolist() if len(pts_m) else [0, 0, 0],
            }
        ],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "mode": 0}]}],
        "nodes": [{"mesh": 0}],
        "scenes": [{"nodes": [0]}],
        "scene": 0,
    }
    return pack_glb(doc, blob)
