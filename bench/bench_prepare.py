"""Benchmark: ``scrubin prepare`` to a skin model vs the VTK pipeline a user would write.

Same machine, same run, same DICOM series (bti_demohead_dicom from SCRUBIN_DATA_DIR), same
triangle budget; each run is a fresh process (wall time includes start-up and imports),
alternating the two so that drift hits both. Peak memory is the child's max RSS (wait4).
Fidelity: mean symmetric surface distance of each output to the full-resolution
marching-cubes surface of the same skin segmentation.

    .venv/bin/python bench/bench_prepare.py [--runs 5] [--budget 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DATASET = "ct/bti_demohead_dicom"


def timed_run(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed: {err.strip()[-500:]}")
    return wall, usage.ru_maxrss / 1024.0, out


def reference_surface(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution marching cubes of the full-resolution skin segmentation."""
    from imaging.load import load_ct
    from imaging.segment import SKIN_THRESHOLD_HU, fill_holes_per_slice, largest_component
    from imaging.surface import flying_edges

    volume = load_ct(folder)
    body = largest_component(fill_holes_per_slice(volume.voxels > SKIN_THRESHOLD_HU))
    vertices, triangles = flying_edges(np.pad(body.astype(np.float32), 1), 0.5)
    return volume.geometry.index_to_lps(vertices - 1.0), triangles


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def phantom_timings(runs: int) -> list[float]:
    """Wall time of generating the synthetic head phantom (goal: under 2 s)."""
    from imaging.phantom import make_phantom

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        make_phantom()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=int, default=200_000)
    args = parser.parse_args()
    phantom = phantom_timings(args.runs)
    print(
        f"synthetic phantom generation: median {percentile(phantom, 50):.2f} s, p99 {percentile(phantom, 99):.2f} s "
        f"over {args.runs} runs (goal < 2 s: {'met' if percentile(phantom, 99) < 2.0 else 'MISSED'})"
    )
    data_dir = os.environ.get("SCRUBIN_DATA_DIR")
    if not data_dir or not (Path(data_dir) / DATASET).is_dir():
        print(f"skipped: set SCRUBIN_DATA_DIR to the shared data folder (needs {DATASET})")
        return
    folder = Path(data_dir) / DATASET
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    ours_cmd = [
        str(REPO / ".venv/bin/scrubin"),
        "prepare",
        str(folder),
        "--out",
        str(work / "ours"),
        "--segments",
        "skin",
        "--budget",
        str(args.budget),
    ]
    vtk_cmd = [
        sys.executable,
        str(REPO / "bench/vtk_user_pipeline.py"),
        str(folder),
        str(work / "vtk.ply"),
        str(args.budget),
    ]
    timed_run(ours_cmd)  # warm the file cache for both
    runs: dict[str, list[tuple[float, float]]] = {"scrubin": [], "vtk": []}
    for i in range(args.runs):
        for name, cmd in (
            (("scrubin", ours_cmd), ("vtk", vtk_cmd)) if i % 2 == 0 else (("vtk", vtk_cmd), ("scrubin", ours_cmd))
        ):
            wall, rss, _ = timed_run(cmd)
            runs[name].append((wall, rss))
            print(f"run {i + 1} {name:8s} wall {wall:6.2f} s  peak RSS {rss:7.0f} MiB", flush=True)

    from imaging.mesh_io import read_ply
    from imaging.surface_distance import surface_distance

    ref_v, ref_t = reference_surface(folder)
    ours_v, ours_t = read_ply(work / "ours" / "meshes" / "skin.ply")
    import open3d as o3d

    vtk_mesh = o3d.io.read_triangle_mesh(str(work / "vtk.ply"))
    vtk_v, vtk_t = np.asarray(vtk_mesh.vertices), np.asarray(vtk_mesh.triangles)
    fidelity = {
        "scrubin": surface_distance(ours_v, ours_t, ref_v, ref_t),
        "vtk": surface_distance(vtk_v, vtk_t, ref_v, ref_t),
    }
    summary = {}
    print(
        f"\nbti_demohead_dicom (512x512x186), skin model, budget {args.budget:,} triangles, {args.runs} runs each, {os.cpu_count()} cores"
    )
    print(
        f"{'pipeline':10s} {'median s':>9s} {'p99 s':>7s} {'min s':>7s} {'peak MiB':>9s} {'triangles':>10s} {'MSSD mm':>8s} {'HD95 mm':>8s}"
    )
    triangles = {"scrubin": len(ours_t), "vtk": len(vtk_t)}
    for name, values in runs.items():
        walls = [w for w, _ in values]
        rss = max(r for _, r in values)
        summary[name] = {
            "median_s": percentile(walls, 50),
            "p99_s": percentile(walls, 99),
            "min_s": min(walls),
            "peak_rss_mib": rss,
            "triangles": triangles[name],
            "mssd_mm": fidelity[name].mean_symmetric_mm,
            "hd95_mm": fidelity[name].hausdorff95_mm,
            "walls_s": walls,
        }
        s = summary[name]
        print(
            f"{name:10s} {s['median_s']:9.2f} {s['p99_s']:7.2f} {s['min_s']:7.2f} {rss:9.0f} {triangles[name]:10,} {s['mssd_mm']:8.3f} {s['hd95_mm']:8.2f}"
        )
    ratio = summary["vtk"]["median_s"] / summary["scrubin"]["median_s"]
    print(f"\nspeed-up (VTK median / scrubin median): {ratio:.1f}x")
    print(
        f"goal: scrubin <= 3.0 s wall ({'met' if summary['scrubin']['p99_s'] <= 3.0 else 'MISSED'} at p99, "
        f"{'met' if summary['scrubin']['median_s'] <= 3.0 else 'MISSED'} at median), peak < 2048 MiB "
        f"({'met' if summary['scrubin']['peak_rss_mib'] < 2048 else 'MISSED'}), MSSD <= 0.5 mm "
        f"({'met' if summary['scrubin']['mssd_mm'] <= 0.5 else 'MISSED'})"
    )
    summary_out = {"ratio_vtk_over_scrubin": ratio, "phantom_s": phantom, **summary}
    (RESULTS / "prepare.json").write_text(json.dumps(summary_out, indent=2))
    plot(summary, RESULTS / "prepare.png")
    print(f"wrote {RESULTS / 'prepare.json'} and {RESULTS / 'prepare.png'}")


def plot(summary: dict[str, dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    axes[0].boxplot([summary[n]["walls_s"] for n in names], tick_labels=names)
    axes[0].axhline(3.0, color="red", linestyle="--", label="goal 3 s")
    axes[0].set_ylabel("wall time per run (s)")
    axes[0].legend()
    axes[1].bar(names, [summary[n]["peak_rss_mib"] for n in names], color=["tab:blue", "tab:orange"])
    axes[1].axhline(2048, color="red", linestyle="--")
    axes[1].set_ylabel("peak RSS (MiB)")
    axes[2].bar(names, [summary[n]["mssd_mm"] for n in names], color=["tab:blue", "tab:orange"])
    axes[2].axhline(0.5, color="red", linestyle="--")
    axes[2].set_ylabel("mean symmetric surface distance (mm)")
    fig.suptitle("CT to headset skin model: bti_demohead_dicom 512x512x186")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
