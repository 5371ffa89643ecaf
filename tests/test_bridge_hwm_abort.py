"""libzmq abort at the receive high-water mark (zeromq/libzmq#3937), in child processes.

``Assertion failed: _input_stopped (src/stream_engine_base.cpp:396)`` kills the whole
process (SIGABRT) when, in libzmq 4.3.5 (pyzmq 27.3.0, the newest on PyPI):

1. a *connecting* SUB's receive queue reaches RCVHWM, so its engine stops reading,
2. its own ZMTP heartbeat then times out (it cannot read the PONGs) and it reconnects,
   keeping the full pipe (SUB resubscribes through a "hiccup"),
3. the app reads again: the pipe asks the new engine, which never stopped, to restart.

CURVE and message size do not matter; RCVHWM only sets how soon the queue fills. The
smallest reliable case: RCVHWM 1, heartbeat 250/1500 ms on the SUB, a 3 s freeze. A bound
ROUTER (the server) gets a fresh session per connection and is not affected. The bridge
client therefore sets RCVHWM 0 (docs/headset-protocol.md section 1.1).

Each scenario runs in a child (``python tests/test_bridge_hwm_abort.py MODE``): an abort
shows as return code -6, and the test process survives to say so. The freezes are the
scenario under test (an app that stops polling), not synchronisation.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FREEZE_S = 3.0  # > ZMTP heartbeat timeout (1.5 s) + time to fill the queue


def _run_child(mode: str, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, __file__, mode, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return proc.returncode, json.loads(lines[-1]) if lines else {}, proc.stderr


def test_libzmq_still_aborts_without_the_workaround() -> None:
    """Canary: the bug is in the installed libzmq. If this fails, libzmq fixed #3937:
    RCVHWM 0 on the client may then be revisited (docs/headset-protocol.md 1.1)."""
    rc, out, err = _run_child("raw", "1")
    assert rc == -signal.SIGABRT, (rc, out, err[-500:])
    assert "_input_stopped" in err


def test_raw_sub_with_rcvhwm_0_survives_the_same_freeze() -> None:
    rc, out, err = _run_child("raw", "0")
    assert rc == 0, (rc, err[-500:])
    assert out["received"] > 0


def test_headset_client_survives_a_freeze_under_poses_and_audio() -> None:
    rc, out, err = _run_child("client")
    assert rc == 0, (rc, out, err[-800:])
    assert out["live_again"], out
    assert out["audio_after"] > out["audio_before"], out  # the backlog was drained, nothing crashed
    # What piled up in the client during the freeze: poses, keepalives and voice at the
    # server's rates, unbounded by a HWM but bounded by the freeze (tens of KB per second).
    assert out["rss_growth_kb"] < 32 * 1024, out


def test_server_survives_a_stall_under_depth_uplink() -> None:
    rc, out, err = _run_child("server")
    assert rc == 0, (rc, out, err[-800:])
    assert out["depth_after"] > 0, out  # uplink flows again after the stall


# ----------------------------------------------------------------------------- children
def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def child_raw(rcvhwm: int) -> dict[str, Any]:
    """The smallest reproduction: plain PUB/SUB, no CURVE, ZMTP heartbeats on the SUB."""
    import zmq

    ctx: zmq.Context[Any] = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    for s in (pub, sub):
        s.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.HEARTBEAT_IVL, 250)
    sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 1500)
    sub.setsockopt(zmq.RCVHWM, rcvhwm)
    sub.setsockopt(zmq.RECONNECT_IVL, 50)
    pub.bind("tcp://127.0.0.1:*")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.getsockopt(zmq.LAST_ENDPOINT).decode())
    stop = threading.Event()

    def flood() -> None:
        while not stop.wait(0.005):  # 200 msg/s
            pub.send_multipart([b"pose", b"{}", b"x" * 100], zmq.NOBLOCK)

    threading.Thread(target=flood, daemon=True).start()
    received = 0
    if sub.poll(5000):
        received += len(sub.recv_multipart())
    time.sleep(FREEZE_S)  # the app stops reading
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if sub.poll(50):
            sub.recv_multipart()
            received += 1
    stop.set()
    return {"received": received, "zmq": zmq.zmq_version(), "pyzmq": zmq.__version__}


def child_client(freeze_s: float = FREEZE_S) -> dict[str, Any]:
    """A real server and HeadsetClient; poses at 60 Hz and mentor voice keep flowing."""
    sys.path.insert(0, str(ROOT / "tests"))
    from bridge_fixtures import make_bridge, pose

    bridge = make_bridge()
    client = bridge.client()
    stop = threading.Event()

    def publish() -> None:
        seq, pcm = 0, b"\0\1" * 960  # 20 ms of 48 kHz mono
        while not stop.wait(1 / 60):
            seq += 1
            bridge.server.publish_pose(pose(seq))
            bridge.server.publish_audio(pcm, 48000)

    threading.Thread(target=publish, daemon=True).start()
    try:
        assert client.wait_for(lambda: client.view().live and len(client.audio) > 0, 10.0)
        audio_before, rss0 = client.audio[-1].seq, _rss_kb()
        time.sleep(freeze_s)  # the headset app freezes: no poll
        rss1 = _rss_kb()
        live_again = client.wait_for(lambda: client.view().live, 10.0)
        return {
            "live_again": live_again,
            "audio_before": audio_before,
            "audio_after": client.audio[-1].seq,
            "rss_growth_kb": rss1 - rss0,
            "freeze_s": freeze_s,
        }
    finally:
        stop.set()
        client.close()
        bridge.server.stop()


def child_server() -> dict[str, Any]:
    """The server's I/O thread stalls (its lock held) while a headset uploads depth at 45 Hz."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from bridge_fixtures import make_bridge

    bridge = make_bridge(ctl_hwm=8)  # a small queue fills sooner; the default behaves alike
    client = bridge.client()
    stop = threading.Event()
    depth = np.zeros((64, 64), dtype=np.uint16)

    def upload() -> None:
        while not stop.is_set():
            client.send_depth(depth, np.eye(4), (50.0, 50.0, 32.0, 32.0))
            client.poll(1 / 45)

    try:
        assert client.wait_for(lambda: client.clock.synced, 10.0)
        worker = threading.Thread(target=upload, daemon=True)
        worker.start()
        with bridge.server._cond:  # the stall: the I/O thread blocks on its next message
            time.sleep(FREEZE_S)
        bridge.server.take("depth", "hl-a")
        ok = bridge.server.wait_for(lambda: bridge.server.pending("depth", "hl-a") > 0, 10.0)
        stop.set()
        worker.join(5.0)
        return {"depth_after": bridge.server.pending("depth", "hl-a") if ok else 0}
    finally:
        stop.set()
        client.close()
        bridge.server.stop()


if __name__ == "__main__":
    mode = sys.argv[1]
    result = (
        child_raw(int(sys.argv[2]))
        if mode == "raw"
        else child_client(*map(float, sys.argv[2:]))
        if mode == "client"
        else child_server()
    )
    print(json.dumps(result), flush=True)
