"""``scrubin demo``: the whole theatre loop on the built-in phantom, live, then a report.

Prepares the SYNTHETIC phantom (cached), starts the service with one session on ephemeral
loopback ports, runs the simulated headset (``scrubin.demo_headset``) as its own process,
prints the mentor link, shows per-hop latency, TRE against ground truth, status and frame
rate while it runs, and writes the report folder at the end.

A scripted mentor places one mark once tracking has held for a second: a click at the
centre of the newest video frame, anchored on the patient model through the pose at that
frame's capture time (``mentor.anchoring``), sent through the session's
``publish_annotation`` - the same path the mentor room uses - and checked on arrival at
the headset.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scrubin.config import SessionSettings, load_settings
from scrubin.report import DemoResult, Feed, assemble, live_summary
from scrubin.runtime import tune_for_service
from scrubin.service import Service, ensure_phantom
from scrubin.session import SessionKeys, TheatreSession

log = logging.getLogger(__name__)
DEMO_HISTORY_FRAMES = 200_000  # an hour at the demo's frame rate

SESSION = "demo"
HEADSET = "demo-headset"
LIVE_WINDOW = 300  # frames behind the live figures


class DemoError(Exception):
    """The demo could not run; one line saying why."""


@dataclass(frozen=True)
class DemoOptions:
    seconds: float | None = None  # None: until Ctrl-C
    report_dir: Path = Path("scrubin-report")
    headless: bool = False
    cache_dir: Path | None = None
    seed: int = 1
    mark_after_s: float = 1.0  # tracking this long before the scripted mentor marks
    start_timeout_s: float = 120.0
    rate_hz: float = 45.0  # depth frames/s the simulated headset sends (HoloLens 2 AHAT: 45)


@dataclass
class _Run:
    service: Service
    session: TheatreSession
    headset: subprocess.Popen[str]
    feed: Feed
    mark: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    next_mark_try: float = 0.0


def run_demo(opts: DemoOptions, say: Callable[[str], None], stop: threading.Event) -> DemoResult:
    """Run until ``stop`` is set or ``opts.seconds`` pass; returns the assembled result
    (the report is written by the caller)."""
    settings = load_settings(
        None,
        state_dir=opts.report_dir,  # the demo's audit log lands in the report folder
        **({"cache_dir": opts.cache_dir} if opts.cache_dir else {}),
        mentor={"port": 0},
    )
    phantom = ensure_phantom(settings.cache_dir, say)
    # Each demo run is a new theatre session: marks of an earlier run must not come back.
    settings.sessions = [
        SessionSettings(
            name=SESSION,
            model=str(phantom),
            pub_port=0,
            ctl_port=0,
            persist_annotations=False,
            history_frames=DEMO_HISTORY_FRAMES,  # the report covers the whole run (or its last hour)
        )
    ]
    with tempfile.TemporaryDirectory(prefix="scrubin-demo-") as tmp:
        keys, headset_args = _keys(Path(tmp))
        headset_args += ["--cache-dir", str(settings.cache_dir), "--rate", str(opts.rate_hz)]  # its rendered loop
        service = Service(settings, keys={SESSION: keys}).start()
        try:
            session = service.sessions[SESSION]
            run = _start_headset(service, session, headset_args, phantom, opts)
            try:
                _wait_ready(run, opts, stop)
                _announce_mentor(service, say)  # only now is the session's mentor room open
                _announce_loop(run.feed.loop, say)
                say(f"streaming: simulated headset '{HEADSET}' -> session '{SESSION}' ({session.bridge.ctl_endpoint})")
                t0 = time.monotonic()
                _live(run, opts, stop, t0, say)
                duration = time.monotonic() - t0
            finally:
                _stop_headset(run)
        finally:
            service.stop()
    assert run.session.target_mm is not None
    return assemble(run.session.records(), run.feed, run.mark, duration_s=duration, target=run.session.target_mm)


def _keys(tmp: Path) -> tuple[SessionKeys, list[str]]:
    """Fresh keys for this run: the server's and one allowed headset's."""
    from headset_bridge.keys import Allowlist, load_keypair, load_public, write_keypair

    server_pub, server_secret = write_keypair(tmp, "server")
    headset_pub, headset_secret = write_keypair(tmp, HEADSET)
    allow = Allowlist(keys={HEADSET: load_public(headset_pub)})
    keys = SessionKeys(load_keypair(server_secret), allow, secrets.token_bytes(32))
    return keys, ["--server-key", str(server_pub), "--key", str(headset_secret)]


def _announce_loop(loop: dict[str, Any], say: Callable[[str], None]) -> None:
    if loop and not loop.get("cached"):
        say(
            f"first run: the simulated headset renders its {loop.get('total')}-frame loop while it streams "
            f"(its camera moving at the renderer's pace until then), then caches it in {loop.get('path')}"
        )


def _announce_mentor(service: Service, say: Callable[[str], None]) -> None:
    """One link per role: a mentor's (may mark) and an observer's (watches only)."""
    for role, name in (("mentor", "demo-mentor"), ("observer", "demo-observer")):
        url, token = service.mentor_link(SESSION, role, name)
        if url is None:
            say(f"{role} page: not running (disabled, or mentor.server is not available in this build)")
            say(f"{role} token for session '{SESSION}': {token}")
        else:
            say(f"{role} page: {url}")


def _start_headset(
    service: Service, session: TheatreSession, key_args: list[str], phantom: Path, opts: DemoOptions
) -> _Run:
    cmd = [
        sys.executable,
        "-m",
        "scrubin.demo_headset",
        "--pub",
        session.bridge.pub_endpoint,
        "--ctl",
        session.bridge.ctl_endpoint,
        *key_args,
        "--model",
        str(phantom),
        "--seed",
        str(opts.seed),
        "--snapshots",
        str(opts.report_dir / "snapshots"),
        "--max-seconds",
        str((opts.seconds or 24 * 3600.0) + opts.start_timeout_s),
    ]
    # Single-threaded BLAS: tiny products on a busy 2-core box only spin-wait otherwise.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, bufsize=1)
    feed = Feed()
    threading.Thread(target=feed.read, args=(proc.stdout,), name="headset-feed", daemon=True).start()
    return _Run(service, session, proc, feed)


def _wait_ready(run: _Run, opts: DemoOptions, stop: threading.Event) -> None:
    deadline = time.monotonic() + opts.start_timeout_s
    while not (run.feed.ready.is_set() and run.session.model_ready.is_set()):
        if stop.is_set():
            raise KeyboardInterrupt
        if run.headset.poll() is not None:
            raise DemoError(f"the simulated headset exited early (code {run.headset.returncode}): {run.feed.error}")
        if time.monotonic() > deadline:
            raise DemoError(f"the headset or the model was not ready within {opts.start_timeout_s:.0f} s")
        stop.wait(0.05)


def _live(run: _Run, opts: DemoOptions, stop: threading.Event, t0: float, say: Callable[[str], None]) -> None:
    def step() -> bool:
        _maybe_mark(run, opts)
        if opts.seconds is not None and time.monotonic() - t0 >= opts.seconds:
            return False
        return not stop.is_set() and run.headset.poll() is None

    if opts.headless:
        next_line = time.monotonic()
        while step():
            if time.monotonic() >= next_line:
                say(_summary(run, t0).line())
                next_line += 2.0
            stop.wait(0.05)
        return
    from rich.live import Live

    with Live(refresh_per_second=4, transient=False) as live:
        while step():
            live.update(_summary(run, t0).table())
            stop.wait(0.25)


def _summary(run: _Run, t0: float) -> Any:
    s = run.session
    return live_summary(s.recent(LIVE_WINDOW), s.skipped, run.feed, time.monotonic() - t0, s.target_mm)


def _maybe_mark(run: _Run, opts: DemoOptions) -> None:
    """The scripted mentor: one mark after ``mark_after_s`` of continuous tracking."""
    if run.mark or time.monotonic() < run.next_mark_try:
        return
    run.next_mark_try = time.monotonic() + 0.5  # a failed try is not repeated at once
    recs = run.session.recent(LIVE_WINDOW)
    if not recs or recs[-1].status != "tracking":
        return
    since = next((r for r in reversed(recs) if r.status != "tracking"), None)
    start = recs[0].t_published_ns if since is None else since.t_published_ns
    if (recs[-1].t_published_ns - start) / 1e9 < opts.mark_after_s:
        return
    if run.token is None:
        run.token = run.session.issue_token("mentor", "scripted-mentor")
    mark = scripted_mentor_mark(run.session, run.token)
    if mark is not None:
        run.mark.update(mark)


def scripted_mentor_mark(session: TheatreSession, token: str) -> dict[str, Any] | None:
    """A mentor's click at the centre of the newest video frame, placed through the mentor
    room's own API (anchored with the pose at that frame's capture time, published to the
    headsets). Without a mentor room the same anchoring runs here and the mark goes through
    ``publish_annotation``. None when there is nothing to click on yet."""
    video = session.latest_video
    if video is None or session.model is None:
        return None
    t_video = video[1]
    cam = session.video_camera
    room, server = session.mentor_room, session.mentor_server
    if room is not None and server is not None:
        from mentor.signalling import Annotate

        claims = session.verify_token(token)
        req = Annotate(
            cid=uuid.uuid4().hex, kind="point", uv=((cam.cx, cam.cy),), text="incision", color="#ffcc00",
            rtp_ts=None, t_capture_ns=t_video,
        )  # fmt: skip
        ack = server.call(room.annotate, claims, req)
        if not (ack.ok and ack.anchored and ack.point_model_mm is not None):
            return None
        return {"id": ack.id, "via": "mentor room", "point_mm": list(ack.point_model_mm)}
    return _mark_without_room(session, t_video)


def _mark_without_room(session: TheatreSession, t_video: int) -> dict[str, Any] | None:
    from headset_bridge.messages import Annotation
    from mentor.anchoring import MeshRayCaster, anchor_click

    assert session.model is not None
    found = session.frame_pose(t_video)
    if found is None or abs(found[0] - t_video) > 100e6:  # no pose within 100 ms of the frame
        return None
    cam = session.video_camera
    anchor = anchor_click(cam.cx, cam.cy, cam, found[1], MeshRayCaster(session.model.vertices, session.model.triangles))
    if not anchor.anchored or anchor.point_model_mm is None:
        return None
    ann = Annotation(
        id=f"mark-{uuid.uuid4().hex[:12]}",
        kind="point",
        author="scripted-mentor",
        role="mentor",
        points_mm=(anchor.point_model_mm,),
        created_ns=time.time_ns(),
        text="incision",
    )
    session.publish_annotation("add", ann)
    return {"id": ann.id, "via": "session (no mentor room)", "point_mm": list(anchor.point_model_mm)}


def _stop_headset(run: _Run) -> None:
    """SIGTERM: the headset stops streaming, prints its summary and leaves, then renders
    its snapshots; the service stops as soon as the headset has left."""
    proc = run.headset
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20.0
    while not run.feed.summary and proc.poll() is None and time.monotonic() < deadline:
        run.feed.done.wait(0.05)
    run.service.stop()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    run.feed.done.wait(5.0)


def run_demo_command(seconds: float | None, report: Path, headless: bool, seed: int, rate_hz: float = 45.0) -> Path:
    """The CLI side: console output, Ctrl-C, the report; returns the report page."""
    tune_for_service()
    from rich.console import Console

    from scrubin.report import write_report
    from scrubin.service import stop_on_signals

    console = Console(highlight=False, soft_wrap=True)
    headless = headless or not console.is_terminal
    if not rate_hz > 0:
        raise DemoError(f"--rate must be a positive number of frames per second, got {rate_hz!r}")
    opts = DemoOptions(seconds=seconds, report_dir=report, headless=headless, seed=seed, rate_hz=rate_hz)
    stop = threading.Event()
    with stop_on_signals(stop):
        result = run_demo(opts, lambda m: console.print(m), stop)
    page = write_report(report, result, _notes(result))
    m = result.metrics
    console.print(
        f"tracking {100 * m['tracking_share_after_lock']:.1f} % after lock, TRE p95 {m['tre_tracking_p95_mm']:.3f} mm, "
        f"depth in -> pose at headset p95 {m['in_to_pose_p95_ms']:.2f} ms, capture -> headset p95 {m['total_p95_ms']:.2f} ms"
    )
    console.print(_rate_line(m))
    console.print(f"report: {page}")
    return page


def _rate_line(m: dict[str, Any]) -> str:
    sent = m.get("headset_sent_fps")
    return (
        f"depth rate: headset sent {'n/a' if sent is None else f'{sent:.1f}'} frames/s (paced at "
        f"{m.get('headset_rate_hz')} Hz), server registered {m['registered_fps']:.1f} /s, tracking {m['tracking_fps']:.1f} /s"
    )


def _notes(result: DemoResult) -> list[str]:
    notes = []
    if not result.metrics["annotation"].get("reached_headset"):
        notes.append("the scripted mentor's annotation did not reach the headset")
    notes.append(
        "the video camera is simulated at the depth camera's pose (one camera); a real headset's "
        "PV camera needs its own extrinsics"
    )
    return notes
