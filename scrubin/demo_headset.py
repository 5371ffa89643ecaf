"""The demo's simulated headset: a cached, looped HeadsetSimulator trajectory through the reference client.

``python -m scrubin.demo_headset --pub EP --ctl EP --server-key FILE --key FILE --model DIR --cache-dir DIR``

Ray casting an AHAT-like frame takes ~50-70 ms here, too slow for the sensor's 45 Hz, so a
few seconds of motion that returns to its start (the virtual surgeon moves around the head,
hands and an instrument pass through) are rendered once and cached
(``scrubin.demo_trajectory``), then streamed in a loop at ``--rate`` Hz, paced by frame
deadlines on the monotonic clock. Each frame goes out with its camera pose in the headset
world (every third with a video frame for mentors: ``--video-rate``, 15 Hz); its capture
time is its send time, and its ground truth comes from the cache. Poses and annotations are handled between frames.

One JSON object per line on stdout (the demo collects them):
``ready``; ``frame`` (seq, headset capture time, ground-truth T_sensor_model); ``view``
(a newly applied pose: status, live, TRE at the target); ``rx`` (per-pose receipt times);
``ann`` (an annotation op applied); ``snapshot`` (a PNG written); ``summary`` (with the
achieved rate). The cache build's progress goes to stderr, on one line.
Stops on SIGTERM, SIGINT or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scrubin.demo_trajectory import VIDEO_H, VIDEO_LUT, VIDEO_W, Cursor, Loop, LoopSource, LoopSpec, Pacer, video_index

SIM_RATE_HZ = 45.0  # HoloLens 2 AHAT
POLL_SLICE_S = 0.005  # longest wait for poses between two frames
DEFAULT_SWITCH_INTERVAL_S = sys.getswitchinterval()
# Video for the mentors at a PV camera's streaming rate (and the demo's rate before it ran at
# the depth sensor's): every depth frame's 900 kB RGB frame would cost both processes CPU the
# tracking loop needs on a small machine.
VIDEO_RATE_HZ = 15.0
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
    out: npt.NDArray[np.uint8] = VIDEO_LUT[video_index(depth_mm, model_mask)]
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
    first_sent_ns: int | None = None
    last_sent_ns: int | None = None


def _connect(args: argparse.Namespace) -> Any:
    from headset_bridge.client import ClientConfig, HeadsetClient
    from headset_bridge.keys import load_keypair, load_public

    config = ClientConfig(args.pub, args.ctl, load_public(args.server_key))
    return HeadsetClient(load_keypair(args.key), config)


def _send(client: Any, loop: Loop, k: int, st: _State, video: bool = True) -> int:
    """Loop frame ``k``, captured now (a real sensor's frame is sent as it is captured),
    with its video frame when ``video``."""
    from registration.frames import invert

    T_sensor_model = loop.T_sensor_model[k]
    depth = loop.depth[k]
    T_world_camera = T_WORLD_MODEL @ invert(T_sensor_model)
    t_cap = time.monotonic_ns()
    seq = int(client.send_depth(depth, T_world_camera, loop.intrinsics, 1.0, t_capture_ns=t_cap))
    if video:
        client.send_video(loop.rgb(k).tobytes(), VIDEO_W, VIDEO_H, "rgb8", t_capture_ns=t_cap)
    if st.first_sent_ns is None:
        st.first_sent_ns = t_cap
    st.last_sent_ns = t_cap
    st.truth[seq] = T_world_camera
    st.last_depth[seq] = depth
    for old in [s for s in st.last_depth if s < seq - 90]:  # poses come back within a few frames
        del st.last_depth[old]
    for old in [s for s in st.truth if s < seq - 2000]:
        del st.truth[old]
    st.sent += 1
    emit("frame", seq=seq, t_cap=t_cap, T=T_sensor_model.reshape(16).tolist())
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


def _poll(client: Any, st: _State, target: npt.NDArray[np.float64], seen: list[int], wait_s: float = 0.0) -> None:
    client.poll(wait_s)
    log = client.pose_log
    for r in list(log)[seen[0] :]:
        emit("rx", pose=r.seq, t_recv=r.t_recv_ns + r.offset_ns, t_send=r.t_send_ns, t_cap=r.t_capture_ns)
    seen[0] = len(log)
    view = client.view()
    seen[2] = max(seen[2], view.sensor_frame_seq)
    if view.seq != seen[1] and view.seq >= 0:
        seen[1] = view.seq
        _on_view(client, view, st, target)


def _stream(
    client: Any,
    source: LoopSource,
    st: _State,
    target: npt.NDArray[np.float64],
    deadline: float,
    stop: Any,
    rate_hz: float,
    video_hz: float = VIDEO_RATE_HZ,
) -> None:
    """Loop frames at ``rate_hz`` on frame deadlines, handling poses while waiting. The
    trajectory follows the clock: a slot missed (the process was not scheduled) skips its
    frame, as a sensor would."""
    pacer = Pacer(rate_hz)
    video_every = max(1, round(rate_hz / video_hz))  # depth slots per video frame
    cursor = Cursor(source.total)
    seen = [0, -1, -1]  # receipts handled, last pose seq, newest frame seq answered
    last_slot = -1
    shown = [source.available()]
    while not stop.is_set() and time.monotonic() < deadline:
        while (left := pacer.wait_s()) > 0 and not stop.is_set():
            _poll(client, st, target, seen, min(left, POLL_SLICE_S))
        slot = pacer.take()
        k = cursor.advance(slot - last_slot, source.available())
        source.want(k)
        _send(client, source.loop, k, st, video=slot // video_every != last_slot // video_every)
        last_slot = slot
        _poll(client, st, target, seen)
        _loop_progress(source, shown)
    _poll(client, st, target, seen)
    emit(
        "summary",
        sent=st.sent,
        views=st.views,
        annotations=st.annotations,
        shown_tracking_over_3mm=st.shown_tracking_over_3mm,
        counters=dict(client.counters.counts),
        rate_hz=rate_hz,
        achieved_hz=_achieved_hz(st),
        slots_skipped=pacer.skipped,
        loop_frames=source.total,
        loop_cached=source.cached,  # False: rendered during this run (the first)
        loop_rendered=source.available(),
    )


def _loop_progress(source: LoopSource, shown: list[int]) -> None:
    """A ``loop`` event per tenth of the first run's rendering, and one when cached."""
    done = source.available()
    if shown[0] == done or (done < source.total and 10 * done // source.total == 10 * shown[0] // source.total):
        return
    shown[0] = done
    if done == source.total:
        sys.setswitchinterval(DEFAULT_SWITCH_INTERVAL_S)  # no render thread any more
    emit("loop", done=done, total=source.total, cached=source.cached, path=str(source.path), render_s=source.render_s)


def _achieved_hz(st: _State) -> float | None:
    if st.first_sent_ns is None or st.last_sent_ns is None or st.sent < 2 or st.last_sent_ns <= st.first_sent_ns:
        return None
    return (st.sent - 1) / ((st.last_sent_ns - st.first_sent_ns) / 1e9)


def run(args: argparse.Namespace) -> int:
    from registration import SurfaceModel
    from scrubin.demo_trajectory import open_loop

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # The simulator only ray-casts: a coarse lookup grid keeps start-up short.
    model = SurfaceModel.from_folder(args.model, mesh="skin", grid_mm=8.0, band_mm=8.0)
    target = model.target(args.target)
    spec = LoopSpec(seconds=args.loop_seconds, rate_hz=args.rate, seed=args.seed)
    source = open_loop(model, args.model, args.cache_dir, spec)
    emit("loop", done=source.available(), total=source.total, cached=source.cached, path=str(source.path))
    if not source.complete:
        sys.setswitchinterval(0.001)  # the render thread must not hold up a frame's deadline for long
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
        _stream(client, source, st, target, time.monotonic() + args.max_seconds, stop, args.rate, args.video_rate)
    finally:
        client.close()
        source.close()  # a loop rendered in full is cached before leaving
    # After leaving the server: rendering takes seconds and the link is done.
    if args.snapshots is not None:
        _render_snapshots(st, Path(args.snapshots), model, source.loop.intrinsics)
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
    ap.add_argument("--rate", type=_positive, default=SIM_RATE_HZ, help="depth frames per second sent (default 45)")
    ap.add_argument("--video-rate", type=_positive, default=VIDEO_RATE_HZ, help="video frames per second (default 15)")
    ap.add_argument("--loop-seconds", type=_positive, default=LoopSpec.seconds, help="length of the rendered loop")
    ap.add_argument("--cache-dir", type=Path, required=True, help="where the rendered loop is cached")
    ap.add_argument("--snapshots", type=Path, help="folder for overlay snapshots rendered at the end")
    return run(ap.parse_args(argv))


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        msg = f"must be a positive number, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


if __name__ == "__main__":
    sys.exit(main())
