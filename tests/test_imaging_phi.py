"""No patient-identifying DICOM value reaches any output: seeded into the tags, then searched
for in every byte the prepare command writes (files and its own terminal output)."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
from dicom_factory import PHI, head_like_volume, write_series
from imaging_fixtures import run_cli

STUDY_UID = "1.2.826.0.1.3680043.8.498.77123456789"
SERIES_UID = "1.2.826.0.1.3680043.8.498.88123456789"


def _needles() -> list[str]:
    """Every seeded value, and each name part or word of 4+ characters on its own."""
    values = list(PHI.values()) + [STUDY_UID, SERIES_UID]
    parts = {p for v in values for p in re.split(r"[\^ ]", v) if len(p) >= 4}
    return sorted(set(values) | parts)


def _encodings(text: str) -> list[bytes]:
    forms = {text, text.lower(), text.upper()}
    return [f.encode(enc) for f in forms for enc in ("utf-8", "utf-16-le")]


def test_no_phi_in_any_output(tmp_path: Path) -> None:
    dicom = tmp_path / "in"
    write_series(dicom, head_like_volume((20, 48, 48)), phi=True, study_uid=STUDY_UID, series_uid=SERIES_UID)
    seeded = pydicom.dcmread(next(dicom.iterdir()))
    assert str(seeded.PatientName) == PHI["PatientName"]  # the input really carries them

    out = tmp_path / "model"
    result = run_cli("prepare", str(dicom), "--out", str(out))
    assert result.returncode == 0, result.stderr
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"manifest.json", "model.glb", "skin.ply", "skin.stl", "bone.ply", "bone.stl"}
    blobs = {str(p.relative_to(out)): p.read_bytes() for p in files}
    blobs["<stdout>"] = result.stdout.encode()
    blobs["<stderr>"] = result.stderr.encode()
    leaks = [
        (where, needle)
        for needle in _needles()
        for where, blob in blobs.items()
        if any(form in blob for form in _encodings(needle))
    ]
    assert leaks == []
