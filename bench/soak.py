"""Soak (issue 7): the service, one simulated headset at 60 Hz and two mentor viewers for N minutes.

Everything runs in this process, as ``scrubin serve`` would plus its clients: ``Service`` on the
SYNTHETIC phantom (prepared once into the cache), a headset thread replaying pre-rendered
simulator depth frames at 60 Hz (rendering live would not keep up on 2 cores) with a video
frame every 4th depth frame, and two Python aiortc viewers (video 'low', a ping every 2 s,
like the page). RSS is sampled every 10 s; pose latency (depth capture -> pose received at
the headset, server clock) is grouped per minute.

Pass: RSS growth < 50 MB and p99 of the last minute within 20 % of the first.

    .venv/bin/python bench/soak.py [--minutes N (30)] [--quick (45 s)]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
RESULTS = REPO / "bench" / "results"
HZ = 60.0
SESSION = "soak"


def prerender(model_dir: Path, n: int) -> list[tuple[Any, Any, Any, bytes]]:
    from registration import SurfaceModel
    from registration.frames import invert
    from registration.simulator import HeadsetSimulator
    from scrubin.demo_headset import SIM_RATE_HZ, T_WORLD_MODEL, video_frame

    model = SurfaceModel.from_folder(model_dir, mesh="skin", grid_mm=8.0, band_mm=8.0)
    sim = HeadsetSimulator(model, seed=3)
    out = []
    for k in range(n):
        f = sim.render(sim.pose(k / SIM_RATE_HZ), int(k / SIM_RATE_HZ * 1e9))
        K = f.depth.intrinsics
        rgb = video_frame(np.asarray(f.depth.depth, np.uint16), f.model_mask).tobytes()
        out.append((f.depth.depth, T_WORLD_MODEL @ invert(f.T_sensor_model), (K.fx, K.fy, K.cx, K.cy), rgb))
    return out


class Headset(threading.Thread):
    def __init__(self, client: Any, frames: list[Any], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.frames, self.stop = client, frames, stop
        # (monotonic s received, ms) as two compact arrays: the harness's own bookkeeping is
        # part of the process's RSS, so it must not be what grows.
        self.latency_t, self.latency_ms = array("d"), array("f")
        self.sent = 0
        self._seen = -1

    def run(self) -> None:
        period, next_t, k = 1.0 / HZ, time.monotonic(), 0
        while not self.stop.is_set():
            depth, T_wc, K, rgb = self.frames[k % len(self.frames)]
            t_cap = time.monotonic_ns()
            self.client.send_depth(depth, T_wc, K, 1.0, t_capture_ns=t_cap)
            if k % 4 == 0:
                self.client.send_video(rgb, 640, 480, "rgb8", t_capture_ns=t_cap)
            self.sent += 1
            k += 1
            next_t += period
            while True:  # poll until the next frame is due
                self.client.poll(max(0.0, min(0.005, next_t - time.monotonic())))
                self._collect()
                if time.monotonic() >= next_t or self.stop.is_set():
                    break
            if time.monotonic() - next_t > 1.0:
                next_t = time.monotonic()  # fell behind (CPU busy): do not burst

    def _collect(self) -> None:
        log = self.client.pose_log
        while log:  # consume what arrived since the last look (no copy of the whole log)
            r = log.popleft()
            if r.seq > self._seen:
                self._seen = r.seq
                self.latency_t.append(time.monotonic())
                self.latency_ms.append((r.t_recv_ns + r.offset_ns - r.t_capture_ns) / 1e6)


async def viewers(base: str, tokens: list[str], stop: threading.Event, frames: list[int]) -> None:
    from mentor_fixtures import PyViewer

    vs = [PyViewer(base, SESSION, t, quality="low") for t in tokens]
    for v in vs:
        await v.connect()
    t = 0.0
    while not stop.is_set():
        t += 1
        for v in vs:
            v.send({"type": "ping", "t": t})
            v.messages.clear()  # keep the viewer's own memory flat: the server is what is measured
        await asyncio.sleep(2.0)
    frames[:] = [v.frames for v in vs]
    for v in vs:
        await v.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="45 s, samples every 5 s")
    args = ap.parse_args()
    minutes, every = (0.75, 5.0) if args.quick else (args.minutes, 10.0)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import tempfile

    from headset_bridge.client import ClientConfig, HeadsetClient
    from headset_bridge.keys import KeyPair
    from scrubin.config import load_settings
    from scrubin.service import Service, ensure_phantom
    from scrubin.session import SessionKeys

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    settings = load_settings(None, state_dir=tmp / "state", mentor={"port": 0},
                             sessions=[{"name": SESSION, "model": "phantom", "pub_port": 0, "ctl_port": 0}])  # fmt: skip
    frames = prerender(ensure_phantom(settings.cache_dir, print), 60)
    headset = KeyPair.generate()
    keys = SessionKeys.ephemeral({"hl-a": headset.public})
    proc, stop = psutil.Process(), threading.Event()
    with Service(settings, keys={SESSION: keys}) as service:
        s = service.sessions[SESSION]
        s.model_ready.wait(120)
        deadline = time.monotonic() + 60
        while s.mentor_room is None and time.monotonic() < deadline:
            stop.wait(0.1)
        client = HeadsetClient(headset, ClientConfig(s.bridge.pub_endpoint, s.bridge.ctl_endpoint, keys.server.public))
        url, _ = service.mentor_link(SESSION)
        base = str(url).split("/s/")[0]
        tokens = [service.mentor_link(SESSION, "mentor", f"mentor-{i}")[1] for i in range(2)]
        hs = Headset(client, frames, stop)
        got_frames: list[int] = []
        vt = threading.Thread(target=lambda: asyncio.run(viewers(base, tokens, stop, got_frames)), daemon=True)
        hs.start()
        vt.start()
        t0, rss = time.monotonic(), []
        while time.monotonic() - t0 < minutes * 60:
            rss.append((time.monotonic() - t0, proc.memory_info().rss / 1e6))
            print(f"t={rss[-1][0]:6.0f} s  rss {rss[-1][1]:7.1f} MB  depth sent {hs.sent}  poses {len(hs.latency_ms)}")
            stop.wait(every)
        rss.append((time.monotonic() - t0, proc.memory_info().rss / 1e6))
        stop.set()
        hs.join(10)
        vt.join(20)
        client.close()
        status = s.status()
    return report(minutes, t0, rss, hs, got_frames, status)


def report(minutes: float, t0: float, rss: list[tuple[float, float]], hs: Headset, vf: list[int], status: Any) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = np.column_stack([np.asarray(hs.latency_t) - t0, np.asarray(hs.latency_ms, dtype=np.float64)])
    window = 60.0 if minutes >= 2 else 15.0  # "per minute"; the quick run uses 15 s windows
    bins = np.floor(lat[:, 0] / window).astype(int)
    per = [(int(b), float(np.percentile(lat[bins == b, 1], 99)), float(np.median(lat[bins == b, 1])), int((bins == b).sum()))
           for b in np.unique(bins)]  # fmt: skip
    full = [p for p in per if (p[0] + 1) * window <= rss[-1][0] + 1]  # whole windows only
    first, last = full[0][1], full[-1][1]
    growth = max(r for _, r in rss[1:]) - rss[1][1]  # from the first sample under load
    out = {
        "minutes": minutes,
        "window_s": window,
        "rss_mb": rss,
        "rss_growth_mb": growth,
        "p99_per_window_ms": [p[1] for p in per],
        "median_per_window_ms": [p[2] for p in per],
        "poses_per_window": [p[3] for p in per],
        "p99_first_ms": first,
        "p99_last_ms": last,
        "p99_last_over_first": last / first,
        "depth_sent": hs.sent,
        "poses_received": len(hs.latency_ms),
        "viewer_frames": vf,
        "registration_frames": status.frames,
        "skipped": status.skipped,
        "pass": bool(growth < 50.0 and last <= 1.2 * first),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"soak_{minutes:g}min"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot([t / 60 for t, _ in rss], [r for _, r in rss], marker=".")
    ax[0].set(xlabel="minutes", ylabel="RSS (MB)", title=f"RSS, growth {growth:.1f} MB")
    ax[1].plot([p[0] * window / 60 for p in per], [p[1] for p in per], marker="o", label="p99")
    ax[1].plot([p[0] * window / 60 for p in per], [p[2] for p in per], marker=".", label="median")
    ax[1].set(xlabel="minutes", ylabel="pose latency (ms)", title="capture -> pose at the headset")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=90)
    print(f"RSS growth {growth:.1f} MB (< 50); pose p99 first {first:.1f} ms, last {last:.1f} ms "
          f"(ratio {last / first:.2f}, <= 1.2); depth sent {hs.sent}, poses {len(hs.latency_ms)}, "
          f"registered {status.frames} (skipped {status.skipped}); viewer frames {vf}; "
          f"{'PASS' if out['pass'] else 'FAIL'} -> {stem}.json/.png")  # fmt: skip
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
