"""The competitor for bench_prepare: the skin pipeline a user would write with VTK.

SimpleITK reads the DICOM series; VTK's flying edges extracts the -300 HU iso-surface at
full resolution; the connectivity filter keeps the largest region (drops the head holder);
vtkQuadricDecimation takes it to the same triangle budget; vtkPLYWriter writes it.
Run as a script so that its wall time and peak memory are measured like ours.
"""

from __future__ import annotations

import sys
import time


def main(folder: str, out_ply: str, budget: int) -> None:
    import SimpleITK as sitk
    import vtk
    from vtk.util import numpy_support

    start = time.perf_counter()
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder)
    image = sitk.ReadImage(files)
    voxels = sitk.GetArrayFromImage(image)
    vtk_image = vtk.vtkImageData()
    vtk_image.SetDimensions(*image.GetSize())
    vtk_image.SetSpacing(*image.GetSpacing())
    vtk_image.SetOrigin(*image.GetOrigin())
    vtk_image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(voxels.ravel(), deep=False))
    edges = vtk.vtkFlyingEdges3D()
    edges.SetInputData(vtk_image)
    edges.SetValue(0, -300.0)
    edges.ComputeNormalsOff()
    connectivity = vtk.vtkPolyDataConnectivityFilter()
    connectivity.SetInputConnection(edges.GetOutputPort())
    connectivity.SetExtractionModeToLargestRegion()
    clean = vtk.vtkCleanPolyData()
    clean.SetInputConnection(connectivity.GetOutputPort())
    clean.Update()
    n_raw = clean.GetOutput().GetNumberOfPolys()
    decimate = vtk.vtkQuadricDecimation()
    decimate.SetInputConnection(clean.GetOutputPort())
    decimate.SetTargetReduction(max(0.0, 1.0 - budget / n_raw))
    writer = vtk.vtkPLYWriter()
    writer.SetInputConnection(decimate.GetOutputPort())
    writer.SetFileName(out_ply)
    writer.SetFileTypeToBinary()
    writer.Write()
    n_out = decimate.GetOutput().GetNumberOfPolys()
    print(f"vtk pipeline: {n_raw} raw -> {n_out} triangles in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
