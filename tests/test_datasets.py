"""The dataset manifest matches the real scans, and every CT in it loads through imaging."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import real_data

from imaging.load import CT, LABEL_MAP, load_ct

MANIFEST = Path(__file__).resolve().parents[1] / "datasets" / "real_scans.toml"
ENTRIES = tomllib.loads(MANIFEST.read_text())
VOLUMES = [
    name for name, entry in ENTRIES.items() if entry["kind"] in ("dicom-series", "nifti", "nifti-labels", "metaimage")
]


@pytest.mark.realdata
@pytest.mark.parametrize("name", VOLUMES)
def test_real_volume_matches_manifest(name: str) -> None:
    entry = ENTRIES[name]
    volume = load_ct(real_data(entry["path"]), kind=LABEL_MAP if entry["kind"] == "nifti-labels" else CT)
    assert list(volume.geometry.size) == entry["size_xyz"]
    if "spacing_mm" in entry:
        assert list(volume.geometry.spacing) == pytest.approx(entry["spacing_mm"], abs=1e-4)
