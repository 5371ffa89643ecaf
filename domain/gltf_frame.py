"""The one place where patient LPS millimetres become glTF (imaging writes it, the bridge
and the mentor's 3D view read it).

glTF 2.0 is right-handed, +Y up, +Z forward (the asset's front), metres. The patient model
is put so that the patient stands up (+Y = superior) and faces the viewer (+Z = anterior):

    x_gltf = x_lps / 1000      (patient left)
    y_gltf = z_lps / 1000      (superior)
    z_gltf = -y_lps / 1000     (anterior = -posterior)

``T_GLTF_LPS`` is that map as a 4x4 (a proper rotation times a 1/1000 scale, det > 0, so
triangle winding and outward normals are kept). Headset clients undo it with ``T_LPS_GLTF``.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import numpy.typing as npt

MM_PER_M = 1000.0
R_GLTF_LPS: npt.NDArray[np.float64] = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
T_GLTF_LPS: npt.NDArray[np.float64] = np.block(
    [[R_GLTF_LPS / MM_PER_M, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]
)
T_LPS_GLTF: npt.NDArray[np.float64] = np.linalg.inv(T_GLTF_LPS).astype(np.float64)


def lps_mm_to_gltf_m(points_mm: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(..., 3) LPS millimetres to (..., 3) glTF metres."""
    p = np.asarray(points_mm, dtype=np.float64)
    out: npt.NDArray[np.float64] = p @ T_GLTF_LPS[:3, :3].T
    return out


def gltf_m_to_lps_mm(points_m: npt.ArrayLike) -> npt.NDArray[np.float64]:
    p = np.asarray(points_m, dtype=np.float64)
    out: npt.NDArray[np.float64] = p @ T_LPS_GLTF[:3, :3].T
    return out


# glTF 2.0 enumerations used by the writers (accessor component types, buffer view targets).
FLOAT, UINT32 = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


def pack_glb(document: dict[str, object], blob: bytes) -> bytes:
    """The GLB container: 12-byte header, the JSON chunk (space-padded to 4 bytes), the
    binary chunk (zero-padded to 4 bytes)."""
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    blob = bytes(blob) + b"\0" * (-len(blob) % 4)
    header = struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(text) + 8 + len(blob))
    return header + struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(blob), b"BIN\x00") + blob
