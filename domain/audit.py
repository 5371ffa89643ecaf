"""The audit interface every part writes to: who did what, when, append-only.

The store (hash-chained SQLite, scrubin/audit.py) is wired in by the composition root;
parts see only this protocol, so they never import ``scrubin``.
"""

from __future__ import annotations

from typing import Any, Protocol


class AuditSink(Protocol):
    """Append one event. ``actor`` is a display name from a token or key (never patient
    data), ``role`` its role, ``action`` a short verb phrase; ``detail`` plain JSON values."""

    def append(self, actor: str, role: str, action: str, **detail: Any) -> object: ...
