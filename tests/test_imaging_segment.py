"""Morphology used by segmentation, checked against scipy.ndimage as an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from imaging.segment import dilate_six_connected, drop_small_components, fill_holes_per_slice, largest_component


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    rng = np.random.default_rng(3)
    noise = ndimage.gaussian_filter(rng.standard_normal((24, 40, 36)), 2.0)
    return noise > 0.05


def test_dilation_matches_scipy(blobs: np.ndarray) -> None:
    expected = ndimage.binary_dilation(blobs, ndimage.generate_binary_structure(3, 1))
    np.testing.assert_array_equal(dilate_six_connected(blobs), expected)


def test_fill_holes_per_slice_matches_scipy_2d(blobs: np.ndarray) -> None:
    expected = np.stack([ndimage.binary_fill_holes(s) for s in blobs])
    filled = fill_holes_per_slice(blobs)
    assert filled.sum() > blobs.sum()  # there were holes to fill
    np.testing.assert_array_equal(filled, expected)


def test_fill_does_not_leak_between_slices() -> None:
    solid = np.zeros((3, 9, 9), bool)
    solid[0, 2:7, 2:7] = True
    solid[0, 4, 4] = False  # a hole in slice 0 only
    solid[1, 2:7, 2:7] = True  # slice 1 is a full square, slice 2 is empty
    filled = fill_holes_per_slice(solid)
    assert filled[0, 4, 4] and not filled[2].any()


def test_components_match_scipy(blobs: np.ndarray) -> None:
    labels, n = ndimage.label(blobs)
    sizes = np.bincount(labels.ravel())[1:]
    assert n > 3
    np.testing.assert_array_equal(largest_component(blobs), labels == 1 + int(np.argmax(sizes)))
    threshold = float(np.sort(sizes)[-3])
    expected = np.isin(labels, 1 + np.flatnonzero(sizes >= threshold))
    np.testing.assert_array_equal(drop_small_components(blobs, threshold), expected)
