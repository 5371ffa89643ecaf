"""A mentor's mark on the patient model and the ops of the annotation log.
Points in model mm (LPS); ``created_ns`` is wall-clock UNIX time (display only)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from domain.json_fields import json_int, json_object, json_str

ANNOTATION_KINDS: tuple[str, ...] = ("point", "stroke", "label")
ANNOTATION_OPS: tuple[str, ...] = ("add", "update", "delete")

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$")

AnnotationOpName = Literal["add", "update", "delete"]


@dataclass(frozen=True)
class Annotation:
    """A mentor's mark on the patient model (points in model mm, LPS)."""

    id: str
    kind: str
    author: str
    role: str
    points_mm: tuple[tuple[float, float, float], ...]
    created_ns: int
    rev: int = 0
    text: str = ""
    color: str = "#ffcc00"
    screen_xy: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id or len(self.id) > 128:
            msg = f"annotation id must be a non-empty str of at most 128 chars, got {self.id!r}"
            raise ValueError(msg)
        if self.kind not in ANNOTATION_KINDS:
            msg = f"annotation kind must be one of {ANNOTATION_KINDS}, got {self.kind!r}"
            raise ValueError(msg)
        pts = tuple(tuple(float(c) for c in p) for p in self.points_mm)
        if any(len(p) != 3 or not all(math.isfinite(c) for c in p) for p in pts):
            msg = f"points_mm must be finite (x, y, z) triples, got {self.points_mm!r}"
            raise ValueError(msg)
        object.__setattr__(self, "points_mm", pts)
        if not isinstance(self.color, str) or not _COLOUR.match(self.color):
            msg = f"annotation color must be #rrggbb or #rrggbbaa, got {self.color!r}"
            raise ValueError(msg)
        if self.screen_xy is not None:
            xy = tuple(tuple(float(c) for c in p) for p in self.screen_xy)
            if any(len(p) != 2 or not all(math.isfinite(c) for c in p) for p in xy):
                msg = f"screen_xy must be finite (x, y) pairs, got {self.screen_xy!r}"
                raise ValueError(msg)
            object.__setattr__(self, "screen_xy", xy)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rev": self.rev,
            "kind": self.kind,
            "author": self.author,
            "role": self.role,
            "points_mm": [list(p) for p in self.points_mm],
            "screen_xy": None if self.screen_xy is None else [list(p) for p in self.screen_xy],
            "text": self.text,
            "color": self.color,
            "created_ns": self.created_ns,
        }

    @classmethod
    def from_json(cls, data: Any) -> Annotation:
        json_object(data, "annotation")
        try:
            return cls(
                id=data["id"],
                rev=json_int(data["rev"], "rev"),
                kind=data["kind"],
                author=json_str(data["author"], "author"),
                role=json_str(data["role"], "role"),
                points_mm=tuple(tuple(p) for p in data["points_mm"]),
                screen_xy=None if data.get("screen_xy") is None else tuple(tuple(p) for p in data["screen_xy"]),
                text=json_str(data.get("text", ""), "text"),
                color=json_str(data.get("color", "#ffcc00"), "color"),
                created_ns=json_int(data["created_ns"], "created_ns"),
            )
        except (KeyError, TypeError) as exc:
            msg = f"annotation is malformed ({exc!r}), got {data!r}"
            raise ValueError(msg) from exc


@dataclass(frozen=True)
class AnnotationOp:
    """One entry of the server's annotation log; ``seq`` is assigned by the server."""

    seq: int
    op: AnnotationOpName
    id: str
    annotation: Annotation | None  # None for delete

    def to_json(self) -> dict[str, Any]:
        ann = None if self.annotation is None else self.annotation.to_json()
        return {"seq": self.seq, "op": self.op, "id": self.id, "annotation": ann}

    @classmethod
    def from_json(cls, data: Any) -> AnnotationOp:
        json_object(data, "annotation op")
        op = data.get("op")
        if op not in ANNOTATION_OPS:
            msg = f"annotation op must be one of {ANNOTATION_OPS}, got {op!r}"
            raise ValueError(msg)
        raw = data.get("annotation")
        ann = None if op == "delete" else Annotation.from_json(raw)
        ident = json_str(data.get("id"), "id")
        if ann is not None and ann.id != ident:
            msg = f"annotation op id {ident!r} differs from its annotation's id, got {ann.id!r}"
            raise ValueError(msg)
        return cls(seq=json_int(data.get("seq"), "seq"), op=op, id=ident, annotation=ann)
