"""Annotation state: the server's ordered log and a headset's replica of it.

Every op gets the next sequence number on the server. A replica applies ops
strictly in sequence: an op at or below its sequence is a duplicate and is
ignored, an op beyond the next one waits in a bounded buffer until the gap is
filled (from a ``sync`` reply). That makes delivery exactly-once and ordered
even though PUB/SUB may drop or a headset may reconnect.

With an :class:`AnnotationStore` the server's log also survives its own process: every op
is on disk (SQLite, fsync'd) before it is applied or broadcast, and a restarted server
keeps its epoch and sequence, so reconnecting headsets fetch only what they missed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import sqlite3
import threading
from collections import deque
from pathlib import Path

from headset_bridge.messages import Annotation, AnnotationOp, AnnotationOpName

log = logging.getLogger(__name__)


class AnnotationLog:
    """The authoritative state (server side). Not thread-safe; the server locks."""

    def __init__(self, max_log: int = 10_000, store: AnnotationStore | None = None) -> None:
        self.seq = 0  # seq of the last op; 0 = none yet
        self.state: dict[str, Annotation] = {}
        self._log: deque[AnnotationOp] = deque(maxlen=max_log)
        self._store = store
        if store is not None:
            for entry in store.ops():
                self._check_replay(store.path, entry)
                self._commit(entry)
            log.info("annotation log restored from %s: %d ops, %d annotations", store.path, self.seq, len(self.state))

    def apply(self, op: AnnotationOpName, ann: Annotation | str) -> AnnotationOp:
        """Validate, assign the next seq, persist, apply. ``ann`` is an id for delete."""
        entry = self.prepare(op, ann)
        self.commit(entry)
        return entry

    def prepare(self, op: AnnotationOpName, ann: Annotation | str) -> AnnotationOp:
        """Validate and assign the next seq, and persist it when there is a store, without
        applying it: the server fsyncs here without holding up its PUB socket, then
        commits and sends. Calls must be serialised with :meth:`commit` by the caller."""
        ident = ann if isinstance(ann, str) else ann.id
        if op == "add" and ident in self.state:
            msg = f"cannot add annotation, id already present, got {ident!r}"
            raise ValueError(msg)
        if op in ("update", "delete") and ident not in self.state:
            msg = f"cannot {op} annotation, id unknown, got {ident!r}"
            raise ValueError(msg)
        if op not in ("add", "update", "delete"):
            msg = f"annotation op must be add, update or delete, got {op!r}"
            raise ValueError(msg)
        stored: Annotation | None = None
        if op != "delete":
            if isinstance(ann, str):
                msg = f"{op} needs an Annotation, got {ann!r}"
                raise TypeError(msg)
            rev = 0 if op == "add" else self.state[ident].rev + 1
            stored = dataclasses.replace(ann, rev=rev)
        entry = AnnotationOp(seq=self.seq + 1, op=op, id=ident, annotation=stored)
        if self._store is not None:
            self._store.append(entry)  # durable before anyone can see it: a crash loses nothing seen
        return entry

    def commit(self, entry: AnnotationOp) -> None:
        """Apply a prepared op (the next in sequence)."""
        if entry.seq != self.seq + 1:
            msg = f"annotation op {entry.seq} does not follow op {self.seq}"
            raise ValueError(msg)
        self._commit(entry)

    def _commit(self, entry: AnnotationOp) -> None:
        if entry.op == "delete":
            del self.state[entry.id]
        elif entry.annotation is not None:
            self.state[entry.id] = entry.annotation
        self.seq = entry.seq
        self._log.append(entry)

    def _check_replay(self, where: Path, entry: AnnotationOp) -> None:
        known = entry.id in self.state
        if entry.seq != self.seq + 1 or (entry.op == "add") == known or (entry.op != "delete" and not entry.annotation):
            msg = f"{where}: annotation log is inconsistent at op {entry.seq} ({entry.op} {entry.id!r} after op {self.seq})"
            raise AnnotationStoreError(msg)

    def since(self, seq: int) -> list[AnnotationOp] | None:
        """Ops after ``seq``, or None when the log no longer reaches back that far."""
        if seq >= self.seq:
            return []
        if not self._log or self._log[0].seq > seq + 1 or seq < 0:
            return None
        start = seq + 1 - self._log[0].seq
        return list(self._log)[start:]


class AnnotationReplica:
    """A headset's copy: exactly-once, in-order application of server ops."""

    def __init__(self, max_pending: int = 4096) -> None:
        self.seq = -1  # -1: not synced yet
        self.state: dict[str, Annotation] = {}
        self.applied: list[int] = []  # seqs applied since the last snapshot (for audits/tests)
        self.duplicates = 0
        self._pending: dict[int, AnnotationOp] = {}
        self._max_pending = max_pending

    @property
    def synced(self) -> bool:
        return self.seq >= 0

    def load_snapshot(self, seq: int, annotations: list[Annotation]) -> None:
        self.seq = seq
        self.state = {a.id: a for a in annotations}
        self.applied = []
        self._drain()

    def offer(self, op: AnnotationOp) -> bool:
        """Take an op from any path; True when it made the replica advance."""
        if self.synced and op.seq <= self.seq:
            self.duplicates += 1
            return False
        if op.seq in self._pending:
            self.duplicates += 1
            return False
        self._pending[op.seq] = op
        if len(self._pending) > self._max_pending:
            # Too far behind: drop the newest buffered ops; a later sync refetches them.
            del self._pending[max(self._pending)]
        before = self.seq
        self._drain()
        return self.seq != before

    @property
    def gap(self) -> bool:
        """Ops are buffered that cannot be applied: something is missing."""
        return self.synced and bool(self._pending)

    def reset(self) -> None:
        self.seq = -1
        self.state = {}
        self.applied = []
        self._pending.clear()

    def _drain(self) -> None:
        if not self.synced:
            return
        for s in [s for s in self._pending if s <= self.seq]:
            del self._pending[s]
        while (op := self._pending.pop(self.seq + 1, None)) is not None:
            self._apply(op)

    def _apply(self, op: AnnotationOp) -> None:
        if op.op == "delete":
            self.state.pop(op.id, None)
        elif op.annotation is not None:
            self.state[op.id] = op.annotation
        self.seq = op.seq
        self.applied.append(op.seq)


def state_digest(state: dict[str, Annotation]) -> str:
    """Order-independent hash of an annotation state, to compare replicas."""
    import hashlib
    import json

    items = sorted((a.to_json() for a in state.values()), key=lambda d: str(d["id"]))
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


class AnnotationStoreError(Exception):
    """The persisted annotation log cannot be used (damaged, gapped, edited); says where."""


_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY, op TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS ops_no_update BEFORE UPDATE ON ops
    BEGIN SELECT RAISE(ABORT, 'annotation log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ops_no_delete BEFORE DELETE ON ops
    BEGIN SELECT RAISE(ABORT, 'annotation log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_update BEFORE UPDATE ON meta
    BEGIN SELECT RAISE(ABORT, 'annotation epoch is fixed'); END;
"""


class AnnotationStore:
    """Append-only SQLite file of annotation ops; each op is fsync'd (WAL, synchronous=FULL)
    before :meth:`append` returns. Its epoch is created with the file and never changes,
    so headsets keep their replicas across server restarts. Thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_STORE_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (secrets.token_hex(8),))
            row = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            last = self._db.execute("SELECT MAX(seq) FROM ops").fetchone()
        except sqlite3.DatabaseError as exc:
            msg = f"{path}: not a usable annotation store ({exc})"
            raise AnnotationStoreError(msg) from None
        self.epoch: str = str(row[0])
        self.last_seq: int = int(last[0] or 0)

    def append(self, entry: AnnotationOp) -> None:
        """Write one op; it is on disk when this returns. Sequence numbers must follow on."""
        with self._lock:
            if entry.seq != self.last_seq + 1:
                msg = f"{self.path}: annotation op {entry.seq} does not follow op {self.last_seq}"
                raise AnnotationStoreError(msg)
            body = json.dumps(entry.to_json(), separators=(",", ":"), allow_nan=False)
            self._db.execute("INSERT INTO ops VALUES (?, ?, ?, ?)", (entry.seq, entry.op, entry.id, body))
            self.last_seq = entry.seq

    def ops(self) -> list[AnnotationOp]:
        """Every op in order, checked: sequence without gaps, bodies matching their rows."""
        with self._lock:
            rows = self._db.execute("SELECT seq, op, id, body FROM ops ORDER BY seq").fetchall()
        out: list[AnnotationOp] = []
        for seq, op, ident, body in rows:
            try:
                entry = AnnotationOp.from_json(json.loads(body))
            except ValueError as exc:
                msg = f"{self.path}: annotation op {seq} is damaged ({exc})"
                raise AnnotationStoreError(msg) from None
            if (entry.seq, entry.op, entry.id) != (seq, op, ident) or seq != len(out) + 1:
                msg = f"{self.path}: annotation log has a gap or an edit at op {seq} (expected {len(out) + 1})"
                raise AnnotationStoreError(msg)
            out.append(entry)
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
