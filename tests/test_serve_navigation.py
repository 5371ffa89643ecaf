"""A theatre session takes a navigation registration (touched landmarks and a surface
trace) from a headset's uplink or from Slicer's point lists, registers it off the pose
loop, audits and reports the verdict, and starts tracking from an accepted result.

Real sockets on 127.0.0.1: the reference headset client streams simulated depth frames
of the test head from a fixed camera in its world; the traces come from
``registration.trace_simulator`` on the same head, with ground truth. The session's own
initialisation uses a seed 250 mm off, so before a navigation registration it is lost."""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
import pyigtl
import pytest
import zmq
from registration_fixtures import DEEP_TARGET, head_mesh, target_error_mm
from slicer_fixtures import Peer, wait_for
from test_serve import _client, _settings

from headset_bridge.client import HeadsetClient
from headset_bridge.keys import write_keypair
from registration import SurfaceModel
from registration.frames import F64, se3_exp
from registration.simulator import HeadsetSimulator, NoiseModel
from registration.trace_simulator import face_landmarks, simulate_trace, touched_landmarks
from scrubin.audit import AuditEvent, audit_path, read_events
from scrubin.service import Service
from scrubin.session import TheatreSession

SESSION = "or-nav"
STREAM_TIMEOUT_S = 90.0  # generous: a loaded 2-core CI box registers a 1.5 s trace in a few s


@dataclass(frozen=True)
class Scene:
    """The test head seen by a static headset: its camera in the headset world, and the
    truth in both frames."""

    model: SurfaceModel
    T_world_camera: F64
    T_camera_model: F64  # ground truth, sensor frame
    depth: tuple[np.ndarray, ...]  # uint16 mm frames at the true pose, independent noise
    intrinsics: tuple[float, float, float, float]
    traces: dict[str, F64]  # made before any session streams: the test's headset polls meanwhile

    @property
    def T_world_model(self) -> F64:
        return self.T_world_camera @ self.T_camera_model

    def landmarks(self, T_frame_model: F64, seed: int) -> dict[str, tuple[float, float, float]]:
        """The model's face landmarks touched with 5-10 mm error, in the frame T maps into."""
        touched = touched_landmarks(face_landmarks(self.model), T_frame_model, (5.0, 10.0), seed)
        return {name: (float(p[0]), float(p[1]), float(p[2])) for name, p in touched.items()}


def _traces(model: SurfaceModel, T_world_model: F64, T_camera_model: F64) -> dict[str, F64]:
    """Pointer traces with ground truth (registration.trace_simulator), by use."""
    return {
        "lines": simulate_trace(model, "lines", 1500, seed=5, T_sensor_model=T_world_model).points_mm,
        "lines, trace only": simulate_trace(model, "lines", 2000, seed=11, T_sensor_model=T_world_model).points_mm,
        "five": simulate_trace(model, "dots", 40, seed=8, lifted=0, T_sensor_model=T_world_model).points_mm[:5],
        "slicer lines": simulate_trace(model, "lines", 1500, seed=6, T_sensor_model=T_camera_model).points_mm,
        "slicer dots": simulate_trace(model, "dots", 60, seed=1, T_sensor_model=T_camera_model).points_mm,
    }


@pytest.fixture(scope="module")
def scene() -> Scene:
    V, F = head_mesh()
    model = SurfaceModel.from_mesh(V, F, targets={"lesion": DEEP_TARGET})
    sim = HeadsetSimulator(model, noise=NoiseModel(sigma_mm=1.0), seed=4)
    T_camera_model = sim.pose(0.0)
    T_world_camera = se3_exp(np.array([0.2, -0.5, 0.1, 0.0, 0.0, 0.0]))
    T_world_camera[:3, 3] = (350.0, -120.0, 1600.0)  # the headset world's origin is far from both
    depth = tuple(sim.render(T_camera_model, k).depth.depth for k in range(4))
    K = sim.K
    traces = _traces(model, T_world_camera @ T_camera_model, T_camera_model)
    return Scene(model, T_world_camera, T_camera_model, depth, (K.fx, K.fy, K.cx, K.cy), traces)


@pytest.fixture(scope="module")
def head_folder(tmp_path_factory: pytest.TempPathFactory, scene: Scene) -> Path:
    """The test head as a patient-model folder, its face landmarks as the manifest's fiducials."""
    folder = tmp_path_factory.mktemp("model") / "head"
    (folder / "meshes").mkdir(parents=True)
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(scene.model.vertices), o3d.utility.Vector3iVector(scene.model.triangles)
    )
    o3d.io.write_triangle_mesh(str(folder / "meshes" / "skin.ply"), mesh)
    (folder / "model.glb").write_bytes(b"glTF-not-really")  # the bridge only hashes and chunks it
    fiducials = [{"name": n, "position_mm": p.tolist()} for n, p in face_landmarks(scene.model).items()]
    manifest = {
        "schema_version": 1,
        "units": "mm",
        "frame": "LPS",
        "meshes": [{"name": "skin", "files": {"ply": "meshes/skin.ply"}}],
        "landmarks": {"targets": [{"name": "lesion", "position_mm": DEEP_TARGET.tolist()}], "fiducials": fiducials},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _far_seed(scene: Scene) -> list[list[float]]:
    off = scene.T_world_model.copy()
    off[:3, 3] += (250.0, 0.0, 0.0)  # out of the camera's view: the session's own start is lost
    out: list[list[float]] = off.tolist()
    return out


@dataclass
class Theatre:
    service: Service
    session: TheatreSession
    headset: HeadsetClient
    scene: Scene
    audit: Path
    tracker_key: Path  # a second allowlisted key: a tracker that sends no depth
    sent: int = 0

    def stream_until(self, predicate: Callable[[], Any], what: str) -> Any:
        """Send depth frames (as a headset does, paced by its own poll) until ``predicate``
        holds; fail naming ``what`` at the deadline."""
        return wait_for(self._streaming(predicate), what, STREAM_TIMEOUT_S)

    def _streaming(self, predicate: Callable[[], Any]) -> Callable[[], Any]:
        def step() -> Any:
            value = predicate()
            if not value:
                frame = self.scene.depth[self.sent % len(self.scene.depth)]
                self.headset.send_depth(frame, self.scene.T_world_camera, self.scene.intrinsics)
                self.sent += 1
                self.headset.poll(0.03)
            return value

        return step

    def events(self, action: str) -> list[AuditEvent]:
        return [e for e in read_events(self.audit) if e.action == action]

    def started_after(self, pose_seq: int, what: str) -> Any:
        """Stream until a pose after ``pose_seq`` comes from a tracker restarted by a
        navigation registration; that record (each accepting test waits for its own, so
        no start is left pending for the next test)."""

        def started() -> Any:
            nav = [r for r in self.session.records() if r.event == "navigation" and r.pose_seq > pose_seq]
            return nav and nav[0]

        return self.stream_until(started, what)

    def newest_pose(self) -> int:
        return int(self.session.records()[-1].pose_seq)

    def verdict_for(self, seq: int) -> Any:
        v = self.headset.registration
        return v if v is not None and v.request_seq == seq and v.state == "done" else None


@contextlib.contextmanager
def _theatre(tmp: Path, folder: Path, scene: Scene, slicer: dict[str, Any] | None = None) -> Iterator[Theatre]:
    settings = _settings(tmp, folder, (SESSION,), mentor={"enabled": False})
    reg = {"init": "seed", "seed_T_world_model": _far_seed(scene), "depth_calibration": "off"}
    settings.sessions[0].registration = settings.sessions[0].registration.model_validate(reg)
    if slicer is not None:
        settings.sessions[0].slicer = settings.sessions[0].slicer.model_validate(slicer)
    _, secret = write_keypair(tmp / "state" / "keys" / SESSION / "headsets", "hl-a")
    _, tracker = write_keypair(tmp / "state" / "keys" / SESSION / "headsets", "tracker-1")
    with Service(settings) as service, _client(service, SESSION, secret) as headset:
        session = service.sessions[SESSION]
        assert session.model_ready.wait(60)
        assert headset.wait_for(lambda: headset.clock.synced, 10.0)
        theatre = Theatre(service, session, headset, scene, audit_path(tmp / "state" / "audit", SESSION), tracker)
        theatre.stream_until(lambda: len(session.records()) >= 3, "the first poses")
        yield theatre


@pytest.fixture(scope="module")
def theatre(tmp_path_factory: pytest.TempPathFactory, head_folder: Path, scene: Scene) -> Iterator[Theatre]:
    with _theatre(tmp_path_factory.mktemp("serve"), head_folder, scene) as theatre:
        yield theatre


def _only_words_and_numbers(event: AuditEvent) -> None:
    """No coordinate reaches the audit log: scalars, and lists of names only."""
    for key, value in event.detail.items():
        items = value if isinstance(value, list) else [value]
        assert all(v is None or isinstance(v, (str, int, float, bool)) for v in items), (key, value)
        if isinstance(value, list):
            assert all(isinstance(v, str) for v in value), (key, value)


def _sent_raw(headset: HeadsetClient, frames: list[bytes]) -> bool:
    """Send as they are when the socket has room (depth frames may fill it), else poll."""
    try:
        headset.send_raw(list(frames))
    except zmq.Again:
        headset.poll(0.01)
        return False
    return True


def _after(records: list[Any], seq: int) -> list[Any]:
    return [r for r in records if r.pose_seq > seq]


# ------------------------------------------------------------------ headset uplink
def test_headset_landmarks_and_trace_start_tracking_at_the_right_pose(theatre: Theatre) -> None:
    scene, session = theatre.scene, theatre.session
    assert session.status().status != "tracking"  # the far seed: nothing to show yet
    trace, before = scene.traces["lines"], theatre.newest_pose()
    seq = theatre.headset.send_registration(trace, scene.landmarks(scene.T_world_model, seed=2))
    first = theatre.started_after(before, "the tracker restarted from the navigation registration")
    theatre.stream_until(
        lambda: session.records()[-1].pose_seq > first.pose_seq and session.records()[-1].status == "tracking",
        "tracking from there",
    )
    # The tracker started at the registered pose, in the sensor frame of that depth frame,
    # and tracks there: both within 2 mm of the truth at the deep target.
    assert target_error_mm(first.T_sensor_model, scene.T_camera_model) < 2.0
    last = session.records()[-1]
    assert last.status == "tracking" and target_error_mm(last.T_sensor_model, scene.T_camera_model) < 2.0
    outcome = session.navigation.last
    assert outcome is not None and outcome.result is not None
    assert target_error_mm(outcome.result.T_sensor_model, scene.T_world_model) < 2.0  # world frame

    verdict = theatre.stream_until(lambda: theatre.verdict_for(seq), "the verdict at the headset")
    assert verdict.accepted and verdict.status == "tracking" and verdict.source == "hl-a"
    assert verdict.method == "landmarks + trace" and verdict.verdict.startswith("accepted (landmarks + trace)")
    assert verdict.fre_mm is not None and 0.0 < verdict.fre_mm < 15.0
    assert verdict.residual_mm is not None and verdict.residual_mm < 1.5 and verdict.n_points == len(trace)

    (requested,) = [e for e in theatre.events("navigation requested") if e.detail["request_seq"] == seq]
    assert (requested.actor, requested.role, requested.detail["n_points"]) == ("hl-a", "headset", len(trace))
    assert sorted(requested.detail["landmarks"]) == sorted(face_landmarks(scene.model))
    (registered,) = [e for e in theatre.events("navigation registered") if e.detail["request_seq"] == seq]
    detail = registered.detail
    assert (detail["method"], detail["status"], detail["accepted"]) == ("landmarks + trace", "tracking", True)
    assert detail["fre_mm"] == round(verdict.fre_mm, 3) and detail["residual_mm"] < 1.5
    assert detail["rejected"] == outcome.result.rejected >= 1  # the simulator lifts 3 points off the skin
    for event in (requested, registered):
        _only_words_and_numbers(event)
    methods = [str(e.detail.get("method")) for e in theatre.events("registration initialised")]
    assert "navigation (landmarks + trace) from hl-a" in methods


def test_bad_registration_messages_are_counted_and_the_pose_stream_goes_on(theatre: Theatre) -> None:
    session, counters = theatre.session, theatre.session.bridge.counters
    before, requests, seen = counters.get("malformed"), len(theatre.events("navigation requested")), session.records()
    header = {"v": 1, "type": "registration", "seq": 1, "t_ns": 1, "frame": "world", "world_of": "", "n_points": 2}
    bad = [
        [
            b"registration",
            json.dumps({**header, "landmarks": None}).encode(),
            struct.pack("<6d", 1, 2, math.nan, 4, 5, 6),
        ],
        [b"registration", json.dumps({**header, "n_points": 20_001, "landmarks": None}).encode(), bytes(24 * 20_001)],
        [b"registration", json.dumps({**header, "n_points": [2], "landmarks": None}).encode(), bytes(48)],
        [b"registration", json.dumps({**header, "landmarks": {"nasion": [0, 1]}}).encode(), bytes(48)],
    ]
    for frames in bad:
        wait_for(lambda f=frames: _sent_raw(theatre.headset, f), "room in the headset's socket")
    theatre.stream_until(lambda: counters.get("malformed") - before == len(bad), "the bad messages counted")
    last = seen[-1].pose_seq
    theatre.stream_until(lambda: len(_after(session.records(), last)) >= 5, "more poses after the bad messages")
    assert counters.get("malformed") - before == len(bad)  # one each, nothing more
    assert counters.get("io_error") == 0
    assert len(theatre.events("navigation requested")) == requests  # nothing reached the registration


def test_a_refused_trace_changes_nothing_and_its_verdict_is_reported(theatre: Theatre) -> None:
    scene, session = theatre.scene, theatre.session
    starts = len([r for r in session.records() if r.event == "navigation"])
    initialised = len(theatre.events("registration initialised"))
    seq = theatre.headset.send_registration(scene.traces["five"])
    verdict = theatre.stream_until(lambda: theatre.verdict_for(seq), "the refusal reported to the headset")
    assert not verdict.accepted and verdict.status == "lost" and verdict.n_points == 5
    assert verdict.verdict.startswith("refused (trace only): too few trace points (5; at least 6)")
    assert verdict.hint is not None and "at least 20 points" in verdict.hint
    (registered,) = [e for e in theatre.events("navigation registered") if e.detail["request_seq"] == seq]
    assert (registered.detail["status"], registered.detail["accepted"]) == ("lost", False)
    last = session.records()[-1].pose_seq
    theatre.stream_until(lambda: len(_after(session.records(), last)) >= 5, "poses after the refusal")
    assert len([r for r in session.records() if r.event == "navigation"]) == starts  # no new tracker start
    assert len(theatre.events("registration initialised")) == initialised


def test_trace_only_registers_markerless_while_the_poses_keep_flowing(theatre: Theatre) -> None:
    scene, session = theatre.scene, theatre.session
    before = theatre.newest_pose()
    seq = theatre.headset.send_registration(scene.traces["lines, trace only"])
    verdict = theatre.stream_until(lambda: theatre.verdict_for(seq), "the trace-only verdict")
    outcome = session.navigation.last
    assert outcome is not None and outcome.result is not None and outcome.verdict == verdict
    assert verdict.accepted and verdict.method == "trace only", verdict.verdict
    assert target_error_mm(outcome.result.T_sensor_model, scene.T_world_model) < 2.0
    # The registration ran beside the pose loop, not in it: poses left while it ran.
    during = [r for r in session.records() if outcome.t_started_ns < r.t_published_ns < outcome.t_finished_ns]
    assert during, (outcome.t_finished_ns - outcome.t_started_ns) / 1e6
    first = theatre.started_after(before, "the tracker restarted from the trace-only registration")
    assert target_error_mm(first.T_sensor_model, scene.T_camera_model) < 2.0


def test_a_tracker_sends_in_the_headsets_world_and_tracking_starts_there(theatre: Theatre) -> None:
    scene = theatre.scene
    with _client(theatre.service, SESSION, theatre.tracker_key) as tracker:
        assert tracker.wait_for(lambda: tracker.clock.synced, 10.0)
        # A tracker calibrated to hl-a's world: the same points, sent by another key.
        before = theatre.newest_pose()
        seq = tracker.send_registration(scene.traces["lines"], scene.landmarks(scene.T_world_model, 4), "hl-a")
        first = theatre.started_after(before, "the tracker's registration applied to hl-a's frames")
        assert target_error_mm(first.T_sensor_model, scene.T_camera_model) < 2.0
        verdict = theatre.stream_until(lambda: theatre.verdict_for(seq), "the verdict")
        assert verdict.accepted and verdict.source == "tracker-1"
    (requested,) = [e for e in theatre.events("navigation requested") if e.actor == "tracker-1"]
    assert requested.detail["world_of"] == "hl-a"


def test_a_trace_in_another_headsets_world_is_refused(theatre: Theatre) -> None:
    scene, session = theatre.scene, theatre.session
    starts = len([r for r in session.records() if r.event == "navigation"])
    seq = theatre.headset.send_registration(scene.traces["lines"], scene.landmarks(scene.T_world_model, 5), "hl-z")
    verdict = theatre.stream_until(lambda: theatre.verdict_for(seq), "the refusal")
    assert not verdict.accepted and verdict.verdict == (
        "refused (landmarks + trace): the points are in hl-z's world, and this session registers hl-a's depth frames"
    )
    last = session.records()[-1].pose_seq
    theatre.stream_until(lambda: len(_after(session.records(), last)) >= 3, "poses after the refusal")
    assert len([r for r in session.records() if r.event == "navigation"]) == starts


# ------------------------------------------------------------------ Slicer point lists
def test_slicer_landmarks_and_trace_start_tracking_at_the_right_pose(
    tmp_path: Path, head_folder: Path, scene: Scene
) -> None:
    slicer = {"enabled": True, "port": 0, "accept_landmarks": True, "wire_frame": "RAS"}
    with _theatre(tmp_path, head_folder, scene, slicer) as theatre:
        session = theatre.session
        assert session.slicer is not None
        peer = Peer(session.slicer.link.port)
        try:
            # Both lists in the sensor frame of the headset's depth camera (never flipped).
            marks = scene.landmarks(scene.T_camera_model, seed=3)
            points = np.array(list(marks.values()))
            peer.send(pyigtl.PointMessage(positions=points, names=list(marks), device_name="LandmarksSensor"))
            wait_for(lambda: theatre.events("slicer.landmarks"), "the landmarks audited")
            trace = scene.traces["slicer lines"]
            peer.send(pyigtl.PointMessage(positions=trace, device_name="SurfaceTrace"))
            said = peer.inbox.wait(
                lambda m: m.device_name == "RegistrationVerdict" and "registering" not in m.string, "the verdict"
            )
            assert said.string.startswith("accepted (landmarks + trace)"), said.string

            first = theatre.started_after(-1, "the tracker started from Slicer's registration")
            assert target_error_mm(first.T_sensor_model, scene.T_camera_model) < 2.0
            assert theatre.headset.wait_for(lambda: theatre.verdict_for(-1) is not None, 5.0)  # headsets told too
        finally:
            peer.stop()
        (received,) = theatre.events("slicer.trace")
        assert received.detail["accepted"] and received.detail["n_points"] == len(trace)
        assert sorted(received.detail["landmarks"]) == sorted(marks)
        (registered,) = theatre.events("navigation registered")
        assert (registered.role, registered.detail["method"], registered.detail["status"]) == (
            "slicer",
            "landmarks + trace",
            "tracking",
        )
        for event in (received, registered, *theatre.events("navigation requested")):
            _only_words_and_numbers(event)
        methods = [str(e.detail.get("method")) for e in theatre.events("registration initialised")]
        assert "navigation (landmarks + trace) from slicer" in methods


def test_slicer_trace_is_refused_without_the_landmarks_permission(
    tmp_path: Path, head_folder: Path, scene: Scene
) -> None:
    slicer = {"enabled": True, "port": 0, "accept_landmarks": False, "wire_frame": "RAS"}
    with _theatre(tmp_path, head_folder, scene, slicer) as theatre:
        assert theatre.session.slicer is not None
        peer = Peer(theatre.session.slicer.link.port)
        try:
            peer.send(pyigtl.PointMessage(positions=scene.traces["slicer dots"], device_name="SurfaceTrace"))
            (refused,) = wait_for(lambda: theatre.events("slicer.trace"), "the refusal audited")
        finally:
            peer.stop()
        assert refused.detail["accepted"] is False and "not allowed" in refused.detail["reason"]
        assert theatre.events("navigation requested") == []
        assert theatre.session.navigation.last is None
