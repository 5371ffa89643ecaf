"""The real tracked-pointer scan of the UCL pelvis phantom (shared/data/pointer/).

A 2,000-point pointer scan in the optical tracker's frame, the phantom's CT bone surface,
4 fiducials in both frames, and two tracker-to-CT transforms (paired-point from the
fiducials, and that refined by ICP on the scan): read ../shared/data/README.md. Used
by the tests and bench/bench_trace_registration.py; never copied into the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registration.frames import F64

PELVIS = Path("pointer") / "ucl_pelvis_phantom"


@dataclass(frozen=True)
class PelvisCase:
    vertices_mm: F64  # CT (model) frame
    triangles: np.ndarray
    scan_mm: F64  # tracker (sensor) frame
    fiducials_ct_mm: F64  # (4, 3), same order as fiducials_tracker_mm
    fiducials_tracker_mm: F64
    T_ct_tracker_fiducial: F64  # paired-point from the fiducials
    T_ct_tracker_icp: F64  # refined by ICP on the scan (the reference of the tests)


def data_dir() -> Path | None:
    root = os.environ.get("SCRUBIN_DATA_DIR")
    folder = Path(root) / PELVIS if root else None
    return folder if folder is not None and folder.is_dir() else None


def _read_vtk_polydata(path: Path) -> tuple[F64, np.ndarray]:
    """Points and triangles of a legacy VTK POLYDATA file (VTK's own reader)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOLegacy import vtkPolyDataReader

    reader = vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    V = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    polys = poly.GetPolys()
    offsets = vtk_to_numpy(polys.GetOffsetsArray())
    assert np.all(np.diff(offsets) == 3), "pelvis mesh: only triangles expected"
    return V, vtk_to_numpy(polys.GetConnectivityArray()).reshape(-1, 3).astype(np.int64)


def load_pelvis(folder: Path) -> PelvisCase:
    V, F = _read_vtk_polydata(folder / "pelvis_cropped_decimated.vtk")
    ct_fid = np.loadtxt(folder / "pelvis_cropped_ct_fiducial_markers.txt").reshape(-1, 3)
    return PelvisCase(
        V,
        F,
        np.loadtxt(folder / "Tracker_Surface_Scan.txt"),
        ct_fid,
        np.loadtxt(folder / "Tracker_Fiducial_Markers.txt").reshape(-1, 3),
        np.loadtxt(folder / "Tracker_to_pelvis_cropped.txt"),
        np.loadtxt(folder / "Tracker_to_pelvis_cropped_with_icp.txt"),
    )
