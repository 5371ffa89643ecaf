"""Depth uplink: 512x512 uint16 frames headset -> server with CURVE; bridge vs raw pyzmq.

Two phases per transport, the headset in a child process, the server here:

* ``paced``: 60 frames/s (the camera rate) - delivered fps, drops, capture -> server latency,
* ``max``: as fast as the socket takes them (back-pressure, nothing generated to be dropped).

``bridge``: HeadsetClient.send_depth -> BridgeServer (CURVE + ZAP, validation,
bounded queue) -> a consumer thread taking frames as registration would.
``raw-curve``: pyzmq PUSH -> PULL with CURVE carrying the same encoded message.

Usage: .venv/bin/python bench/bench_bridge_uplink.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from headset_bridge import protocol as P  # noqa: E402
from headset_bridge.client import ClientConfig, HeadsetClient  # noqa: E402
from headset_bridge.keys import Allowlist, KeyPair, load_keypair, load_public, write_keypair  # noqa: E402
from headset_bridge.messages import DepthFrame  # noqa: E402
from headset_bridge.server import BridgeServer, ServerConfig  # noqa: E402

RESULTS = ROOT / "bench" / "results"
W = H = 512
K = (365.0, 365.0, 256.0, 256.0)
FRAME_MB = W * H * 2 / 1e6


# ----------------------------------------------------------------------------- child (headset)
def child(args: argparse.Namespace) -> None:
    keydir = Path(args.keydir)
    depth = np.random.default_rng(0).integers(300, 1500, size=(H, W), dtype=np.uint16)
    rate = float(args.rate)
    run = _child_bridge if args.mode == "bridge" else _child_raw
    stats = run(args, keydir, depth, rate)
    print(json.dumps(stats), flush=True)


def _child_bridge(args: argparse.Namespace, keydir: Path, depth: Any, rate: float) -> dict[str, Any]:
    c = HeadsetClient(
        load_keypair(keydir / "h0.key_secret"), ClientConfig(args.pub, args.ctl, load_public(keydir / "server.key"))
    )
    c.wait_for(lambda: c.clock.synced, 10.0)
    print("READY", flush=True)
    sent, start, pace = 0, time.monotonic(), threading.Event()
    dealer = c.sockets[1]
    while time.monotonic() - start < args.seconds:
        if rate > 0:
            pace.wait(max(0.0, start + sent / rate - time.monotonic()))
        elif c.uplink_pending:
            dealer.poll(5, zmq.POLLOUT)  # back-pressure: wait for room instead of dropping
            c.poll(0)
            continue
        c.send_depth(depth, np.eye(4), K)
        sent += 1
        c.poll(0)
    end = time.monotonic()
    c.wait_for(lambda: c.uplink_pending == 0, 2.0)
    dropped = c.counters.get("uplink_dropped:depth")
    c.close()
    return {"sent": sent, "client_dropped": dropped, "seconds": end - start}


def _child_raw(args: argparse.Namespace, keydir: Path, depth: Any, rate: float) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
    s: zmq.Socket[Any] = ctx.socket(zmq.PUSH)
    kp = load_keypair(keydir / "h0.key_secret")
    s.curve_serverkey, s.curve_publickey, s.curve_secretkey = load_public(keydir / "server.key"), kp.public, kp.secret
    s.setsockopt(zmq.SNDHWM, 4)
    s.setsockopt(zmq.LINGER, 2000)
    s.connect(args.pub)
    s.poll(10_000, zmq.POLLOUT)
    print("READY", flush=True)
    sent, dropped, start, pace, seq = 0, 0, time.monotonic(), threading.Event(), 0
    while time.monotonic() - start < args.seconds:
        if rate > 0:
            pace.wait(max(0.0, start + (sent + dropped) / rate - time.monotonic()))
        elif not s.poll(5, zmq.POLLOUT):
            continue
        seq += 1
        now = time.monotonic_ns()
        header = {
            "seq": seq,
            "t_ns": now,
            "t_capture_ns": now,
            "width": W,
            "height": H,
            "dtype": "uint16",
            "depth_unit_mm": 1.0,
            "fx": K[0],
            "fy": K[1],
            "cx": K[2],
            "cy": K[3],
            "T_world_camera": np.eye(4).reshape(16).tolist(),
        }
        try:
            s.send_multipart(P.encode("depth", header, depth.tobytes()), flags=zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            dropped += 1
    end = time.monotonic()
    s.close()
    ctx.term()
    return {"sent": sent, "client_dropped": dropped, "seconds": end - start}


# ----------------------------------------------------------------------------- parent (server)
class Tally:
    def __init__(self) -> None:
        self.n, self.first, self.last, self.lat_ns = 0, 0, 0, []  # type: ignore[var-annotated]

    def add(self, t_capture_ns: int) -> None:
        now = time.monotonic_ns()
        self.first = self.first or now
        self.last, self.n = now, self.n + 1
        self.lat_ns.append(now - t_capture_ns)


def _spawn(mode: str, rate: float, seconds: float, keydir: Path, pub: str, ctl: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--mode",
        mode,
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        "--keydir",
        str(keydir),
        "--pub",
        pub,
        "--ctl",
        ctl,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "READY":
        raise RuntimeError(f"child failed to start, exit {proc.wait()!r}")
    return proc


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    out: dict[str, Any] = json.loads(proc.stdout.readline())
    proc.wait(30)
    return out


def run_bridge(rate: float, seconds: float, keydir: Path, keys: KeyPair, allow: Allowlist) -> dict[str, Any]:
    server = BridgeServer(keys, allow, ServerConfig.ephemeral()).start()
    tally, stop = Tally(), threading.Event()

    def consume() -> None:  # what the registration loop would do
        while not stop.is_set():
            server.wait_for(lambda: server.pending("depth", "h0") > 0, 0.05)
            for f in server.take("depth", "h0"):
                assert isinstance(f, DepthFrame) and f.depth.shape == (H, W)
                tally.add(f.t_capture_ns)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        proc = _spawn("bridge", rate, seconds, keydir, server.pub_endpoint, server.ctl_endpoint)
        child = _finish(proc)
        server.wait_for(
            lambda: server.headsets()["h0"].received.get("depth", 0) >= child["sent"] - child["client_dropped"], 3.0
        )
        stop.set()
        t.join(2.0)
        for f in server.take("depth", "h0"):  # whatever arrived as the consumer stopped
            assert isinstance(f, DepthFrame)
            tally.add(f.t_capture_ns)
        received = server.headsets()["h0"].received.get("depth", 0)
        server_dropped = server.counters.get("uplink_dropped:depth")
    finally:
        server.stop()
    return {**child, "received": received, "consumed": tally.n, "server_dropped": server_dropped, "tally": tally}


def run_raw(rate: float, seconds: float, keydir: Path, keys: KeyPair) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
    pull: zmq.Socket[Any] = ctx.socket(zmq.PULL)
    pull.curve_server, pull.curve_publickey, pull.curve_secretkey = True, keys.public, keys.secret
    pull.setsockopt(zmq.RCVHWM, 4)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind("tcp://127.0.0.1:*")
    endpoint = str(pull.getsockopt_string(zmq.LAST_ENDPOINT))
    tally = Tally()
    proc = _spawn("raw-curve", rate, seconds, keydir, endpoint, "-")
    while proc.poll() is None or pull.poll(0):
        if pull.poll(100):
            frames = pull.recv_multipart(copy=False)
            h = json.loads(frames[1].bytes)
            np.frombuffer(frames[2].buffer, dtype="<u2").reshape(H, W)
            tally.add(h["t_capture_ns"])
    child = _finish(proc)
    pull.close()
    ctx.term()
    return {**child, "received": tally.n, "consumed": tally.n, "server_dropped": 0, "tally": tally}


def _summary(name: str, r: dict[str, Any]) -> dict[str, Any]:
    t: Tally = r.pop("tally")
    span = max((t.last - t.first) / 1e9, 1e-9)
    fps = (t.n - 1) / span if t.n > 1 else 0.0
    lat = np.array(t.lat_ns, dtype=np.float64) / 1e6 if t.lat_ns else np.array([np.nan])
    out = {
        **r,
        "fps": fps,
        "MB_per_s": fps * FRAME_MB,
        "lat_p50_ms": float(np.percentile(lat, 50)),
        "lat_p99_ms": float(np.percentile(lat, 99)),
    }
    print(
        f"  {name:18s} {fps:7.1f} frames/s  {out['MB_per_s']:7.1f} MB/s  sent {r['sent']:5d}  "
        f"consumed {r['consumed']:5d}  dropped client {r['client_dropped']} server {r['server_dropped']}  "
        f"capture->consumer p50 {out['lat_p50_ms']:.2f} ms p99 {out['lat_p99_ms']:.2f} ms"
    )
    return out


def parent(args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = KeyPair.generate()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        write_keypair(tmp, "server", keys)
        write_keypair(tmp, "h0")
        allow = Allowlist({"h0": load_public(tmp / "h0.key")})
        print(
            f"depth uplink, {W}x{H} uint16 ({FRAME_MB:.2f} MB/frame), CURVE, {args.seconds:.0f} s per run, "
            f"{os.cpu_count()} CPUs"
        )
        for phase, rate in (("paced 60 Hz", 60.0), ("max", 0.0)):
            for mode in ("raw-curve", "bridge"):
                r = (
                    run_bridge(rate, args.seconds, tmp, keys, allow)
                    if mode == "bridge"
                    else run_raw(rate, args.seconds, tmp, keys)
                )
                results[f"{mode}/{phase}"] = _summary(f"{mode} {phase}", r)
    b, raw = results["bridge/max"], results["raw-curve/max"]
    print(
        f"max throughput bridge / raw-curve: x{b['fps'] / raw['fps']:.2f}; "
        f"goal >= 60 frames/s with CURVE: {'met' if b['fps'] >= 60 else 'NOT met'} ({b['fps']:.0f} fps)"
    )
    (RESULTS / "bridge_uplink.json").write_text(json.dumps(results, indent=2))
    _plot(results)


def _plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(len(names)), [results[n]["fps"] for n in names], color=["tab:blue", "tab:red"] * 2)
    ax.axhline(60, color="k", ls=":", lw=0.8, label="60 frames/s goal")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set(ylabel="delivered frames/s", title="512x512 uint16 depth uplink with CURVE")
    ax.legend()
    fig.tight_layout()
    path = RESULTS / "bridge_uplink.png"
    fig.savefig(path, dpi=120)
    print(f"wrote {path} and {RESULTS / 'bridge_uplink.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=60.0, help=argparse.SUPPRESS)
    for name in ("--mode", "--keydir", "--pub", "--ctl"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
