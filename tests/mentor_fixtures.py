"""Mentor-test helpers: a known scene (sphere), a running server, a Python WebRTC viewer, Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headset_bridge.messages import Annotation
from mentor.anchoring import FramePose, MeshRayCaster
from mentor.config import MentorConfig
from mentor.room import MentorRoom
from mentor.server import MentorServer
from mentor.tokens import issue, new_secret
from registration.depth import PinholeIntrinsics
from scrubin.audit import AuditLog

CHROMIUM = Path("/usr/bin/chromium")
CAMERA = PinholeIntrinsics(width=640, height=480, fx=520.0, fy=518.0, cx=319.5, cy=239.5)
SPHERE_CENTRE_MODEL = np.array([10.0, -20.0, 30.0])
SPHERE_RADIUS_MM = 60.0
SESSION = "theatre-1"

# The flag list from ../shared/notes/webrtc-in-a-real-browser.md (Playwright's own defaults off).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-field-trial-config",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    "--hide-scrollbars",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns,OptimizationHints,MediaRouter,Translate,"
    "NetworkTimeServiceQuerying,AutofillServerCommunication",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    "--remote-debugging-pipe",
]


def rigid(rotvec: tuple[float, float, float], translation: tuple[float, float, float]) -> np.ndarray:
    theta = float(np.linalg.norm(rotvec))
    axis = np.asarray(rotvec) / theta
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    T = np.eye(4)
    T[:3, :3] = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k
    T[:3, 3] = translation
    return T


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera pose (OpenCV: z forward, y down) at ``eye`` looking at ``target``."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, -1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = eye
    return T


@dataclass(frozen=True)
class Scene:
    """A sphere (model frame) placed in the world, seen by a camera 300 mm away."""

    caster: MeshRayCaster
    T_world_model: np.ndarray
    T_world_camera: np.ndarray

    def pose(self, status: str = "tracking") -> FramePose:
        return FramePose(self.T_world_camera, self.T_world_model, status)

    def expected_hit(self, u: float, v: float) -> np.ndarray | None:
        """Analytic ray-sphere hit in model mm (independent of the mesh and the module)."""
        d_cam = np.array([(u - CAMERA.cx) / CAMERA.fx, (v - CAMERA.cy) / CAMERA.fy, 1.0])
        T = np.linalg.inv(self.T_world_model) @ self.T_world_camera
        o, d = T[:3, 3], T[:3, :3] @ (d_cam / np.linalg.norm(d_cam))
        oc = o - SPHERE_CENTRE_MODEL
        b = float(d @ oc)
        disc = b * b - float(oc @ oc) + SPHERE_RADIUS_MM**2
        if disc < 0:
            return None
        hit: np.ndarray = o + (-b - np.sqrt(disc)) * d
        return hit


def make_scene() -> Scene:
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh.create_sphere(radius=SPHERE_RADIUS_MM, resolution=60)
    mesh.translate(SPHERE_CENTRE_MODEL)
    caster = MeshRayCaster(np.asarray(mesh.vertices), np.asarray(mesh.triangles))
    T_world_model = rigid((0.2, -0.4, 0.3), (100.0, 50.0, -20.0))
    centre_world = (T_world_model @ np.append(SPHERE_CENTRE_MODEL, 1.0))[:3]
    T_world_camera = look_at(centre_world + np.array([40.0, -300.0, 60.0]), centre_world)
    return Scene(caster, T_world_model, T_world_camera)


@dataclass
class Published:
    """Stands in for the bridge where a test only needs to see what was published."""

    ops: list[tuple[str, Annotation | str]] = field(default_factory=list)

    def __call__(self, op: str, ann: Annotation | str) -> None:
        self.ops.append((op, ann))


@dataclass
class Served:
    server: MentorServer
    room: MentorRoom
    secret: bytes
    url: str
    audit_path: Path

    def token(self, role: str = "mentor", name: str = "dr-m", ttl_s: float = 600.0) -> str:
        return issue(self.secret, self.room.session, role, name, ttl_s)  # type: ignore[arg-type]


def serve(
    scene: Scene, tmp: Path, publish: Callable[..., object], publish_voice: Callable[..., object] | None = None
) -> Served:
    secret = new_secret()
    audit_path = tmp / f"{SESSION}.audit.sqlite"
    room = MentorRoom(SESSION, secret, scene.caster, CAMERA, publish, AuditLog(audit_path), publish_voice=publish_voice)
    server = MentorServer(MentorConfig())
    server.add_room(room)
    url = server.start()
    return Served(server, room, secret, url, audit_path)


def stop(served: Served) -> None:
    served.server.stop()
    if served.room.audit is not None:
        served.room.audit.close()


def audit_events(path: Path, pred: Callable[[list[Any]], bool], timeout_s: float = 5.0) -> list[Any]:
    """The session's audit events once ``pred(events)`` holds (rows are written off the loop)."""
    from scrubin.audit import read_events

    deadline = time.monotonic() + timeout_s
    while True:
        events = list(read_events(path)) if path.exists() else []
        if pred(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.02)  # polling a file with a deadline, not a timed wait for an event


def post(url: str, body: dict[str, Any] | bytes, token: str | None) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def synthetic_frame(t_ns: int, width: int = 640, height: int = 480) -> np.ndarray:
    """A frame with structure (the encoder needs something) and a moving bar."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img[:, :, 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    x = (t_ns // 10_000_000) % width
    img[:, max(0, x - 8) : x + 8, 2] = 255
    return img


class FramePump:
    """Pushes video frames and poses into a room at ~fps from a thread, like the bridge would."""

    def __init__(self, room: MentorRoom, scene: Scene, fps: float = 30.0) -> None:
        import threading

        self.room, self.scene, self.period = room, scene, 1.0 / fps
        self.pushed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FramePump:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))  # pacing at fps, not synchronisation
            t = time.monotonic_ns()
            self.room.push_pose(t, self.scene.pose())
            self.room.push_video(self.frame(t), t)
            self.pushed += 1

    def frame(self, t_ns: int) -> np.ndarray:
        """The video frame pushed at monotonic time ``t_ns`` (benchmarks stamp theirs)."""
        return synthetic_frame(t_ns)


class HeadsetPoller:
    """Polls a reference headset client continuously from one thread, as a headset app would.

    A client left unpolled for seconds fills its SUB queue; libzmq 4.3 then aborts the
    process on resume (``_input_stopped``, stream_engine_base.cpp) with CURVE sockets.
    """

    def __init__(self, client: Any) -> None:
        import threading

        self.client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.client.poll(0.005)

    def wait_for(self, pred: Callable[[Any], bool], timeout_s: float = 5.0) -> bool:
        """Wait (deadline, short waits) until ``pred(client)`` holds; reads only."""
        deadline = time.monotonic() + timeout_s
        while not pred(self.client):
            if time.monotonic() > deadline:
                return False
            self._stop.wait(0.01)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- a Python WebRTC viewer (aiortc), for tests that do not need a browser ------------------
class PyViewer:
    """A mentor page stand-in: video receive, data channel, optional audio send and receive."""

    def __init__(self, base_url: str, session: str, token: str, quality: str = "high") -> None:
        self.base_url, self.session, self.token, self.quality = base_url, session, token, quality
        self.messages: list[dict[str, Any]] = []
        self.frames = 0
        self.audio: list[Any] = []  # av.AudioFrame from the theatre (headset microphone)
        self.pc: Any = None
        self.channel: Any = None
        self.opened = asyncio.Event()
        self.answer: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, audio_track: Any = None, decode: bool = True, listen: bool = False) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")  # also in annotation-only mode: switchable
        if audio_track is not None:
            self.pc.addTrack(audio_track)
        elif listen:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.channel = self.pc.createDataChannel("mentor", ordered=True)
        self.channel.on("open", self.opened.set)
        self.channel.on("message", lambda m: self.messages.append(json.loads(m)))
        self.pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._consume(track, decode))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"type": "offer", "sdp": self.pc.localDescription.sdp, "quality": self.quality}
        loop = asyncio.get_running_loop()
        url = f"{self.base_url}/s/{self.session}/offer"
        status, answer = await loop.run_in_executor(None, post, url, body, self.token)
        if status != 200:
            msg = f"offer refused with {status}: {answer}"
            raise RuntimeError(msg)
        self.answer = answer
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.wait_for(self.opened.wait(), 10)

    async def _consume(self, track: Any, decode: bool) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                if track.kind == "audio":
                    self.audio.append(frame)
                else:
                    self.frames += 1

    def send(self, payload: dict[str, Any]) -> None:
        self.channel.send(json.dumps(payload))

    async def wait_for(self, pred: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.pc is not None:
            await self.pc.close()


# -- Chromium through Playwright ----------------------------------------------------------
@contextlib.contextmanager
def chromium_page(extra_flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """A page in a fresh headless Chromium (system binary, our full flag list)."""
    import os

    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    profile = tempfile.mkdtemp(prefix="mentor-chromium-")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM),
                ignore_default_args=True,
                args=[*CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra_flags, "about:blank"],
                timeout=30_000,
            )
            try:
                # The page's CSP forbids eval; Playwright's wait_for_function needs it (test-only bypass).
                context = browser.new_context(bypass_csp=True)
                page = context.new_page()
                page.set_default_timeout(15_000)
                yield page
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def click_video(page: Any, u: float, v: float) -> dict[str, Any]:
    """Click video pixel (u, v) as a user would; the page's acknowledgement of the mark."""
    n = page.evaluate("mentor.acks.length")
    pt = page.evaluate(f"mentor.screenPoint({u}, {v})")
    page.mouse.click(pt["x"], pt["y"])
    page.wait_for_function(f"mentor.acks.length > {n}")
    ack: dict[str, Any] = page.evaluate("mentor.acks[mentor.acks.length - 1]")
    return ack
