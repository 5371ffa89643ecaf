"""Measure the peak resident memory of ``scrubin prepare`` per input voxel (issue 15 item 3).

For each voxel type (int16, int32, float32, float64, and uint8, which can hold no HU air and
is refused after loading) and each content (a head in air; a body filling the field of view
but for a one-voxel ring of air, the worst content the checks accept; no air at all, refused
after loading), NIfTI volumes of two sizes go through ``scrubin prepare`` (skin and bone) in
a fresh process; the peak is the run's own high-water mark (tests/corpus.py's ``run_scrubin``). Bytes per voxel is the slope
between the two sizes, the base the intercept. imaging/memory.py holds the worst slope per
item size and the largest base; this prints them next to the table it uses.

    .venv/bin/python bench/memory_prepare.py [--sizes 256x256x96 512x512x96]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from corpus import run_scrubin  # noqa: E402  (tests/ is put on the path just above)

RESULTS = REPO / "bench" / "results"
DTYPES = ("int16", "int32", "float32", "float64", "uint8")
CONTENTS = ("head", "little_air", "no_air")


def volume(shape: tuple[int, int, int], content: str, dtype: str) -> np.ndarray:
    """[z, y, x] HU: tissue with a bone core, in air (head) or up to a 1-voxel ring (little_air)."""
    z, y, x = np.indices(shape, dtype=np.float32)
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    r = np.sqrt(((y - cy) / cy) ** 2 + ((x - cx) / cx) ** 2)
    hu = np.full(shape, -1000, np.float32)
    if content == "head":
        hu[r < 0.7] = 40
    else:
        hu[:, 1:-1, 1:-1] = 40
    hu[r < 0.3] = 900
    if content == "no_air":
        hu[hu < 0] = 40
    return hu.astype(dtype)


def peak_rss_mib(path: Path, out: Path) -> tuple[float, int]:
    """Peak resident MiB of ``scrubin prepare`` as the run itself measures it (tests/corpus.py)."""
    code, _, _, _, peak = run_scrubin(["prepare", str(path), "--out", str(out), "--max-memory-gb", "20"])
    return peak, code


def main() -> None:
    import SimpleITK as sitk

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs=2, default=["256x256x96", "512x512x96"])
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in reversed(s.split("x"))) for s in args.sizes]  # x*y*z -> (z, y, x)
    rows = []
    with tempfile.TemporaryDirectory(prefix="memory-prepare-") as tmp:
        work = Path(tmp)
        for dtype in DTYPES:
            for content in CONTENTS:
                peaks = []
                for shape in shapes:
                    path = work / f"{dtype}_{content}.nii"
                    image = sitk.GetImageFromArray(volume(shape, content, dtype))  # type: ignore[arg-type]
                    image.SetSpacing((0.8, 0.8, 1.5))
                    sitk.WriteImage(image, str(path))
                    mib, code = peak_rss_mib(path, work / f"model_{dtype}_{content}")
                    peaks.append((int(np.prod(shape)), mib, code))
                    path.unlink()
                (n0, m0, c0), (n1, m1, c1) = peaks
                per_voxel = (m1 - m0) * 2**20 / (n1 - n0)
                base = m0 - per_voxel * n0 / 2**20
                row = {"dtype": dtype, "content": content, "exit": [c0, c1], "peaks_mib": [m0, m1],
                       "voxels": [n0, n1], "bytes_per_voxel": per_voxel, "base_mib": base}  # fmt: skip
                rows.append(row)
                outcome = "model" if c1 == 0 else f"exit {c1}"
                print(f"{dtype:8s} {content:10s} {outcome:7s} peaks {m0:7.0f} / {m1:7.0f} MiB  "
                      f"{per_voxel:5.1f} B/voxel  base {base:5.0f} MiB", flush=True)  # fmt: skip
    from imaging.memory import BASE_BYTES, PEAK_BYTES_PER_VOXEL

    print("\nworst measured bytes per voxel by item size, and imaging/memory.py's table:")
    for itemsize in sorted(PEAK_BYTES_PER_VOXEL):
        measured = [r["bytes_per_voxel"] for r in rows if np.dtype(str(r["dtype"])).itemsize == itemsize]
        worst = max(measured) if measured else float("nan")
        print(f"  {itemsize} byte(s): measured {worst:5.1f}, table {PEAK_BYTES_PER_VOXEL[itemsize]:g}")
    print(
        f"  base: measured up to {max(float(r['base_mib']) for r in rows):.0f} MiB, table {BASE_BYTES / 2**20:.0f} MiB"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory_prepare.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {RESULTS / 'memory_prepare.json'}")


if __name__ == "__main__":
    main()
