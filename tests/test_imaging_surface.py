"""Surface extraction: fidelity on the real head CT, thread safety of decimation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import real_data

from imaging.surface import decimate, flying_edges


def _sphere_surface(radius: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.indices((48, 48, 48), dtype=np.float32)
    values = np.clip(radius + 0.5 - np.sqrt((x - 24 - shift) ** 2 + (y - 24) ** 2 + (z - 24) ** 2), 0, 1)
    return flying_edges(values.astype(np.float32), 0.5)


def test_decimation_is_safe_from_two_threads() -> None:
    meshes = [_sphere_surface(18.0, 0.0), _sphere_surface(12.0, 3.0)]
    sequential = [decimate(v, t, 2000) for v, t in meshes]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(3):
            parallel = list(pool.map(lambda m: decimate(m[0], m[1], 2000), meshes))
            for (v1, t1), (v2, t2) in zip(sequential, parallel, strict=True):
                np.testing.assert_array_equal(t1, t2)
                np.testing.assert_allclose(v1, v2)


@pytest.mark.realdata
def test_real_head_skin_within_half_a_millimetre(tmp_path: Path) -> None:
    """bti_demohead: the decimated skin model vs full-resolution marching cubes of the
    same segmentation (threshold, slice-wise hole filling, largest component)."""
    from imaging.load import load_ct
    from imaging.mesh_io import read_ply
    from imaging.prepare import PrepareOptions, prepare_path
    from imaging.segment import SKIN_THRESHOLD_HU, fill_holes_per_slice, largest_component
    from imaging.surface_distance import surface_distance

    folder = real_data("ct/bti_demohead_dicom")
    result = prepare_path(folder, tmp_path / "m", PrepareOptions(segments=("skin",)))
    skin = result.manifest["meshes"][0]
    assert skin["name"] == "skin" and skin["triangles"] <= 200_000
    volume = load_ct(folder)
    body = largest_component(fill_holes_per_slice(volume.voxels > SKIN_THRESHOLD_HU))
    ref_ijk, ref_t = flying_edges(np.pad(body.astype(np.float32), 1), 0.5)
    ref_v = volume.geometry.index_to_lps(ref_ijk - 1.0)
    vertices, triangles = read_ply(tmp_path / "m" / "meshes" / "skin.ply")
    distance = surface_distance(vertices, triangles, ref_v, ref_t, n_samples=100_000)
    assert distance.mean_symmetric_mm <= 0.5, distance
    # the head holder (a separate object behind the head) is not part of the skin
    holder_free_bounds = ref_v.min(0), ref_v.max(0)
    np.testing.assert_allclose(skin["bounds_mm"][0], holder_free_bounds[0], atol=2.0)
    np.testing.assert_allclose(skin["bounds_mm"][1], holder_free_bounds[1], atol=2.0)
