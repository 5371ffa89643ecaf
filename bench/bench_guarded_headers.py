"""Cost of parsing headers in a guarded child (imaging.guarded), and time to refuse hostile files.

    .venv/bin/python bench/bench_guarded_headers.py [--quick] [--runs N]

Side by side, same run, same files: ``load_ct`` with the guard (the default) against the same
call with ``SCRUBIN_UNGUARDED_HEADERS=1`` (the reader runs in-process, unprotected), on
synthetic NIfTI / MetaImage / DICOM (fast path, and deflated = pydicom path) and, when
``SCRUBIN_DATA_DIR`` is set, on the real scans. Then every file of the hostile corpus
(tests/hostile_inputs.py): time to its one-line refusal. Prints medians, p99 and ratios;
writes bench/results/guarded_headers.json and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
RESULTS = REPO / "bench" / "results"

from imaging.errors import InputError  # noqa: E402
from imaging.guarded import DISABLE_ENV  # noqa: E402
from imaging.load import load_ct  # noqa: E402


def _synthetic(root: Path, quick: bool) -> dict[str, Path]:
    import pydicom
    import SimpleITK as sitk
    from dicom_factory import head_like_volume, write_series
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    shape = (60, 256, 256) if quick else (200, 512, 512)
    voxels = head_like_volume(shape, radius=shape[1] * 0.35)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.5, 0.5, 1.0))
    files = {}
    for name in ("ct.nii", "ct.nii.gz", "ct.mha"):
        sitk.WriteImage(image, str(root / name))
        files[f"synthetic {name}"] = root / name
    small = head_like_volume((40, 256, 256), radius=90)
    write_series(root / "dicom_fast", small)
    for path in write_series(root / "dicom_deflated", small):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    files["synthetic DICOM 40 slices (fast path, no guard)"] = root / "dicom_fast"
    files["synthetic DICOM 40 slices (deflated: pydicom, guarded)"] = root / "dicom_deflated"
    return files


def _real() -> dict[str, Path]:
    base = os.environ.get("SCRUBIN_DATA_DIR")
    if not base:
        return {}
    real = {
        "real dicom2stl head .nii.gz": "ct/dicom2stl_head/ct_example.nii.gz",
        "real elastix lung .mha": "ct/elastix_lung/3DCT_lung_baseline_small.mha",
        "real TotalSegmentator .nii.gz": "ct/totalsegmentator_abdomen/example_ct.nii.gz",
        "real Siemens DICOM (JPEG 2000: pydicom, guarded)": "ct/totalsegmentator_abdomen/dicom",
        "real Philips DICOM 186 slices (fast path)": "ct/bti_demohead_dicom",
    }
    return {k: Path(base) / v for k, v in real.items() if (Path(base) / v).exists()}


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median_ms": 1000 * statistics.median(xs), "p99_ms": 1000 * float(np.percentile(xs, 99)), "n": len(xs)}


def compare(files: dict[str, Path], runs: int) -> list[dict[str, object]]:
    rows = []
    for name, path in files.items():
        load_ct(path)  # warm the page cache and the imports
        guarded: list[float] = []
        plain: list[float] = []
        for i in range(runs):  # interleaved, alternating first: drift hits both alike
            order = [(guarded, False), (plain, True)] if i % 2 == 0 else [(plain, True), (guarded, False)]
            for out, unguarded in order:
                if unguarded:
                    os.environ[DISABLE_ENV] = "1"
                try:
                    out.append(_time(partial(load_ct, path)))
                finally:
                    os.environ.pop(DISABLE_ENV, None)
        g, u = _stats(guarded), _stats(plain)
        rows.append({"input": name, "guarded": g, "unguarded": u, "ratio": g["median_ms"] / u["median_ms"]})
        print(
            f"{name:58s} guarded {g['median_ms']:8.1f} ms (p99 {g['p99_ms']:7.1f})  unguarded {u['median_ms']:8.1f} ms"
            f" (p99 {u['p99_ms']:7.1f})  ratio {rows[-1]['ratio']:.3f}  overhead {g['median_ms'] - u['median_ms']:+.1f} ms"
        )
    return rows


def hostile(root: Path, runs: int) -> list[dict[str, object]]:
    from hostile_inputs import BUILDERS, build_case

    rows = []
    for b in BUILDERS:
        case = build_case(b, root / b.__name__)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            with contextlib.suppress(InputError):
                load_ct(case.path)
            times.append(time.perf_counter() - start)
        rows.append({"case": b.__name__, **_stats(times)})
    worst = max(rows, key=lambda r: float(r["median_ms"]))  # type: ignore[arg-type]
    print(f"hostile corpus: {len(rows)} files, every one refused; slowest {worst['case']} {worst['median_ms']:.0f} ms")
    return rows


def plot(rows: list[dict[str, object]], bad: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 0.5 * max(len(rows), len(bad) // 2) + 2))
    names = [str(r["input"]) for r in rows]
    y = np.arange(len(rows))
    a.barh(y - 0.2, [r["guarded"]["median_ms"] for r in rows], 0.4, label="guarded (child)")  # type: ignore[index]
    a.barh(y + 0.2, [r["unguarded"]["median_ms"] for r in rows], 0.4, label="unguarded (in-process)")  # type: ignore[index]
    a.set_yticks(y, names, fontsize=7)
    a.set_xlabel("load_ct median (ms)")
    a.legend(fontsize=7)
    b.barh([str(r["case"]) for r in bad], [float(r["median_ms"]) for r in bad], color="tab:red")  # type: ignore[arg-type]
    b.tick_params(axis="y", labelsize=6)
    b.set_xlabel("time to the one-line refusal (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller volumes, 3 runs (< 60 s)")
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    runs = args.runs or (3 if args.quick else 9)
    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
        root = Path(tmp)
        files = {**_synthetic(root, args.quick), **_real()}
        rows = compare(files, runs)
        bad = hostile(root / "hostile", runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guarded_headers.json").write_text(json.dumps({"inputs": rows, "hostile": bad}, indent=2) + "\n")
    plot(rows, bad, RESULTS / "guarded_headers.png")
    print(f"wrote {RESULTS / 'guarded_headers.json'} and .png")


if __name__ == "__main__":
    main()
