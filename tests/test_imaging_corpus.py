"""The outside corpus (tests/corpus.py) through ``scrubin prepare``, a representative sample.

Each input runs as a fresh ``scrubin prepare`` process with a time and an address-space
bound and is classified: model, clean refusal (exit 2, one stderr line ``error: ...``, no
traceback, nothing written), anything else. Nothing may be "anything else", and no input that
must be refused may give a model. bench/corpus_prepare.py runs every case (the table in
docs/reliability.md); CI runs the sample below, one of each kind of source and defect.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import MODEL, MODEL_MADE, OTHER, REFUSE, REFUSED, SAMPLE, classify, corpus_cases, run_case, sample_cases


def test_sample_names_every_kind_of_source_and_defect() -> None:
    cases = sample_cases()
    assert [c.name for c in cases] == list(SAMPLE), "a sample name no longer matches a corpus case"
    sources = {c.source for c in cases}
    assert {"hand-made", "pydicom", "pydicom-data", "nibabel", "pynrrd"} <= sources
    assert {c.expect for c in cases} >= {MODEL, REFUSE}


def test_corpus_is_the_size_of_the_issue_and_built_from_installed_packages() -> None:
    cases = corpus_cases()
    assert len(cases) > 500  # issue 15 ran 514 inputs; every third-party file is in here
    names = {c.name for c in cases}
    for defect in (
        "dicom_truncated_last_slice_half",
        "nifti_pixdim_zero",
        "nifti_nan_origin",
        "dicom_slope_zero",
        "dicom_slope_nan",
        "mha_corrupt_zlib",
        "dicom_slice_gap_400mm",
        "dicom_no_air",
        "dicom_modality_mr",
        "dicom_modality_sc",
        "dicom_modality_us",
        "dicom_rgb",
    ):
        assert f"hand-made/{defect}" in names


def test_classify_tells_the_three_outcomes_apart(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text("{}")
    assert classify(0, "", "", model) == MODEL_MADE
    absent = tmp_path / "absent"
    assert classify(2, "", "error: x.nii: voxel spacing (0, 1, 1) mm: zero\n", absent) == REFUSED
    assert classify(2, "", "error: one\nerror: two\n", absent) == OTHER
    assert classify(3, "", "internal error: ValueError\n", absent) == OTHER
    assert classify(2, "", "Traceback (most recent call last):\nerror: x\n", absent) == OTHER
    assert classify(0, "", "", absent) == OTHER  # exit 0 without a model


@pytest.mark.slow
@pytest.mark.parametrize("name", SAMPLE)
def test_sample_case(tmp_path: Path, name: str) -> None:
    case = next(c for c in sample_cases() if c.name == name)
    outcome = run_case(case, tmp_path)
    detail = f"{case.name}: exit {outcome.returncode}, stderr {outcome.stderr[-600:]!r}"
    assert outcome.kind != OTHER, detail
    if case.expect == REFUSE:
        assert outcome.kind == REFUSED, detail
    if case.expect == MODEL:
        assert outcome.kind == MODEL_MADE, detail
