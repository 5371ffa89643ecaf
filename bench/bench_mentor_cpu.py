"""Server CPU per additional mentor watching the same stream: shared encoder vs aiortc per-viewer.

Two servers, each in its own process so its CPU can be measured alone, in the same run,
with the same 640x480 30 fps synthetic frames:

* ``shared`` - MentorServer: one VP8 encode per quality level, packets fanned out to every
  viewer's RTP sender (mentor/video.py);
* ``relay``  - plain aiortc: one source track, ``MediaRelay().subscribe()`` per viewer, every
  RTCRtpSender encoding on its own (aiortc's Vp8Encoder) - the usual aiortc server pattern.

Viewers are Python aiortc receivers in this (parent) process; they decode, so the two
processes share the 2 cores, equally for both servers. For N = 0, 1, 2, 4 viewers the
server's CPU (user + system, psutil) is sampled over a window after a settling period.

``--pages``: instead, real mentor pages in headless Chromium (one browser context per mentor,
as separate people) against the shared-encoder server, 0, 1, 2, 3 pages, with the page's 3D
view open (three.js, the sphere's GLB, redrawn on each status) and, in the same run, without
it (an empty module served in place of ``/static/mentor3d.js``; the product has no switch).
Both the server's CPU and Chromium's (the browser process and all its children: renderers,
GPU/SwiftShader, network, audio) are sampled; the per-mentor increment is CPU(N) - CPU(N-1).
Headless Chromium here draws WebGL in software (SwiftShader, ``--disable-gpu``), so the 3D
view's share of Chromium's CPU is what a machine without a GPU would pay.

Usage: .venv/bin/python bench/bench_mentor_cpu.py [--quick] [--seconds 10] [--pages]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mentor_fixtures import SESSION, SPHERE_CENTRE_MODEL, PyViewer, synthetic_frame  # noqa: E402

RESULTS = ROOT / "bench" / "results"
COUNTS = (0, 1, 2, 4)
FPS = 30.0


# ---------------------------------------------------------------------------- servers
class MovingHeadset:
    """The scene's pose, the camera swinging +-10 degrees round the sphere every 5 s (--pages):
    a live headset moves, so the page's marks and 3D view are redrawn on every status."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.centre = (scene.T_world_model @ np.append(SPHERE_CENTRE_MODEL, 1.0))[:3]
        self.offset = scene.T_world_camera[:3, 3] - self.centre

    def pose(self, status: str = "tracking") -> Any:
        from mentor_fixtures import look_at, rigid

        from mentor.anchoring import FramePose

        angle = np.radians(10.0) * np.sin(2 * np.pi * time.monotonic() / 5.0)
        turn = rigid((0.0, 0.0, float(angle) or 1e-9), (0.0, 0.0, 0.0))[:3, :3]
        eye = self.centre + turn @ self.offset
        return FramePose(look_at(eye, self.centre), self.scene.T_world_model, status)


def serve_shared(moving: bool = False) -> None:
    from mentor_fixtures import FramePump, Published, make_scene, serve

    scene = make_scene()
    served = serve(scene, Path(tempfile.mkdtemp(prefix="bench-cpu-")), Published())
    served.room.audit = None
    tokens = [served.token(name=f"mentor-{i}") for i in range(4)]  # --pages: one person per page
    print(json.dumps({"url": served.url, "token": served.token(), "tokens": tokens}), flush=True)
    with FramePump(served.room, MovingHeadset(scene) if moving else scene, fps=FPS):
        sys.stdin.read()  # until the parent closes the pipe
    served.server.stop()


def serve_relay() -> None:
    import fractions

    import av
    from aiohttp import web
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
    from aiortc.contrib.media import MediaRelay

    class Source(VideoStreamTrack):  # type: ignore[misc]
        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()  # paces at 30 fps
            rgb = av.VideoFrame.from_ndarray(synthetic_frame(time.monotonic_ns()), format="rgb24")
            # Converted once here, so the per-viewer encoders share no reformatter state
            # (and the competitor is spared N colour conversions).
            frame = rgb.reformat(format="yuv420p")
            frame.pts, frame.time_base = pts, time_base or fractions.Fraction(1, 90_000)
            return frame

    relay, source, pcs = MediaRelay(), Source(), set()

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)
        await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], "offer"))
        pc.addTrack(relay.subscribe(source))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "quality": "high"})

    async def main() -> None:
        app = web.Application()
        app.router.add_post(f"/s/{SESSION}/offer", offer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server  # aiohttp keeps the bound sockets here (port 0)
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"url": f"http://127.0.0.1:{port}", "token": "unused"}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for pc in pcs:
            await pc.close()
        await runner.cleanup()

    asyncio.run(main())


# ---------------------------------------------------------------------------- parent
def measure(mode: str, settle_s: float, window_s: float) -> dict[int, dict[str, float]]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    info = json.loads(child.stdout.readline())
    proc = psutil.Process(child.pid)
    out: dict[int, dict[str, float]] = {}

    async def run() -> None:
        viewers: list[PyViewer] = []
        for n in COUNTS:
            while len(viewers) < n:
                v = PyViewer(info["url"], SESSION, info["token"])
                await v.connect()
                viewers.append(v)
            await asyncio.sleep(settle_s)  # keyframes, bitrate ramp, thread pools
            c0, f0, t0 = _cpu(proc), sum(v.frames for v in viewers), time.monotonic()
            await asyncio.sleep(window_s)
            dt = time.monotonic() - t0
            fps = (sum(v.frames for v in viewers) - f0) / dt / max(1, n)
            out[n] = {"cpu_pct": 100 * (_cpu(proc) - c0) / dt, "fps_per_viewer": fps}
            print(f"  {mode:6s} N={n}: server CPU {out[n]['cpu_pct']:5.1f} %, {fps:4.1f} fps per viewer", flush=True)
        await asyncio.gather(*(v.close() for v in viewers))

    try:
        asyncio.run(run())
    finally:
        child.stdin.close()
        child.wait(timeout=20)
    return out


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


# ---------------------------------------------------------------------------- real pages (--pages)
PAGES = (0, 1, 2, 3)
PAGE_VARIANTS = ("3D view", "no 3D view")
READY = "window.mentor && mentor.frames > 10"
READY_3D = READY + " && window.mentor3d && mentor3d.renders > 0"
PAGE_COUNTERS = (
    "() => [window.mentor ? mentor.frames : 0, window.mentor3d ? mentor3d.renders : 0, window.__longTasks || 0]"
)
# Main-thread tasks over 50 ms (the page janks, video frames are presented late or dropped).
LONG_TASKS = (
    "new PerformanceObserver((l) => { window.__longTasks = (window.__longTasks || 0) + l.getEntries().length; })"
    ".observe({type: 'longtask', buffered: true});"
)


class TreeCpu:
    """CPU seconds of a process and its descendants over a window (children come and go)."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root

    def snapshot(self) -> dict[int, tuple[str, float]]:
        """pid -> (Chromium process type, CPU seconds so far)."""
        out: dict[int, tuple[str, float]] = {}
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                t, cmd = p.cpu_times(), p.cmdline()
            except psutil.Error:  # exited between the listing and the read
                continue
            kind = next((a.split("=", 1)[1] for a in cmd if a.startswith("--type=")), "browser")
            out[p.pid] = (kind, float(t.user + t.system))
        return out

    @staticmethod
    def spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
        """CPU seconds per process type; a process new in the window counts whole, one that
        ended in it is lost (small)."""
        out: dict[str, float] = {}
        for pid, (kind, v) in after.items():
            out[kind] = out.get(kind, 0.0) + v - before.get(pid, (kind, 0.0))[1]
        return out


def _browser_process(profile: str) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if f"--user-data-dir={profile}" in cmd and not any(a.startswith("--type=") for a in cmd):
            return p
    msg = f"no Chromium browser process with profile {profile!r}"
    raise RuntimeError(msg)


def _open_mentor(browser: Any, url: str, with_3d: bool) -> Any:
    """One mentor: its own browser context (a separate person), the page live (and its 3D view drawn)."""
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 720})
    context.add_init_script(LONG_TASKS)
    if not with_3d:  # no product switch: the 3D view's module is served empty
        context.route(
            "**/static/mentor3d.js",
            lambda route: route.fulfill(status=200, content_type="text/javascript", body="// off\n"),
        )
    page = context.new_page()
    page.goto(url)
    page.wait_for_function(READY_3D if with_3d else READY, polling=100, timeout=30_000)
    return context


@contextlib.contextmanager
def _server_child(moving: bool) -> Iterator[tuple[list[str], psutil.Process]]:
    """A fresh shared-encoder server process: its mentor links and the process to measure."""
    cmd = [sys.executable, __file__, "--serve", "shared", *(["--moving"] if moving else [])]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    try:
        info = json.loads(child.stdout.readline())
        yield [f"{info['url']}/s/{SESSION}#token={t}" for t in info["tokens"]], psutil.Process(child.pid)
    finally:
        child.stdin.close()
        child.wait(timeout=20)


def measure_pages(settle_s: float, window_s: float, moving: bool) -> dict[str, dict[int, dict[str, float]]]:
    import os
    import shutil

    from mentor_fixtures import CHROMIUM, CHROMIUM_FLAGS
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    profile = tempfile.mkdtemp(prefix="bench-cpu-chromium-")
    out: dict[str, dict[int, dict[str, float]]] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                ignore_default_args=True,
                args=[*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                timeout=30_000,
            )
            chrome = TreeCpu(_browser_process(profile))
            try:
                for variant in PAGE_VARIANTS:  # a fresh server each: N = 0 is a server nobody has joined
                    with _server_child(moving) as (urls, server):
                        out[variant] = _page_series(browser, urls, variant, server, chrome, settle_s, window_s)
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return out


def _page_series(
    browser: Any,
    urls: list[str],
    variant: str,
    server: psutil.Process,
    chrome: TreeCpu,
    settle_s: float,
    window_s: float,
) -> dict[int, dict[str, float]]:
    contexts: list[Any] = []
    out: dict[int, dict[str, float]] = {}
    try:
        for n in PAGES:
            while len(contexts) < n:
                contexts.append(_open_mentor(browser, urls[len(contexts)], variant == "3D view"))
            time.sleep(settle_s)  # let the pages settle (bitrate ramp, 3D first draws): pacing, not sync
            counts0 = [c.pages[0].evaluate(PAGE_COUNTERS) for c in contexts]
            s0, b0, t0 = _cpu(server), chrome.snapshot(), time.monotonic()
            time.sleep(window_s)  # the measurement window
            dt = time.monotonic() - t0
            s1, b1 = _cpu(server), chrome.snapshot()
            counts1 = [c.pages[0].evaluate(PAGE_COUNTERS) for c in contexts]
            per = max(1, n) * dt
            kinds = TreeCpu.spent(b0, b1)
            r = out[n] = {
                "server_pct": 100 * (s1 - s0) / dt,
                "chromium_pct": 100 * sum(kinds.values()) / dt,
                **{f"chromium_{k}_pct": 100 * v / dt for k, v in sorted(kinds.items())},
                "fps_per_page": sum(b[0] - a[0] for a, b in zip(counts0, counts1, strict=True)) / per,
                "renders3d_per_s_per_page": sum(b[1] - a[1] for a, b in zip(counts0, counts1, strict=True)) / per,
                "long_tasks_per_s_per_page": sum(b[2] - a[2] for a, b in zip(counts0, counts1, strict=True)) / per,
            }
            print(
                f"  {variant:10s} N={n}: server {r['server_pct']:5.1f} %, Chromium {r['chromium_pct']:5.1f} %, "
                f"{r['fps_per_page']:4.1f} fps per page, 3D draws {r['renders3d_per_s_per_page']:4.1f}/s, "
                f"long tasks {r['long_tasks_per_s_per_page']:4.1f}/s per page; "
                f"Chromium by process: "
                + ", ".join(f"{k} {100 * v / dt:.0f}" for k, v in sorted(kinds.items()) if v > 0.005 * dt),
                flush=True,
            )
    finally:
        for c in contexts:
            c.close()
    return out


def report_pages(results: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for variant, r in results.items():
        inc = {
            k: [r[n][k] - r[n - 1][k] for n in PAGES[1:]] for k in ("server_pct", "chromium_pct")
        }  # per added mentor: N-1 -> N
        mean = {k: (r[PAGES[-1]][k] - r[0][k]) / PAGES[-1] for k in inc}
        summary[variant] = {"increments": inc, "mean_per_mentor": mean}
        print(
            f"  {variant:10s} per added mentor (1st, 2nd, 3rd): server "
            + ", ".join(f"{x:+5.1f}" for x in inc["server_pct"])
            + " %; Chromium "
            + ", ".join(f"{x:+5.1f}" for x in inc["chromium_pct"])
            + f" %; mean server {mean['server_pct']:+5.1f} %, Chromium {mean['chromium_pct']:+5.1f} % per mentor"
        )
    a, b = (summary[v]["mean_per_mentor"] for v in PAGE_VARIANTS)
    print(
        f"  3D view's extra per mentor: server {a['server_pct'] - b['server_pct']:+5.1f} %, "
        f"Chromium {a['chromium_pct'] - b['chromium_pct']:+5.1f} % of one core"
    )
    return summary


def _plot_pages(results: dict[str, dict[int, dict[str, float]]], stem: str, moving: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=False)
    panels = (
        ("server_pct", "mentor server CPU", "CPU (% of one core)"),
        ("chromium_pct", "Chromium CPU (all its processes)", "CPU (% of one core)"),
        ("fps_per_page", "video frames presented per page", "frames per second"),
    )
    for ax, (key, what, unit) in zip(axes, panels, strict=True):
        for variant, r in results.items():
            ns = [n for n in r if n > 0 or key != "fps_per_page"]
            ax.plot(ns, [r[n][key] for n in ns], "o-", label=variant)
        ax.set_xlabel("mentor pages open (one browser context each)")
        ax.set_ylabel(unit)
        ax.set_title(what, fontsize=10)
        ax.set_xticks(list(PAGES))
        ax.legend()
    fig.suptitle(
        f"Mentor pages in headless Chromium (software WebGL), headset {'moving' if moving else 'still'}, 3D view on vs off",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=120)
    print(f"  plot: {RESULTS / f'{stem}.png'}")


def main_pages(settle_s: float, window_s: float, moving: bool) -> None:
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    print(
        f"server + Chromium CPU vs mentor pages, 640x480 @ {FPS:.0f} fps, headset {'moving' if moving else 'still'}, {window_s:.0f} s windows"
    )
    results = measure_pages(settle_s, window_s, moving)
    summary = report_pages(results)
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "mentor_cpu_pages" if moving else "mentor_cpu_pages_still"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"results": results, "summary": summary}, indent=1))
    _plot_pages(results, stem, moving)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows (< 60 s)")
    ap.add_argument("--seconds", type=float, help="measurement window per N (10 s; 8 s with --pages)")
    ap.add_argument("--pages", action="store_true", help="real mentor pages in Chromium, 3D view on vs off")
    ap.add_argument("--serve", choices=("shared", "relay"), help=argparse.SUPPRESS)
    ap.add_argument("--moving", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--still", action="store_true", help="--pages with the headset still (the 3D view is not redrawn)")
    args = ap.parse_args()
    if args.serve == "shared":
        serve_shared(moving=args.moving)
        return
    if args.serve == "relay":
        serve_relay()
        return
    default_window = 8.0 if args.pages else 10.0  # --pages: about 2 min in all
    settle, window = (1.5, 3.0) if args.quick else (3.0, args.seconds or default_window)
    if args.pages:
        main_pages(settle, window, moving=not args.still)
        return
    print(f"server CPU vs viewers, 640x480 @ {FPS:.0f} fps, {window:.0f} s windows")
    results = {mode: measure(mode, settle, window) for mode in ("shared", "relay")}
    slopes = {}
    for mode, r in results.items():
        n = np.array(COUNTS[1:], float)
        cpu = np.array([r[k]["cpu_pct"] for k in COUNTS[1:]])
        slopes[mode] = float(np.polyfit(n, cpu, 1)[0])  # CPU % per added viewer, N = 1..4
        print(
            f"  {mode:6s}: {slopes[mode]:5.1f} % CPU per added viewer (fit over N = 1, 2, 4); first viewer "
            f"{r[1]['cpu_pct'] - r[0]['cpu_pct']:5.1f} %"
        )
    ratio = slopes["relay"] / slopes["shared"] if slopes["shared"] > 0 else float("inf")
    print(f"  ratio per added viewer relay/shared: {ratio:.1f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mentor_cpu.json").write_text(
        json.dumps({"results": results, "slopes": slopes, "ratio": ratio}, indent=1)
    )
    _plot(results)


def _plot(results: dict[str, dict[int, dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, r in results.items():
        label = "shared encoder (mentor)" if mode == "shared" else "aiortc MediaRelay, per-viewer encode"
        ax.plot(list(r), [v["cpu_pct"] for v in r.values()], "o-", label=label)
    ax.set_xlabel("viewers watching the same stream")
    ax.set_ylabel("server CPU (% of one core)")
    ax.set_title("Mentor server CPU per viewer (640x480, 30 fps, VP8)")
    ax.set_xticks(list(COUNTS))
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "mentor_cpu.png", dpi=120)
    print(f"  plot: {RESULTS / 'mentor_cpu.png'}")


if __name__ == "__main__":
    _ = threading  # the servers run threads of their own
    main()
