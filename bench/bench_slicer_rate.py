"""Pose stream to 3D Slicer over OpenIGTLink: SlicerLink vs pyigtl's bare server.

The same messages (TRANSFORM ``ModelToSensor`` with status metadata + STRING status,
built by ``slicer_link.convert``) are published at 45 and 60 Hz, in the same run, by:

* ``slicer_link``    - ``SlicerLink.publish_estimate`` (newest-wins handoff to a writer thread),
* ``pyigtl``         - ``pyigtl.OpenIGTLinkServer.send_message`` as documented (``wait=True``),
* ``pyigtl-nowait``  - the same with ``wait=False`` (queue of 100, oldest dropped).

The receiver is pyigtl's own ``OpenIGTLinkClient`` (what a Python peer would use; Slicer
itself is C++), recording every message. Figures: time the publishing call blocks the
registration loop, poses received per second, and latency = receive wall time - the
pose's capture stamp carried in the message header (same machine, same clock). For the
pyigtl modes the call time includes building the two pyigtl messages, which a caller of
``send_message`` has to do itself; SlicerLink builds and packs on its writer thread.
Everything runs in one process (server, client threads and publisher share the GIL).

Usage: .venv/bin/python bench/bench_slicer_rate.py [--quick] [--seconds 10] [--rates 45 60]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyigtl  # noqa: E402

from registration.estimate import Estimate, Status  # noqa: E402
from scrubin.audit import AuditLog  # noqa: E402
from slicer_link import SlicerLink, SlicerLinkConfig  # noqa: E402
from slicer_link import convert as C  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODES = ("slicer_link", "pyigtl", "pyigtl-nowait")
DEVICE = "ModelToSensor"


class Inbox(dict[str, Any]):
    """Replaces pyigtl's newest-per-device inbox so every received message is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((time.time(), value))
        super().__setitem__(key, value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pose(i: int) -> Any:
    a = 0.01 * i
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    T[:3, 3] = [float(i), -40.0, 350.0]  # x carries the frame number
    return T


def _client(port: int) -> tuple[Any, Inbox]:
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", port, start_now=False)
    inbox = Inbox()
    client.incoming_messages = inbox
    client.start()
    return client, inbox


def _wait(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def run_mode(mode: str, hz: float, seconds: float) -> dict[str, Any]:
    port = _free_port()
    audit_dir = Path(tempfile.mkdtemp(prefix="bench-slicer-"))
    if mode == "slicer_link":
        link = SlicerLink(SlicerLinkConfig(enabled=True, port=port), AuditLog(audit_dir / "a.sqlite"))
        link.start()
        server = None
    else:
        server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    client, inbox = _client(port)
    connected = (lambda: link.clients == 1) if server is None else server.is_connected
    if not _wait(connected):
        raise SystemExit(f"{mode}: pyigtl client did not connect to port {port}")
    n = int(seconds * hz)
    call_us = np.empty(n)
    cfg = SlicerLinkConfig()
    start = time.perf_counter()
    for i in range(n):
        T, stamp = _pose(i), time.monotonic_ns()
        est = Estimate(T, Status.TRACKING, 0.9, 1.2, 500, 3.0, timestamp_ns=stamp)
        t0 = time.perf_counter()
        if server is None:
            link.publish_estimate(est)
        else:
            wall = C.wall_time_s(stamp)
            tf = C.transform_message(T, "tracking", DEVICE, cfg.wire_frame, wall)
            st = C.status_message(C.status_text(est), cfg.status_device, wall)
            server.send_message(tf, wait=mode == "pyigtl")
            server.send_message(st, wait=mode == "pyigtl")
        call_us[i] = (time.perf_counter() - t0) * 1e6
        time.sleep(max(0.0, start + (i + 1) / hz - time.perf_counter()))  # the headset's frame clock
    _wait(lambda: any(m.device_name == DEVICE and round(m.matrix[0, 3]) == n - 1 for _, m in inbox.log[-4:]), 3.0)
    client.stop()
    if server is None:
        link.stop()
    else:
        server.stop()
    return _stats(mode, hz, n, call_us, inbox)


def _stats(mode: str, hz: float, n: int, call_us: Any, inbox: Inbox) -> dict[str, Any]:
    got = [(t, m) for t, m in inbox.log if m.device_name == DEVICE]
    frames = sorted({round(m.matrix[0, 3]) for _, m in got})
    lat_ms = np.array([(t - m.timestamp) * 1e3 for t, m in got])
    span = got[-1][0] - got[0][0] if len(got) > 1 else float("nan")
    return {
        "mode": mode,
        "publish_hz": hz,
        "published": n,
        "received": len(frames),
        "received_hz": (len(frames) - 1) / span if span > 0 else 0.0,
        "call_p50_us": float(np.median(call_us)),
        "call_p99_us": float(np.percentile(call_us, 99)),
        "lat_p50_ms": float(np.median(lat_ms)) if len(lat_ms) else float("nan"),
        "lat_p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else float("nan"),
        "lat_ms": lat_ms.tolist(),
        "call_us": call_us.tolist(),
    }


def report(results: list[dict[str, Any]], quick: bool) -> None:
    print(
        f"{'mode':14s} {'Hz':>4s} {'recv':>9s} {'recv Hz':>8s} {'call p50':>10s} {'call p99':>10s} {'lat p50':>9s} {'lat p99':>9s}"
    )
    for r in results:
        print(
            f"{r['mode']:14s} {r['publish_hz']:4.0f} {r['received']:4d}/{r['published']:<4d} {r['received_hz']:8.1f} "
            f"{r['call_p50_us']:8.1f}us {r['call_p99_us']:8.1f}us {r['lat_p50_ms']:7.2f}ms {r['lat_p99_ms']:7.2f}ms"
        )
    for hz in sorted({r["publish_hz"] for r in results}):
        ours = next(r for r in results if r["mode"] == "slicer_link" and r["publish_hz"] == hz)
        for r in results:
            if r["publish_hz"] == hz and r is not ours:
                print(
                    f"{hz:.0f} Hz, {r['mode']} / slicer_link: call p99 x{r['call_p99_us'] / ours['call_p99_us']:.0f}, "
                    f"latency p50 x{r['lat_p50_ms'] / ours['lat_p50_ms']:.1f}, p99 x{r['lat_p99_ms'] / ours['lat_p99_ms']:.1f}"
                )
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if quick else ""
    slim = [{k: v for k, v in r.items() if k not in ("lat_ms", "call_us")} for r in results]
    (RESULTS / f"slicer_rate{suffix}.json").write_text(json.dumps(slim, indent=2))
    _plot(results, RESULTS / f"slicer_rate{suffix}.png")


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['mode']}\n{r['publish_hz']:.0f} Hz\n{r['received_hz']:.0f} Hz recv" for r in results]
    ax1.boxplot([r["lat_ms"] for r in results], whis=(1, 99), showfliers=False)
    ax1.set_xticks(range(1, len(results) + 1), labels, fontsize=8)
    ax1.set_ylabel("capture -> pyigtl client (ms), whiskers p1-p99")
    ax1.set_title("Pose latency")
    ax2.boxplot([r["call_us"] for r in results], whis=(1, 99), showfliers=False)
    ax2.set_xticks(range(1, len(results) + 1), labels, fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("publish call blocks the caller (us, log)")
    ax2.set_title("Cost to the registration loop")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 s per mode and rate (< 60 s in all)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", type=float, nargs="+", default=[45.0, 60.0])
    args = ap.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    threading.current_thread().name = "bench"
    results = [run_mode(mode, hz, seconds) for hz in args.rates for mode in MODES]
    report(results, args.quick)


if __name__ == "__main__":
    main()
