"""The demo headset at the sensor's rate: its looped trajectory, the loop's cache and the
frame pacing (``scrubin.demo_trajectory``). Pacing runs on an injected clock: no timing
is asserted here (the achieved rate is the demo's own figure)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from scrubin import demo_trajectory
from scrubin.demo_trajectory import (
    VIDEO_H,
    VIDEO_W,
    Cursor,
    Loop,
    LoopCacheError,
    LoopSpec,
    Pacer,
    load_loop,
    loop_pose,
    occluder_time_ns,
    open_loop,
    save_loop,
)


def _fake_sim() -> SimpleNamespace:
    """The parts of a HeadsetSimulator that the trajectory reads."""
    return SimpleNamespace(
        up=np.array([0.0, 0.0, 1.0]),
        view_dir=np.array([0.0, -1.0, 0.0]),
        sweep=np.radians(25.0),
        distance_mm=400.0,
        focus=np.array([5.0, -80.0, -100.0]),
    )


def _synthetic_loop(n: int = 5) -> Loop:
    rng = np.random.default_rng(3)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, 3] = rng.normal(size=(n, 3))
    return Loop(
        depth=rng.integers(0, 2000, size=(n, 8, 6), dtype=np.uint16),
        video=rng.integers(0, 255, size=(n, VIDEO_H, VIDEO_W), dtype=np.uint8),
        T_sensor_model=poses,
        intrinsics=(5.0, 5.0, 3.0, 4.0),
        rate_hz=45.0,
    )


# ------------------------------------------------------------------ trajectory
def _translation_step(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.linalg.inv(a)[:3, 3] - np.linalg.inv(b)[:3, 3]))  # camera centres


def test_the_loop_closes_on_itself() -> None:
    sim, spec = _fake_sim(), LoopSpec()
    n = spec.frames
    poses = [loop_pose(sim, spec, k / spec.rate_hz) for k in range(n)]
    # One loop later the pose is the first again, so frame n-1 -> frame 0 is one ordinary step.
    np.testing.assert_allclose(loop_pose(sim, spec, spec.seconds), poses[0], atol=1e-9)
    steps = [_translation_step(poses[k], poses[k + 1]) for k in range(n - 1)]
    wrap = _translation_step(poses[-1], poses[0])
    assert 0 < wrap <= 1.5 * max(steps), (wrap, max(steps))
    assert min(steps) > 0  # the camera keeps moving: no frozen stretch
    travel = max(_translation_step(poses[0], p) for p in poses)
    assert travel > 50.0  # it sweeps around the head, it does not jitter in place
    # The hands and the instrument (driven by the simulator's timestamp) come back too.
    assert occluder_time_ns(spec, spec.seconds) == occluder_time_ns(spec, 0.0)
    assert occluder_time_ns(spec, spec.seconds / 4) != occluder_time_ns(spec, 0.0)


def test_a_loop_spec_refuses_too_few_frames() -> None:
    with pytest.raises(ValueError, match="0.01"):
        _ = LoopSpec(seconds=0.01).frames


# ------------------------------------------------------------------ cache
def test_cache_round_trip_whole_and_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_trajectory, "CHUNK_FRAMES", 2)  # 5 frames: three chunks
    loop = _synthetic_loop(5)
    path = tmp_path / "loops" / "loop-a.npz"
    save_loop(path, loop, "key-a")
    back, available = load_loop(path, "key-a", (8, 6))
    assert available == 5
    for name in ("depth", "video", "T_sensor_model"):
        np.testing.assert_array_equal(getattr(back, name), getattr(loop, name))
        assert getattr(back, name).dtype == getattr(loop, name).dtype
    assert back.intrinsics == loop.intrinsics and back.rate_hz == 45.0
    assert [p.name for p in path.parent.iterdir()] == ["loop-a.npz"]  # no temporary file left behind

    # A run stopped early caches what it rendered; the next one gets it back, the rest blank.
    save_loop(path, loop, "key-a", available=2)
    part, available = load_loop(path, "key-a", (8, 6))
    assert available == 2 and len(part) == 5
    np.testing.assert_array_equal(part.depth[:2], loop.depth[:2])
    assert not part.depth[2:].any()


def test_a_cached_loop_for_another_key_or_damaged_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop-a.npz"
    save_loop(path, _synthetic_loop(3), "key-a")
    with pytest.raises(LoopCacheError, match="key"):
        load_loop(path, "key-b", (8, 6))
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(LoopCacheError, match="unreadable"):
        load_loop(path, "key-a", (8, 6))


def test_saving_a_new_loop_removes_the_stale_one(tmp_path: Path) -> None:
    save_loop(tmp_path / "loop-old.npz", _synthetic_loop(2), "old")
    save_loop(tmp_path / "loop-new.npz", _synthetic_loop(2), "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop-new.npz"]


def test_first_run_renders_in_the_background_and_the_next_run_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registration_fixtures import head_model

    monkeypatch.setattr(demo_trajectory, "CHUNK_FRAMES", 2)

    model = head_model(40)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "skin.ply").write_bytes(b"the model's files are hashed into the key")
    spec = LoopSpec(seconds=0.1, rate_hz=45.0)  # 4 frames
    first = open_loop(model, folder, tmp_path / "cache", spec)
    assert not first.cached and first.available() >= 1  # frame 0 at once, the rest behind
    assert first.wait(60.0) and first.complete and first.path.exists(), first.error
    first.close()
    assert first.error is None
    depth = first.loop.depth.copy()
    assert (depth > 0).any(axis=(1, 2)).all()  # every frame sees something
    monkeypatch.setattr(demo_trajectory, "READ_AHEAD", 1)
    second = open_loop(model, folder, tmp_path / "cache", spec)
    assert second.cached and second.path == first.path
    assert second.available() == 2  # the first chunk at once, the next only when the stream nears it
    assert second.wait(60.0) and second.complete  # read in the background, nothing rendered
    assert second.render_s is None
    np.testing.assert_array_equal(second.loop.depth, depth)
    np.testing.assert_array_equal(second.loop.T_sensor_model, first.loop.T_sensor_model)
    # A run stopped early left half of it: the next one renders the rest, the same frames.
    save_loop(first.path, first.loop, first.key, available=2)
    resumed = open_loop(model, folder, tmp_path / "cache", spec)
    assert not resumed.cached and resumed.available() >= 2
    assert resumed.wait(60.0) and load_loop(resumed.path, resumed.key, depth.shape[1:])[1] == 4, resumed.error
    resumed.close()
    np.testing.assert_array_equal(resumed.loop.depth, depth)  # each frame's noise is its own
    # Another model renders its own loop.
    (folder / "skin.ply").write_bytes(b"another model")
    third = open_loop(model, folder, tmp_path / "cache", spec)
    third.close()
    assert not third.cached and third.path != first.path


# ------------------------------------------------------------------ pacing
class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def test_deadlines_do_not_drift_when_frames_go_out_late() -> None:
    clock = FakeClock()
    pacer = Pacer(45.0, clock)
    start = clock.now
    for k in range(450):
        clock.now = max(clock.now, pacer.due_ns())  # wait for the deadline ...
        assert pacer.wait_s() == 0.0
        assert pacer.take() == k
        clock.now += 7_000_000  # ... and spend 7 ms sending (late, but within the period)
    # Ten seconds of frames end ten seconds after the start: sleep(1/45) after each send would be 3 s late.
    assert pacer.due_ns() == start + round(450 * 1e9 / 45.0)
    assert pacer.skipped == 0


def test_a_missed_deadline_skips_the_slot_instead_of_a_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(45.0, clock)
    assert pacer.take() == 0
    assert pacer.wait_s() == pytest.approx(1 / 45.0)
    clock.now += round(3.5e9 / 45.0)  # the process was not scheduled for 3.5 periods
    assert pacer.take() == 3  # the newest due slot, not 1, 2, 3 in a row
    assert pacer.skipped == 2
    assert pacer.wait_s() == pytest.approx(0.5 / 45.0)


def test_a_pacer_refuses_a_rate_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="-45"):
        Pacer(-45.0)


def test_cursor_moves_forward_at_the_renderers_pace_then_round_the_loop() -> None:
    cursor = Cursor(10)
    shown = []
    for slot in range(60):
        available = min(10, 1 + slot // 4)  # rendering is slower than the stream
        shown.append((cursor.advance(1, available), available))
    ks = [k for k, _ in shown]
    assert all(k < avail for k, avail in shown)  # never a frame not yet rendered
    # Forward only, at most one frame a slot (9 -> 0 is one step: the loop closes on itself).
    assert all((b - a) % 10 in (0, 1) for a, b in zip(ks, ks[1:], strict=False))
    assert ks[-1] == 9 or set(ks) >= set(range(10))  # it kept up with the renderer
    full = [cursor.advance(1, 10) for _ in range(25)]
    assert all((b - a) % 10 == 1 for a, b in zip(full, full[1:], strict=False))  # every slot a new frame
    assert set(full) == set(range(10))
    assert Cursor(10).advance(3, 10) == 2  # skipped slots move the trajectory on
    assert Cursor(10).advance(3, 2) == 1  # but not past what is rendered
