"""The demo's simulated headset: HeadsetSimulator depth frames through the reference client.

``python -m scrubin.demo_headset --pub EP --ctl EP --server-key FILE --key FILE --model DIR``

It ray-casts AHAT-like frames of the patient model (the virtual surgeon moves around the
head, hands and an instrument pass through), sends each with its camera pose in the headset
world plus a video frame for mentors, and listens for poses and annotations. It renders in
lock-step: the next frame once this frame's pose is back, so the simulator's CPU does not
compete with the loop it measures (a real headset renders on its own chip). Simulated motion
advances 1/45 s per frame, so every frame sees the motion between two real AHAT frames even
though rendering is slower than 45 Hz.

One JSON object per line on stdout (the demo collects them):
``ready``; ``frame`` (seq, headset capture time, ground-truth T_sensor_model); ``view``
(a newly applied pose: status, live, TRE at the target); ``rx`` (per-pose receipt times);
``ann`` (an annotation op applied); ``snapshot`` (a PNG written); ``summary``.
Stops on SIGTERM, SIGINT or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SIM_RATE_HZ = 45.0
LOCKSTEP_WAIT_S = 1.0
VIDEO_W, VIDEO_H = 640, 480
# Where the patient lies in the headset's world (mm): anything rigid will do.
T_WORLD_MODEL = np.array(
    [
        [0.0, -1.0, 0.0, 150.0],
        [0.0, 0.0, -1.0, 1100.0],
        [1.0, 0.0, 0.0, -300.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"e": event, **data}) + "\n")
    sys.stdout.flush()


def video_frame(depth_mm: npt.NDArray[np.uint16], model_mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """A 640x480 RGB 'camera' image of the same camera: shaded depth, skin-tinted where the
    model is seen, padded and cropped from 512x512 (so cx += 64, cy -= 16)."""
    d = depth_mm.astype(np.float32)
    grey = np.where(d > 0, np.clip(1.15 - (d - 250.0) / 600.0, 0.15, 1.0), 0.0)
    rgb = np.empty((*d.shape, 3), dtype=np.float32)
    tint = np.where(model_mask[..., None], [1.0, 0.78, 0.66], [0.55, 0.7, 0.85])
    rgb[:] = grey[..., None] * tint
    out = np.zeros((VIDEO_H, VIDEO_W, 3), dtype=np.uint8)
    out[:, 64:576] = (rgb[16:496] * 255).astype(np.uint8)
    return out


@dataclass
class _Snap:
    label: str
    depth: npt.NDArray[np.uint16]
    view: Any
    annotations: tuple[Any, ...]


@dataclass
class _State:
    truth: dict[int, npt.NDArray[np.float64]] = field(default_factory=dict)  # frame seq -> T_world_camera
    snaps: dict[str, _Snap] = field(default_factory=dict)
    last_depth: dict[int, npt.NDArray[np.uint16]] = field(default_factory=dict)
    sent: int = 0
    shown_tracking_over_3mm: int = 0
    views: int = 0
    annotations: int = 0
    first_live_ns: int | None = None


FrameItem = tuple[Any, npt.NDArray[np.uint8]]


def _frames(sim: Any) -> Iterator[FrameItem]:
    """Render on demand, in the client's thread (lock-step, see ``run``)."""
    k = 0
    while True:
        t = k / SIM_RATE_HZ
        f = sim.render(sim.pose(t), int(t * 1e9))
        yield f, video_frame(f.depth.depth, f.model_mask)
        k += 1


def _connect(args: argparse.Namespace) -> Any:
    from headset_bridge.client import ClientConfig, HeadsetClient
    from headset_bridge.keys import load_keypair, load_public

    config = ClientConfig(args.pub, args.ctl, load_public(args.server_key))
    return HeadsetClient(load_keypair(args.key), config)


def _send(client: Any, f: Any, rgb: npt.NDArray[np.uint8], st: _State) -> int:
    from registration.frames import invert

    K = f.depth.intrinsics
    T_world_camera = T_WORLD_MODEL @ invert(f.T_sensor_model)
    t_cap = time.monotonic_ns()
    seq = int(client.send_depth(f.depth.depth, T_world_camera, (K.fx, K.fy, K.cx, K.cy), 1.0, t_capture_ns=t_cap))
    client.send_video(rgb.tobytes(), VIDEO_W, VIDEO_H, "rgb8", t_capture_ns=t_cap)
    st.truth[seq] = T_world_camera
    st.last_depth[seq] = f.depth.depth
    for old in [s for s in st.last_depth if s < seq - 90]:  # poses come back within a few frames
        del st.last_depth[old]
    for old in [s for s in st.truth if s < seq - 2000]:
        del st.truth[old]
    st.sent += 1
    emit("frame", seq=seq, t_cap=t_cap, T=f.T_sensor_model.reshape(16).tolist())
    return seq


def _on_view(client: Any, view: Any, st: _State, target: npt.NDArray[np.float64]) -> None:
    st.views += 1
    T_wc = st.truth.get(view.sensor_frame_seq)
    tre = None
    if T_wc is not None and view.T_sensor_model is not None:
        est = T_wc @ view.T_sensor_model @ np.append(target, 1.0)
        tre = float(np.linalg.norm(est[:3] - (T_WORLD_MODEL @ np.append(target, 1.0))[:3]))
    shown_tracking = bool(view.live and view.status == "tracking")
    if shown_tracking and (tre is None or tre > 3.0):
        st.shown_tracking_over_3mm += 1
    emit("view", pose=view.seq, frame=view.sensor_frame_seq, status=view.status, live=view.live, tre=tre)
    if shown_tracking and st.first_live_ns is None:
        st.first_live_ns = time.monotonic_ns()
    _maybe_snapshot(client, view, st, shown_tracking)


def _maybe_snapshot(client: Any, view: Any, st: _State, shown_tracking: bool) -> None:
    depth = st.last_depth.get(view.sensor_frame_seq)
    if depth is None:
        return
    anns = tuple(client.annotations.state.values())
    now = time.monotonic_ns()
    want = []
    if "1-start" not in st.snaps:
        want.append("1-start")
    if shown_tracking and st.first_live_ns and now - st.first_live_ns > 1e9 and "2-tracking" not in st.snaps:
        want.append("2-tracking")
    if shown_tracking and anns and "3-annotation" not in st.snaps:
        want.append("3-annotation")
    if st.first_live_ns and not view.live and "4-overlay-hidden" not in st.snaps:
        want.append("4-overlay-hidden")
    st.snaps["5-last"] = _Snap("5-last", depth, view, anns)
    for label in want:
        st.snaps[label] = _Snap(label, depth, view, anns)


def _render_snapshots(st: _State, out: Path, model: Any, intrinsics: tuple[float, ...]) -> None:
    from headset_bridge.render import render_png

    for label, snap in sorted(st.snaps.items()):
        path = render_png(
            out / f"{label}.png",
            snap.depth,
            intrinsics,  # type: ignore[arg-type]
            snap.view,
            model_points_mm=model.vertices,
            annotations=snap.annotations,
        )
        emit("snapshot", label=label, path=str(path))


def _poll(client: Any, st: _State, target: npt.NDArray[np.float64], seen: list[int]) -> None:
    client.poll(0.002)
    log = client.pose_log
    for r in list(log)[seen[0] :]:
        emit("rx", pose=r.seq, t_recv=r.t_recv_ns + r.offset_ns, t_send=r.t_send_ns, t_cap=r.t_capture_ns)
    seen[0] = len(log)
    view = client.view()
    seen[2] = max(seen[2], view.sensor_frame_seq)
    if view.seq != seen[1] and view.seq >= 0:
        seen[1] = view.seq
        _on_view(client, view, st, target)


def _stream(client: Any, sim: Any, st: _State, target: npt.NDArray[np.float64], deadline: float, stop: Any) -> None:
    frames = _frames(sim)
    seen = [0, -1, -1]  # receipts handled, last pose seq, newest frame seq answered
    while not stop.is_set() and time.monotonic() < deadline:
        sent = _send(client, *next(frames), st)
        wait_until = time.monotonic() + LOCKSTEP_WAIT_S  # the first alignment takes about this long
        while True:
            _poll(client, st, target, seen)
            if seen[2] >= sent or time.monotonic() >= wait_until or stop.is_set():
                break
    _poll(client, st, target, seen)
    emit(
        "summary",
        sent=st.sent,
        views=st.views,
        annotations=st.annotations,
        shown_tracking_over_3mm=st.shown_tracking_over_3mm,
        counters=dict(client.counters.counts),
    )


def run(args: argparse.Namespace) -> int:
    from registration import SurfaceModel
    from registration.simulator import HeadsetSimulator

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # The simulator only ray-casts: a coarse lookup grid keeps start-up short.
    model = SurfaceModel.from_folder(args.model, mesh="skin", grid_mm=8.0, band_mm=8.0)
    target = model.target(args.target)
    sim = HeadsetSimulator(model, seed=args.seed)
    sim.render(sim.pose(0.0))  # builds the ray-casting scenes before the link's heartbeats start
    K = sim.K
    client = _connect(args)
    st = _State()

    def on_annotation(op: Any) -> None:
        st.annotations += 1
        pts = [] if op.annotation is None else [list(p) for p in op.annotation.points_mm]
        emit("ann", op=op.op, id=op.id, seq=op.seq, points=pts, t=time.monotonic_ns())

    client.on_annotation = on_annotation
    try:
        if not client.wait_for(lambda: client.clock.synced, 10.0):
            emit("error", message="no clock sync with the server within 10 s")
            return 2
        emit("ready")
        _stream(client, sim, st, target, time.monotonic() + args.max_seconds, stop)
    finally:
        client.close()
    # After leaving the server: rendering takes seconds and the link is done.
    if args.snapshots is not None:
        _render_snapshots(st, Path(args.snapshots), model, (K.fx, K.fy, K.cx, K.cy))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pub", required=True)
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--server-key", type=Path, required=True, help="server public certificate")
    ap.add_argument("--key", type=Path, required=True, help="this headset's secret certificate")
    ap.add_argument("--model", type=Path, required=True, help="patient-model folder (the simulated patient)")
    ap.add_argument("--target", default="lesion")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    ap.add_argument("--snapshots", type=Path, help="folder for overlay snapshots rendered at the end")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
