"""``scrubin serve``: isolated sessions, one clear line for a second instance, clean SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from waiting import until as _until

from headset_bridge.client import ClientConfig, HeadsetClient
from headset_bridge.keys import load_keypair, write_keypair
from headset_bridge.messages import Annotation
from mentor.tokens import TokenError, issue
from scrubin.audit import audit_path, read_events
from scrubin.config import Settings, load_settings
from scrubin.service import Service, ServiceError

REPO = Path(__file__).resolve().parents[1]


def tiny_model(folder: Path) -> Path:
    """A small sphere as a patient-model folder: enough for a session, quick to prepare."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh.create_sphere(80.0, resolution=20)
    mesh.compute_vertex_normals()
    (folder / "meshes").mkdir(parents=True)
    o3d.io.write_triangle_mesh(str(folder / "meshes" / "skin.ply"), mesh)
    (folder / "model.glb").write_bytes(b"glTF-not-really")  # the bridge only hashes and chunks it
    manifest = {
        "schema_version": 1,
        "units": "mm",
        "frame": "LPS",
        "meshes": [{"name": "skin", "files": {"ply": "meshes/skin.ply"}}],
        "landmarks": {"targets": [{"name": "lesion", "position_mm": [0.0, 0.0, 0.0]}], "fiducials": []},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "sphere")


def _settings(tmp: Path, model: Path, names: tuple[str, ...], ports: list[int] | None = None, **kw: Any) -> Settings:
    ports = ports or [0] * (2 * len(names))
    sessions = [
        {"name": n, "model": str(model), "pub_port": ports[2 * i], "ctl_port": ports[2 * i + 1]}
        for i, n in enumerate(names)
    ]
    return load_settings(None, state_dir=tmp / "state", cache_dir=tmp / "cache", sessions=sessions, **kw)


def _client(service: Service, session: str, secret: Path) -> HeadsetClient:
    s = service.sessions[session]
    cfg = ClientConfig(s.bridge.pub_endpoint, s.bridge.ctl_endpoint, s.keys.server.public)
    return HeadsetClient(load_keypair(secret), cfg)


def test_sessions_are_isolated(tmp_path: Path, model_dir: Path) -> None:
    settings = _settings(tmp_path, model_dir, ("or-a", "or-b"), mentor={"enabled": False})
    # The headset is allowed in session A only: its public key goes into A's allowlist folder.
    _, secret = write_keypair(tmp_path / "state" / "keys" / "or-a" / "headsets", "h1")
    with Service(settings) as service:
        a, b = service.sessions["or-a"], service.sessions["or-b"]
        assert a.keys.server.public != b.keys.server.public
        assert a.keys.token_secret != b.keys.token_secret
        with _client(service, "or-a", secret) as in_a, _client(service, "or-b", secret) as in_b:
            assert in_a.wait_for(lambda: in_a.epoch == a.bridge.epoch, 5.0)
            # Session B refuses the key at the CURVE handshake: it sends nothing, hears nothing.
            assert not in_b.wait_for(lambda: in_b.epoch is not None, 1.0)
            assert b.bridge.headsets() == {}
        token_a = a.issue_token("mentor", "dr-a")
        assert a.verify_token(token_a).name == "dr-a"
        with pytest.raises(TokenError, match="invalid token signature"):
            b.verify_token(token_a)
        forged = issue(b.keys.token_secret, "or-a", "mentor", "dr-b")  # right name, wrong secret
        with pytest.raises(TokenError, match="invalid token signature"):
            a.verify_token(forged)
        ann = Annotation("m1", "point", "dr-a", "mentor", ((1.0, 2.0, 3.0),), time.time_ns())
        a.publish_annotation("add", ann)
        assert a.bridge.annotations[0] == 1 and b.bridge.annotations[0] == 0
    actions = {
        name: [e.action for e in read_events(audit_path(tmp_path / "state" / "audit", name))]
        for name in ("or-a", "or-b")
    }
    assert "annotation add" in actions["or-a"] and "annotation add" not in actions["or-b"]
    assert actions["or-a"][-1] == actions["or-b"][-1] == "session stopped"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_second_instance_on_the_same_ports_fails_clearly(tmp_path: Path, model_dir: Path) -> None:
    ports = _free_ports(2)
    settings = _settings(tmp_path, model_dir, ("or-1",), ports, mentor={"enabled": False})
    with Service(settings):
        second = _settings(tmp_path / "2", model_dir, ("or-1",), ports, mentor={"enabled": False})
        with pytest.raises(ServiceError) as err:
            Service(second).start()
        assert str(err.value) == (
            f"session 'or-1': port in use on 127.0.0.1:{ports[0]}/{ports[1]} (is another scrubin serve running?)"
        )
        config = tmp_path / "second.toml"
        config.write_text(
            f'state_dir = "{tmp_path / "3"}"\n[mentor]\nenabled = false\n'
            f'[[sessions]]\nname = "or-1"\nmodel = "{model_dir}"\npub_port = {ports[0]}\nctl_port = {ports[1]}\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "scrubin.cli", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {err.value}"]


def _lines(stream: IO[str], out: queue.Queue[str]) -> None:
    for line in stream:
        out.put(line)


def _wait_line(lines: queue.Queue[str], want: str, timeout_s: float, prefix: bool = False) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if line.strip() == want or (prefix and line.startswith(want)):
            return seen
    pytest.fail(f"no {want!r} line within {timeout_s} s; got {seen!r}")


def test_sigterm_stops_cleanly_with_the_audit_flushed(tmp_path: Path, model_dir: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nstatus_interval_s = 0.2\n[mentor]\nport = 0\n'
        f'[[sessions]]\nname = "or-t"\nmodel = "{model_dir}"\npub_port = 0\nctl_port = 0\n'
    )
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scrubin.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        seen = _wait_line(lines, "ready", 60.0)
        assert any(line.startswith("session or-t: pub tcp://127.0.0.1:") for line in seen)
        assert any("headset allowlist:" in line for line in seen)
        # The status line says when the background model load is done: stop a running session.
        _wait_line(lines, "or-t: lost | model loaded", 30.0, prefix=True)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    log = audit_path(tmp_path / "state" / "audit", "or-t")
    events = list(read_events(log))  # verifies the hash chain too
    actions = [e.action for e in events]
    assert actions[0] == "session started" and "model loaded" in actions and actions[-1] == "session stopped"
    assert not Path(f"{log}-wal").exists() or Path(f"{log}-wal").stat().st_size == 0  # checkpointed on close
    reader.join(timeout=10)  # stdout is closed: everything printed is queued
    rest = "".join(_drain(lines))
    assert "stopped: sockets closed, audit logs closed" in rest
    keys = tmp_path / "state" / "keys" / "or-t"
    assert (keys / "server.key_secret").stat().st_mode & 0o077 == 0
    assert (keys / "token.secret").stat().st_mode & 0o077 == 0
    assert events[-1].detail["frames"] == 0  # no headset ever sent depth


def _drain(lines: queue.Queue[str]) -> list[str]:
    out = []
    while True:
        try:
            out.append(lines.get_nowait())
        except queue.Empty:
            return out


def test_useless_depth_frames_get_lost_poses_and_the_loop_survives(tmp_path: Path, model_dir: Path) -> None:
    settings = _settings(tmp_path, model_dir, ("or-d",), mentor={"enabled": False})
    _, secret = write_keypair(tmp_path / "state" / "keys" / "or-d" / "headsets", "h1")
    with Service(settings) as service, _client(service, "or-d", secret) as headset:
        session = service.sessions["or-d"]
        assert session.model_ready.wait(30)
        assert headset.wait_for(lambda: headset.clock.synced, 5.0)
        rng = np.random.default_rng(0)
        frames = [np.zeros((64, 64), np.uint16), rng.integers(0, 65535, (64, 64), dtype=np.uint16)]
        for depth in frames:
            sent = headset.send_depth(depth, np.eye(4), (50.0, 50.0, 31.5, 31.5))
            assert headset.wait_for(lambda s=sent: headset.view().sensor_frame_seq == s, 10.0)
            view = headset.view()
            assert view.status == "lost" and not view.live
        # The pose leaves before the loop files its record: wait for the record too.
        assert _until(lambda: len(session.records()) == 2, 5.0)
        records = session.records()
        assert [r.status for r in records] == ["lost", "lost"]
        assert records[0].event == "init"
    actions = [e.action for e in read_events(audit_path(tmp_path / "state" / "audit", "or-d"))]
    assert "sensor selected" in actions and "registration initialised" in actions


def head_model_folder(folder: Path) -> Path:
    """The registration tests' analytic head (nose, ears: a trackable shape) as a model folder."""
    import open3d as o3d
    from registration_fixtures import DEEP_TARGET, head_mesh

    V, F = head_mesh(60)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(V), o3d.utility.Vector3iVector(F))
    tiny_model(folder)
    o3d.io.write_triangle_mesh(str(folder / "meshes" / "skin.ply"), mesh)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["landmarks"]["targets"] = [{"name": "lesion", "position_mm": DEEP_TARGET.tolist()}]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_lost_tracking_reinitialises_from_the_last_trusted_pose(tmp_path: Path) -> None:
    """Tracking, then the view is blocked (lost), then free again while the headset moved:
    the loop re-initialises from the last trusted world pose and tracks again, accurately."""
    from registration import SurfaceModel
    from registration.frames import invert
    from registration.simulator import HeadsetSimulator

    folder = head_model_folder(tmp_path / "head")
    reg = {"init": "seed", "seed_T_world_model": np.eye(4).tolist(), "reinit_after_lost": 3}
    sessions = [{"name": "or-r", "model": str(folder), "pub_port": 0, "ctl_port": 0, "registration": reg}]
    settings = load_settings(None, state_dir=tmp_path / "state", mentor={"enabled": False}, sessions=sessions)
    _, secret = write_keypair(tmp_path / "state" / "keys" / "or-r" / "headsets", "h1")
    model = SurfaceModel.from_folder(folder, grid_mm=8.0, band_mm=8.0)  # only ray-cast here: coarse is enough
    sim = HeadsetSimulator(model, seed=3)
    truth: dict[int, np.ndarray] = {}
    with Service(settings) as service, _client(service, "or-r", secret) as headset:
        session = service.sessions["or-r"]
        assert session.model_ready.wait(30) and headset.wait_for(lambda: headset.clock.synced, 5.0)
        for k in range(18):
            f = sim.render(sim.pose(k / 45.0), k)
            blocked = 6 <= k < 10  # a drape over the whole view: no depth at all
            depth = np.zeros_like(f.depth.depth) if blocked else f.depth.depth
            K = f.depth.intrinsics
            seq = headset.send_depth(depth, invert(f.T_sensor_model), (K.fx, K.fy, K.cx, K.cy))
            truth[seq] = f.T_sensor_model
            assert headset.wait_for(lambda s=seq: headset.view().sensor_frame_seq == s, 10.0)
        assert _until(lambda: len(session.records()) == 18, 5.0)
    records = session.records()
    status = [r.status for r in records]
    reasons = [(r.status, r.event, round(r.predicted_tre_mm, 2), r.tracker_ms) for r in records]
    assert status[5] == "tracking" and status[6:10] == ["lost"] * 4 and status[-1] == "tracking", reasons
    assert [r.event for r in records].count("reinit") == 1
    target = np.append(model.target("lesion"), 1.0)
    tre = [np.linalg.norm((r.T_sensor_model @ target - truth[r.frame_seq] @ target)[:3]) for r in records]
    assert max(t for t, s in zip(tre, status, strict=True) if s == "tracking") < 1.0
    actions = list(read_events(audit_path(tmp_path / "state" / "audit", "or-r")))
    methods = [e.detail["method"] for e in actions if e.action == "registration initialised"]
    assert methods == ["seed", "last trusted pose"]


def test_headset_microphone_reaches_a_mentor_through_the_service(tmp_path: Path, model_dir: Path) -> None:
    """The whole path: headset ``send_audio`` -> CURVE uplink -> the session's media relay ->
    the mentor room -> WebRTC (Opus) -> a listening viewer hears the same 440 Hz tone."""
    import asyncio

    from mentor_fixtures import PyViewer
    from test_mentor_voice import _peak_hz, _tone_chunks

    settings = _settings(tmp_path, model_dir, ("or-v",), mentor={"port": 0})
    _, secret = write_keypair(tmp_path / "state" / "keys" / "or-v" / "headsets", "h1")
    with Service(settings) as service, _client(service, "or-v", secret) as headset:
        assert headset.wait_for(lambda: headset.epoch is not None, 5.0)
        assert service.sessions["or-v"].model_ready.wait(30)  # the room opens with the model
        url, token = service.mentor_link("or-v", "observer", "obs")
        assert url is not None

        def microphone() -> None:  # the headset app's audio thread: 20 ms chunks, polled socket
            for chunk in _tone_chunks(150):
                headset.send_audio(chunk, 16_000)
                headset.poll(0.02)  # pacing at the microphone's rate, not synchronisation

        async def listen() -> PyViewer:
            viewer = PyViewer(url.split("/s/")[0], "or-v", token, quality="none")
            await viewer.connect(listen=True)
            loop = asyncio.get_running_loop()
            mic = loop.run_in_executor(None, microphone)
            heard = await viewer.wait_for(lambda: len(viewer.audio) >= 60, 15.0)
            await mic
            await viewer.close()
            assert heard, len(viewer.audio)
            return viewer

        viewer = asyncio.run(listen())
    assert abs(_peak_hz(viewer.audio[10:]) - 440.0) < 15.0
