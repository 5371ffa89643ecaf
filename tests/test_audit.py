"""The audit log: append-only, durable, ordered, and tampering or gaps are found."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from imaging_fixtures import run_cli

from scrubin.audit import AuditError, AuditLog, audit_path, read_events


def _log(tmp_path: Path) -> AuditLog:
    return AuditLog(audit_path(tmp_path, "theatre-1"))


def test_events_are_ordered_and_survive_reopening(tmp_path: Path) -> None:
    with _log(tmp_path) as audit:
        audit.append("dr.lee", "mentor", "join")
        audit.append("dr.lee", "mentor", "annotation.add", id="a1", point_mm=[1.5, -2.0, 30.0])
    with _log(tmp_path) as audit:  # a restarted server continues the same chain
        audit.append("system", "server", "model.load", sha256="ab" * 32)
    events = list(read_events(audit_path(tmp_path, "theatre-1")))
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.action for e in events] == ["join", "annotation.add", "model.load"]
    assert events[1].detail == {"id": "a1", "point_mm": [1.5, -2.0, 30.0]}
    assert events[2].prev_hash == events[1].hash


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    with _log(tmp_path) as audit, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: audit.append(f"m{i % 3}", "mentor", "annotation.add", id=str(i)), range(200)))
    events = list(read_events(audit_path(tmp_path, "theatre-1")))
    assert sorted(int(e.detail["id"]) for e in events) == list(range(200))


def test_update_and_delete_are_refused(tmp_path: Path) -> None:
    with _log(tmp_path) as audit:
        audit.append("dr.lee", "mentor", "join")
    db = sqlite3.connect(audit_path(tmp_path, "theatre-1"))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE events SET actor = 'someone else'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM events")


def test_tampering_behind_sqlites_back_is_found(tmp_path: Path) -> None:
    path = audit_path(tmp_path, "theatre-1")
    with AuditLog(path) as audit:
        for i in range(3):
            audit.append("dr.lee", "mentor", "annotation.add", id=str(i))
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER events_no_update")
    db.execute('UPDATE events SET detail = \'{"id":"9"}\' WHERE seq = 2')
    db.commit()
    with pytest.raises(AuditError, match=r"audit event 2 was altered \(hash chain broken\)"):
        list(read_events(path))
    db.execute("DROP TRIGGER events_no_delete")
    db.execute("DELETE FROM events WHERE seq = 2")
    db.commit()
    with pytest.raises(AuditError, match=r"gap in the audit log: event 2 missing before 3"):
        list(read_events(path))


def test_bad_session_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"session name must be .* got '\.\./etc/passwd'"):
        audit_path(tmp_path, "../etc/passwd")


def test_cli_prints_and_verifies(tmp_path: Path) -> None:
    with _log(tmp_path) as audit:
        audit.append("dr.lee", "mentor", "join")
        audit.append("dr.lee", "mentor", "annotation.add", id="a1")
    result = run_cli("audit", "theatre-1", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (
        "annotation.add" in result.stdout and "dr.lee" in result.stdout and "chain verified: 2 events" in result.stdout
    )
    missing = run_cli("audit", "theatre-9", "--dir", str(tmp_path))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("theatre-9.audit.sqlite: no audit log")
