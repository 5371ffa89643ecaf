"""What 1,200 idle TCP connections to the mentor page cost the guidance loop in the same process.

``scrubin serve`` runs the registration loop and the mentor server in one process. Here a
registration-like step (nearest neighbours of 5,000 points in 20,000 and a 3x3 SVD fit:
about the tracker's work per frame) runs at 30 Hz in a thread beside a MentorServer, first
alone, then while a child process holds 1,200 idle connections to the server from 40
loopback addresses and re-opens each one the server closes (a churning attacker: the
worst case for the connection guard). Reported: the step's p50/p95 in both phases, their
ratio (goal: p95 within 20 %), how many connections the attacker re-opened, and the page's
answer time under attack.

Usage: .venv/bin/python bench/bench_mentor_idle.py [--seconds 10]
Writes bench/results/mentor_idle.json.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
RESULTS = ROOT / "bench" / "results"
CONNECTIONS, SOURCES, HZ = 1200, 40, 30.0


def attacker(port: int, seconds: float) -> None:
    """Child: hold CONNECTIONS idle connections, re-opening every one the server closes."""

    def opened(i: int) -> socket.socket:
        s = socket.socket()
        s.bind((f"127.0.0.{2 + i % SOURCES}", 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        return s

    socks = [opened(i) for i in range(CONNECTIONS)]
    reopened, end = 0, time.monotonic() + seconds
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    while time.monotonic() < end:
        for fd, _ in poller.poll(200):
            i = next(k for k, s in enumerate(socks) if s.fileno() == fd)
            poller.unregister(fd)
            socks[i].close()
            socks[i] = opened(i)
            poller.register(socks[i], select.POLLIN)
            reopened += 1
    print(json.dumps({"reopened": reopened}))


def step_times(seconds: float) -> list[float]:
    """Durations (ms) of a registration-like step run at HZ for ``seconds``."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(1)
    model = cKDTree(rng.normal(size=(20_000, 3)))
    out: list[float] = []
    next_at, end = time.monotonic(), time.monotonic() + seconds
    while time.monotonic() < end:
        frame = rng.normal(size=(5_000, 3))
        t0 = time.perf_counter()
        _, idx = model.query(frame)
        h = (frame - frame.mean(0)).T @ (model.data[idx] - model.data[idx].mean(0))
        np.linalg.svd(h)
        out.append((time.perf_counter() - t0) * 1e3)
        next_at += 1.0 / HZ
        time.sleep(max(0.0, next_at - time.monotonic()))  # pacing at HZ, as frames arrive
    return out


def summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--attacker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attacker is not None:
        attacker(args.attacker, args.seconds)
        return
    from mentor_fixtures import SESSION, Published, make_scene, serve

    served = serve(make_scene(), Path(tempfile.mkdtemp(prefix="bench-idle-")), Published())
    try:
        port = int(served.url.rsplit(":", 1)[1])
        alone = step_times(args.seconds)
        child = subprocess.Popen(
            [sys.executable, __file__, "--attacker", str(port), "--seconds", str(args.seconds + 3)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)  # the attacker's connections are set up before the measured window
        page: list[float] = []

        def fetch() -> None:
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"{served.url}/s/{SESSION}", timeout=10) as r:
                r.read()
            page.append((time.perf_counter() - t0) * 1e3)

        fetcher = threading.Thread(target=lambda: [fetch() for _ in range(20)])
        fetcher.start()
        attacked = step_times(args.seconds)
        fetcher.join()
        out, _ = child.communicate(timeout=30)
    finally:
        served.server.stop()
    result: dict[str, Any] = {
        "connections": CONNECTIONS,
        "alone": summary(alone),
        "with_idle_connections": summary(attacked),
        "reopened_by_attacker": json.loads(out)["reopened"],
        "page_get_ms": summary(page),
    }
    result["p95_ratio"] = round(result["with_idle_connections"]["p95_ms"] / result["alone"]["p95_ms"], 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mentor_idle.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
