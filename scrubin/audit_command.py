"""``scrubin audit SESSION``: the session's audit log as a table, chain verified first."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from scrubin.audit import audit_path, read_events


def run_audit(session: str, directory: Path) -> None:
    path = audit_path(directory, session)
    events = list(read_events(path))  # raises AuditError at the first broken link
    table = Table(title=f"audit log of session {session} ({path})")
    for column in ("seq", "time (UTC)", "actor", "role", "action", "detail"):
        table.add_column(column, overflow="fold")
    for e in events:
        table.add_row(str(e.seq), e.t_utc, e.actor, e.role, e.action, json.dumps(e.detail, sort_keys=True))
    console = Console(highlight=False)
    console.print(table)
    console.print(f"chain verified: {len(events)} events, last hash {events[-1].hash[:16] if events else '-'}")
