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

Usage: .venv/bin/python bench/bench_mentor_cpu.py [--quick] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mentor_fixtures import SESSION, PyViewer, synthetic_frame  # noqa: E402

RESULTS = ROOT / "bench" / "results"
COUNTS = (0, 1, 2, 4)
FPS = 30.0


# ---------------------------------------------------------------------------- servers
def serve_shared() -> None:
    from mentor_fixtures import FramePump, Published, make_scene, serve

    scene = make_scene()
    served = serve(scene, Path(tempfile.mkdtemp(prefix="bench-cpu-")), Published())
    served.room.audit = None
    print(json.dumps({"url": served.url, "token": served.token()}), flush=True)
    with FramePump(served.room, scene, fps=FPS):
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows (< 60 s)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window per N")
    ap.add_argument("--serve", choices=("shared", "relay"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "shared":
        serve_shared()
        return
    if args.serve == "relay":
        serve_relay()
        return
    settle, window = (1.5, 3.0) if args.quick else (3.0, args.seconds)
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
