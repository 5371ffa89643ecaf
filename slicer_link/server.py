"""The OpenIGTLink server a theatre session runs for 3D Slicer.

Outgoing state lives in one *outbox*: the newest message per (type, device), each with a
version number. ``publish_*`` only swaps an entry and wakes the writers, so the
registration loop never waits on a socket. Each connection has a writer thread that
sends whatever it has not sent yet (oldest version first, packed once and shared), so a
slow Slicer just skips stale poses and a new one gets meshes, pose, status and
annotations at once; and a reader thread that checks, audits and hands on what Slicer
sends. Nothing Slicer sends is used unless the session allows it.

OpenIGTLink has no encryption and no authentication: bind loopback (the default) and
reach remote machines through an SSH tunnel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from domain.audit import AuditSink
from domain.pose import PoseEstimate, status_name
from slicer_link import convert
from slicer_link.config import IGTL_DEVICE_NAME_BYTES, SlicerLinkConfig, WireFrame
from slicer_link.convert import LandmarkList, SeedTransform, TraceList
from slicer_link.polydata import check_mesh
from slicer_link.wire import FramingError, MessageError, Reader

if TYPE_CHECKING:
    from domain.annotation import Annotation

log = logging.getLogger(__name__)

ROLE = "slicer"
MeshInput = Path | str | Sequence[tuple[str, object, object]]
LandmarksCallback = Callable[[LandmarkList], None]
TransformCallback = Callable[[SeedTransform], None]
TraceCallback = Callable[[TraceList], None]


class _Item:
    """One outgoing message: built and packed lazily, once, by whichever writer is first."""

    __slots__ = ("version", "build", "packed_bytes")

    def __init__(self, version: int, build: Callable[[], list[Any]]) -> None:
        self.version, self.build = version, build
        self.packed_bytes: bytes | None = None

    def packed(self) -> bytes:
        if self.packed_bytes is None:  # two writers may race here: both pack the same bytes
            self.packed_bytes = b"".join(bytes(m.pack()) for m in self.build())
        return self.packed_bytes


class SlicerLink:
    """Serve meshes, pose, status and annotations to Slicer; take landmarks, a surface
    trace and a seed transform from it when allowed. ``start()`` does nothing unless
    ``config.enabled``."""

    def __init__(
        self,
        config: SlicerLinkConfig,
        audit: AuditSink,
        *,
        on_landmarks: LandmarksCallback | None = None,
        on_transform: TransformCallback | None = None,
        on_trace: TraceCallback | None = None,
    ) -> None:
        self.config = config
        self.audit = audit
        self.on_landmarks = on_landmarks
        self.on_transform = on_transform
        self.on_trace = on_trace
        # The landmark lists a trace goes with: "sensor" is used by the next trace only.
        self._lists: dict[str, LandmarkList] = {}
        self._allow = {"landmarks": config.accept_landmarks, "transform": config.accept_transform}
        self._cond = threading.Condition()
        self._outbox: dict[str, _Item] = {}
        self._version = 0
        self._last_good: PoseEstimate | None = None  # re-sent flagged when a frame is lost
        self._conns: set[_Connection] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._counts: dict[str, int] = {}

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Bind and listen (no-op when disabled). Raises OSError if the port is taken."""
        if not self.config.enabled:
            log.info("OpenIGTLink link to Slicer is disabled")
            return
        if self._listener is not None:
            return
        if not self.config.loopback:
            log.warning(
                "OpenIGTLink on %s: unencrypted and unauthenticated; prefer 127.0.0.1 and SSH", self.config.host
            )
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.create_server((self.config.host, self.config.port), family=family)
        sock.settimeout(1.0)  # fallback wake-up for stop(); shutdown() normally wakes accept
        self._listener = sock
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="slicer-accept", daemon=True)
        self._accept_thread.start()
        self._audit("session", "slicer.start", host=self.config.host, port=self.port, **self._allow)
        log.info("OpenIGTLink link listening on %s:%d", self.config.host, self.port)

    def stop(self) -> None:
        """Close every connection and the listener; safe to call twice."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        _shutdown(listener)
        if self._accept_thread is not None:
            self._accept_thread.join(2.0)
        listener.close()
        with self._cond:
            conns = list(self._conns)
            self._cond.notify_all()
        for conn in conns:
            conn.close("link stopped")
        for conn in conns:
            conn.join(2.0)
        self._audit("session", "slicer.stop")

    def __enter__(self) -> SlicerLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int | None:
        """The bound port (useful with ``port=0``), None when not listening."""
        return None if self._listener is None else int(self._listener.getsockname()[1])

    @property
    def clients(self) -> int:
        with self._cond:
            return len(self._conns)

    def stats(self) -> dict[str, int]:
        """Counters: published, sent and received messages by kind, refusals by kind."""
        with self._cond:
            return dict(self._counts)

    def set_permissions(self, *, landmarks: bool | None = None, transform: bool | None = None) -> None:
        """Allow or forbid landmarks / seed transforms from Slicer from now on (audited)."""
        if landmarks is not None:
            self._allow["landmarks"] = bool(landmarks)
        if transform is not None:
            self._allow["transform"] = bool(transform)
        self._audit("session", "slicer.permissions", **self._allow)

    # ---------------------------------------------------------------- publishing
    def publish_meshes(self, meshes: MeshInput) -> list[str]:
        """Publish the patient meshes as POLYDATA; returns the device (Slicer node) names.

        ``meshes`` is a patient-model folder (``manifest.json`` + ``meshes/NAME.ply``, LPS
        mm) or a list of ``(name, vertices (N,3) LPS mm, triangles (M,3))``. Everything is
        checked before anything is published (ValueError naming the mesh).
        """
        items = _meshes_from_folder(Path(meshes)) if isinstance(meshes, (str, Path)) else list(meshes)
        checked = []
        taken = {self.config.transform_device, self.config.status_device, self.config.annotations_device}
        for name, vertices, triangles in items:
            try:
                V, T = check_mesh(vertices, triangles)
            except ValueError as exc:
                msg = f"mesh {name!r}: {exc}"
                raise ValueError(msg) from None
            device = _device_name(str(name), taken)
            taken.add(device)
            checked.append((device, V, T))
        stamp = time.time()
        frame = self.config.wire_frame
        for device, V, T in checked:
            self._put(f"POLYDATA:{device}", _mesh_builder(device, V, T, frame, stamp))
        self._count("published.meshes", len(checked))
        return [device for device, _, _ in checked]

    def publish_estimate(self, estimate: PoseEstimate) -> None:
        """Hand over this frame's registration result; returns at once (newest wins).
        The estimate is read later by the writer thread, so do not mutate its arrays.

        Sends TRANSFORM ``ModelToSensor`` (metadata ``TransformStatus``) and STRING
        ``ModelToSensorStatus``. A lost frame re-sends the last good matrix flagged
        ``lost`` so Slicer's status never claims a stale pose is live; before any good
        pose, a lost frame sends only the status text.
        """
        # Only a reference swap here: conversion and packing happen on the writer side.
        if status_name(estimate.status) != "lost":
            self._last_good = estimate
        mono_ns = estimate.timestamp_ns if estimate.timestamp_ns is not None else time.monotonic_ns()
        build = _estimate_builder(estimate, self._last_good, self.config, mono_ns)
        with self._cond:
            self._put_locked(f"ESTIMATE:{self.config.transform_device}", build)
            self._counts["published.estimates"] = self._counts.get("published.estimates", 0) + 1

    def publish_verdict(self, text: str) -> None:
        """Publish the verdict of the latest navigation registration as the STRING
        ``RegistrationVerdict`` (a text node in Slicer; a new client gets the latest)."""
        message = convert.status_message(convert.ascii_line(text), convert.VERDICT_DEVICE, time.time())
        self._put(f"STRING:{convert.VERDICT_DEVICE}", lambda: [message])
        self._count("published.verdicts")

    @property
    def max_trace_points(self) -> int:
        """The largest trace taken: 20,000 points, or what fits the message limit."""
        return min(convert.MAX_TRACE_POINTS, self.config.max_incoming_bytes // convert.POINT_ELEMENT_BYTES)

    def publish_annotations(self, annotations: Sequence[Annotation]) -> None:
        """Publish the current annotation set (model frame) as one POINT list; an empty
        sequence clears Slicer's list."""
        cfg = self.config
        message = convert.annotation_message(list(annotations), cfg.annotations_device, cfg.wire_frame)
        self._put(f"POINT:{cfg.annotations_device}", lambda: [message])  # built here: errors reach the caller
        self._count("published.annotations")

    def _put(self, key: str, build: Callable[[], list[Any]]) -> None:
        with self._cond:
            self._put_locked(key, build)

    def _put_locked(self, key: str, build: Callable[[], list[Any]]) -> None:
        self._version += 1
        self._outbox[key] = _Item(self._version, build)
        self._cond.notify_all()

    def _count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self._counts[key] = self._counts.get(key, 0) + n

    # ---------------------------------------------------------------- connections
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                sock, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener shut down by stop()
            actor = f"slicer@{addr[0]}:{addr[1]}"
            with self._cond:
                full = len(self._conns) >= self.config.max_clients
            if full:
                self._audit(
                    actor, "slicer.connect", accepted=False, reason=f"more than {self.config.max_clients} clients"
                )
                _shutdown(sock)
                sock.close()
                continue
            conn = _Connection(self, sock, actor)
            with self._cond:
                self._conns.add(conn)
            self._audit(actor, "slicer.connect", accepted=True)
            conn.start()

    def _due(self, sent: dict[str, int]) -> list[tuple[str, _Item]]:
        """Outbox entries newer than what a connection sent (caller holds the lock)."""
        due = [(k, it) for k, it in self._outbox.items() if it.version > sent.get(k, 0)]
        due.sort(key=lambda kv: kv[1].version)
        return due

    def _closed(self, conn: _Connection, reason: str) -> None:
        with self._cond:
            self._conns.discard(conn)
        self._audit(conn.actor, "slicer.disconnect", reason=reason)

    # ---------------------------------------------------------------- receiving
    def _receive(self, actor: str, message: Any) -> None:
        """Route one decoded message from Slicer: use it if expected and allowed, and
        audit it either way."""
        mtype, device = str(message.message_type), str(message.device_name)
        cfg = self.config
        if mtype == "POINT" and device in (cfg.landmarks_sensor_device, cfg.landmarks_model_device):
            self._landmarks(actor, message, "sensor" if device == cfg.landmarks_sensor_device else "model")
        elif mtype == "POINT" and device == convert.TRACE_DEVICE:
            self._trace(actor, message)
        elif mtype == "TRANSFORM" and device == cfg.seed_transform_device:
            self._seed(actor, message)
        elif mtype == "TRANSFORM" and device == cfg.transform_device:
            reason = f"{device!r} is scrubin's own output; send a seed as {cfg.seed_transform_device!r}"
            self._refuse(actor, mtype, device, reason)
        else:
            expected = [cfg.landmarks_sensor_device, cfg.landmarks_model_device, convert.TRACE_DEVICE]
            expected.append(cfg.seed_transform_device)
            self._refuse(actor, mtype, device, f"unexpected device {device!r}; this link takes {expected!r}")

    def _landmarks(self, actor: str, message: Any, frame: convert.LandmarkFrame) -> None:
        device = str(message.device_name)
        if not self._allow["landmarks"]:
            self._refuse(actor, "POINT", device, "landmarks from Slicer are not allowed in this session")
            return
        try:
            marks = convert.landmarks_from_message(message, frame, self.config.wire_frame, self.config.max_landmarks)
        except ValueError as exc:
            self._refuse(actor, "POINT", device, str(exc))
            return
        points = np.round(marks.points_mm, 3).tolist()
        if self._audit(
            actor,
            "slicer.landmarks",
            accepted=True,
            device=device,
            frame=frame,
            names=list(marks.names),
            points_mm=points,
        ):
            self._count("received.landmarks")
            with self._cond:
                self._lists[frame] = marks
            self._callback(actor, self.on_landmarks, marks)

    def _trace(self, actor: str, message: Any) -> None:
        """A surface trace starts a navigation registration with the landmark lists sent
        before it. Audited by count, never by coordinates (a trace is thousands of points)."""
        device = str(message.device_name)
        if not self._allow["landmarks"]:
            self._refuse(actor, "POINT", device, "surface traces from Slicer are not allowed in this session")
            return
        try:
            trace = convert.trace_from_message(message, self.max_trace_points)
        except ValueError as exc:
            self._refuse(actor, "POINT", device, str(exc))
            return
        with self._cond:
            sensor, model = self._lists.pop("sensor", None), self._lists.get("model")
        trace = TraceList(trace.device, trace.points_mm, sensor, model)
        names = [] if sensor is None else list(sensor.names)
        if self._audit(
            actor, "slicer.trace", accepted=True, device=device, n_points=len(trace.points_mm), landmarks=names
        ):
            self._count("received.traces")
            self._callback(actor, self.on_trace, trace)

    def _seed(self, actor: str, message: Any) -> None:
        device = str(message.device_name)
        if not self._allow["transform"]:
            self._refuse(actor, "TRANSFORM", device, "transforms from Slicer are not allowed in this session")
            return
        try:
            seed = convert.seed_from_message(message, self.config.wire_frame)
        except ValueError as exc:
            self._refuse(actor, "TRANSFORM", device, str(exc))
            return
        matrix = np.round(seed.T_sensor_model, 6).tolist()
        if self._audit(actor, "slicer.transform", accepted=True, device=device, T_sensor_model=matrix):
            self._count("received.transforms")
            self._callback(actor, self.on_transform, seed)

    def _refuse(self, actor: str, message_type: str, device: str, reason: str) -> None:
        """Audit and count a message that was not used."""
        log.info("refused %s %r from %s: %s", message_type, device, actor, reason)
        self._count(f"refused.{message_type or 'unknown'}")
        action = {"POINT": "slicer.landmarks", "TRANSFORM": "slicer.transform"}.get(message_type, "slicer.message")
        if message_type == "POINT" and device == convert.TRACE_DEVICE:
            action = "slicer.trace"
        self._audit(actor, action, accepted=False, type=message_type, device=device, reason=reason)

    def _callback(self, actor: str, callback: Callable[[Any], None] | None, value: Any) -> None:
        if callback is None:
            return
        try:
            callback(value)
        except Exception as exc:  # a session bug must not end the Slicer connection
            log.exception("Slicer %s callback failed", type(value).__name__)
            self._audit(actor, "slicer.callback_error", kind=type(value).__name__, error=repr(exc)[:300])

    def _audit(self, actor: str, action: str, **detail: Any) -> bool:
        """Append to the audit log; False (and nothing is used) if that fails."""
        role = ROLE if actor.startswith("slicer@") else "system"
        try:
            self.audit.append(actor, role, action, **detail)
            return True
        except Exception:
            log.exception("audit append failed for %s", action)
            return False


class _Connection:
    """One Slicer (or other OpenIGTLink client): a reader and a writer thread."""

    def __init__(self, link: SlicerLink, sock: socket.socket, actor: str) -> None:
        self.link, self.sock, self.actor = link, sock, actor
        self.sent: dict[str, int] = {}
        self.closed = threading.Event()
        self._close_lock = threading.Lock()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small pose messages go now
        sock.settimeout(link.config.send_timeout_s)
        name = actor.removeprefix("slicer@")
        self.threads = [
            threading.Thread(target=self._write_loop, name=f"slicer-tx-{name}", daemon=True),
            threading.Thread(target=self._read_loop, name=f"slicer-rx-{name}", daemon=True),
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float) -> None:
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def close(self, reason: str) -> None:
        with self._close_lock:
            if self.closed.is_set():
                return
            self.closed.set()
        _shutdown(self.sock)  # wakes both threads; the reader closes the descriptor last
        with self.link._cond:
            self.link._cond.notify_all()
        self.link._closed(self, reason)

    def _write_loop(self) -> None:
        link = self.link
        while True:
            with link._cond:
                link._cond.wait_for(lambda: self.closed.is_set() or bool(link._due(self.sent)))
                if self.closed.is_set():
                    return
                due = link._due(self.sent)
            for key, item in due:
                try:
                    data = item.packed()
                except Exception:  # a message that cannot be packed is skipped, not fatal
                    log.exception("cannot pack %s", key)
                    self.sent[key] = item.version
                    continue
                try:
                    self.sock.sendall(data)
                except OSError as exc:
                    self.close(f"send failed: {type(exc).__name__}: {exc}")
                    return
                self.sent[key] = item.version
                link._count(f"sent.{key.split(':', 1)[0]}")

    def _read_loop(self) -> None:
        try:
            self._read_messages()
        finally:
            # Only now may the descriptor go: closing it under a thread still in send()
            # could hand the number to a new socket.
            self.threads[0].join()
            self.sock.close()

    def _read_messages(self) -> None:
        cfg = self.link.config
        reader = Reader(self.sock, cfg.max_incoming_bytes, cfg.send_timeout_s, self.closed)
        while not self.closed.is_set():
            try:
                message = reader.next()
            except MessageError as exc:
                self.link._refuse(self.actor, exc.message_type, exc.device, str(exc))
                continue
            except (FramingError, OSError) as exc:
                self.close(f"{type(exc).__name__}: {exc}")
                break
            if message is None:
                self.close("peer closed")
                break
            try:
                self.link._receive(self.actor, message)
            except Exception as exc:  # never let one message end the reader
                log.exception("handling %s from %s", type(message).__name__, self.actor)
                self.link._refuse(
                    self.actor, str(message.message_type), str(message.device_name), f"internal error: {exc!r}"
                )


# ---------------------------------------------------------------- builders
def _mesh_builder(device: str, V: Any, T: Any, frame: WireFrame, stamp: float) -> Callable[[], list[Any]]:
    def build() -> list[Any]:
        msg = convert.mesh_message(device, V, T, frame)
        msg.timestamp = stamp
        return [msg]

    return build


def _estimate_builder(
    estimate: PoseEstimate, last_good: PoseEstimate | None, cfg: SlicerLinkConfig, mono_ns: int
) -> Callable[[], list[Any]]:
    """TRANSFORM (this pose, or the last good one flagged lost) + STRING status."""

    def build() -> list[Any]:
        wall = convert.wall_time_s(mono_ns)
        status = status_name(estimate.status)
        text = convert.status_text(estimate)
        out = []
        source = last_good if status == "lost" else estimate
        if source is not None:
            T = np.array(source.T_sensor_model, dtype=np.float64)
            if T.shape == (4, 4) and np.all(np.isfinite(T)):
                out.append(convert.transform_message(T, status, cfg.transform_device, cfg.wire_frame, wall))
            else:
                text += " | pose not finite: not sent"
        out.append(convert.status_message(text, cfg.status_device, wall))
        return out

    return build


def _meshes_from_folder(folder: Path) -> list[tuple[str, object, object]]:
    """(name, vertices, triangles) of every mesh in a patient-model folder."""
    from domain.ply import read_ply

    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        entries = manifest["meshes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"patient-model folder {str(folder)!r} has no readable manifest.json with meshes: {exc}"
        raise ValueError(msg) from None
    if manifest.get("units") != "mm" or manifest.get("frame") != "LPS":
        msg = f"patient model must be mm in LPS, got units={manifest.get('units')!r} frame={manifest.get('frame')!r}"
        raise ValueError(msg)
    prefix = "SYNTHETIC_" if manifest.get("synthetic") else ""
    out: list[tuple[str, object, object]] = []
    for entry in entries:
        path = folder / entry["files"]["ply"]
        try:
            V, T = read_ply(path)
        except (OSError, ValueError, StopIteration) as exc:
            msg = f"mesh file {str(path)!r} is not a readable PLY: {exc}"
            raise ValueError(msg) from None
        out.append((prefix + str(entry["name"]), V, T))
    return out


def _device_name(name: str, taken: set[str]) -> str:
    """``name`` cut to OpenIGTLink's 20-byte device field (on a UTF-8 boundary) and made
    unique against ``taken`` with a numeric suffix."""
    base = name.encode("utf-8")[:IGTL_DEVICE_NAME_BYTES].decode("utf-8", "ignore") or "mesh"
    candidate, k = base, 1
    while candidate in taken:
        suffix = f"~{k}"
        candidate = base.encode("utf-8")[: IGTL_DEVICE_NAME_BYTES - len(suffix)].decode("utf-8", "ignore") + suffix
        k += 1
    return candidate


def _shutdown(sock: socket.socket) -> None:
    """Wake any thread blocked on ``sock`` (accept, recv, send) without freeing its descriptor."""
    with contextlib.suppress(OSError):  # not connected any more
        sock.shutdown(socket.SHUT_RDWR)
