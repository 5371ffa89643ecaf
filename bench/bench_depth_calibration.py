"""Depth-bias calibration benchmark on the real HoloLens 2 scans of the BTI demo head.

Protocol (issue 14, item 6): estimate the correction on views 1-4, apply it to the other
scans, and see whether their independent registrations agree at the face centre (goal:
within 3 mm). There is no ground-truth pose; the scans share the headset's world frame.

* Camera centres: each view is one AHAT frame whose ranges are whole millimetres from its
  camera centre (registration/ray_centre.py finds it). The fused ``scanned_head_cropped``
  has no single centre, so no per-ray correction can be applied to it: it is reported
  uncorrected, apart (half of it is view 1, a training view, anyway).
* The correction: scrubin's multi-view estimate (``estimate_depth_calibration``: one
  patient pose for all training views, each shifted along its own rays). Side by side, the
  plain Open3D way: a per-scan similarity ICP (point-to-point, ``with_scaling=True``) on
  each training view from the same start, its mean scale applied the same way.
* Honest checks: (1) which scaling centre explains the data (camera centres, the world
  origin, each scan's centroid), and whether an offset adds anything, judged on views
  5-8 placed by the pose fitted on views 1-4 only; (2) the face-centre spread of views 5-8
  before / after, each refined from its own markerless start on its own points, and
  plain Open3D global registration (FPFH + RANSAC + ICP) of the same raw scans.

    SCRUBIN_DATA_DIR=/work/shared/data .venv/bin/python bench/bench_depth_calibration.py [--model DIR]

Writes bench/results/depth_calibration.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_initial_alignment import SCANS, face_centre, plain_open3d, prepare_model  # noqa: E402

from registration import SurfaceModel, initial_alignment  # noqa: E402
from registration.calibration import (  # noqa: E402
    CalibrationConfig,
    CalibrationResult,
    CalibrationView,
    DepthCalibration,
    estimate_depth_calibration,
    held_out_residuals,
)
from registration.frames import F64, MM_PER_M, invert, pose_difference, transform_points  # noqa: E402
from registration.icp import point_to_plane  # noqa: E402
from registration.ray_centre import ray_centre, world_scan_view  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TRAIN = [f"views/{i}.ply" for i in (1, 2, 3, 4)]
TEST = [f"views/{i}.ply" for i in (5, 6, 7, 8)]
FUSED = SCANS[0]
GOAL_MM = 3.0


def load_scans(data: Path) -> dict[str, F64]:
    import open3d as o3d

    folder = data / "depth" / "bti_demohead_hololens2"
    return {n: np.asarray(o3d.io.read_point_cloud(folder / n).points) * MM_PER_M for n in SCANS}


def spread(centres: F64) -> tuple[float, float]:
    """Max pairwise distance and RMS distance about the mean (mm)."""
    pair = max(float(np.linalg.norm(a - b)) for a in centres for b in centres)
    return pair, float(np.sqrt(np.mean(np.sum((centres - centres.mean(axis=0)) ** 2, axis=1))))


def with_centre(view: CalibrationView, centre: F64) -> CalibrationView:
    """The same frame, scaled about another assumed centre (world origin, scan centroid)."""
    world = transform_points(view.T_world_sensor, view.points_sensor)
    T = np.eye(4)
    T[:3, 3] = centre
    return CalibrationView(world - centre, T, invert(T) @ view.T_world_sensor @ view.T_sensor_model)


def centre_hypotheses(model: SurfaceModel, views: dict[str, CalibrationView]) -> list[dict[str, Any]]:
    """Fit on views 1-4 under each assumption (scaling centre, model); judge on views 5-8
    placed by that fit, and fit views 5-8 alone to see whether the values agree."""

    def at_centroid(v: CalibrationView) -> CalibrationView:
        return with_centre(v, transform_points(v.T_world_sensor, v.points_sensor).mean(axis=0))

    def at_origin(v: CalibrationView) -> CalibrationView:
        return with_centre(v, np.zeros(3))

    def at_camera(v: CalibrationView) -> CalibrationView:
        return v

    cases: list[tuple[str, Callable[[CalibrationView], CalibrationView], str, CalibrationConfig]] = [
        ("camera centres (ray_centre)", at_camera, "no correction", CalibrationConfig(fit_scale=False)),
        ("camera centres (ray_centre)", at_camera, "scale", CalibrationConfig()),
        ("camera centres (ray_centre)", at_camera, "scale + offset", CalibrationConfig(fit_offset=True)),
        ("camera centres (ray_centre)", at_camera, "offset", CalibrationConfig(fit_scale=False, fit_offset=True)),
        ("world origin", at_origin, "scale", CalibrationConfig()),
        ("each scan's centroid", at_centroid, "scale", CalibrationConfig()),
    ]
    rows = []
    for cname, move, mname, cfg in cases:
        fit = estimate_depth_calibration(model, [move(views[n]) for n in TRAIN], cfg)
        other = estimate_depth_calibration(model, [move(views[n]) for n in TEST], cfg)
        held = [held_out_residuals(model, move(views[n]), fit.T_world_model, fit.calibration) for n in TEST]
        rows.append({
            "centre": cname, "model": mname, "scale": fit.calibration.scale, "offset_mm": fit.calibration.offset_mm,
            "scale_from_5_8": other.calibration.scale, "offset_from_5_8": other.calibration.offset_mm,
            "heldout_rms_mm": float(np.mean([h.rms_mm for h in held])),
            "heldout_along_ray_mm": [round(h.along_ray_mm, 2) for h in held],
        })  # fmt: skip
    return rows


def open3d_similarity(model: SurfaceModel, pts: F64, T_world_model: F64) -> float:
    """Plain Open3D per-scan similarity ICP (point-to-point with scaling) from the scan's
    own registration: the scale that maps the scan onto the model."""
    import open3d as o3d

    reg = o3d.pipelines.registration
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)).voxel_down_sample(2.0)
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(model.vertices))
    res = reg.registration_icp(
        src, dst, 5.0, invert(T_world_model), reg.TransformationEstimationPointToPoint(True),
        reg.ICPConvergenceCriteria(max_iteration=100),
    )  # fmt: skip
    return float(np.cbrt(np.linalg.det(np.asarray(res.transformation)[:3, :3])))


def refined_pose(model: SurfaceModel, view: CalibrationView, cal: DepthCalibration) -> F64:
    """T_model_world of one view on its own, after correcting its points: robust
    point-to-plane from its markerless start, on the corrected points."""
    pts = transform_points(view.T_world_sensor, cal.apply_to_points(view.points_sensor))
    start = invert(view.T_world_sensor @ view.T_sensor_model)
    return point_to_plane(model, pts, start, iterations=40, min_corr_mm=3.0).T_model_sensor


def face_of(T_model_world: F64, fc: F64) -> F64:
    out: F64 = transform_points(invert(T_model_world), fc[None])[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    args = ap.parse_args()
    data = Path(os.environ.get("SCRUBIN_DATA_DIR", ROOT.parent / "shared" / "data"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = prepare_model(data, args.model)
    fc = face_centre(model)
    scans = load_scans(data)
    out: dict[str, Any] = {"goal_mm": GOAL_MM, "train": TRAIN, "test": TEST}
    regs = {n: initial_alignment(model, p) for n, p in scans.items()}
    print("markerless registrations:", {n: str(e.status) for n, e in regs.items()})
    views = camera_centres(scans, regs, out)
    out["hypotheses"] = centre_hypotheses(model, views)
    print_hypotheses(out["hypotheses"])
    fit, o3d_scale = estimates(model, scans, regs, views, out)
    face_centres(model, scans, regs, views, fit, o3d_scale, fc, out)
    diagnose(model, views, fit, fc, out)
    (RESULTS / "depth_calibration.json").write_text(json.dumps(out, indent=1, default=float))
    plot(out)
    print(f"json: {RESULTS / 'depth_calibration.json'}")


def camera_centres(scans: dict[str, F64], regs: dict[str, Any], out: dict[str, Any]) -> dict[str, CalibrationView]:
    print("\ncamera centres from whole-millimetre ranges (headset world, mm):")
    views, rows = {}, {}
    for name in TRAIN + TEST + [FUSED]:
        t = time.perf_counter()
        try:
            views[name], found = world_scan_view(scans[name], regs[name].T_sensor_model)
        except ValueError as exc:
            found = ray_centre(scans[name])
            print(f"  {name:26s} {exc}: left uncorrected")
        rows[name] = {
            "centre_mm": found.centre_mm.round(2).tolist(),
            "score": found.score,
            "median_range_mm": found.median_range_mm,
        }
        if name in views:
            print(
                f"  {name:26s} centre {np.round(found.centre_mm, 1)}  score {found.score:.3f}  median range {found.median_range_mm:.0f} mm  ({time.perf_counter() - t:.1f} s)"
            )
    out["camera_centres"] = rows
    return views


def print_hypotheses(rows: list[dict[str, Any]]) -> None:
    print("\nwhich model explains the data: fitted on views 1-4 (one shared pose), judged on views 5-8")
    print(
        f"  {'scaling centre':28s} {'model':15s} {'scale':>7s} {'offset':>7s} {'from 5-8':>16s} {'held-out RMS':>12s}  along-ray residual 5..8 mm"
    )
    for r in rows:
        other = f"{r['scale_from_5_8']:.4f} {r['offset_from_5_8']:+5.1f}"
        print(
            f"  {r['centre']:28s} {r['model']:15s} {r['scale']:7.4f} {r['offset_mm']:+7.2f} {other:>16s} "
            f"{r['heldout_rms_mm']:9.3f} mm  {r['heldout_along_ray_mm']}"
        )


def estimates(
    model: SurfaceModel,
    scans: dict[str, F64],
    regs: dict[str, Any],
    views: dict[str, CalibrationView],
    out: dict[str, Any],
) -> tuple[CalibrationResult, float]:
    t = time.perf_counter()
    fit = estimate_depth_calibration(model, [views[n] for n in TRAIN])
    scrubin_s = time.perf_counter() - t
    t = time.perf_counter()
    o3d_scales = [open3d_similarity(model, scans[n], regs[n].T_sensor_model) for n in SCANS]
    o3d_s = (time.perf_counter() - t) * len(TRAIN) / len(SCANS)
    o3d_scale = float(np.mean(o3d_scales[1:5]))  # views 1-4 (SCANS[0] is the fused scan)
    print(f"\nestimated on views 1-4: scale {fit.calibration.scale:.4f} (sd {fit.scale_sd:.4f}), offset "
          f"{fit.calibration.offset_mm:+.2f} mm (scale only: see above), {fit.n_views} views {fit.view_spread_deg:.0f} deg "
          f"apart, residual RMS {fit.rms_mm:.2f} mm, {'ok' if fit.ok else fit.reasons}, {scrubin_s:.2f} s")  # fmt: skip
    print(f"  each view's own scale at the shared pose: {np.round(fit.view_scales, 4)}")
    print(f"  Open3D per-scan similarity scales (scan, views 1-8): {np.round(o3d_scales, 4)}")
    print(
        f"  Open3D mean over views 1-4: {o3d_scale:.4f} ({o3d_s:.2f} s for 4 scans; ratio open3d/scrubin {o3d_s / scrubin_s:.1f}x)"
    )
    out["scrubin"] = {"scale": fit.calibration.scale, "offset_mm": fit.calibration.offset_mm, "scale_sd": fit.scale_sd,
                      "view_scales": list(fit.view_scales), "ok": fit.ok, "reasons": list(fit.reasons), "seconds": scrubin_s}  # fmt: skip
    out["open3d"] = {"scale": o3d_scale, "per_scan_scales": dict(zip(SCANS, o3d_scales, strict=True)), "seconds": o3d_s}
    return fit, o3d_scale


def face_centres(
    model: SurfaceModel,
    scans: dict[str, F64],
    regs: dict[str, Any],
    views: dict[str, CalibrationView],
    fit: CalibrationResult,
    o3d_scale: float,
    fc: F64,
    out: dict[str, Any],
) -> None:
    cals = {"uncorrected": DepthCalibration(), "scrubin": fit.calibration, "open3d scale": DepthCalibration(o3d_scale)}
    rows = {k: np.array([face_of(refined_pose(model, views[n], c), fc) for n in TEST]) for k, c in cals.items()}
    t = time.perf_counter()
    rows["plain open3d (FPFH+RANSAC+ICP, raw)"] = np.array(
        [transform_points(plain_open3d(model, scans[n])[0], fc[None])[0] for n in TEST]
    )
    o3d_global_s = (time.perf_counter() - t) / len(TEST)
    base = spread(rows["uncorrected"])
    print("\nface centres of views 5-8 in the headset world (mm), each registered on its own:")
    for n_i, name in enumerate(TEST):
        print(f"  {name:12s} " + "  ".join(f"{k[:14]:>14s} {np.round(v[n_i], 1)}" for k, v in rows.items()))
    print(f"  {'':12s} {'correction':38s} {'max pairwise':>12s} {'RMS':>6s} {'ratio to uncorrected':>21s}")
    out["face_centres"] = {}
    for k, v in rows.items():
        pair, rms = spread(v)
        print(f"  {'':12s} {k:38s} {pair:9.2f} mm {rms:6.2f} {pair / base[0]:9.2f} (RMS {rms / base[1]:.2f})")
        out["face_centres"][k] = {"centres_mm": v.round(2).tolist(), "max_pairwise_mm": pair, "rms_mm": rms}
    ia = {
        n: initial_alignment(
            model, transform_points(views[n].T_world_sensor, fit.calibration.apply_to_points(views[n].points_sensor))
        )
        for n in TEST
    }
    print(f"  markerless alignment of the corrected views 5-8: {[str(e.status) for e in ia.values()]} "
          f"(plain Open3D global registration {o3d_global_s:.1f} s per scan)")  # fmt: skip
    fused = transform_points(regs[FUSED].T_sensor_model, fc[None])[0]
    print(
        f"  {FUSED} (fused, uncorrected): {np.round(fused, 1)}, {np.linalg.norm(fused - rows['uncorrected'].mean(0)):.1f} mm from the mean of views 5-8"
    )
    pair = spread(rows["scrubin"])[0]
    verdict = "MET" if pair <= GOAL_MM else "NOT MET"
    print(
        f"goal: views 5-8 agree within {GOAL_MM:g} mm after the correction from views 1-4: {verdict} ({base[0]:.2f} -> {pair:.2f} mm)"
    )
    out["goal_met"] = pair <= GOAL_MM


def diagnose(
    model: SurfaceModel, views: dict[str, CalibrationView], fit: CalibrationResult, fc: F64, out: dict[str, Any]
) -> None:
    """Where the remaining spread comes from: each test view's own registration against
    the pose the training views fit together (held-out residuals at that pose, too)."""
    shared = transform_points(fit.T_world_model, fc[None])[0]
    rigid = estimate_depth_calibration(model, [views[n] for n in TRAIN], CalibrationConfig(fit_scale=False))
    print("\nviews 5-8 against the pose fitted on views 1-4 (not on them):")
    print(
        f"  {'view':12s} {'own pose vs shared: deg':>24s} {'face mm':>8s}   held-out RMS before -> after   along-ray before -> after"
    )
    out["diagnosis"] = {}
    for n in TEST:
        v = views[n]
        T_own = refined_pose(model, v, fit.calibration)
        own = face_of(T_own, fc)
        deg = pose_difference(invert(T_own), fit.T_world_model)[0]
        b = held_out_residuals(model, v, rigid.T_world_model, DepthCalibration())
        a = held_out_residuals(model, v, fit.T_world_model, fit.calibration)
        print(
            f"  {n:12s} {deg:24.2f} {np.linalg.norm(own - shared):8.2f}   {b.rms_mm:8.3f} -> {a.rms_mm:.3f} mm   {b.along_ray_mm:+9.2f} -> {a.along_ray_mm:+.2f} mm"
        )
        out["diagnosis"][n] = {"own_vs_shared_deg": deg, "own_vs_shared_face_mm": float(np.linalg.norm(own - shared)),
                               "heldout_rms_before_mm": b.rms_mm, "heldout_rms_after_mm": a.rms_mm,
                               "along_ray_before_mm": b.along_ray_mm, "along_ray_after_mm": a.along_ray_mm}  # fmt: skip


def plot(out: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    methods = list(out["face_centres"].items())
    for k, (name, v) in enumerate(methods):
        c = np.array(v["centres_mm"])
        dev = np.linalg.norm(c - c.mean(axis=0), axis=1)
        label = f"{name[:24]} (max pair {v['max_pairwise_mm']:.1f} mm)"
        ax[0].bar(np.arange(len(dev)) + (k - 1.5) * 0.2, dev, 0.2, label=label)
    ax[0].set_xticks(np.arange(len(TEST)), [n.replace("views/", "v").replace(".ply", "") for n in TEST])
    ax[0].axhline(GOAL_MM / 2, color="k", ls=":")
    ax[0].set_ylabel("face centre from its method's mean [mm]")
    ax[0].legend(fontsize=7)
    d = out["diagnosis"]
    names = [n.replace("views/", "v").replace(".ply", "") for n in d]
    x = np.arange(len(names))
    ax[1].bar(x - 0.2, [r["heldout_rms_before_mm"] for r in d.values()], 0.4, label="uncorrected")
    ax[1].bar(x + 0.2, [r["heldout_rms_after_mm"] for r in d.values()], 0.4, label="scale from views 1-4")
    ax[1].set_xticks(x, names)
    ax[1].set_ylabel("held-out residual RMS [mm]")
    ax[1].legend(fontsize=7)
    views = [f"v{i}" for i in range(1, 9)]
    ax[2].plot(
        views,
        [out["open3d"]["per_scan_scales"][f"views/{i}.ply"] for i in range(1, 9)],
        "o",
        label="Open3D per-scan similarity",
    )
    ax[2].plot(views[:4], out["scrubin"]["view_scales"], "s", label="scrubin, per view at the shared pose")
    ax[2].axhline(out["scrubin"]["scale"], color="k", ls=":", label="scrubin estimate (views 1-4)")
    ax[2].set_ylabel("depth scale correction")
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "depth_calibration.png", dpi=110)
    print(f"plot: {RESULTS / 'depth_calibration.png'}")


if __name__ == "__main__":
    main()
