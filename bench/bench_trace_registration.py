"""Pointer-trace registration benchmark: scrubin's navigation workflow vs plain Open3D.

Four parts, each run side by side on the same data in one process:

1. *Markerless* on synthetic traces over the real CT skins (bti_demohead, dicom2stl_head)
   and a skull-like bone mesh (dicom2stl_head bone, triangles flipped at random, CT frame
   moved 1.4 m from the origin), in random tracker frames 1.5 m from the tracker origin:
   sparse dots (20-200, 3-13 mm apart) and continuous sweeps (1,000-4,000 points at
   0.2-0.4 mm) over the upper face, 0.5 mm noise, points lifted 10-40 mm (0-1 of the
   dots, 1-5 of a sweep).
   Success: accepted (status tracking) with the deep target (model centroid) within
   5 mm; a *wrong trusted* result is accepted with the target 5 mm or more off.
   Competitor: Open3D's global registration recipe (voxel down-sampling, normals, FPFH,
   RANSAC on feature matches with mutual filter, then point-to-plane ICP), as in
   bench_initial_alignment.py, at 4 mm voxels.
2. *Landmarks + trace*: 3-4 face landmarks touched with 5-10 mm error, then the trace.
   Competitor: the paired-point fit followed by Open3D point-to-plane ICP.
3. *Refinement* from the truth moved by 5 degrees and 10 mm vs Open3D point-to-plane ICP
   started at the truth itself.
4. The real UCL pelvis phantom pointer scan (shared/data/pointer): from its 4 fiducials,
   and markerless, against the ICP-refined reference transform.

    SCRUBIN_DATA_DIR=/work/shared/data .venv/bin/python bench/bench_trace_registration.py [--cases 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_initial_alignment import plain_open3d  # noqa: E402
from bench_tracking import prepared_skin  # noqa: E402
from pointer_data import data_dir, load_pelvis  # noqa: E402

from registration import SurfaceModel, SurfaceTrace, register_trace  # noqa: E402
from registration.frames import F64, invert  # noqa: E402
from registration.paired_point import kabsch  # noqa: E402
from registration.refine import refine  # noqa: E402
from registration.trace_simulator import (  # noqa: E402
    face_landmarks,
    moved,
    simulate_trace,
    target_error_mm,
    touched_landmarks,
)

RESULTS = ROOT / "bench" / "results"
SUCCESS_MM = 5.0


@dataclass(frozen=True)
class Case:
    model: str
    kind: str
    n: int
    ours_err: float
    ours_status: str
    ours_ms: float
    o3d_err: float
    o3d_ms: float
    reasons: str = ""


def skull_like(model: SurfaceModel, seed: int) -> SurfaceModel:
    """The model's mesh with half its triangles flipped (no consistent orientation) and
    its frame moved 1.4 m from the origin, as a skull segmented from a scanner CT."""
    rng = np.random.default_rng(seed)
    F = model.triangles.copy()
    flip = rng.random(len(F)) < 0.5
    F[flip] = F[flip][:, ::-1]
    shift = np.array([600.0, -900.0, 900.0])  # |shift| ~ 1.4 m
    return SurfaceModel.from_mesh(model.vertices + shift, F)


def load_models(data: Path) -> dict[str, SurfaceModel]:
    out = {}
    for name, source, mesh in (
        ("bti skin", data / "ct" / "bti_demohead_dicom", "skin"),
        ("dicom2stl skin", data / "ct" / "dicom2stl_head" / "ct_example.nii.gz", "skin"),
    ):
        folder = prepared_skin(source, f"trace_{name.replace(' ', '_')}")
        if folder is None:
            raise SystemExit(f"scrubin prepare failed on {source}")
        out[name] = SurfaceModel.from_folder(folder, mesh=mesh)
    bone = _prepared_bone(data / "ct" / "dicom2stl_head" / "ct_example.nii.gz")
    out["skull (bone, mixed orientation, 1.4 m)"] = skull_like(bone, 0)
    return out


def _prepared_bone(source: Path) -> SurfaceModel:
    import subprocess

    out = RESULTS / "trace_dicom2stl_bone"
    exe = Path(sys.executable).with_name("scrubin")
    if not (out / "manifest.json").exists():
        cmd = [str(exe), "prepare", str(source), "--out", str(out), "--segments", "skin,bone"]
        subprocess.run(cmd, check=True, capture_output=True)
    return SurfaceModel.from_folder(out, mesh="bone")


# ------------------------------------------------------------------ competitors
def open3d_global(model: SurfaceModel, points: F64, voxel: float = 4.0) -> F64:
    """Open3D's global registration recipe (the same as bench_initial_alignment's) at 4 mm
    voxels for pointer-sized traces; returns T_sensor_model."""
    return plain_open3d(model, points, voxel)[0]


def open3d_icp(model: SurfaceModel, points: F64, T_sensor_model: F64, max_mm: float = 10.0) -> F64:
    """Open3D point-to-plane ICP from ``T_sensor_model``; returns T_sensor_model."""
    import open3d as o3d

    reg = o3d.pipelines.registration
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(model.vertices))
    dst.normals = o3d.utility.Vector3dVector(model.normals)
    res = reg.registration_icp(src, dst, max_mm, invert(T_sensor_model), reg.TransformationEstimationPointToPlane(),
                               reg.ICPConvergenceCriteria(max_iteration=60))  # fmt: skip
    return invert(np.asarray(res.transformation))


def timed(f: Callable[[], F64]) -> tuple[F64, float]:
    t0 = time.perf_counter()
    out = f()
    return out, (time.perf_counter() - t0) * 1e3


# ------------------------------------------------------------------ parts
def trace_case(model: SurfaceModel, seed: int) -> tuple[str, int, object]:
    rng = np.random.default_rng(seed)
    kind = "dots" if seed % 2 == 0 else "lines"
    n = int(rng.integers(20, 201)) if kind == "dots" else int(rng.integers(1000, 4001))
    # Touches are deliberate (a lifted one is rare); a sweep lifts off now and then.
    lifted = int(rng.integers(0, 2)) if kind == "dots" else int(rng.integers(1, 6))
    return kind, n, simulate_trace(model, kind, n, seed=seed, lifted=lifted)  # type: ignore[arg-type]


def markerless(models: dict[str, SurfaceModel], cases: int) -> list[Case]:
    out = []
    names = list(models)
    for i in range(cases):
        name = names[i % len(names)]
        model = models[name]
        kind, n, tr = trace_case(model, 1000 + i)
        target = model.centroid
        res, ms = timed(lambda m=model, t=tr: register_trace(m, SurfaceTrace(t.points_mm)))  # type: ignore[attr-defined]
        err = target_error_mm(res.T_sensor_model, tr.T_sensor_model, target)  # type: ignore[attr-defined]
        try:
            T_o3d, o3d_ms = timed(lambda m=model, t=tr: open3d_global(m, t.points_mm))  # type: ignore[attr-defined]
            o3d_err = target_error_mm(T_o3d, tr.T_sensor_model, target)  # type: ignore[attr-defined]
        except RuntimeError:  # too few points for features
            o3d_err, o3d_ms = float("inf"), float("nan")
        case = Case(name, kind, n, err, str(res.status), ms, o3d_err, o3d_ms, "; ".join(res.reasons)[:90])
        print(f"  {name:38s} {kind:5s} {n:5d}  ours {err:7.2f} mm {res.status!s:9s} {ms:6.0f} ms"
              f"   open3d {o3d_err:8.2f} mm {o3d_ms:7.0f} ms  {case.reasons}", flush=True)  # fmt: skip
        out.append(case)
    return out


def thinned(models: dict[str, SurfaceModel], cases: int) -> list[Case]:
    """Deliberately weak traces: 8-12 touches, or a sweep cut to a 25-35 mm patch. Where
    the data cannot decide, the only acceptable outcomes are right or not trusted."""
    out = []
    names = list(models)
    for i in range(cases):
        name = names[i % len(names)]
        model = models[name]
        rng = np.random.default_rng(4000 + i)
        if i % 2 == 0:
            tr = simulate_trace(model, "dots", int(rng.integers(8, 13)), seed=4000 + i, lifted=0)
            pts, kind = tr.points_mm, "few dots"
        else:
            tr = simulate_trace(model, "lines", 2000, seed=4000 + i, lifted=0)
            c = tr.points_mm[len(tr.points_mm) // 2]
            pts, kind = tr.points_mm[np.linalg.norm(tr.points_mm - c, axis=1) < rng.uniform(25.0, 35.0)], "small patch"
        res, ms = timed(lambda m=model, p=pts: register_trace(m, SurfaceTrace(p)))
        err = target_error_mm(res.T_sensor_model, tr.T_sensor_model, model.centroid)
        out.append(
            Case(
                name,
                kind,
                len(pts),
                err,
                str(res.status),
                ms,
                float("nan"),
                float("nan"),
                res.reasons[0][:60] if res.reasons else "",
            )
        )
    return out


def with_landmarks(models: dict[str, SurfaceModel], cases: int) -> list[Case]:
    out = []
    names = [n for n in models if "skull" not in n]  # the landmarks are face (skin) landmarks
    for i in range(cases):
        name = names[i % len(names)]
        model = models[name]
        kind, n, tr = trace_case(model, 2000 + i)
        marks = face_landmarks(model)
        keep = list(marks)[: 3 + i % 2]  # 3 or 4 landmarks
        touched = touched_landmarks({k: marks[k] for k in keep}, tr.T_sensor_model, (5.0, 10.0), 2000 + i)  # type: ignore[attr-defined]
        pairs = (np.array([marks[k] for k in keep]), np.array([touched[k] for k in keep]))
        target = model.centroid
        res, ms = timed(lambda m=model, t=tr, p=pairs: register_trace(m, SurfaceTrace(t.points_mm), p))  # type: ignore[attr-defined]
        err = target_error_mm(res.T_sensor_model, tr.T_sensor_model, target)  # type: ignore[attr-defined]
        T_o3d, o3d_ms = timed(lambda m=model, t=tr, p=pairs: open3d_icp(m, t.points_mm, kabsch(*p)))  # type: ignore[attr-defined]
        o3d_err = target_error_mm(T_o3d, tr.T_sensor_model, target)  # type: ignore[attr-defined]
        out.append(Case(name, kind, n, err, str(res.status), ms, o3d_err, o3d_ms, "; ".join(res.reasons)[:90]))
    return out


def refinement(models: dict[str, SurfaceModel], cases: int) -> list[Case]:
    out = []
    names = list(models)
    for i in range(cases):
        name = names[i % len(names)]
        model = models[name]
        kind, n, tr = trace_case(model, 3000 + i)
        target = model.centroid
        T_true = tr.T_sensor_model  # type: ignore[attr-defined]
        start = moved(T_true, 5.0, 10.0, target, 3000 + i)
        pts = tr.points_mm  # type: ignore[attr-defined]
        res, ms = timed(lambda m=model, p=pts, s=start: invert(refine(m, p, invert(s)).T_model_sensor))
        T_o3d, o3d_ms = timed(lambda m=model, p=pts, t=T_true: open3d_icp(m, p, t))
        out.append(Case(name, kind, n, target_error_mm(res, T_true, target), "", ms,
                        target_error_mm(T_o3d, T_true, target), o3d_ms))  # fmt: skip
    return out


def pelvis() -> dict[str, object]:
    folder = data_dir()
    if folder is None:
        return {"skipped": "no SCRUBIN_DATA_DIR/pointer/ucl_pelvis_phantom"}
    case = load_pelvis(folder)
    model = SurfaceModel.from_mesh(case.vertices_mm, case.triangles)
    ref = invert(case.T_ct_tracker_icp)
    out: dict[str, object] = {}
    for label, lm in (("fiducials + trace", (case.fiducials_ct_mm, case.fiducials_tracker_mm)), ("markerless", None)):
        register_trace(model, SurfaceTrace(case.scan_mm), lm)  # warm (first use builds caches)
        res, ms = timed(lambda lm=lm: register_trace(model, SurfaceTrace(case.scan_mm), lm))  # type: ignore[misc]
        err = target_error_mm(res.T_sensor_model, ref, model.centroid)
        out[label] = {"status": str(res.status), "vs_icp_reference_mm": err, "ms": ms,
                      "residual_rms_mm": res.trace_residual_rms_mm, "rejected": res.rejected, "verdict": res.verdict}  # fmt: skip
        print(f"  pelvis {label:18s} {res.status!s:9s} {err:5.2f} mm from the ICP reference, "
              f"residual {res.trace_residual_rms_mm:.2f} mm RMS, {res.rejected} rejected, {ms:.0f} ms")  # fmt: skip
    T_o3d, o3d_ms = timed(lambda: open3d_icp(model, case.scan_mm, invert(case.T_ct_tracker_fiducial)))
    out["open3d icp from fiducials"] = {
        "vs_icp_reference_mm": target_error_mm(T_o3d, ref, model.centroid),
        "ms": o3d_ms,
    }
    print(
        f"  pelvis open3d ICP from the fiducials: {target_error_mm(T_o3d, ref, model.centroid):.2f} mm, {o3d_ms:.0f} ms"
    )
    return out


# ------------------------------------------------------------------ report
def summary(title: str, cases: list[Case], *, trusted: bool) -> dict[str, float]:
    ours_ok = np.array([c.ours_err < SUCCESS_MM and (not trusted or c.ours_status == "tracking") for c in cases])
    wrong = sum(c.ours_status == "tracking" and c.ours_err >= SUCCESS_MM for c in cases)
    o3d_ok = np.array([c.o3d_err < SUCCESS_MM for c in cases])
    ours_err = np.array([c.ours_err for c in cases])
    o3d_err = np.array([c.o3d_err for c in cases])
    ms = np.array([c.ours_ms for c in cases])
    o3d_ms = np.array([c.o3d_ms for c in cases])
    med_ok = float(np.median(ours_err[ours_ok])) if ours_ok.any() else float("nan")
    med_o3d = float(np.median(o3d_err[o3d_ok])) if o3d_ok.any() else float("nan")
    row = {
        "cases": len(cases),
        "success": float(ours_ok.mean()),
        "wrong_trusted": int(wrong),
        "median_deep_tre_mm": float(np.median(ours_err)),
        "median_deep_tre_success_mm": med_ok,
        "ms_p50": float(np.percentile(ms, 50)),
        "ms_p95": float(np.percentile(ms, 95)),
        "open3d_success": float(o3d_ok.mean()),
        "open3d_median_deep_tre_mm": float(np.median(o3d_err)),
        "open3d_median_deep_tre_success_mm": med_o3d,
        "open3d_ms_p50": float(np.nanpercentile(o3d_ms, 50)),
        "speed_ratio_p50": float(np.nanpercentile(o3d_ms, 50) / np.percentile(ms, 50)),
    }
    print(f"\n{title}")
    print(f"  scrubin: success {row['success']:.0%} ({int(ours_ok.sum())}/{len(cases)}), wrong results trusted "
          f"{wrong}, median deep TRE {row['median_deep_tre_mm']:.2f} mm, time p50 {row['ms_p50']:.0f} ms, "
          f"p95 {row['ms_p95']:.0f} ms")  # fmt: skip
    print(f"  open3d:  success {row['open3d_success']:.0%}, median deep TRE {row['open3d_median_deep_tre_mm']:.2f} mm,"
          f" time p50 {row['open3d_ms_p50']:.0f} ms ({row['speed_ratio_p50']:.1f}x scrubin's)")  # fmt: skip
    return row


def plot(parts: dict[str, list[Case]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(parts) + 1, figsize=(5 * (len(parts) + 1), 4))
    for ax, (title, cases) in zip(axes, parts.items(), strict=False):
        ours = np.clip([c.ours_err for c in cases], 1e-2, 1e3)
        o3d = np.clip([c.o3d_err for c in cases], 1e-2, 1e3)
        bins = np.logspace(-2, 3, 40)
        ax.hist(ours, bins=bins, alpha=0.6, label="scrubin")
        ax.hist(o3d, bins=bins, alpha=0.6, label="Open3D")
        ax.axvline(SUCCESS_MM, color="k", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("deep-target error [mm]")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    ax = axes[-1]
    for title, cases in parts.items():
        ms = np.sort([c.ours_ms for c in cases])
        ax.plot(ms, np.linspace(0, 1, len(ms)), label=f"scrubin {title.split(':')[0]}")
    ax.set_xscale("log")
    ticks = [10, 30, 100, 300, 1000, 3000]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("wall time per case [ms]")
    ax.set_ylabel("CDF")
    ax.axvline(500, color="k", ls=":", lw=1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = RESULTS / "trace_registration.png"
    fig.savefig(out, dpi=100)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=60, help="markerless cases (landmark and refinement: half)")
    args = ap.parse_args()
    data = Path(os.environ.get("SCRUBIN_DATA_DIR", ROOT.parent / "shared" / "data"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    models = load_models(data)
    for m in models.values():  # caches and compiled kernels are built before any timing
        m.prepare_alignment()
        register_trace(m, SurfaceTrace(simulate_trace(m, "dots", 40, seed=1).points_mm))
    print(f"models: {', '.join(f'{k} ({len(m.vertices)} vertices)' for k, m in models.items())}")
    print("markerless, per case:")
    parts = {
        "markerless (trace only)": markerless(models, args.cases),
        "landmarks (3-4, 5-10 mm) + trace": with_landmarks(models, max(args.cases // 2, 1)),
        "refinement from truth + 5 deg / 10 mm": refinement(models, max(args.cases // 2, 1)),
    }
    rows = {t: summary(t, c, trusted=not t.startswith("refinement")) for t, c in parts.items()}
    weak = thinned(models, max(args.cases // 3, 1))
    wrong = sum(c.ours_status == "tracking" and c.ours_err >= SUCCESS_MM for c in weak)
    trusted = sum(c.ours_status == "tracking" for c in weak)
    print(f"\nthinned traces (8-12 dots, or a 25-35 mm patch): {len(weak)} cases, {trusted} trusted, "
          f"{wrong} trusted while {SUCCESS_MM:.0f} mm or more off (goal 0)")  # fmt: skip
    rows["thinned"] = {"cases": len(weak), "trusted": trusted, "wrong_trusted": wrong}
    print("\nreal pointer scan (UCL pelvis phantom):")
    rows["pelvis"] = pelvis()  # type: ignore[assignment]
    (RESULTS / "trace_registration.json").write_text(json.dumps(rows, indent=2, default=float))
    print(f"\nfigures: {RESULTS / 'trace_registration.json'}\nplot: {plot(parts)}")


if __name__ == "__main__":
    main()
