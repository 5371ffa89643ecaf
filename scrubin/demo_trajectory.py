"""The demo headset's looped trajectory: rendered once, cached, streamed at the sensor's rate.

Ray casting one AHAT frame costs ~50-70 ms on a small machine, so the simulated headset
cannot render live at 45 Hz. Instead a few seconds of motion that returns to its start
(every component of the camera path, and the hands and the instrument, is periodic in the
loop's length) are rendered once into depth frames, the matching video frames and the
ground-truth poses, kept in a compressed ``.npz`` under the cache folder, and replayed in a
loop. The cache key covers the model's files, the simulator's parameters and source, and
``LOOP_VERSION``: any change renders again.

The first run does not wait for the whole loop (tens of seconds on a busy 2-core machine):
a background thread renders it in order while the headset streams at the full rate, the
newest rendered frame again until the next exists; Open3D's ray casting uses every core. A run
that stops before the end caches the part it rendered and the next run goes on from there.

Memory: 270 frames of 512x512 uint16 depth (141 MB) plus the video as 640x480 palette
indices (83 MB; a 256-colour table turns one into RGB when sent).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from domain.atomic_file import atomic_write

log = logging.getLogger(__name__)

LOOP_VERSION = 2  # bump when the trajectory, the rendering or the file layout changes
CACHE_SUBDIR = "demo-trajectory"
VIDEO_W, VIDEO_H = 640, 480
# The video's palette: 7 bits of shaded depth, one bit "the model is seen here".
GREY_LEVELS = 128
CHUNK_FRAMES = 30  # frames per member of the cache file
READ_AHEAD = 30  # frames read from the cache ahead of the stream

F64 = npt.NDArray[np.float64]
U16 = npt.NDArray[np.uint16]
U8 = npt.NDArray[np.uint8]


class LoopCacheError(Exception):
    """A cached loop is unreadable or does not match what was asked for; one line saying why."""


@dataclass(frozen=True)
class LoopSpec:
    """What a loop is rendered from (all of it goes into the cache key)."""

    seconds: float = 6.0
    rate_hz: float = 45.0
    seed: int = 1
    sweep_scale: float = 0.75  # of the simulator's sweep: the loop is shorter than its slow orbit
    distance_swing_mm: float = 20.0
    bob_mm: float = 4.0

    @property
    def frames(self) -> int:
        n = round(self.seconds * self.rate_hz)
        if n < 2:
            msg = f"a loop needs at least 2 frames, got {self.seconds!r} s at {self.rate_hz!r} Hz"
            raise ValueError(msg)
        return int(n)


@dataclass(frozen=True)
class Loop:
    """The rendered loop: frame k is shown at k / rate_hz (mod the loop)."""

    depth: U16  # (n, h, w) mm
    video: U8  # (n, VIDEO_H, VIDEO_W) palette indices, see ``VIDEO_LUT``
    T_sensor_model: F64  # (n, 4, 4) ground truth per frame
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy of the depth camera
    rate_hz: float

    def __len__(self) -> int:
        return int(self.depth.shape[0])

    def rgb(self, k: int) -> U8:
        out: U8 = np.take(VIDEO_LUT, self.video[k], axis=0)  # twice as fast as VIDEO_LUT[...] here
        return out

    @property
    def nbytes(self) -> int:
        return int(self.depth.nbytes + self.video.nbytes + self.T_sensor_model.nbytes)


def _video_lut() -> U8:
    grey = np.arange(GREY_LEVELS, dtype=np.float64) / (GREY_LEVELS - 1)
    lut = np.zeros((2 * GREY_LEVELS, 3), dtype=np.float64)
    lut[:GREY_LEVELS] = grey[:, None] * [0.55, 0.7, 0.85]  # drape, table, hands: cool
    lut[GREY_LEVELS:] = grey[:, None] * [1.0, 0.78, 0.66]  # the patient: skin-tinted
    return (lut * 255).astype(np.uint8)


VIDEO_LUT = _video_lut()


def video_index(depth_mm: U16, model_mask: npt.NDArray[np.bool_]) -> U8:
    """The 640x480 'camera' image of the depth camera as palette indices: shaded depth,
    skin-tinted where the model is seen, padded and cropped from 512x512 (cx += 64, cy -= 16)."""
    d = depth_mm.astype(np.float32)
    grey = np.where(d > 0, np.clip(1.15 - (d - 250.0) / 600.0, 0.15, 1.0), 0.0)
    idx = np.round(grey * (GREY_LEVELS - 1)).astype(np.uint8) + np.where(model_mask, GREY_LEVELS, 0).astype(np.uint8)
    out = np.zeros((VIDEO_H, VIDEO_W), dtype=np.uint8)
    out[:, 64:576] = idx[16:496]
    return out


# ------------------------------------------------------------------ trajectory
def loop_pose(sim: Any, spec: LoopSpec, t_s: float) -> F64:
    """Ground-truth T_sensor_model at ``t_s``: the simulator's sweep with head bob, every
    term periodic in ``spec.seconds`` (so the loop closes on itself)."""
    from registration.frames import invert
    from registration.simulator import look_at

    w = 2 * np.pi / spec.seconds
    side = np.cross(sim.up, sim.view_dir)
    sweep = spec.sweep_scale * sim.sweep
    az = sweep * np.sin(w * t_s)
    el = 0.4 * sweep * np.sin(w * t_s + 0.5)
    d = np.cos(el) * (np.cos(az) * sim.view_dir + np.sin(az) * side) + np.sin(el) * sim.up
    dist = sim.distance_mm + spec.distance_swing_mm * np.sin(w * t_s + 1.0)
    # Head bob near 0.9 and 1.3 Hz, rounded to whole cycles per loop.
    k1, k2 = max(1, round(0.9 * spec.seconds)), max(1, round(1.3 * spec.seconds))
    bob = spec.bob_mm * np.array([np.sin(k1 * w * t_s), np.sin(k2 * w * t_s), 0.0])
    eye = sim.focus + dist * d + bob
    out: F64 = invert(look_at(eye, sim.focus + 0.5 * bob, sim.up))
    return out


def occluder_time_ns(spec: LoopSpec, t_s: float) -> int:
    """The simulator moves the hands and the instrument with its timestamp (a few rad/s):
    swinging that timestamp back and forth over a quarter of the loop's length keeps them
    passing through the view, at a similar speed, and returning to where they started."""
    tau = 10.0 + spec.seconds / 4.0 * np.sin(2 * np.pi * t_s / spec.seconds)
    return int(round(tau * 1e9))


# ------------------------------------------------------------------ cache
def model_digest(folder: Path) -> str:
    """sha256 over the model folder's files (relative names and contents)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cache_key(model_hash: str, spec: LoopSpec, sim_params: dict[str, Any]) -> str:
    import registration.simulator as simulator_module

    source = Path(simulator_module.__file__).read_bytes()  # a changed renderer renders again
    blob = json.dumps(
        {
            "version": LOOP_VERSION,
            "model": model_hash,
            "spec": asdict(spec),
            "sim": sim_params,
            "simulator_source": hashlib.sha256(source).hexdigest(),
            "video": [VIDEO_W, VIDEO_H, GREY_LEVELS],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / CACHE_SUBDIR / f"loop-{key[:24]}.npz"


def save_loop(path: Path, loop: Loop, key: str, available: int | None = None) -> None:
    """The first ``available`` frames (all by default) as a compressed ``.npz`` in chunks of
    ``CHUNK_FRAMES`` (a run starts on the first chunk and loads the rest while it streams),
    written to a temporary file beside ``path`` and renamed: a reader never sees half a
    file. Deflate level 1: ten times faster than numpy's default here, a tenth larger."""
    n = len(loop) if available is None else available
    arrays: dict[str, npt.NDArray[Any]] = {
        "key": np.array(key),
        "total": np.array(len(loop)),
        "count": np.array(n),
        "T_sensor_model": loop.T_sensor_model[:n],
        "intrinsics": np.array(loop.intrinsics, dtype=np.float64),
        "rate_hz": np.array(loop.rate_hz),
    }
    for i, first in enumerate(range(0, n, CHUNK_FRAMES)):
        last = min(first + CHUNK_FRAMES, n)
        arrays[f"depth-{i}"], arrays[f"video-{i}"] = loop.depth[first:last], loop.video[first:last]
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
    for old in path.parent.glob("loop-*.npz"):  # other keys' loops: never read again
        if old != path:
            old.unlink(missing_ok=True)


class CachedLoop:
    """A cache file opened and checked (key, sizes, poses), its frames read chunk by chunk."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        try:
            self._z = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            msg = f"cached loop {path} is unreadable: {exc}"
            raise LoopCacheError(msg) from exc
        try:
            self._header(key)
        except BaseException:
            self.close()
            raise

    def _header(self, key: str) -> None:
        with self._reading():
            found_key = str(self._z["key"])
            self.total, self.count = int(self._z["total"]), int(self._z["count"])
            self.poses = np.asarray(self._z["T_sensor_model"], dtype=np.float64)
            fx, fy, cx, cy = (float(v) for v in self._z["intrinsics"])
            self.intrinsics = (fx, fy, cx, cy)
            self.rate_hz = float(self._z["rate_hz"])
        if found_key != key:
            msg = f"cached loop {self.path} has key {found_key[:12]}..., expected {key[:12]}..."
            raise LoopCacheError(msg)
        if not (0 < self.count <= self.total and self.poses.shape == (self.count, 4, 4)):
            msg = f"cached loop {self.path} has {self.count} of {self.total} frames and poses {self.poses.shape}"
            raise LoopCacheError(msg)
        self.chunks = -(-self.count // CHUNK_FRAMES)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            msg = f"cached loop {self.path} is unreadable: {exc}"
            raise LoopCacheError(msg) from exc

    def empty(self, shape: tuple[int, int]) -> Loop:
        loop = Loop(
            depth=np.zeros((self.total, *shape), dtype=np.uint16),
            video=np.zeros((self.total, VIDEO_H, VIDEO_W), dtype=np.uint8),
            T_sensor_model=np.tile(np.eye(4), (self.total, 1, 1)),
            intrinsics=self.intrinsics,
            rate_hz=self.rate_hz,
        )
        loop.T_sensor_model[: self.count] = self.poses
        return loop

    def fill(self, loop: Loop, i: int) -> int:
        """Chunk ``i`` into ``loop``; returns how many frames from the start are now filled."""
        first = i * CHUNK_FRAMES
        last = min(first + CHUNK_FRAMES, self.count)
        with self._reading():
            depth, video = self._z[f"depth-{i}"], self._z[f"video-{i}"]
        if depth.shape != (last - first, *loop.depth.shape[1:]) or video.shape != (last - first, VIDEO_H, VIDEO_W):
            msg = f"cached loop {self.path} chunk {i} has shapes {depth.shape}, {video.shape}"
            raise LoopCacheError(msg)
        loop.depth[first:last], loop.video[first:last] = depth, video
        return last

    def close(self) -> None:
        self._z.close()


def load_loop(path: Path, key: str, shape: tuple[int, int] = (512, 512)) -> tuple[Loop, int]:
    """The cached loop (``shape``: a depth frame's height, width) and how many of its frames
    were rendered (a first run stopped early leaves a prefix; the next run renders the rest)."""
    cached = CachedLoop(path, key)
    try:
        loop = cached.empty(shape)
        for i in range(cached.chunks):
            cached.fill(loop, i)
        return loop, cached.count
    finally:
        cached.close()


def render_loop(sim: Any, spec: LoopSpec) -> Loop:
    """Every frame of the loop, at once (tests, benches)."""
    loop = empty_loop(spec, sim.K)
    for k in range(len(loop)):
        _render_into(sim, spec, loop, k)
    return loop


def simulator_params(sim: Any) -> dict[str, Any]:
    """The simulator's settings that shape a rendered frame."""
    return {
        "K": asdict(sim.K),
        "noise": asdict(sim.noise),
        "distance_mm": sim.distance_mm,
        "sweep": sim.sweep,
        "view_dir": sim.view_dir.tolist(),
        "up": sim.up.tolist(),
        "occluders": sim.with_occluders,
    }


class LoopSource:
    """The loop's frames as they become available, in order: read from the cache, or, on
    the first run, rendered (then cached), by a background thread while the headset already
    streams the part there is so far (see ``Cursor``)."""

    def __init__(
        self, loop: Loop, path: Path, key: str, *, available: int, found: int | None = None, cached: bool | None = None
    ) -> None:
        self.loop = loop
        self.path = path
        self.total = len(loop)
        self.cached = available == self.total if cached is None else cached  # found whole in the cache
        self._available = available
        self._found = available if found is None else found  # frames already in the cache
        self.key = key  # the cache key (``cache_key``)
        self.render_s: float | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wanted = 0  # the stream's frame: the cache is read just ahead of it
        self._demand = threading.Condition()

    def available(self) -> int:
        """Frames 0 .. available-1 are rendered (their depth, video and pose)."""
        return self._available

    @property
    def complete(self) -> bool:
        return self._available == self.total

    def build(self, sim: Any, spec: LoopSpec, cached: CachedLoop | None = None) -> None:
        """In a background thread: the rest of ``cached`` read, the missing frames rendered,
        then the loop saved (when anything was rendered)."""
        self._thread = threading.Thread(target=self._build, args=(sim, spec, cached), name="loop-fill", daemon=True)
        self._thread.start()

    def _build(self, sim: Any, spec: LoopSpec, cached: CachedLoop | None) -> None:
        if cached is not None:
            self._load(cached)
        t0 = time.monotonic()
        try:
            for k in range(self._available, self.total):
                if self._stop.is_set():
                    return  # ``close`` caches what is rendered
                _render_into(sim, spec, self.loop, k)
                self._available = k + 1  # after the frame's arrays are written
            if self._found < self.total:
                self.render_s = time.monotonic() - t0
                save_loop(self.path, self.loop, self.key)
        except Exception as exc:  # the stream goes on with what is rendered
            self.error = f"rendering or caching the headset loop failed: {exc}"
            log.warning("%s", self.error)

    def want(self, k: int) -> None:
        """The stream shows frame ``k``. The cache is read just ahead of it, so the reading
        is spread over the first pass rather than competing with the server's start."""
        if k + READ_AHEAD >= self._available and not self.complete:
            with self._demand:
                self._wanted = max(self._wanted, k)
                self._demand.notify()

    def _load(self, cached: CachedLoop) -> None:
        try:
            for i in range(1, cached.chunks):
                with self._demand:
                    self._demand.wait_for(lambda: self._stop.is_set() or self._wanted + READ_AHEAD >= self._available)
                if self._stop.is_set():
                    return
                self._available = self._found = cached.fill(self.loop, i)
        except LoopCacheError as exc:  # what was read is good: render from there
            log.warning("%s; rendering from frame %d", exc, self._available)
        finally:
            cached.close()

    def wait(self, timeout_s: float) -> bool:
        """Read or render the rest now and wait for it (and for the cache file); True if done."""
        self.want(self.total)
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop rendering. A loop rendered in full was cached by the render thread; a part
        rendered by a run that stopped early is cached too, and the next run goes on from it."""
        self._stop.set()
        with self._demand:
            self._demand.notify()
        if self._thread is None:
            return
        self._thread.join(timeout_s)
        n = self._available
        if not self._thread.is_alive() and self._found < n < self.total:
            try:
                save_loop(self.path, self.loop, self.key, n)
            except OSError as exc:
                log.warning("could not cache the headset loop's first %d frames in %s: %s", n, self.path, exc)


def _render_into(sim: Any, spec: LoopSpec, loop: Loop, k: int) -> None:
    t = k / spec.rate_hz
    sim.rng = np.random.default_rng([spec.seed, k])  # each frame its own noise: order-independent
    f = sim.render(loop_pose(sim, spec, t), occluder_time_ns(spec, t))
    loop.depth[k] = f.depth.depth
    loop.video[k] = video_index(f.depth.depth, f.model_mask)
    loop.T_sensor_model[k] = f.T_sensor_model


def empty_loop(spec: LoopSpec, K: Any) -> Loop:
    n = spec.frames
    return Loop(
        depth=np.zeros((n, K.height, K.width), dtype=np.uint16),
        video=np.zeros((n, VIDEO_H, VIDEO_W), dtype=np.uint8),
        T_sensor_model=np.tile(np.eye(4), (n, 1, 1)),
        intrinsics=(K.fx, K.fy, K.cx, K.cy),
        rate_hz=spec.rate_hz,
    )


def open_loop(model: Any, model_folder: Path, cache_dir: Path, spec: LoopSpec) -> LoopSource:
    """The loop: its first frames at once, the rest read from the cache (or rendered, the
    first time) in a background thread."""
    from registration.simulator import HeadsetSimulator

    sim = HeadsetSimulator(model, seed=spec.seed, rate_hz=spec.rate_hz)
    key = cache_key(model_digest(model_folder), spec, simulator_params(sim))
    path = cache_path(cache_dir, key)
    cached = None
    if path.exists():
        try:
            cached = CachedLoop(path, key)
            loop = cached.empty((sim.K.height, sim.K.width))
            available = cached.fill(loop, 0)
            log.info("headset loop: %d of %d frames cached in %s", cached.count, cached.total, path)
        except LoopCacheError as exc:
            log.warning("%s; rendering it again", exc)
            if cached is not None:
                cached.close()
            cached = None
    if cached is None:
        loop = empty_loop(spec, sim.K)
        _render_into(sim, spec, loop, 0)  # something to stream at once (and the ray-casting scenes built)
        available = 1
    whole = cached is not None and cached.count == cached.total
    source = LoopSource(loop, path, key, available=available, found=available if cached else 0, cached=whole)
    source.build(sim, spec, cached)
    return source


class Cursor:
    """Which loop frame each slot shows. With the whole loop rendered: in order, round and
    round (the loop closes on itself). While it is still being rendered: on to the newest
    rendered frame and held there until the next one exists, so the camera moves forward at
    the renderer's pace. Never backwards: a reversal is a jump against the tracker's motion
    model (seen: 8-12 mm at the target when a busy server registered every third frame)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.k = -1  # nothing shown yet

    def advance(self, steps: int, available: int) -> int:
        """The frame for a slot ``steps`` slots after the last one (skipped slots move on too)."""
        steps = max(steps, 1)
        if available >= self.total:
            self.k = (self.k + steps) % self.total
        else:
            self.k = min(self.k + steps, max(available, 1) - 1)
        return self.k


# ------------------------------------------------------------------ pacing
class Pacer:
    """Frame deadlines on a monotonic clock: slot k is due at ``start + k / rate_hz``.

    A frame sent late does not move the later deadlines (no drift, unlike sleeping a period
    after each send). A slot whose successor is already due is skipped, as a camera drops
    a frame it could not deliver, rather than sent in a burst; ``skipped`` counts them.
    """

    def __init__(self, rate_hz: float, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if not rate_hz > 0:
            msg = f"rate must be positive, got {rate_hz!r} Hz"
            raise ValueError(msg)
        self.rate_hz = float(rate_hz)
        self.clock = clock
        self.start_ns = clock()
        self.slot = 0  # the next slot to send
        self.skipped = 0

    def due_ns(self, slot: int | None = None) -> int:
        k = self.slot if slot is None else slot
        return self.start_ns + round(k * 1e9 / self.rate_hz)

    def wait_s(self) -> float:
        """Seconds until the next slot is due (0 when it is)."""
        return max(0.0, (self.due_ns() - self.clock()) / 1e9)

    def take(self) -> int:
        """The slot to send now (call when ``wait_s`` is 0): the newest one that is due."""
        newest = int((self.clock() - self.start_ns) * self.rate_hz // 1e9)
        if newest > self.slot:
            self.skipped += newest - self.slot
            self.slot = newest
        slot = self.slot
        self.slot += 1
        return slot
