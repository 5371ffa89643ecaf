"""OpenIGTLink POLYDATA for triangle meshes, on top of pyigtl's ``MessageBase``.

pyigtl 0.3.4 can pack POLYDATA but not read it (its ``_unpack_content`` indexes a
``struct.Struct`` and the type is missing from its decoder table), and it counts cells in
a Python loop. This class packs and unpacks points + triangle polygons with numpy; the
header, CRC and framing stay pyigtl's. Layout (all big-endian): ten uint32 counts
(points; vertices, lines, polygons, strips each as cells and bytes; attributes), float32
points, then each cell array as ``n, i_0 .. i_n-1`` uint32 runs. Attributes are neither
sent nor read (Slicer computes normals itself).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pyigtl
from pyigtl.messages import MessageBase

_COUNTS = struct.Struct(">10I")
F32 = npt.NDArray[np.float32]
U32 = npt.NDArray[np.uint32]


class PolyDataMessage(MessageBase):  # type: ignore[misc]  # pyigtl is untyped (Any)
    """A triangle mesh as an OpenIGTLink POLYDATA message."""

    def __init__(
        self,
        points: object = None,
        triangles: object = None,
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        MessageBase.__init__(self, timestamp=timestamp, device_name=device_name)
        self._message_type = "POLYDATA"
        self.points: F32 = np.zeros((0, 3), np.float32)
        self.triangles: U32 = np.zeros((0, 3), np.uint32)
        if points is not None:
            self.points, self.triangles = check_mesh(points, triangles)
        self._valid_message = True

    def content_asstring(self) -> str:
        return f"Points: {len(self.points)}\nTriangles: {len(self.triangles)}"

    def _pack_content(self) -> bytes:
        n_tri = len(self.triangles)
        counts = _COUNTS.pack(len(self.points), 0, 0, 0, 0, n_tri, n_tri * 16, 0, 0, 0)
        cells = np.empty((n_tri, 4), dtype=">u4")
        cells[:, 0] = 3
        cells[:, 1:] = self.triangles
        return counts + self.points.astype(">f4").tobytes() + cells.tobytes()

    def _unpack_content(self, content: bytes) -> None:
        self.points, self.triangles = unpack_polydata(content)


def check_mesh(points: object, triangles: object) -> tuple[F32, U32]:
    """(N, 3) finite float32 points and (M, 3) uint32 triangles indexing them, or ValueError."""
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3 or len(P) == 0 or not np.all(np.isfinite(P)):
        msg = f"mesh vertices must be finite (N>=1, 3) mm, got shape {P.shape}"
        raise ValueError(msg)
    T = np.asarray(triangles)
    if T.ndim != 2 or T.shape[1] != 3 or not np.issubdtype(T.dtype, np.integer):
        msg = f"mesh triangles must be (M, 3) integer indices, got shape {T.shape} dtype {T.dtype}"
        raise ValueError(msg)
    if len(T) and (T.min() < 0 or T.max() >= len(P)):
        msg = f"mesh triangle indices must lie in [0, {len(P)}), got [{T.min()}, {T.max()}]"
        raise ValueError(msg)
    return P.astype(np.float32), T.astype(np.uint32)


def unpack_polydata(content: bytes) -> tuple[F32, U32]:
    """Points and triangles of a POLYDATA body (polygons must all be triangles)."""
    if len(content) < _COUNTS.size:
        msg = f"POLYDATA body must hold {_COUNTS.size} bytes of counts, got {len(content)} bytes"
        raise ValueError(msg)
    n_pts, _, size_v, _, size_l, n_poly, size_p, _, size_s, _ = _COUNTS.unpack_from(content)
    offset = _COUNTS.size
    need = offset + 12 * n_pts + size_v + size_l + size_p + size_s
    if need > len(content):
        msg = f"POLYDATA counts need {need} bytes, got {len(content)}"
        raise ValueError(msg)
    points = np.frombuffer(content, ">f4", 3 * n_pts, offset).reshape(n_pts, 3).astype(np.float32)
    offset += 12 * n_pts + size_v + size_l
    cells = np.frombuffer(content, ">u4", size_p // 4, offset).astype(np.uint32)
    if n_poly and (len(cells) != 4 * n_poly or np.any(cells[::4] != 3)):
        msg = f"POLYDATA polygons must all be triangles, got {n_poly} polygons in {len(cells)} words"
        raise ValueError(msg)
    triangles = cells.reshape(-1, 4)[:, 1:].copy()
    if len(triangles) and triangles.max() >= n_pts:
        msg = f"POLYDATA triangle index out of range: max {triangles.max()} for {n_pts} points"
        raise ValueError(msg)
    return points, triangles


def register_with_pyigtl() -> None:
    """Let pyigtl's own client and server decode POLYDATA (they drop unknown types).

    This edits pyigtl's module-level decoder table, so it is an explicit opt-in for
    processes that use pyigtl's transport to receive meshes (tests, benchmarks, tools);
    scrubin's own link never needs it.
    """
    table: dict[str, Any] = pyigtl.messages.message_type_to_class_constructor
    table["POLYDATA"] = PolyDataMessage
