"""Append-only audit log, one SQLite file per theatre session.

Every action that matters (join, leave, annotation, model load, registration override) is a
row that can be added and never changed: SQLite triggers refuse UPDATE and DELETE, and each
row carries the SHA-256 of the previous row's hash and its own content, so a gap or an edit
made behind SQLite's back (or a truncated file) is found by ``verify``. Writes are durable
(WAL, synchronous=FULL) before ``append`` returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
_SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    t_utc TEXT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""


class AuditError(Exception):
    """The audit log is missing, damaged or tampered with; the message says where."""


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    t_utc: str
    actor: str
    role: str
    action: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def audit_path(directory: Path, session: str) -> Path:
    if not _SESSION_NAME.match(session):
        msg = f"session name must be 1-64 letters, digits, '.', '_' or '-', got {session!r}"
        raise AuditError(msg)
    return directory / f"{session}.audit.sqlite"


def _row_hash(prev_hash: str, seq: int, t_utc: str, actor: str, role: str, action: str, detail: str) -> str:
    canonical = json.dumps([prev_hash, seq, t_utc, actor, role, action, detail], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    """Thread-safe appender for one session's log."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        last = self._db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq, self._hash = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)

    def append(self, actor: str, role: str, action: str, **detail: Any) -> AuditEvent:
        """Add one event; it is on disk when this returns."""
        text = json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
        with self._lock:
            seq = self._seq + 1
            t_utc = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            digest = _row_hash(self._hash, seq, t_utc, actor, role, action, text)
            self._db.execute(
                "INSERT INTO events (seq, t_utc, actor, role, action, detail, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?)",
                (seq, t_utc, actor, role, action, text, self._hash, digest),
            )
            event = AuditEvent(seq, t_utc, actor, role, action, detail, self._hash, digest)
            self._seq, self._hash = seq, digest
        return event

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: Path) -> Iterator[AuditEvent]:
    """Events in order, read-only, each checked against the hash chain (``AuditError`` at
    the first gap, edit or broken link)."""
    if not path.is_file():
        msg = f"{path}: no audit log"
        raise AuditError(msg)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        rows = db.execute(
            "SELECT seq, t_utc, actor, role, action, detail, prev_hash, hash FROM events ORDER BY seq"
        ).fetchall()
        db.close()
    except sqlite3.DatabaseError as exc:
        msg = f"{path}: not a readable audit log ({exc})"
        raise AuditError(msg) from None
    expected_seq, prev = 1, GENESIS_HASH
    for seq, t_utc, actor, role, action, detail, prev_hash, digest in rows:
        if seq != expected_seq:
            msg = f"{path}: gap in the audit log: event {expected_seq} missing before {seq}"
            raise AuditError(msg)
        if prev_hash != prev or _row_hash(prev, seq, t_utc, actor, role, action, detail) != digest:
            msg = f"{path}: audit event {seq} was altered (hash chain broken)"
            raise AuditError(msg)
        yield AuditEvent(seq, t_utc, actor, role, action, json.loads(detail), prev_hash, digest)
        expected_seq, prev = seq + 1, digest
