"""Surface traces from a tracked pointer: frame kinds, the navigation workflow (landmarks
+ trace, or markerless), the ambiguity verdict, and the real pelvis pointer scan."""

from __future__ import annotations

import numpy as np
import pytest
from pointer_data import data_dir, load_pelvis
from registration_fixtures import DEEP_TARGET, head_mesh, head_model

from registration import (
    CHECKS,
    FrameKind,
    Status,
    SurfaceModel,
    SurfaceTrace,
    Tracker,
    initial_alignment,
    register_trace,
)
from registration.confidence import ConfidenceConfig, FrameQuality, failures
from registration.frame_kinds import Check
from registration.frames import invert, transform_points
from registration.trace_simulator import (
    face_landmarks,
    moved,
    random_tracker_pose,
    simulate_trace,
    target_error_mm,
    touched_landmarks,
)


def _err(T_est: np.ndarray, T_true: np.ndarray, target: np.ndarray = DEEP_TARGET) -> float:
    return target_error_mm(T_est, T_true, target)


# ------------------------------------------------------------------ frame kinds
def test_each_frame_kind_names_the_checks_that_apply() -> None:
    assert CHECKS[FrameKind.DEPTH_IMAGE] == frozenset(Check)
    assert CHECKS[FrameKind.CAMERA_POINTS] == frozenset(Check)
    trace = CHECKS[FrameKind.SURFACE_TRACE]
    assert Check.FREE_SPACE not in trace and Check.JUMP not in trace
    assert {Check.RMSE, Check.CONDITION, Check.TURNED_RIVAL} <= trace
    # A frame that sees through the model and jumped: a depth image fails both, a trace neither.
    q = FrameQuality(400, 0.95, 0.5, 5.0, 0.3, 30.0, 12.0, 0.95, 0.5, see_through=0.7)
    depth = failures(q, ConfidenceConfig(), entering=False, checks=CHECKS[FrameKind.DEPTH_IMAGE])
    traced = failures(q, ConfidenceConfig(), entering=False, checks=trace)
    assert any("free-space" in r for r in depth) and any("pose jump" in r for r in depth)
    assert traced == ()


def test_surface_trace_keeps_points_at_the_origin_and_drops_non_finite_rows() -> None:
    t = SurfaceTrace([[0.0, 0.0, 0.0], [1.0, np.nan, 2.0], [3.0, 4.0, 5.0]])
    assert len(t) == 2 and t.kind is FrameKind.SURFACE_TRACE
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        SurfaceTrace(np.ones((4, 2)))


def test_tracker_refines_a_trace_far_from_the_tracker_origin_without_a_line_of_sight_check() -> None:
    """A pointer trace 1.5 m from the tracker origin, started 5 degrees / 10 mm off: the
    refinement lands on the truth; the same points as a camera cloud are judged by line
    of sight from the origin, which a trace does not have."""
    model = head_model()
    tr = simulate_trace(model, "lines", 2000, seed=3, distance_mm=1500.0)
    start = moved(tr.T_sensor_model, 5.0, 10.0, DEEP_TARGET, seed=3)
    est = Tracker(model, start).update(SurfaceTrace(tr.points_mm), 0)
    assert est.status is Status.TRACKING, est.reasons
    assert _err(est.T_sensor_model, tr.T_sensor_model) < 1.0
    cloud = Tracker(model, start).update(tr.points_mm, 0)  # a plain array is a camera cloud
    assert cloud.status is not Status.TRACKING


# ------------------------------------------------------------------ markerless
@pytest.mark.parametrize("seed", [11, 12])
def test_a_twenty_point_trace_is_accepted(seed: int) -> None:
    """20 pointer touches, 3-13 mm apart over the upper face, in a random tracker frame
    1.5 m away: found and accepted."""
    model = head_model()
    tr = simulate_trace(model, "dots", 20, seed=seed, lifted=0)
    assert len(tr.points_mm) == 20
    res = register_trace(model, SurfaceTrace(tr.points_mm))
    assert res.status is Status.TRACKING, res.verdict
    assert _err(res.T_sensor_model, tr.T_sensor_model) < 3.0


def test_markerless_does_not_depend_on_the_tracker_frame() -> None:
    """The same trace in two different tracker frames gives the same model pose."""
    model = head_model()
    tr = simulate_trace(model, "lines", 1500, seed=5)
    T_other = random_tracker_pose(np.random.default_rng(9), 1200.0, model.centroid)
    P_model = transform_points(invert(tr.T_sensor_model), tr.points_mm)
    a = register_trace(model, SurfaceTrace(tr.points_mm))
    b = register_trace(model, SurfaceTrace(transform_points(T_other, P_model)))
    assert a.status is Status.TRACKING and b.status is Status.TRACKING
    assert _err(a.T_sensor_model, tr.T_sensor_model) < 1.0
    assert _err(b.T_sensor_model, T_other) < 1.0


def test_a_skull_like_mesh_far_from_the_origin_with_mixed_orientation() -> None:
    """The CT frame 1.4 m from the origin and half the triangles flipped (a bony face
    from a threshold is not consistently oriented): normal signs are not relied on."""
    V, F = head_mesh()
    F = F.copy()
    F[::2] = F[::2, ::-1]
    shift = np.array([800.0, -700.0, 900.0])
    model = SurfaceModel.from_mesh(V + shift, F, targets={"lesion": DEEP_TARGET + shift})
    tr = simulate_trace(model, "dots", 120, seed=4)
    res = register_trace(model, SurfaceTrace(tr.points_mm))
    assert res.status is Status.TRACKING, res.verdict
    assert _err(res.T_sensor_model, tr.T_sensor_model, DEEP_TARGET + shift) < 2.0


def test_lifted_points_are_rejected_and_reported() -> None:
    model = head_model()
    tr = simulate_trace(model, "lines", 1200, seed=6, lifted=12)
    res = register_trace(model, SurfaceTrace(tr.points_mm))
    assert res.status is Status.TRACKING, res.verdict
    assert not res.kept[tr.lifted].any()  # every lifted point (10-40 mm off) rejected
    assert res.rejected >= tr.lifted.sum()
    assert res.trace_residual_rms_mm < 1.0


def test_a_symmetric_surface_is_reported_ambiguous_with_the_rival() -> None:
    """Points on the side of a cylinder fit any turn about its axis."""
    import open3d as o3d

    cyl = o3d.geometry.TriangleMesh.create_cylinder(80.0, 200.0, resolution=120, split=40)
    model = SurfaceModel.from_mesh(np.asarray(cyl.vertices), np.asarray(cyl.triangles))
    rng = np.random.default_rng(0)
    side = np.flatnonzero(np.abs(model.normals[:, 2]) < 0.2)
    dots = model.vertices[rng.choice(side, 150, replace=False)] + rng.normal(scale=0.3, size=(150, 3))
    res = register_trace(model, SurfaceTrace(dots))
    assert res.status is not Status.TRACKING
    assert any("ambiguous" in r or "degenerate" in r for r in res.reasons), res.reasons
    assert res.hint is not None and "mm" in res.hint


def test_too_few_points_or_too_small_a_patch_is_refused_with_the_reason() -> None:
    model = head_model()
    tr = simulate_trace(model, "dots", 20, seed=2, lifted=0)
    five = register_trace(model, SurfaceTrace(tr.points_mm[:5]))
    assert five.status is Status.LOST and "too few trace points (5" in five.reasons[0]
    assert five.hint is not None
    c = tr.points_mm.mean(axis=0)
    tight = c + (tr.points_mm - c) * 0.15  # the same shape, squeezed into a few millimetres
    small = register_trace(model, SurfaceTrace(tight))
    assert small.status is Status.LOST and "too small a patch" in small.reasons[0]
    assert initial_alignment(model, tr.points_mm[:5]).status is Status.LOST


def test_eight_touches_are_never_trusted_markerless_but_are_with_landmarks() -> None:
    """8 points leave 2 residual degrees of freedom: a wrong pose fits them as well as the
    right one (seen 20-35 mm off on a skull), so markerless it is not trusted; with
    touched landmarks as independent evidence it is."""
    model = head_model()
    tr = simulate_trace(model, "dots", 8, seed=31, lifted=0)
    alone = register_trace(model, SurfaceTrace(tr.points_mm))
    assert alone.status is not Status.TRACKING
    assert any("too few points to rule out other poses" in r for r in alone.reasons), alone.reasons
    marks = face_landmarks(model)
    touched = touched_landmarks(marks, tr.T_sensor_model, (2.0, 5.0), seed=31)
    pairs = (np.array(list(marks.values())), np.array([touched[k] for k in marks]))
    helped = register_trace(model, SurfaceTrace(tr.points_mm), pairs)
    assert helped.status is Status.TRACKING, helped.verdict
    assert _err(helped.T_sensor_model, tr.T_sensor_model) < 3.0


# ------------------------------------------------------------------ landmarks + trace
def test_landmarks_with_touching_error_then_a_trace() -> None:
    model = head_model()
    tr = simulate_trace(model, "dots", 80, seed=8)
    marks = face_landmarks(model)
    assert {"nasion", "left_canthus", "right_canthus"} <= set(marks)
    touched = touched_landmarks(marks, tr.T_sensor_model, (5.0, 10.0), seed=8)
    pairs = (np.array(list(marks.values())), np.array([touched[k] for k in marks]))
    res = register_trace(model, SurfaceTrace(tr.points_mm), pairs)
    assert res.status is Status.TRACKING, res.verdict
    assert res.method == "landmarks + trace"
    assert res.fre_mm is not None and 2.0 < res.fre_mm < 12.0
    assert res.landmark_error_mm is not None and res.landmark_error_mm < 12.0
    assert _err(res.T_sensor_model, tr.T_sensor_model) < 1.5
    assert set(res.predicted_tre_mm) == {"lesion"}


def test_swapped_landmarks_are_not_trusted() -> None:
    """Left and right canthus swapped: the surface fit disagrees with the touched points."""
    model = head_model()
    tr = simulate_trace(model, "dots", 80, seed=9)
    marks = face_landmarks(model)
    touched = touched_landmarks(marks, tr.T_sensor_model, (0.0, 1.0), seed=9)
    touched["left_canthus"], touched["right_canthus"] = touched["right_canthus"], touched["left_canthus"]
    pairs = (np.array(list(marks.values())), np.array([touched[k] for k in marks]))
    res = register_trace(model, SurfaceTrace(tr.points_mm), pairs)
    if res.status is Status.TRACKING:  # trusted only where it is right
        assert _err(res.T_sensor_model, tr.T_sensor_model) < 2.0
    else:
        assert res.reasons


def test_refinement_from_a_realistic_start_converges_and_says_so() -> None:
    model = head_model()
    for seed in range(3):
        tr = simulate_trace(model, "dots", 60, seed=20 + seed)
        start = moved(tr.T_sensor_model, 5.0, 10.0, DEEP_TARGET, seed)
        res = register_trace(model, SurfaceTrace(tr.points_mm), start=start)
        assert res.converged and res.status is Status.TRACKING, res.verdict
        assert _err(res.T_sensor_model, tr.T_sensor_model) < 1.5


# ------------------------------------------------------------------ real pointer scan
@pytest.fixture(scope="module")
def pelvis():  # type: ignore[no-untyped-def]
    folder = data_dir()
    if folder is None:
        pytest.skip("needs SCRUBIN_DATA_DIR with pointer/ucl_pelvis_phantom (see ../shared/data/README.md)")
    case = load_pelvis(folder)
    return case, SurfaceModel.from_mesh(case.vertices_mm, case.triangles)


@pytest.mark.realdata
def test_pelvis_pointer_scan_from_its_fiducials(pelvis) -> None:  # type: ignore[no-untyped-def]
    """The real 2,000-point pointer scan: from the 4 fiducials (a start ~8 mm off the
    surface) the workflow ends within 2 mm of the ICP-refined reference, with a trace
    residual under 1.5 mm and the lifted points rejected."""
    case, model = pelvis
    res = register_trace(model, SurfaceTrace(case.scan_mm), (case.fiducials_ct_mm, case.fiducials_tracker_mm))
    assert res.status is Status.TRACKING, res.verdict
    ref = invert(case.T_ct_tracker_icp)
    assert _err(res.T_sensor_model, ref, model.centroid) < 2.0
    scan_model = transform_points(case.T_ct_tracker_icp, case.scan_mm)
    moved_mm = np.linalg.norm(transform_points(invert(res.T_sensor_model), case.scan_mm) - scan_model, axis=1)
    assert np.sqrt(np.mean(moved_mm**2)) < 2.0
    assert res.trace_residual_rms_mm < 1.5
    lifted = model.distance(scan_model) > 10.0  # off the bone even at the reference pose
    assert lifted.sum() >= 20 and not res.kept[lifted].any()
    assert res.fre_mm is not None and res.fre_mm < 1.0


@pytest.mark.realdata
def test_pelvis_pointer_scan_markerless_finds_it_or_says_ambiguous(pelvis) -> None:  # type: ignore[no-untyped-def]
    case, model = pelvis
    res = register_trace(model, SurfaceTrace(case.scan_mm))
    if res.status is Status.TRACKING:
        assert _err(res.T_sensor_model, invert(case.T_ct_tracker_icp), model.centroid) < 2.0
    else:
        assert any("ambiguous" in r for r in res.reasons), res.reasons
