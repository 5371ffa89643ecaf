"""Annotation latency: a click in the mentor page (headless Chromium) to the 3D mark at a headset.

Processes as deployed: the service (BridgeServer with CURVE + MentorServer, a sphere scene
with 30 fps video and poses) in a child process; the mentor page in headless Chromium; one
reference HeadsetClient (polled continuously by its own thread) in this process. Each
sample is one click at a random point on the sphere's image; the clock starts at the
page's ``pointerdown`` event (``Date.now() - (performance.now() - event.timeStamp)``: the
wall clock read now, less the event's age; ``performance.timeOrigin + timeStamp`` would
carry the wall clock of the page's start, and this machine's wall clock was seen running
5 ms/s ahead of its steady clock) and stops when the headset client's ``on_annotation``
fires (``time.time()``, the same wall clock read at that moment). The path: page -> data channel (SCTP/DTLS, aiortc) -> server (frame
lookup, ray cast) -> annotation log (SQLite, fsync'd, as sessions persist it) -> bridge
PUB -> headset; the audit write (SQLite, synchronous=FULL) follows the publish. The same clicks are measured with the video off (annotation-only
mode) in the same run, to show what the video pipeline costs the data channel.

Usage: .venv/bin/python bench/bench_mentor_annotation.py [--quick] [--clicks 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mentor_fixtures import (  # noqa: E402
    CAMERA,
    SESSION,
    FramePump,
    HeadsetPoller,
    chromium_page,
    make_scene,
    serve,
    stop,
)

from headset_bridge.messages import AnnotationOp  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GOAL_P95_MS = 15.0


def _arm(page: Any) -> None:
    page.evaluate(
        "() => { window.__downs = []; document.getElementById('overlay').addEventListener('pointerdown',"
        " (ev) => window.__downs.push(Date.now() - (performance.now() - ev.timeStamp)), {capture: true}); }"
    )


def service() -> None:
    """Child: bridge + mentor server + frame pump, until stdin closes."""
    from scrubin.runtime import tune_for_service

    tune_for_service()  # as `scrubin serve` does

    with tempfile.TemporaryDirectory(prefix="bench-annotation-") as tmp:  # keys and logs go with it
        _serve_until_stdin_closes(Path(tmp))


def _serve_until_stdin_closes(tmp: Path) -> None:
    from headset_bridge.keys import Allowlist, KeyPair, write_keypair
    from headset_bridge.server import BridgeServer, ServerConfig

    keydir = tmp / "keys"
    server_keys, headset = KeyPair.generate(), KeyPair.generate()
    server_pub, _ = write_keypair(keydir, "server", server_keys)
    _, headset_secret = write_keypair(keydir, "hl-a", headset)
    # As a deployed session: every annotation op is fsync'd to the session's log before it is sent.
    config = ServerConfig.ephemeral(annotation_store=tmp / "annotations.sqlite")
    bridge = BridgeServer(server_keys, Allowlist({"hl-a": headset.public}), config).start()
    scene = make_scene()
    served = serve(scene, tmp, bridge.annotate)
    info = {
        "url": served.server.url_for(SESSION, served.token()),
        "pub": bridge.pub_endpoint,
        "ctl": bridge.ctl_endpoint,
        "server_key": str(server_pub),
        "headset_key": str(headset_secret),
    }
    print(json.dumps(info), flush=True)
    with FramePump(served.room, scene):
        sys.stdin.read()
    stop(served)
    bridge.stop()


def _run(quality: str, clicks: int, rng: np.random.Generator) -> list[float]:
    from headset_bridge.client import ClientConfig, HeadsetClient
    from headset_bridge.keys import load_keypair, load_public

    child = subprocess.Popen(
        [sys.executable, __file__, "--service"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    info = json.loads(child.stdout.readline())
    client = HeadsetClient(
        load_keypair(Path(info["headset_key"])),
        ClientConfig(info["pub"], info["ctl"], load_public(Path(info["server_key"]))),
    )
    assert client.wait_for(lambda: client.annotations.synced and client.clock.synced, 10.0)
    arrived: dict[str, float] = {}

    def on_annotation(op: AnnotationOp) -> None:
        arrived.setdefault(op.id, time.time())

    client.on_annotation = on_annotation
    poller = HeadsetPoller(client)
    scene = make_scene()
    out: list[float] = []
    try:
        with chromium_page() as page:
            page.goto(info["url"])
            page.wait_for_function("window.mentor && mentor.conn === 'connected' && mentor.frames > 10")
            page.select_option("#quality", quality)  # a fixed level: the page's automatic choice is off
            page.wait_for_function(f"mentor.participants.some(p => p.quality === '{quality}')")
            _arm(page)
            for i in range(clicks):
                u, v = _on_sphere(scene, rng)
                pt = page.evaluate(f"mentor.screenPoint({u}, {v})")
                page.mouse.click(pt["x"], pt["y"])
                page.wait_for_function(f"mentor.acks.length > {i}")
                ack = page.evaluate(f"mentor.acks[{i}]")
                if not ack["anchored"]:
                    print(f"  click {i} not anchored: {ack['reason'] or ack['error']}")
                    continue
                if not poller.wait_for(_arrived(arrived, ack["id"]), 5.0):
                    print(f"  click {i}: mark {ack['id']} never reached the headset")
                    continue
                t_down = page.evaluate(f"window.__downs[{i}]") / 1000.0
                out.append((arrived[ack["id"]] - t_down) * 1000.0)
    finally:
        poller.close()
        client.close()
        child.stdin.close()
        child.wait(timeout=30)
    return out


def _arrived(arrived: dict[str, float], ident: str) -> Any:
    return lambda _client: ident in arrived


def _on_sphere(scene: Any, rng: np.random.Generator) -> tuple[float, float]:
    while True:
        u, v = rng.uniform(200, 440), rng.uniform(140, 340)
        if scene.expected_hit(u, v) is not None:
            return float(u), float(v)


def _stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {k: float(np.percentile(a, q)) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))} | {"n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 clicks per variant (< 60 s)")
    ap.add_argument("--clicks", type=int, default=150)
    ap.add_argument("--service", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    clicks = 30 if args.quick else args.clicks
    rng = np.random.default_rng(7)
    if args.service:
        service()
        return
    results = {
        name: _run(quality, clicks, rng) for name, quality in (("with video", "high"), ("annotation-only", "none"))
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {name: _stats(xs) for name, xs in results.items()}
    print(f"annotation click -> headset, {clicks} clicks each, camera {CAMERA.width}x{CAMERA.height}")
    for name, s in summary.items():
        print(f"  {name:20s} p50 {s['p50']:6.2f} ms  p95 {s['p95']:6.2f} ms  p99 {s['p99']:6.2f} ms")
    base = summary["annotation-only"]["p50"]
    print(f"  ratio p50 with video / annotation-only: {summary['with video']['p50'] / base:.2f}")
    p95 = summary["with video"]["p95"]
    print(f"  goal p95 <= {GOAL_P95_MS} ms: {'met' if p95 <= GOAL_P95_MS else 'NOT met'} ({p95:.2f} ms)")
    (RESULTS / "mentor_annotation.json").write_text(json.dumps({"summary": summary, "samples": results}, indent=1))
    _plot(results)


def _plot(results: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, xs in results.items():
        a = np.sort(np.asarray(xs))
        ax.plot(a, np.linspace(0, 1, len(a)), label=name)
    ax.axvline(GOAL_P95_MS, color="k", ls="--", lw=0.8, label="goal p95")
    ax.set_xlabel("browser pointerdown -> mark at headset (ms)")
    ax.set_ylabel("fraction of clicks")
    ax.set_title("Mentor annotation latency (loopback)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "mentor_annotation.png", dpi=120)
    print(f"  plot: {RESULTS / 'mentor_annotation.png'}")


if __name__ == "__main__":
    main()
