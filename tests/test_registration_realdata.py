"""Registration on the real data: the CT skin from ``scrubin prepare`` and the HoloLens 2
scans of the same demo head (skipped without SCRUBIN_DATA_DIR)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import real_data
from registration_fixtures import about, perturbation

from registration import Estimate, Status, SurfaceModel, Tracker, initial_alignment
from registration.frames import F64, MM_PER_M, transform_points
from registration.simulator import HeadsetSimulator

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

HOLOLENS = "depth/bti_demohead_hololens2"


@pytest.fixture(scope="module")
def ct_skin(bti_skin: SurfaceModel) -> SurfaceModel:
    return bti_skin


def _target(sim: HeadsetSimulator) -> F64:
    return sim.focus - 40.0 * sim.view_dir  # ~70 mm below the face


def test_tracks_ct_skin_in_simulated_frames(ct_skin: SurfaceModel) -> None:
    sim = HeadsetSimulator(ct_skin, seed=11)
    frames = list(sim.frames(20))
    tracker = Tracker(ct_skin, frames[0].T_sensor_model)
    target = _target(sim)[None]
    errors, statuses = [], []
    for f in frames:
        est = tracker.update(f.depth, f.timestamp_ns)
        d = transform_points(est.T_sensor_model, target) - transform_points(f.T_sensor_model, target)
        errors.append(float(np.linalg.norm(d)))
        statuses.append(est.status)
    assert np.percentile(errors, 95) < 0.5, errors
    assert all(s is Status.TRACKING for s in statuses[3:]), statuses


@pytest.mark.parametrize("seed", [0, 1])
def test_wrong_start_on_ct_skin_is_never_tracking(ct_skin: SurfaceModel, seed: int) -> None:
    sim = HeadsetSimulator(ct_skin, seed=12)
    frames = list(sim.frames(12))
    wrong = frames[0].T_sensor_model @ about(perturbation(15.0, 20.0, seed), ct_skin.centroid)
    tracker = Tracker(ct_skin, wrong)
    target = _target(sim)[None]
    for k, f in enumerate(frames):
        est = tracker.update(f.depth, f.timestamp_ns)
        d = transform_points(est.T_sensor_model, target) - transform_points(f.T_sensor_model, target)
        if k == 0:
            assert est.status is not Status.TRACKING
        if est.status is Status.TRACKING:
            assert np.linalg.norm(d) < 1.0


def _scan(name: str) -> F64:
    import open3d as o3d

    path: Path = real_data(f"{HOLOLENS}/{name}")
    return np.asarray(o3d.io.read_point_cloud(str(path)).points) * MM_PER_M


SCANS = ["scanned_head_cropped.pcd"] + [f"views/{i}.ply" for i in range(1, 9)]


@pytest.fixture(scope="module")
def nine(hololens_alignments: dict[str, Estimate]) -> dict[str, Estimate]:
    """Each real scan aligned on its own (they share the headset's world frame)."""
    return hololens_alignments


def _face_centres(ct_skin: SurfaceModel, estimates: dict[str, Estimate]) -> F64:
    face = ct_skin.centroid + np.array([0.0, -90.0, 0.0])  # roughly the face, anterior (-y)
    return np.array([transform_points(e.T_sensor_model, face[None])[0] for e in estimates.values()])


def test_every_hololens_scan_aligns_table_and_wall_included(nine: dict[str, Estimate]) -> None:
    """Views 1 and 7 are half table and wall: support planes are dropped, not fitted."""
    for name, est in nine.items():
        assert est.status is Status.TRACKING, (name, est.reasons)
        assert est.rmse_mm <= 3.5, (name, est.rmse_mm)
        assert est.fitness > 0.7, (name, est.fitness)


def test_hololens_scans_agree_at_the_face(ct_skin: SurfaceModel, nine: dict[str, Estimate]) -> None:
    """All nine results must put the face at one place of the shared world frame. A
    wrong basin is off by centimetres; the scans' own per-view depth distortion (scale
    1.5-2.5 % apart between scans) leaves a few millimetres."""
    centres = _face_centres(ct_skin, nine)
    spread = np.linalg.norm(centres - np.median(centres, axis=0), axis=1)
    assert spread.max() < 8.0, dict(zip(nine, spread.round(1), strict=True))


@pytest.mark.xfail(
    reason="issue goal not met: the nine scans agree within ~6-8 mm at the face centre, not 3 mm. "
    "A depth correction does not close it: the scale from views 1-4 (0.992, bench/bench_depth_calibration.py) "
    "fits views 5-8 better (held-out RMS 2.25 -> 1.54 mm, no along-ray bias) but their face centres spread "
    "5.8 -> 6.5 mm: each scan's own registration is 1-3 degrees off the pose the views fit together",
    strict=False,
)
def test_all_nine_scans_agree_within_3mm(ct_skin: SurfaceModel, nine: dict[str, Estimate]) -> None:
    centres = _face_centres(ct_skin, nine)
    assert max(np.linalg.norm(a - b) for a in centres for b in centres) <= 3.0


@pytest.mark.parametrize(
    ("name", "cleaning"),
    [("views/6.ply", "statistical"), ("views/7.ply", "statistical"), ("views/5.ply", "radius")],
)
def test_cleaned_scans_are_never_trusted_at_a_wrong_pose(
    ct_skin: SurfaceModel, nine: dict[str, Estimate], name: str, cleaning: str
) -> None:
    """Outlier-cleaned copies of three views, where the search finds only a wrong basin
    (130-200 mm off, fitness ~0.8, no distinct rival among its own hypotheses): the check
    against the model turned about the patient axes must keep them from `tracking`."""
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_scan(name)))
    if cleaning == "statistical":
        pc, _ = pc.remove_statistical_outlier(20, 2.0)
    else:
        pc, _ = pc.remove_radius_outlier(8, 4.0)
    est = initial_alignment(ct_skin, np.asarray(pc.points))
    centre = np.median(_face_centres(ct_skin, nine), axis=0)
    off = np.linalg.norm(_face_centres(ct_skin, {name: est})[0] - centre)
    assert est.status is not Status.TRACKING or off < 8.0, (off, est.reasons)
