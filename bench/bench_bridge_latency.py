"""Pose latency server -> headsets at 60 Hz, 1/10/50 headsets: bridge vs raw pyzmq.

Three transports carry the same bytes (the bridge's encoded pose message) in the
same run, interleaved per headset count:

* ``raw``       - pyzmq PUB/SUB, no encryption (the floor),
* ``raw-curve`` - pyzmq PUB/SUB with CURVE, no ZAP, no protocol logic,
* ``bridge``    - BridgeServer.publish_pose -> HeadsetClient (CURVE + ZAP, keepalives,
                  heartbeats, clock sync, validation).

The server side runs in this process. By default all headsets share one child
process (one socket set per headset, one poller), so the child's Python work per
message is part of the figure: the 50th headset waits for the 49 before it.
``--per-process`` gives every headset its own process instead, as real headsets
are separate devices (they still share this machine's 2 cores). Latency is
server send stamp to headset receive stamp on the shared CLOCK_MONOTONIC.

Usage: .venv/bin/python bench/bench_bridge_latency.py [--seconds 5] [--counts 1 10 50] [--per-process]
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
from headset_bridge.messages import PoseUpdate  # noqa: E402
from headset_bridge.server import BridgeServer, ServerConfig  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODES = ("raw", "raw-curve", "bridge")
RATE_HZ = 60.0
SPIN = False  # headsets busy-poll (a render loop that never sleeps) instead of blocking in poll
PER_PROCESS = False  # one child process per headset instead of one for all


# ----------------------------------------------------------------------------- child
def child(args: argparse.Namespace) -> None:
    keydir = Path(args.keydir)
    server_public = load_public(keydir / "server.key")
    ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
    if args.mode == "bridge":
        lat = _child_bridge(args, ctx, keydir, server_public)
    else:
        lat = _child_raw(args, ctx, keydir, server_public)
    Path(args.out).write_text(json.dumps(lat))
    ctx.destroy(linger=0)


def _ready_line() -> None:
    print("READY", flush=True)


def _child_bridge(
    args: argparse.Namespace, ctx: zmq.Context[Any], keydir: Path, server_public: bytes
) -> dict[str, Any]:
    cfg = ClientConfig(args.pub, args.ctl, server_public)
    keys = [load_keypair(keydir / f"h{args.first + i}.key_secret") for i in range(args.n)]
    clients = [HeadsetClient(kp, cfg, context=ctx) for kp in keys]
    poller = zmq.Poller()
    owner: dict[Any, HeadsetClient] = {}
    for c in clients:
        for s in c.sockets:
            poller.register(s, zmq.POLLIN)
            owner[s] = c
    deadline = time.monotonic() + 20
    while not all(c.clock.synced and c.annotations.synced for c in clients) and time.monotonic() < deadline:
        for c in clients:
            c.poll(0.001)
    _ready_line()
    deadline = time.monotonic() + args.count / RATE_HZ + 10

    def done(c: HeadsetClient) -> bool:
        return bool(c.pose_log) and c.pose_log[-1].seq >= args.count

    while not all(done(c) for c in clients) and time.monotonic() < deadline:
        ready = {owner[s] for s, _ in poller.poll(0 if args.spin else 5)}
        for c in clients:  # poll(0) also keeps heartbeats going
            if c in ready:
                c.poll(0)
    lat = [[r.t_recv_ns - r.t_send_ns for r in c.pose_log if r.seq >= 1] for c in clients]
    # The last pose says "lost": how long until every headset had it, and did each hide the overlay?
    lost_ns = [next((r.t_recv_ns - r.t_send_ns for r in c.pose_log if r.seq == args.count), -1) for c in clients]
    hidden = all(c.view().status == "lost" and not c.view().live for c in clients)
    for c in clients:
        c.close()
    return {"lat": lat, "lost_ns": lost_ns, "hidden": hidden}


def _child_raw(args: argparse.Namespace, ctx: zmq.Context[Any], keydir: Path, server_public: bytes) -> dict[str, Any]:
    socks = []
    for i in range(args.n):
        s: zmq.Socket[Any] = ctx.socket(zmq.SUB)
        if args.mode == "raw-curve":
            kp = load_keypair(keydir / f"h{args.first + i}.key_secret")
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_public, kp.public, kp.secret
        s.setsockopt(zmq.SUBSCRIBE, b"pose")
        s.connect(args.pub)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    lat: list[list[int]] = [[] for _ in socks]
    last = [-1] * len(socks)
    index = {s: i for i, s in enumerate(socks)}
    warm = False
    deadline = time.monotonic() + args.count / RATE_HZ + 30
    while min(last) < args.count and time.monotonic() < deadline:
        for s, _ in poller.poll(0 if args.spin else 5):
            i = index[s]
            while True:
                try:
                    frames = s.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                t_recv = time.monotonic_ns()
                h = json.loads(frames[1])
                last[i] = h["seq"]
                if h["seq"] >= 1:
                    lat[i].append(t_recv - h["t_ns"])
        if not warm and min(last) >= 0:
            warm = True
            _ready_line()
    for s in socks:
        s.close(linger=0)
    return {"lat": lat}


# ----------------------------------------------------------------------------- parent
def _pose(seq: int, status: str = "tracking") -> PoseUpdate:
    T = np.eye(4)
    T[:3, 3] = (1.0, 2.0, float(seq))
    return PoseUpdate(T, status, 0.93, 1.2, time.monotonic_ns(), seq)  # type: ignore[arg-type]


def _spawn(
    mode: str, n: int, count: int, keydir: Path, pub: str, ctl: str, out: Path, first: int = 0
) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--mode",
        mode,
        "--n",
        str(n),
        "--first",
        str(first),
        "--count",
        str(count),
        "--keydir",
        str(keydir),
        "--pub",
        pub,
        "--ctl",
        ctl,
        "--out",
        str(out),
    ] + (["--spin"] if SPIN else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def _spawn_group(mode: str, n: int, count: int, keydir: Path, pub: str, ctl: str, out: Path) -> list[tuple[Any, Path]]:
    """The headsets' child processes: one for all of them, or one each (``--per-process``)."""
    if not PER_PROCESS:
        return [(_spawn(mode, n, count, keydir, pub, ctl, out), out)]
    outs = [out.with_name(f"{out.stem}-{i}.json") for i in range(n)]
    return [(_spawn(mode, 1, count, keydir, pub, ctl, o, first=i), o) for i, o in enumerate(outs)]


def _collect(group: list[tuple[Any, Path]]) -> dict[str, Any]:
    """Wait for every child and merge their results (lists concatenated, flags and-ed)."""
    merged: dict[str, Any] = {}
    for proc, out in group:
        proc.wait(60)
        for key, value in json.loads(out.read_text()).items():
            merged[key] = (merged.get(key, True) and value) if isinstance(value, bool) else merged.get(key, []) + value
    return merged


def _wait_ready(proc: subprocess.Popen[str], warmup: Any = None) -> None:
    """Wait for the child's READY line; meanwhile ``warmup()`` keeps raw sockets fed."""
    assert proc.stdout is not None
    got = threading.Event()
    stdout = proc.stdout

    def read_ready() -> None:
        stdout.readline()
        got.set()

    threading.Thread(target=read_ready, daemon=True).start()
    while not got.wait(0.02):
        if warmup is not None:
            warmup()
        if proc.poll() is not None:
            raise RuntimeError(f"child exited early with {proc.returncode!r}")


def _paced(count: int, send: Any) -> list[int]:
    """Call send(seq) at 60 Hz; return how long each call took (ns)."""
    costs, start, pace = [], time.monotonic(), threading.Event()
    for seq in range(1, count + 1):
        pace.wait(max(0.0, start + seq / RATE_HZ - time.monotonic()))  # pacing, not synchronisation
        t = time.monotonic_ns()
        send(seq)
        costs.append(time.monotonic_ns() - t)
    return costs


def run_bridge(n: int, count: int, keydir: Path, server_keys: KeyPair, allow: Allowlist, tmp: Path) -> dict[str, Any]:
    server = BridgeServer(server_keys, allow, ServerConfig.ephemeral()).start()
    out = tmp / f"bridge-{n}.json"
    try:
        group = _spawn_group("bridge", n, count, keydir, server.pub_endpoint, server.ctl_endpoint, out)
        for proc, _ in group:
            _wait_ready(proc)
        costs = _paced(count, lambda seq: server.publish_pose(_pose(seq, "lost" if seq == count else "tracking")))
        result = _collect(group)
        alive = sum(h.alive for h in server.headsets().values())
    finally:
        server.stop()
    return {**result, "publish_cost_ns": costs, "alive": alive}


def run_raw(mode: str, n: int, count: int, keydir: Path, server_keys: KeyPair, tmp: Path) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
    pub: zmq.Socket[Any] = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    if mode == "raw-curve":
        pub.curve_server, pub.curve_publickey, pub.curve_secretkey = True, server_keys.public, server_keys.secret
    pub.bind("tcp://127.0.0.1:*")
    endpoint = str(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    template = {
        "t_capture_ns": 0,
        "status": "tracking",
        "reason": "",
        "fitness": 0.93,
        "rmse_mm": 1.2,
        "repeat": False,
        "epoch": "0123456789abcdef",
        "ann_seq": 0,
        "model": None,
        "sensor": "",
        "sensor_frame_seq": -1,
    }

    def send(seq: int) -> None:
        p = _pose(seq)
        header = {"seq": seq, "t_ns": time.monotonic_ns(), **template, "t_capture_ns": p.timestamp_ns}
        pub.send_multipart(P.encode("pose", header, P.pack_mat4(p.T_sensor_model)), flags=zmq.NOBLOCK)

    out = tmp / f"{mode}-{n}.json"
    try:
        group = _spawn_group(mode, n, count, keydir, endpoint, "-", out)
        for proc, _ in group:
            _wait_ready(proc, warmup=lambda: send(0))
        costs = _paced(count, send)
        result = _collect(group)
    finally:
        pub.close(linger=0)
        ctx.term()
    return {**result, "publish_cost_ns": costs}


def _stats(lat: list[list[int]], count: int) -> dict[str, float]:
    flat = np.array([v for per in lat for v in per], dtype=np.float64) / 1e3
    received = sum(len(per) for per in lat)
    return {
        "p50_us": float(np.percentile(flat, 50)),
        "p99_us": float(np.percentile(flat, 99)),
        "max_us": float(flat.max()),
        "samples": received,
        "expected": count * len(lat),
    }


def parent(args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    count = int(args.seconds * RATE_HZ)
    server_keys = KeyPair.generate()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        write_keypair(tmp, "server", server_keys)
        for i in range(max(args.counts)):
            write_keypair(tmp, f"h{i}")
        allow = Allowlist(directory=tmp)
        print(f"pose latency, 60 Hz, {count} poses per run, {os.cpu_count()} CPUs, CURVE on for raw-curve and bridge")
        for n in args.counts:
            for mode in MODES:
                if mode == "bridge":
                    r = run_bridge(n, count, tmp, server_keys, allow, tmp)
                else:
                    r = run_raw(mode, n, count, tmp, server_keys, tmp)
                st = _stats(r["lat"], count)
                cost = np.array(r["publish_cost_ns"]) / 1e3
                st["publish_p99_us"] = float(np.percentile(cost, 99))
                if "lost_ns" in r:
                    st["lost_max_ms"] = max(r["lost_ns"]) / 1e6 if min(r["lost_ns"]) >= 0 else float("inf")
                    st["lost_hidden_all"] = bool(r["hidden"])
                results[f"{mode}/{n}"] = st
                print(
                    f"  {n:3d} headsets {mode:10s} p50 {st['p50_us']:8.1f} us  p99 {st['p99_us']:8.1f} us  "
                    f"max {st['max_us']:8.1f} us  received {st['samples']}/{st['expected']}  "
                    f"publish call p99 {st['publish_p99_us']:.1f} us"
                    + (f"  alive {r['alive']}/{n}" if "alive" in r else "")
                )
                if "lost_ns" in r:
                    print(
                        f"      'lost' reached all {n} headsets within {st['lost_max_ms']:.2f} ms; "
                        f"every overlay hidden: {st['lost_hidden_all']}"
                    )
    _report(results, args.counts)


def _report(results: dict[str, dict[str, Any]], counts: list[int]) -> None:
    print("\nratios (bridge / competitor), same run:")
    for n in counts:
        b = results[f"bridge/{n}"]
        for comp in ("raw", "raw-curve"):
            c = results[f"{comp}/{n}"]
            print(
                f"  {n:3d} headsets vs {comp:9s}: p50 x{b['p50_us'] / c['p50_us']:.2f}  p99 x{b['p99_us'] / c['p99_us']:.2f}"
            )
    goal = results.get("bridge/10")
    if goal is not None:
        ok = goal["p99_us"] <= 1000 and goal["p99_us"] <= 1.5 * results["raw/10"]["p99_us"]
        print(
            f"goal at 10 headsets (p99 <= 1 ms and <= 1.5x raw): {'met' if ok else 'NOT met'} "
            f"(p99 {goal['p99_us']:.0f} us, raw {results['raw/10']['p99_us']:.0f} us)"
        )
    (RESULTS / f"bridge_latency{_suffix()}.json").write_text(json.dumps(results, indent=2))
    _plot(results, counts)


def _suffix() -> str:  # noqa: N802
    return ("_spin" if SPIN else "") + ("_per_process" if PER_PROCESS else "")


def _plot(results: dict[str, dict[str, Any]], counts: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, colour in zip(MODES, ("tab:gray", "tab:blue", "tab:red"), strict=True):
        ax.plot(counts, [results[f"{mode}/{n}"]["p50_us"] for n in counts], "o--", color=colour, label=f"{mode} p50")
        ax.plot(counts, [results[f"{mode}/{n}"]["p99_us"] for n in counts], "s-", color=colour, label=f"{mode} p99")
    ax.axhline(1000, color="k", lw=0.8, ls=":", label="1 ms goal (10 headsets)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="headsets",
        ylabel="send -> receive latency (us)",
        title=f"Pose latency at 60 Hz, {'one process per headset' if PER_PROCESS else 'headsets in one process'}{' (busy-poll)' if SPIN else ''}, {os.cpu_count()} CPUs",
    )
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = RESULTS / f"bridge_latency{_suffix()}.png"
    fig.savefig(path, dpi=120)
    print(f"wrote {path} and {RESULTS / f'bridge_latency{_suffix()}.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--spin", action="store_true", help="headsets busy-poll: no wake-up latency (needs spare cores)")
    ap.add_argument("--per-process", action="store_true", help="one process per headset (as separate devices)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--mode", "--keydir", "--pub", "--ctl", "--out"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global SPIN, PER_PROCESS
    SPIN, PER_PROCESS = args.spin, args.per_process
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
