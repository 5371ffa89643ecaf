"""Client CPU cost per pose message: HeadsetClient.poll(0) vs a raw pyzmq recv.

One BridgeServer and one HeadsetClient on 127.0.0.1 (CURVE + ZAP), plus a raw
CURVE SUB socket on the same PUB that receives the very same bytes (the floor:
recv_multipart and nothing else). For each of N poses the server publishes one
pose, the bench waits (untimed) until both sockets have it, then times:

* ``client`` - ``HeadsetClient.poll(0)``: recv, decode + validation, link
  bookkeeping, pose log, newest-pose apply, timers and heartbeats;
* ``raw``    - ``recv_multipart`` on the raw SUB socket.

The figure is the calling thread's CPU time (``time.thread_time_ns``: libzmq's
I/O threads and the server's threads are not in it) divided by the messages the
call handled (a 20 Hz keepalive sometimes arrives in the same call). Wall time
(perf_counter) is printed too. Results go to bench/results/bridge_client_cost.{json,png}.

Usage: .venv/bin/python bench/bench_bridge_client_cost.py [--quick] [--n 3000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from headset_bridge.client import ClientConfig, HeadsetClient  # noqa: E402
from headset_bridge.keys import Allowlist, KeyPair  # noqa: E402
from headset_bridge.messages import PoseUpdate  # noqa: E402
from headset_bridge.server import BridgeServer, ServerConfig  # noqa: E402
from headset_bridge.transport import client_socket  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _pose(seq: int) -> PoseUpdate:
    T = np.eye(4)
    T[:3, 3] = (1.0, 2.0, float(seq))
    return PoseUpdate(T, "tracking", 0.9, 1.5, time.monotonic_ns(), seq)


def _wait_readable(poller: zmq.Poller, socks: list[zmq.Socket[Any]], timeout_s: float = 2.0) -> bool:
    deadline, pending = time.monotonic() + timeout_s, set(socks)
    while pending and time.monotonic() < deadline:
        ready = dict(poller.poll(10))
        pending -= {s for s in pending if ready.get(s)}
    return not pending


def measure(n: int) -> dict[str, Any]:
    server_keys, head_keys, raw_keys = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    allow = Allowlist({"hl-a": head_keys.public, "raw": raw_keys.public})
    server = BridgeServer(server_keys, allow, ServerConfig.ephemeral()).start()
    cfg = ClientConfig(server.pub_endpoint, server.ctl_endpoint, server_keys.public)
    client = HeadsetClient(head_keys, cfg)
    ctx: zmq.Context[Any] = zmq.Context()
    raw = client_socket(ctx, zmq.SUB, raw_keys, server_keys.public)
    raw.setsockopt(zmq.RCVHWM, 0)
    raw.setsockopt(zmq.SUBSCRIBE, b"pose")
    raw.connect(server.pub_endpoint)
    try:
        server.publish_pose(_pose(0))
        if not client.wait_for(lambda: client.view().live and client.clock.synced, 5.0):
            msg = f"client never went live, got {client.view().reason!r}"
            raise RuntimeError(msg)
        sub = client.sockets[0]
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(raw, zmq.POLLIN)
        while raw.poll(0):
            raw.recv_multipart()
        cpu: dict[str, list[float]] = {"client": [], "raw": []}
        wall: dict[str, list[float]] = {"client": [], "raw": []}
        for seq in range(1, n + 1):
            server.publish_pose(_pose(seq))
            if not _wait_readable(poller, [sub, raw]):
                continue
            w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            handled = client.poll(0)
            c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
            got = 0
            while raw.poll(0):
                r0, rc0 = time.perf_counter_ns(), time.thread_time_ns()
                raw.recv_multipart()
                rc1, r1 = time.thread_time_ns(), time.perf_counter_ns()
                cpu["raw"].append((rc1 - rc0) / 1e3)
                wall["raw"].append((r1 - r0) / 1e3)
                got += 1
            if handled:
                cpu["client"].append((c1 - c0) / 1e3 / handled)
                wall["client"].append((w1 - w0) / 1e3 / handled)
        if len(client.pose_log) < n // 2:
            msg = f"client logged too few poses, got {len(client.pose_log)!r} of {n!r}"
            raise RuntimeError(msg)
    finally:
        raw.close(linger=0)
        ctx.term()
        client.close()
        server.stop()
    return {"cpu_us": cpu, "wall_us": wall}


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"n": float(a.size), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def report(data: dict[str, Any], label: str) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label}
    for kind in ("cpu_us", "wall_us"):
        out[kind] = {who: _stats(v) for who, v in data[kind].items()}
    c, r = out["cpu_us"]["client"], out["cpu_us"]["raw"]
    print(f"per pose message ({label}), {int(c['n'])} samples, us:")
    print(f"{'':8s}{'cpu p50':>10s}{'cpu p99':>10s}{'wall p50':>10s}{'wall p99':>10s}")
    for who in ("client", "raw"):
        cw, ww = out["cpu_us"][who], out["wall_us"][who]
        print(f"{who:8s}{cw['p50']:10.1f}{cw['p99']:10.1f}{ww['p50']:10.1f}{ww['p99']:10.1f}")
    print(f"client/raw cpu ratio: p50 {c['p50'] / r['p50']:.1f}x, p99 {c['p99'] / r['p99']:.1f}x")
    return out


def plot(data: dict[str, Any], label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for who, colour in (("client", "tab:blue"), ("raw", "tab:grey")):
        v = np.sort(np.asarray(data["cpu_us"][who]))
        ax.plot(
            v, np.linspace(0, 1, v.size), color=colour, label=f"{who} (HeadsetClient.poll)" if who == "client" else who
        )
    ax.set_xscale("log")
    ax.set_xlabel("CPU time per pose message (us, calling thread)")
    ax.set_ylabel("fraction of messages")
    ax.set_title(f"Headset client cost per pose message ({label})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 poses (< 30 s)")
    ap.add_argument("--n", type=int, default=3000, help="poses to measure")
    ap.add_argument("--label", default="current", help="name of this run in the output files")
    args = ap.parse_args()
    n = 500 if args.quick else args.n
    data = measure(n)
    summary = report(data, args.label)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"bridge_client_cost_{args.label}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    plot(data, args.label, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / stem}.json and .png")


if __name__ == "__main__":
    main()
