"""Failure-detection benchmark: is a wrong pose ever reported as ``tracking``?

A fresh :class:`registration.Tracker` runs over an adversarial suite of simulated
512x512 AHAT-like depth frames and every frame's status is checked against the true
target registration error (TRE) at a deep target:

* wrong start: the true pose of frame 0 composed with a 30 to 180 degree rotation about
  the model centroid (random axes, five seeds) and a 20 mm translation;
* flat views: a plate where the face would be (head model), and a plane model;
* symmetric views: a sphere and a cylinder (rotation about their axis is unobservable);
* drapes and hands only: the model's pixels blanked from the start, and after tracking;
* empty frames: all-zero and all-NaN depth, no points, NaN points, zero points;
* a different head: the tracker holds the model, the frames see another head (the CT
  ``dicom2stl_head`` with SCRUBIN_DATA_DIR, else a differently proportioned synthetic
  head) started with the two faces aligned; that alignment is the "truth";
* a control: normal tracking from the correct start.

Goal: zero frames reported as tracking while the TRE exceeds 3 mm. Side by side, on the
same estimates, the naive Open3D-style rule (fitness >= 0.6 and inlier RMSE <= 3.5 mm).

    SCRUBIN_DATA_DIR=/work/shared/data .venv/bin/python bench/bench_failure_detection.py

The model is the one of bench_tracking (CT skin from ``scrubin prepare``, else the
synthetic head of the tests). Writes bench/results/failure_detection.{json,png}.
"""

from __future__ import annotations

import os

# Single-threaded BLAS as in the other benches: spin-waits add jitter on a busy 2-core box.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tracking import RESULTS, load_model, prepared_skin  # noqa: E402  (adds ROOT and tests/ to sys.path)
from registration_fixtures import about, head_mesh, perturbation, plane_mesh  # noqa: E402

from registration import Status, SurfaceModel, Tracker  # noqa: E402
from registration.depth import DepthFrame  # noqa: E402
from registration.frames import F64, transform_points  # noqa: E402
from registration.simulator import HeadsetSimulator, NoiseModel, SimFrame  # noqa: E402

TRE_LIMIT_MM = 3.0
NAIVE_FITNESS = 0.6  # the usual reading of Open3D's RegistrationResult
NAIVE_RMSE_MM = 3.5
ANGLES_DEG = (30.0, 60.0, 90.0, 120.0, 180.0)
SEEDS = (0, 1, 2, 3, 4)
N_FRAMES = 60  # control sequence; the other runs use slices of it or 30-40 frames
COLOURS = {Status.TRACKING: "tab:green", Status.DEGRADED: "tab:orange", Status.LOST: "tab:red"}


@dataclass
class Step:
    frame: DepthFrame | F64  # what the tracker sees
    timestamp_ns: int
    T_true: F64  # T_sensor_model that maps the target to where it truly is


@dataclass
class Run:
    scenario: str
    label: str
    model: SurfaceModel
    start: F64
    steps: list[Step]
    target: F64  # deep target, model mm


def deep_target(model: SurfaceModel, sim: HeadsetSimulator) -> F64:
    """The target of bench_tracking: the model's first target, else 70 mm under the face."""
    out: F64 = model.targets[0].position_mm if model.targets else sim.focus - 40.0 * sim.view_dir
    return out


def steps_of(frames: list[SimFrame], align: F64 | None = None) -> list[Step]:
    A = np.eye(4) if align is None else align
    return [Step(f.depth, f.timestamp_ns, f.T_sensor_model @ A) for f in frames]


def blank_model(f: SimFrame) -> DepthFrame:
    """The frame with every pixel that sees the model removed: drapes, hands, table."""
    d = f.depth
    return DepthFrame(np.where(f.model_mask, 0, d.depth).astype(d.depth.dtype), d.intrinsics, d.depth_unit_mm)


# ------------------------------------------------------------------ scenarios
def control_and_wrong_starts(model: SurfaceModel, frames: list[SimFrame], target: F64) -> Iterator[Run]:
    T0 = frames[0].T_sensor_model
    yield Run("control (true start)", "control", model, T0, steps_of(frames), target)
    for angle in ANGLES_DEG:
        for seed in SEEDS:
            wrong = T0 @ about(perturbation(angle, 20.0, seed), model.centroid)
            yield Run(
                f"wrong start {angle:.0f} deg", f"{angle:.0f}deg s{seed}", model, wrong, steps_of(frames[:30]), target
            )


def occluders_only(model: SurfaceModel, frames: list[SimFrame], target: F64) -> Iterator[Run]:
    T0 = frames[0].T_sensor_model
    steps = [Step(blank_model(f), f.timestamp_ns, f.T_sensor_model) for f in frames[:30]]
    yield Run("drapes+hands only", "from start", model, T0, steps, target)
    hidden = steps_of(frames[:15]) + [Step(blank_model(f), f.timestamp_ns, f.T_sensor_model) for f in frames[15:]]
    yield Run("head hidden after 15", "after tracking", model, T0, hidden, target)


def empty_frames(model: SurfaceModel, frames: list[SimFrame], target: F64) -> Iterator[Run]:
    """5 real frames, 10 empty ones of one kind, 5 real ones: loss and recovery."""
    K = frames[0].depth.intrinsics
    shape = (K.height, K.width)
    kinds: dict[str, DepthFrame | F64] = {
        "zero depth": DepthFrame(np.zeros(shape, np.uint16), K),
        "NaN depth": DepthFrame(np.full(shape, np.nan, np.float32), K),
        "no points": np.zeros((0, 3)),
        "NaN points": np.full((2000, 3), np.nan),
        "zero points": np.zeros((2000, 3)),
    }
    for name, empty in kinds.items():
        steps = steps_of(frames[:20])
        for s in steps[5:15]:
            s.frame = empty
        yield Run("empty frames", name, model, frames[0].T_sensor_model, steps, target)


def flat_views(model: SurfaceModel, sim: HeadsetSimulator, frames: list[SimFrame], target: F64) -> Iterator[Run]:
    # A plate across the face, 15 mm behind its most anterior point, seen on the head's path.
    side = np.cross(sim.up, sim.view_dir)
    V, F = plane_mesh(300.0, 150)
    centre = sim.focus + 15.0 * sim.view_dir
    plate = SurfaceModel.from_mesh(centre + V[:, :1] * side + V[:, 1:2] * sim.up, F)
    psim = HeadsetSimulator(plate, occluders=False, seed=11)
    plate_frames = [psim.render(f.T_sensor_model, f.timestamp_ns) for f in frames[:30]]
    yield Run("flat: plate at face", "head model", model, frames[0].T_sensor_model, steps_of(plate_frames), target)
    V, F = plane_mesh(300.0, 150)
    plane = SurfaceModel.from_mesh(V, F, targets={"lesion": [40.0, 30.0, -60.0]})
    yield sim_run("flat: plane model", "plane", plane, 30, view_dir=np.array([0.0, 0.0, 1.0]), up=np.array([0, 1.0, 0]))


def symmetric_views() -> Iterator[Run]:
    import open3d as o3d

    sphere = o3d.geometry.TriangleMesh.create_sphere(90.0, resolution=80)
    lesion: dict[str, object] = {"lesion": [40.0, -40.0, 40.0]}  # off the centre: rotation errors show
    model = SurfaceModel.from_mesh(np.asarray(sphere.vertices), np.asarray(sphere.triangles), targets=lesion)
    yield sim_run("symmetric: sphere", "sphere r90", model, 30)
    cyl = o3d.geometry.TriangleMesh.create_cylinder(80.0, 260.0, resolution=160, split=80)
    model = SurfaceModel.from_mesh(np.asarray(cyl.vertices), np.asarray(cyl.triangles), targets=lesion)
    yield sim_run("symmetric: cylinder", "cylinder r80", model, 30)


def sim_run(scenario: str, label: str, model: SurfaceModel, n: int, **view: Any) -> Run:
    """Frames of ``model`` itself, no occluders, tracked from the true start."""
    sim = HeadsetSimulator(model, occluders=False, seed=5, **view)
    frames = list(sim.frames(n))
    return Run(scenario, label, model, frames[0].T_sensor_model, steps_of(frames), deep_target(model, sim))


def other_heads(model: SurfaceModel, sim: HeadsetSimulator, target: F64) -> Iterator[Run]:
    """Frames of another head, with and without drapes and hands; the "truth" is its
    simulated pose composed with the model -> other-head alignment of the two faces."""
    other, source = load_other_head()
    for occluders in (True, False):
        osim = HeadsetSimulator(other, noise=NoiseModel(sigma_mm=1.0), occluders=occluders, seed=13)
        A = np.eye(4)  # model -> other-head coordinates: the two faces (focus points) coincide
        A[:3, 3] = osim.focus - sim.focus
        steps = steps_of(list(osim.frames(40)), align=A)
        label = f"{source}, {'with' if occluders else 'no'} occluders"
        yield Run("different head", label, model, steps[0].T_true, steps, target)


def load_other_head() -> tuple[SurfaceModel, str]:
    data = os.environ.get("SCRUBIN_DATA_DIR")
    out = (
        prepared_skin(Path(data) / "ct" / "dicom2stl_head" / "ct_example.nii.gz", "other_head_model") if data else None
    )
    if out is not None:
        return SurfaceModel.from_folder(out, prepare_alignment=False), "dicom2stl_head CT"
    V, F = head_mesh(224)
    c = V.mean(axis=0)
    return SurfaceModel.from_mesh(c + (V - c) * np.array([0.85, 1.1, 1.0]), F), "synthetic x0.85/1.1/1.0"


# ------------------------------------------------------------------ running
def tre_mm(T: F64, T_true: F64, target: F64) -> float:
    return float(np.linalg.norm(transform_points(T, target[None]) - transform_points(T_true, target[None])))


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def track(run: Run) -> list[dict[str, Any]]:
    tracker = Tracker(run.model, run.start)
    t_first = run.steps[0].timestamp_ns
    out = []
    for k, s in enumerate(run.steps):
        t0 = time.perf_counter()
        est = tracker.update(s.frame, s.timestamp_ns)
        ms = (time.perf_counter() - t0) * 1e3
        out.append(
            {
                "scenario": run.scenario,
                "run": run.label,
                "frame": k,
                "t_s": (s.timestamp_ns - t_first) * 1e-9,
                "status": str(est.status),
                "tre_mm": tre_mm(est.T_sensor_model, s.T_true, run.target),
                "fitness": est.fitness,
                "rmse_mm": finite(est.rmse_mm),
                "n_correspondences": est.n_correspondences,
                "naive_good": bool(est.fitness >= NAIVE_FITNESS and est.rmse_mm <= NAIVE_RMSE_MM),
                "latency_ms": ms,
                "reasons": list(est.reasons),
            }
        )
    return out


def build_runs(model: SurfaceModel) -> list[Run]:
    sim = HeadsetSimulator(model, noise=NoiseModel(sigma_mm=1.0), seed=7)
    frames = list(sim.frames(N_FRAMES))
    target = deep_target(model, sim)
    runs = list(control_and_wrong_starts(model, frames, target))
    runs += list(flat_views(model, sim, frames, target))
    runs += list(symmetric_views())
    runs += list(occluders_only(model, frames, target))
    runs += list(empty_frames(model, frames, target))
    runs += list(other_heads(model, sim, target))
    return runs


# ------------------------------------------------------------------ report
def summarise(recs: list[dict[str, Any]]) -> dict[str, Any]:
    tracking = [r for r in recs if r["status"] == Status.TRACKING]
    tre = np.array([r["tre_mm"] for r in tracking])
    ms = np.array([r["latency_ms"] for r in recs])
    return {
        "frames": len(recs),
        "tracking": len(tracking),
        "wrong_tracking": sum(r["tre_mm"] > TRE_LIMIT_MM for r in tracking),
        "naive_wrong": sum(r["naive_good"] and r["tre_mm"] > TRE_LIMIT_MM for r in recs),
        "naive_good": sum(r["naive_good"] for r in recs),
        "tre_p50": float(np.percentile(tre, 50)) if len(tre) else None,
        "tre_p95": float(np.percentile(tre, 95)) if len(tre) else None,
        "ms_p50": float(np.percentile(ms, 50)),
        "ms_p99": float(np.percentile(ms, 99)),
    }


def mm(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def row(name: str, s: dict[str, Any]) -> str:
    return (
        f"{name:26s} {s['frames']:6d} {s['tracking']:6d} {s['wrong_tracking']:8d} {s['naive_good']:6d} "
        f"{s['naive_wrong']:8d} {mm(s['tre_p50']):>8s} {mm(s['tre_p95']):>8s} {s['ms_p50']:7.2f} {s['ms_p99']:7.2f}"
    )


def report(records: list[dict[str, Any]]) -> dict[str, Any]:
    scenarios = list(dict.fromkeys(r["scenario"] for r in records))
    print(
        f"{'scenario':26s} {'frames':>6s} {'track':>6s} {'track>3mm':>8s} {'naive':>6s} {'naive>3mm':>8s} "
        f"{'TRE p50':>8s} {'TRE p95':>8s} {'ms p50':>7s} {'ms p99':>7s}"
    )
    summary = {}
    for name in scenarios:
        summary[name] = summarise([r for r in records if r["scenario"] == name])
        print(row(name, summary[name]))
    adversarial = [r for r in records if not r["scenario"].startswith("control")]
    summary["total adversarial"] = summarise(adversarial)
    summary["total all"] = summarise(records)
    print(row("total adversarial", summary["total adversarial"]))
    print(row("total (with control)", summary["total all"]))
    print("(track = frames scrubin reports tracking; track>3mm = of those, TRE > 3 mm; naive = frames with")
    print(f" fitness >= {NAIVE_FITNESS} and RMSE <= {NAIVE_RMSE_MM} mm; TRE p50/p95 over scrubin's tracking frames)")
    ctl = summary[scenarios[0]]
    print(
        f"control: {ctl['tracking']}/{ctl['frames']} frames tracking ({100.0 * ctl['tracking'] / ctl['frames']:.0f} %)"
    )
    for r in records:
        if r["status"] == Status.TRACKING and r["tre_mm"] > TRE_LIMIT_MM:
            print(
                f"FAILURE {r['scenario']} / {r['run']} frame {r['frame']}: TRE {r['tre_mm']:.2f} mm, "
                f"fitness {r['fitness']:.3f}, rmse {mm(r['rmse_mm'])} mm, n {r['n_correspondences']}, reasons {r['reasons']}"
            )
    met = summary["total all"]["wrong_tracking"] == 0
    print(f"goal (0 wrong frames reported as tracking): {'MET' if met else 'NOT MET'}")
    return summary


# ------------------------------------------------------------------ plot
def plot(records: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(18, 9))
    grid = fig.add_gridspec(1, 3, width_ratios=[1.4, 1.2, 0.8])
    runs = list(dict.fromkeys((r["scenario"], r["run"]) for r in records))
    plot_tre(fig.add_subplot(grid[0]), records, runs)
    plot_status(fig.add_subplot(grid[1]), records, runs)
    plot_latency(fig.add_subplot(grid[2]), records)
    fig.tight_layout()
    out = RESULTS / "failure_detection.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_tre(ax: Any, records: list[dict[str, Any]], runs: list[tuple[str, str]]) -> None:
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(s for s, _ in runs))
    cmap = plt.get_cmap("tab20")
    for s, label in runs:
        recs = [r for r in records if (r["scenario"], r["run"]) == (s, label)]
        c = cmap(scenarios.index(s) % 20)
        tre = np.maximum([r["tre_mm"] for r in recs], 1e-3)
        first = label == next(lab for sc, lab in runs if sc == s)
        ax.plot([r["frame"] for r in recs], tre, color=c, lw=0.9, label=s if first else None)
        k = [i for i, r in enumerate(recs) if r["status"] == Status.TRACKING]
        ax.plot([recs[i]["frame"] for i in k], tre[k], "o", ms=2.5, color=c)
    ax.axhline(TRE_LIMIT_MM, color="k", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("frame in run (45 Hz)")
    ax.set_ylabel("TRE at the deep target [mm] (dots: reported tracking)")
    ax.set_title("TRE over time")
    ax.legend(fontsize=7, ncol=2)


def plot_status(ax: Any, records: list[dict[str, Any]], runs: list[tuple[str, str]]) -> None:
    for y, (s, label) in enumerate(runs):
        recs = [r for r in records if (r["scenario"], r["run"]) == (s, label)]
        for status, colour in COLOURS.items():
            bars = [(r["frame"], 1) for r in recs if r["status"] == status]
            ax.broken_barh(bars, (y - 0.4, 0.8), color=colour, label=status if y == 0 else None)
        wrong = [r["frame"] + 0.5 for r in recs if r["status"] == Status.TRACKING and r["tre_mm"] > TRE_LIMIT_MM]
        ax.plot(wrong, [y] * len(wrong), "kx", ms=5)
    ax.set_yticks(range(len(runs)), [f"{s}: {lab}" for s, lab in runs], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("frame in run (x: tracking with TRE > 3 mm)")
    ax.set_title("status timeline")
    ax.legend(fontsize=7, loc="lower right")


def plot_latency(ax: Any, records: list[dict[str, Any]]) -> None:
    ms = np.array([r["latency_ms"] for r in records])
    bins = np.logspace(np.log10(max(ms.min(), 0.01)), np.log10(ms.max() * 1.01), 40)
    for status, colour in COLOURS.items():
        sel = [r["latency_ms"] for r in records if r["status"] == status]
        ax.hist(sel, bins=bins, color=colour, alpha=0.6, label=f"{status} ({len(sel)})")
    ax.set_xscale("log")
    ax.axvline(8.0, color="k", ls=":", lw=1)
    ax.set_xlabel("update() wall time [ms]")
    ax.set_ylabel("frames")
    ax.set_title("latency histogram")
    ax.legend(fontsize=7)


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, source = load_model(None)
    runs = build_runs(model)
    n = sum(len(r.steps) for r in runs)
    print(
        f"model: {source}, {len(model.vertices)} vertices; {len(runs)} runs, {n} frames "
        f"(model and frames ready in {time.perf_counter() - t0:.1f} s)"
    )
    print("different head: " + "; ".join(r.label for r in runs if r.scenario == "different head"))
    records = [rec for run in runs for rec in track(run)]
    summary = report(records)
    out = RESULTS / "failure_detection.json"
    meta = {"model": source, "tre_limit_mm": TRE_LIMIT_MM, "naive_rule": [NAIVE_FITNESS, NAIVE_RMSE_MM]}
    out.write_text(json.dumps({**meta, "summary": summary, "frames": records}, indent=1))
    print(f"json: {out}\nplot: {plot(records)}\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
