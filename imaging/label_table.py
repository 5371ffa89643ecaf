"""Names and colours for label-map values.

A table is optional: a JSON object ``{"1": "spleen", ...}`` (or ``{"1": {"name": ...,
"color": [r, g, b, a]}}``, 0..1) or a 3D Slicer colour table (lines ``id name r g b a``,
0-255). Unnamed labels are called ``label_<id>``; colours default to a fixed palette. A name
becomes a mesh's file name, so it is at most ``MAX_NAME_CHARS`` characters.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from imaging.errors import InputError
from imaging.mesh import RGBA

_PALETTE: tuple[RGBA, ...] = (
    (0.90, 0.30, 0.25, 1.0),
    (0.30, 0.65, 0.90, 1.0),
    (0.95, 0.75, 0.25, 1.0),
    (0.45, 0.80, 0.40, 1.0),
    (0.70, 0.45, 0.85, 1.0),
    (0.95, 0.55, 0.70, 1.0),
    (0.35, 0.85, 0.80, 1.0),
    (0.80, 0.60, 0.40, 1.0),
)
SKIN_COLOR: RGBA = (0.96, 0.80, 0.69, 1.0)
BONE_COLOR: RGBA = (0.95, 0.93, 0.85, 1.0)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_NAME_CHARS = 64  # "meshes/<name>.ply" stays far below a file system's 255-byte name limit
SLICER_COLOR_MAX = 255


def default_color(label: int) -> RGBA:
    return _PALETTE[(label - 1) % len(_PALETTE)]


def safe_name(name: str) -> str:
    """A file-system and glTF safe mesh name."""
    cleaned = _SAFE_NAME.sub("_", name.strip()).strip("._")
    return cleaned or "unnamed"


def load_label_table(path: Path) -> dict[int, tuple[str, RGBA]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: label table cannot be read ({exc.__class__.__name__})"
        raise InputError(msg) from None
    if path.suffix.lower() == ".json":
        return _from_json(path, text)
    return _from_slicer_table(path, text)


def _from_json(path: Path, text: str) -> dict[int, tuple[str, RGBA]]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"{path}: label table is not valid JSON (line {exc.lineno}: {exc.msg})"
        raise InputError(msg) from None
    if not isinstance(raw, dict):
        msg = f"{path}: label table must be a JSON object of label -> name, got {type(raw).__name__}"
        raise InputError(msg)
    table = {}
    for key, value in raw.items():
        label = _label_id(path, key)
        if isinstance(value, str):
            table[label] = (_name(path, key, value), default_color(label))
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            name = _name(path, key, value["name"])
            table[label] = (name, _color(path, key, value.get("color")) or default_color(label))
        else:
            msg = f"{path}: label {key!r} must map to a name or {{'name': ..., 'color': [...]}}, got {value!r}"
            raise InputError(msg)
    return table


def _from_slicer_table(path: Path, text: str) -> dict[int, tuple[str, RGBA]]:
    table = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        label = _label_id(path, parts[0], number)
        name = _name(path, parts[0], parts[1], number) if len(parts) > 1 else f"label_{label}"
        rgba = _slicer_color(path, number, label, parts[2:]) if len(parts) > 2 else None
        table[label] = (name, rgba or default_color(label))
    return table


def _name(path: Path, key: str, name: str, line: int | None = None) -> str:
    where = f" line {line}" if line else ""
    if len(name) > MAX_NAME_CHARS:
        msg = f"{path}{where}: label {key!r}: name of {len(name)} characters; at most {MAX_NAME_CHARS}"
        raise InputError(msg)
    return safe_name(name)


def _slicer_color(path: Path, line: int, label: int, fields: list[str]) -> RGBA:
    """``r g b a`` of a Slicer colour table line, each 0-255."""
    try:
        values = [float(v) for v in fields]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) and 0 <= v <= SLICER_COLOR_MAX for v in values):
        shown = " ".join(fields)
        msg = f"{path} line {line}: colour of label {label} must be 4 numbers 0-{SLICER_COLOR_MAX}, got {shown!r:.80}"
        raise InputError(msg)
    r, g, b, a = (v / SLICER_COLOR_MAX for v in values)
    return (r, g, b, a)


def _label_id(path: Path, key: str, line: int | None = None) -> int:
    where = f" line {line}" if line else ""
    try:
        label = int(key)
    except ValueError:
        label = -1
    if label <= 0:
        msg = f"{path}{where}: label id must be a positive integer, got {key!r}"
        raise InputError(msg)
    return label


def _color(path: Path, key: str, value: object) -> RGBA | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) not in (3, 4)
        or not all(isinstance(c, int | float) and 0 <= c <= 1 for c in value)
    ):
        msg = f"{path}: colour of label {key!r} must be 3 or 4 numbers in 0..1, got {value!r}"
        raise InputError(msg)
    c = [float(v) for v in value] + [1.0] * (4 - len(value))
    return (c[0], c[1], c[2], c[3])
