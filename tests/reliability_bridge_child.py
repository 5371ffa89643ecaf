"""Helper processes for the bridge reliability tests (run with ``python THIS MODE ...``).

* ``lossy``: inside a fresh network namespace (the test starts it under ``unshare -n``):
  loopback up, a BridgeServer and a reference HeadsetClient, then nftables drops a share
  of every packet on the input hook while poses and annotation ops stream; prints one
  JSON line with what arrived and what the headset's link monitor said.
* ``server``: a BridgeServer with a persistent annotation store on fixed ports, churning
  annotation ops until told ``stop`` on stdin; prints JSON lines (``up``, ``final``). The
  restart test SIGKILLs it mid-churn and starts it again on the same store.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from headset_bridge.annotations import state_digest
from headset_bridge.client import ClientConfig, HeadsetClient
from headset_bridge.keys import Allowlist, KeyPair, load_keypair, load_public
from headset_bridge.messages import Annotation, PoseUpdate
from headset_bridge.server import BridgeServer, ServerConfig

NFT_TABLE = "scrubin_loss"


def annotation(i: int, text: str = "") -> Annotation:
    return Annotation(
        id=f"a{i}",
        kind="stroke",
        author="dr-m",
        role="mentor",
        points_mm=((float(i % 97), 2.0, 3.0), (4.0, 5.0, 6.0)),
        created_ns=1000 + i,
        text=text,
    )


def churn_step(server: BridgeServer, i: int) -> None:
    """One annotation op: mostly adds, some updates and deletes (every op kind crosses the link)."""
    ids = sorted(server.annotations[1], key=lambda a: int(a[1:]))
    if i % 7 == 0 and ids:
        server.annotate("delete", ids[0])
    elif i % 3 == 0 and ids:
        server.annotate("update", annotation(int(ids[-1][1:]), f"rev at {i}"))
    else:
        server.annotate("add", annotation(i))


def pose(seq: int) -> PoseUpdate:
    return PoseUpdate(
        T_sensor_model=np.array([[1, 0, 0, seq], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64),
        status="tracking",
        fitness=0.9,
        rmse_mm=1.2,
        timestamp_ns=time.monotonic_ns(),
        seq=seq,
    )


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


# --------------------------------------------------------------------------- lossy
def _nft(drop_percent: int) -> None:
    rules = (
        f"table inet {NFT_TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    numgen random mod 100 < {drop_percent} counter drop\n"
        "  }\n"
        "}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)


def _nft_dropped() -> int:
    out = subprocess.run(["nft", "-j", "list", "table", "inet", NFT_TABLE], capture_output=True, text=True, check=True)
    for item in json.loads(out.stdout)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    return 0


def run_lossy(drop_percent: int, seconds: float) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server_keys, headset_keys = KeyPair.generate(), KeyPair.generate()
    server = BridgeServer(server_keys, Allowlist({"hl-a": headset_keys.public}), ServerConfig.ephemeral()).start()
    config = ClientConfig(server.pub_endpoint, server.ctl_endpoint, server_keys.public)
    client = HeadsetClient(headset_keys, config)
    try:
        ready = client.wait_for(
            lambda: client.annotations.synced and client.clock.synced and client.view().silence_ms is not None, 10.0
        )
        baseline = client.link_quality()
        _nft(drop_percent)  # loss starts mid-session, on an established, synced link
        published, received_before, statuses = _stream(server, client, seconds)
        link = dataclasses.asdict(client.link_quality())
        seq = server.annotations[0]
        converged = client.wait_for(lambda: client.annotations.seq == seq, 60.0)
        # The newest pose gets through too (the server re-sends it every 50 ms). How many of
        # the 150 arrive within the 2.5 s window is up to TCP: under 30 % loss a run of
        # retransmission timeouts (200, 400, 800 ms ...) can stall the whole window.
        pose_caught_up = client.wait_for(lambda: client.view().seq >= published, 30.0)
        dropped = _nft_dropped()
        _, state = server.annotations
        emit(
            ready=ready,
            baseline=baseline.status,
            published=published,
            poses_received=len(client.pose_log) - received_before,
            pose_caught_up=pose_caught_up,
            server_seq=seq,
            converged=converged,
            client_seq=client.annotations.seq,
            applied=client.annotations.applied,
            duplicates=client.annotations.duplicates,
            digest_equal=state_digest(client.annotations.state) == state_digest(state),
            statuses=statuses,
            link=link,
            dropped_packets=dropped,
            counters=client.counters.counts,
        )
    finally:
        client.close()
        server.stop()


def _stream(server: BridgeServer, client: HeadsetClient, seconds: float) -> tuple[int, int, dict[str, int]]:
    """Poses at 60 Hz and annotation ops at 50 Hz for ``seconds``; the headset polls throughout."""
    received_before = len(client.pose_log)
    statuses: dict[str, int] = {}
    start = time.monotonic()
    next_pose = next_op = next_look = start
    n_pose = n_op = 0
    while (now := time.monotonic()) < start + seconds:
        if now >= next_pose:
            n_pose += 1
            server.publish_pose(pose(n_pose))
            next_pose += 1 / 60
        if now >= next_op:
            n_op += 1
            churn_step(server, n_op)
            next_op += 1 / 50
        if now >= next_look:
            status = client.link_quality().status
            statuses[status] = statuses.get(status, 0) + 1
            next_look += 0.1
        client.poll(0.002)
    return n_pose, received_before, statuses


# --------------------------------------------------------------------------- server
def run_server(keys: Path, store: Path | None, pub_port: int, ctl_port: int) -> None:
    allow = Allowlist({"hl-a": load_public(keys / "hl-a.key")})
    config = ServerConfig(pub_port=pub_port, ctl_port=ctl_port, annotation_store=store)
    server = BridgeServer(load_keypair(keys / "server.key_secret"), allow, config).start()
    seq, _ = server.annotations
    emit(event="up", seq=seq, epoch=server.epoch)
    stop = threading.Event()

    def produce() -> None:
        i = seq
        while not stop.wait(0.004):  # paces the producer; nothing waits on it
            i += 1
            server.publish_pose(pose(i))
            churn_step(server, i)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    for line in sys.stdin:
        if line.strip() == "stop":
            stop.set()
            producer.join()
            final, state = server.annotations
            emit(event="final", seq=final, digest=state_digest(state))
        elif line.strip() == "exit":
            break
    server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="mode", required=True)
    lossy = sub.add_parser("lossy")
    lossy.add_argument("--drop", type=int, required=True)
    lossy.add_argument("--seconds", type=float, default=3.0)
    srv = sub.add_parser("server")
    srv.add_argument("--keys", type=Path, required=True)
    srv.add_argument("--store", type=Path, help="annotation store (none: a restart starts a new epoch)")
    srv.add_argument("--pub-port", type=int, required=True)
    srv.add_argument("--ctl-port", type=int, required=True)
    args = ap.parse_args()
    if args.mode == "lossy":
        run_lossy(args.drop, args.seconds)
    else:
        run_server(args.keys, args.store, args.pub_port, args.ctl_port)


if __name__ == "__main__":
    main()
