"""A room without a network: which pose a mark uses, 2D fallbacks, dedupe, roles, audit."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from mentor_fixtures import CAMERA, SESSION, Published, Scene, make_scene, rigid, synthetic_frame

from mentor.frameclock import FrameClock
from mentor.room import MentorRoom
from mentor.signalling import Annotate, Erase, Restore
from mentor.tokens import issue, new_secret, verify
from scrubin.audit import AuditLog, read_events


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


def _room(scene: Scene, tmp_path: Path) -> tuple[MentorRoom, Published, bytes]:
    secret, published = new_secret(), Published()
    room = MentorRoom(SESSION, secret, scene.caster, CAMERA, published, AuditLog(tmp_path / "a.sqlite"))
    return room, published, secret


def _claims(secret: bytes, role: str = "mentor", name: str = "dr-m"):  # type: ignore[no-untyped-def]
    return verify(secret, issue(secret, SESSION, role, name), SESSION)  # type: ignore[arg-type]


def _mark(cid: str, u: float = 320.0, v: float = 240.0, **kw: object) -> Annotate:
    base = {"kind": "point", "uv": ((u, v),), "text": "", "color": "#ffcc00", "rtp_ts": None, "t_capture_ns": None}
    return Annotate(cid=cid, **{**base, **kw})  # type: ignore[arg-type]


def test_a_mark_uses_the_pose_of_the_clicked_frame_not_the_latest(scene: Scene, tmp_path: Path) -> None:
    room, published, secret = _room(scene, tmp_path)
    moved = rigid((0.0, 0.0, 0.3), (25.0, 0.0, 0.0)) @ scene.T_world_camera  # the headset turned later
    room.push_pose(1_000_000_000, scene.pose())
    room.push_pose(1_100_000_000, type(scene.pose())(moved, scene.T_world_model, "tracking"))
    ack = room.annotate(_claims(secret), _mark("c1", t_capture_ns=1_010_000_000))
    assert ack.anchored and ack.t_capture_ns == 1_010_000_000
    expected = scene.expected_hit(320.0, 240.0)
    assert expected is not None and np.linalg.norm(np.asarray(ack.point_model_mm) - expected) < 2.0
    assert published.ops[0][0] == "add"
    # The mentors see it where the *current* camera sees that model point: not at the click.
    item = room.marks_view()["items"][0]
    uv = item["uv"][0]
    assert abs(uv[0] - 320.0) > 20.0
    # Pages re-project the mark's model points with the status's P_image_model: same place.
    P = np.asarray(room.status_view()["P_image_model"])
    x, y, w = P @ np.append(item["points_mm"][0], 1.0)
    assert w > 0 and abs(x / w - uv[0]) < 0.2 and abs(y / w - uv[1]) < 0.2, (x / w, y / w, uv)


def test_status_without_a_pose_has_no_projection_and_2d_marks_carry_no_points(scene: Scene, tmp_path: Path) -> None:
    room, _, secret = _room(scene, tmp_path)
    assert room.status_view()["P_image_model"] is None
    room.annotate(_claims(secret), _mark("c1"))  # no pose at all: a 2D mark
    assert "points_mm" not in room.marks_view()["items"][0]


@pytest.mark.parametrize(
    ("status", "t_frame", "reason"),
    [
        ("degraded", 1_000_000_000, "registration was degraded when the frame was captured"),
        ("tracking", 2_000_000_000, "no pose within 100 ms of the frame"),
    ],
)
def test_marks_without_a_trustworthy_pose_stay_2d(
    scene: Scene, tmp_path: Path, status: str, t_frame: int, reason: str
) -> None:
    room, published, secret = _room(scene, tmp_path)
    room.push_pose(1_000_000_000, scene.pose(status))
    ack = room.annotate(_claims(secret), _mark("c1", t_capture_ns=t_frame))
    assert ack.ok and not ack.anchored and ack.reason == reason
    assert published.ops == []
    item = room.marks_view()["items"][0]
    assert item["anchored"] is False and item["uv"] == [[320.0, 240.0, True]]


def test_a_stroke_partly_off_the_model_stays_2d(scene: Scene, tmp_path: Path) -> None:
    room, published, secret = _room(scene, tmp_path)
    room.push_pose(1, scene.pose())
    ack = room.annotate(_claims(secret), _mark("s1", kind="stroke", uv=((320.0, 240.0), (330.0, 240.0), (2.0, 2.0))))
    assert not ack.anchored and ack.reason == "1 of 3 points: the ray missed the patient model"
    assert published.ops == []


def test_duplicates_observers_and_erase(scene: Scene, tmp_path: Path) -> None:
    room, published, secret = _room(scene, tmp_path)
    room.push_pose(1, scene.pose())
    mentor = _claims(secret)
    first = room.annotate(mentor, _mark("c1"))
    again = room.annotate(mentor, _mark("c1"))
    assert again.duplicate and again.id == first.id and len(published.ops) == 1
    refused = room.annotate(_claims(secret, "observer", "obs"), _mark("c2"))
    assert not refused.ok and refused.error == "role 'observer' cannot annotate"
    assert not room.erase(_claims(secret, "observer", "obs"), Erase("e0", first.id)).ok
    assert room.erase(mentor, Erase("e1", first.id)).ok
    assert published.ops[-1] == ("delete", first.id) and not room.marks
    missing = room.erase(mentor, Erase("e2", first.id))
    assert missing.error == f"no mark with id {first.id!r}"
    actions = [e.action for e in read_events(tmp_path / "a.sqlite")]
    assert actions == ["annotation", "refused_annotation", "refused_annotation", "erase"]


def test_frames_are_found_from_the_viewers_timestamps(scene: Scene, tmp_path: Path) -> None:
    room, _, secret = _room(scene, tmp_path)
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.integers(30_000_000, 36_000_000, 40)) + 5_000_000_000
    for t in times:
        room.push_video(synthetic_frame(int(t), 64, 48), int(t))
        room.push_pose(int(t), scene.pose())
    # Chromium reports microseconds with an offset of its own.
    offset_us = 123_456.0
    chrome = [t / 1000 - offset_us for t in times[-12:-4]]
    clock = FrameClock()
    ack = room.annotate(_claims(secret), _mark("c1", rtp_ts=chrome[2], rtp_recent=tuple(chrome)), clock)
    assert ack.t_capture_ns == int(times[-10]) and not clock.ambiguous
    # An aiortc receiver reports 90 kHz ticks since its first frame.
    ticks = [(int(t) - int(times[0])) * 9 / 100_000 for t in times[-8:]]
    clock2 = FrameClock()
    t = room.frame_time(_mark("c2", rtp_ts=ticks[0], rtp_recent=tuple(ticks)), clock2)
    assert t == (int(times[-8]), "") and clock2.scale == pytest.approx(1e6 / 90_000)
    unknown = room.annotate(_claims(secret), _mark("c3", rtp_ts=chrome[0] - 9e6), clock)
    assert not unknown.anchored and unknown.reason == "the clicked video frame is no longer known"


def test_push_video_and_pose_from_other_threads(scene: Scene, tmp_path: Path) -> None:
    room, _, _ = _room(scene, tmp_path)
    seen: list[int] = []
    room.video_listener = lambda rgb, t: seen.append(t)

    def pump(base: int) -> None:
        for i in range(200):
            room.push_pose(base + i, scene.pose())
            room.push_video(synthetic_frame(i, 32, 24), base + i)

    threads = [threading.Thread(target=pump, args=(k * 1000,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(seen) == 800 and room.capture_times() == sorted(room.capture_times())
    assert room.latest_pose() is not None and room.latest_pose()[0] == 3199  # type: ignore[index]
    with pytest.raises(ValueError, match=r"video frame must be \(H, W, 3\) uint8, got \(4, 4\) uint8"):
        room.push_video(np.zeros((4, 4), np.uint8), 1)


def test_status_goes_lost_when_poses_stop(scene: Scene, tmp_path: Path) -> None:
    room, _, _ = _room(scene, tmp_path)
    assert room.status_view()["tracking"] == "lost"
    room.push_pose(1_000_000_000, scene.pose())
    assert room.status_view(now_ns=1_100_000_000)["tracking"] == "tracking"
    assert room.status_view(now_ns=2_000_000_000)["tracking"] == "lost"


def test_a_failing_bridge_keeps_nothing_half_done(scene: Scene, tmp_path: Path) -> None:
    calls: list[str] = []

    def broken(op: str, ann: object) -> None:
        calls.append(op)
        msg = f"bridge server is not running (pub socket is {None!r})"
        raise RuntimeError(msg)

    room, _, secret = _room(scene, tmp_path)
    room.publish_annotation = broken
    room.push_pose(1, scene.pose())
    with pytest.raises(RuntimeError, match="bridge server is not running"):
        room.annotate(_claims(secret), _mark("c1"))
    assert calls == ["add"] and not room.marks
    # Not remembered either: the page's re-send is tried again, not answered from memory.
    room.publish_annotation = Published()
    assert room.annotate(_claims(secret), _mark("c1")).anchored


def test_an_erase_is_audited_with_both_names_and_only_its_eraser_restores_it(scene: Scene, tmp_path: Path) -> None:
    room, published, secret = _room(scene, tmp_path)
    room.push_pose(1_000_000_000, scene.pose())
    author, eraser = _claims(secret, name="dr-b"), _claims(secret, name="dr-a")
    mark = room.annotate(author, _mark("c1"))
    assert mark.anchored and room.erase(eraser, Erase("e1", mark.id)).ok
    refused = room.restore(author, Restore("r0", mark.id))  # not the one who erased it
    assert not refused.ok and refused.error == f"no mark {mark.id!r} erased by you"
    back = room.restore(eraser, Restore("r1", mark.id))
    assert back.ok and back.anchored and mark.id in room.marks
    assert [(op, getattr(a, "id", a)) for op, a in published.ops] == [
        ("add", mark.id),
        ("delete", mark.id),
        ("add", mark.id),
    ]
    assert room.restore(eraser, Restore("r1", mark.id)).duplicate  # a re-send is applied once
    assert room.marks_view()["items"][0]["created_ms"] > 0
    assert room.audit is not None
    room.audit.close()
    events = [e for e in read_events(tmp_path / "a.sqlite") if e.action in ("erase", "restore")]
    assert [(e.action, e.actor, e.detail["author"]) for e in events] == [
        ("erase", "dr-a", "dr-b"),
        ("restore", "dr-a", "dr-b"),
    ]


def test_failing_voice_is_one_log_line_without_a_traceback(
    scene: Scene, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def stopped_bridge(chunk: object) -> None:
        raise RuntimeError("bridge stopped")

    room = MentorRoom(SESSION, new_secret(), scene.caster, CAMERA, Published(), None, publish_voice=stopped_bridge)
    with caplog.at_level("WARNING", logger="mentor.room"):
        for _ in range(5):
            room.voice("dr-v", b"\0\0" * 160, 16_000)
    assert room.counters["voice_error"] == 5
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None
    assert "bridge stopped" in caplog.records[0].getMessage()


def test_a_video_frame_with_its_own_camera_anchors_with_that_camera(scene: Scene, tmp_path: Path) -> None:
    """docs/headset-protocol.md 6.2: a video frame may bring its intrinsics (in its own pixel
    size) and pose; a click on it anchors through that camera, not the configured one at the
    depth camera's pose."""
    from domain.camera import PinholeIntrinsics
    from mentor.anchoring import VideoCamera, projection_matrix

    room, _, secret = _room(scene, tmp_path)
    t = 1_000_000_000
    room.push_pose(t, scene.pose())
    target = scene.expected_hit(330.0, 250.0)  # a point on the sphere the depth camera sees
    assert target is not None
    T_video = rigid((0.0, 0.08, 0.0), (30.0, -10.0, 5.0)) @ scene.T_world_camera  # a camera beside it
    half = PinholeIntrinsics(320, 240, 260.0, 259.0, 159.5, 119.5)  # sent at half the page's size
    room.push_video(synthetic_frame(t), t, VideoCamera(half, T_video))
    P = projection_matrix(
        VideoCamera(half, T_video).scaled_to(CAMERA.width, CAMERA.height), T_video, scene.T_world_model
    )
    x, y, w = P @ np.append(target, 1.0)
    u, v = x / w, y / w
    assert 0 <= u < CAMERA.width and 0 <= v < CAMERA.height and abs(u - 330.0) > 20.0
    ack = room.annotate(_claims(secret), _mark("c1", u, v, t_capture_ns=t))
    assert ack.anchored and np.linalg.norm(np.asarray(ack.point_model_mm) - target) < 1.0, (ack, target)
    # The status's projection is the newest frame's camera: the page draws the mark there.
    P_page = np.asarray(room.status_view()["P_image_model"])
    xp, yp, wp = P_page @ np.append(target, 1.0)
    assert abs(xp / wp - u) < 0.5 and abs(yp / wp - v) < 0.5
    # Control: the same click on a frame without its own camera lands elsewhere.
    room.push_video(synthetic_frame(t + 1), t + 1)
    other = room.annotate(_claims(secret), _mark("c2", u, v, t_capture_ns=t + 1))
    assert other.point_model_mm is None or np.linalg.norm(np.asarray(other.point_model_mm) - target) > 5.0
