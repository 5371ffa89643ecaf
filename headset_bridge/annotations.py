"""Annotation state: the server's ordered log and a headset's replica of it.

Every op gets the next sequence number on the server. A replica applies ops
strictly in sequence: an op at or below its sequence is a duplicate and is
ignored, an op beyond the next one waits in a bounded buffer until the gap is
filled (from a ``sync`` reply). That makes delivery exactly-once and ordered
even though PUB/SUB may drop or a headset may reconnect.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from headset_bridge.messages import Annotation, AnnotationOp, AnnotationOpName


class AnnotationLog:
    """The authoritative state (server side). Not thread-safe; the server locks."""

    def __init__(self, max_log: int = 10_000) -> None:
        self.seq = 0  # seq of the last op; 0 = none yet
        self.state: dict[str, Annotation] = {}
        self._log: deque[AnnotationOp] = deque(maxlen=max_log)

    def apply(self, op: AnnotationOpName, ann: Annotation | str) -> AnnotationOp:
        """Validate, assign the next seq, apply. ``ann`` is an id for delete."""
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
        if op == "delete":
            del self.state[ident]
        else:
            if isinstance(ann, str):
                msg = f"{op} needs an Annotation, got {ann!r}"
                raise TypeError(msg)
            rev = 0 if op == "add" else self.state[ident].rev + 1
            stored = dataclasses.replace(ann, rev=rev)
            self.state[ident] = stored
        self.seq += 1
        entry = AnnotationOp(seq=self.seq, op=op, id=ident, annotation=stored)
        self._log.append(entry)
        return entry

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
