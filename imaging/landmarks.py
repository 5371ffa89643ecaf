"""Anatomical landmarks marked on a CT by the imaging team (``scrubin prepare --landmarks``).

The surgeon touches a few of them (nasion, lateral canthi, tragus...) to start the
registration, so each is read into the patient frame of the model (LPS, mm) and checked.

Formats, told apart by the file's content (and its ``.json``/``.fcsv`` suffix):

- 3D Slicer markups JSON (``.mrk.json``, schema v1.0.x): every markup of type ``Fiducial``
  (a point list; other types are refused); a control point's ``label`` is its name and its
  ``position`` is in the markup's ``coordinateSystem`` (``LPS``, the schema's default, or
  ``RAS``) and ``coordinateUnits`` (``mm``, the default, or ``um``). A point whose
  ``positionStatus`` is not ``defined`` (Slicer: placed later, or being placed) is refused.
- Slicer fiducial CSV (``.fcsv``, Slicer 4 and later): a ``# Markups fiducial file version``
  line, ``# CoordinateSystem = RAS|LPS`` (older Slicer wrote ``0`` for RAS, ``1`` for LPS;
  without the line Slicer reads RAS, and so does this), ``# columns = id,x,y,z,...,label,desc,...``.
- Plain CSV: ``name,x,y,z[,kind]`` in LPS mm, an optional header line ``name,x,y,z[,kind]``,
  ``#`` comments and blank lines skipped; ``kind`` is ``fiducial`` (the default) or ``target``.

Fiducials are what the surgeon touches; targets are where the registration's error is
predicted. In the Slicer formats a point whose description is the word ``target`` (any case;
Slicer's Markups module shows it in the control-point table) is a target, every other point a
fiducial. RAS to LPS: x and y change sign (``RAS_TO_LPS``).
"""

from __future__ import annotations

import csv
import json
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imaging.errors import InputError
from imaging.geometry import PATIENT_FRAME, Geometry
from imaging.manifest import Landmark

LPS, RAS = PATIENT_FRAME, "RAS"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])  # the same matrix maps LPS to RAS
FIDUCIAL, TARGET = "fiducial", "target"
MAX_LANDMARKS = 64  # a navigation workflow touches 3-8; more is a wrong file (a curve, a mesh)
MAX_NAME_CHARS = 64
MAX_FILE_BYTES = 4 * 1024 * 1024  # 64 points with Slicer's display properties take ~30 kB
SCAN_MARGIN_MM = 20.0  # a skin landmark may sit just outside a tightly cropped CT
SLICER_POINT_TYPE = "Fiducial"  # the markups JSON type of a point list
SLICER_UNITS_MM = {"mm": 1.0, "um": 1e-3}
SLICER_FRAMES = {"RAS": RAS, "0": RAS, "LPS": LPS, "1": LPS}  # fcsv: numeric codes before Slicer 4.11
FCSV_VERSION = "# Markups fiducial file version"
FCSV_FRAME = "# CoordinateSystem"
FCSV_COLUMNS = "# columns"
FCSV_DEFAULT_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc")
CSV_HEADER = ("x", "y", "z")


@dataclass(frozen=True)
class MarkedPoint:
    """One landmark as read: ``position_mm`` already in LPS, ``file_frame`` what the file said."""

    name: str
    position_mm: tuple[float, float, float]
    kind: str  # FIDUCIAL or TARGET
    where: str  # where it is in the file, for messages ("line 4", "markup 1 point 2")
    file_frame: str = LPS

    def landmark(self) -> Landmark:
        return Landmark(self.name, self.position_mm)


@dataclass(frozen=True)
class LandmarkFile:
    """The checked landmarks of one file, in LPS mm, in file order."""

    points: tuple[MarkedPoint, ...]
    format: str  # "slicer-markups-json", "slicer-fcsv" or "csv"

    @property
    def fiducials(self) -> list[Landmark]:
        return [p.landmark() for p in self.points if p.kind == FIDUCIAL]

    @property
    def targets(self) -> list[Landmark]:
        return [p.landmark() for p in self.points if p.kind == TARGET]

    def source(self) -> dict[str, str]:
        """What the manifest records about the file: its format and the frame it was given in."""
        frames = sorted({p.file_frame for p in self.points})
        return {"format": self.format, "coordinate_system": "+".join(frames)}


def read_landmarks(path: Path) -> LandmarkFile:
    """Read and check a landmark file; ``InputError`` naming the file and the landmark."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            msg = f"{path}: {size:,} bytes; a landmark file is at most {MAX_FILE_BYTES:,}"
            raise InputError(msg)
        text = path.read_bytes().decode("utf-8-sig")  # a BOM, as spreadsheets write, is not text
    except UnicodeDecodeError as exc:
        msg = f"{path}: landmark file is not UTF-8 text (byte {exc.start})"
        raise InputError(msg) from None
    except OSError as exc:
        msg = f"{path}: landmark file cannot be read ({exc.strerror or exc.__class__.__name__})"
        raise InputError(msg) from None
    return parse_landmarks(text, path)


def parse_landmarks(text: str, where: Path | str) -> LandmarkFile:
    suffix = Path(str(where)).suffix.lower()
    if suffix == ".json" or text.lstrip().startswith("{"):
        points, fmt = _from_markups_json(text, where), "slicer-markups-json"
    elif suffix == ".fcsv" or _fcsv_header(text):
        points, fmt = _from_fcsv(text, where), "slicer-fcsv"
    else:
        points, fmt = _from_csv(text, where), "csv"
    _check_points(points, where)
    return LandmarkFile(tuple(points), fmt)


# --- Slicer markups JSON -------------------------------------------------------------------------


def _from_markups_json(text: str, where: Path | str) -> list[MarkedPoint]:
    try:
        root = json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})"
        raise InputError(msg) from None
    except RecursionError:
        msg = f"{where}: JSON nested too deeply to be a markups file"
        raise InputError(msg) from None
    markups = root.get("markups") if isinstance(root, dict) else None
    if not isinstance(markups, list):
        msg = f"{where}: not a Slicer markups file (no 'markups' list)"
        raise InputError(msg)
    points = []
    for m, markup in enumerate(markups, start=1):
        points += _markup_points(markup, f"markup {m}", where)
    return points


def _markup_points(markup: object, at: str, where: Path | str) -> list[MarkedPoint]:
    if not isinstance(markup, dict):
        msg = f"{where}: {at} is not an object"
        raise InputError(msg)
    if markup.get("type") != SLICER_POINT_TYPE:
        msg = f"{where}: {at} is of type {markup.get('type')!r:.40}, not a point list ({SLICER_POINT_TYPE!r})"
        raise InputError(msg)
    frame = markup.get("coordinateSystem", LPS)  # the schema's default
    if frame not in (LPS, RAS):
        msg = f"{where}: {at}: coordinateSystem {frame!r:.40} is neither 'LPS' nor 'RAS'"
        raise InputError(msg)
    scale = _markup_units(markup.get("coordinateUnits", "mm"), at, where)
    controls = markup.get("controlPoints", [])
    if not isinstance(controls, list):
        msg = f"{where}: {at}: controlPoints is not a list"
        raise InputError(msg)
    return [_control_point(cp, f"{at} point {i}", frame, scale, where) for i, cp in enumerate(controls, start=1)]


def _markup_units(units: object, at: str, where: Path | str) -> float:
    code = units[0] if isinstance(units, list) and units else units  # or a [code, scheme, meaning] triple
    if not isinstance(code, str) or code not in SLICER_UNITS_MM:
        msg = f"{where}: {at}: coordinateUnits {units!r:.60} is neither 'mm' nor 'um'"
        raise InputError(msg)
    return SLICER_UNITS_MM[code]


def _control_point(cp: object, at: str, frame: str, scale: float, where: Path | str) -> MarkedPoint:
    if not isinstance(cp, dict):
        msg = f"{where}: {at} is not an object"
        raise InputError(msg)
    label = cp.get("label", "")
    if not isinstance(label, str):
        msg = f"{where}: {at}: label must be text, got {label!r:.40}"
        raise InputError(msg)
    shown = f"landmark {label.strip()!r:.80} ({at})"
    status = cp.get("positionStatus", "defined")
    if status != "defined":
        msg = f"{where}: {shown}: position is {status!r:.20}, not defined (place it in Slicer, or delete it)"
        raise InputError(msg)
    position = cp.get("position")
    if position is None:
        msg = f"{where}: {shown}: has no position"
        raise InputError(msg)
    if not (isinstance(position, list) and len(position) == 3 and all(_is_number(v) for v in position)):
        msg = f"{where}: {shown}: position must be 3 numbers, got {position!r:.80}"
        raise InputError(msg)
    xyz = np.array([_float(v) for v in position]) * scale
    return _point(label, xyz, _kind_of_description(cp.get("description")), at, frame)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: float) -> float:
    """A JSON number as a float; an integer too large for one is infinite (refused later)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


# --- Slicer fiducial CSV -------------------------------------------------------------------------


def _fcsv_header(text: str) -> bool:
    heads = (FCSV_VERSION, FCSV_FRAME, FCSV_COLUMNS)
    return any(line.startswith(heads) for line in text.splitlines() if line.startswith("#"))


def _from_fcsv(text: str, where: Path | str) -> list[MarkedPoint]:
    frame, versioned = RAS, False  # Slicer reads RAS without the CoordinateSystem line
    columns: tuple[str, ...] = FCSV_DEFAULT_COLUMNS
    points = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            key, _, value = line.partition("=")
            key = key.strip()
            versioned |= key == FCSV_VERSION
            frame = _fcsv_frame(value, number, where) if key == FCSV_FRAME else frame
            columns = _fcsv_columns(value, number, where) if key == FCSV_COLUMNS else columns
            continue
        if not line.strip():
            continue
        if not versioned:  # Slicer itself would read the rows as Slicer 3's label,x,y,z,sel,vis
            msg = f"{where}: no '{FCSV_VERSION} = ...' line before line {number}; re-save the list from Slicer"
            raise InputError(msg)
        points.append(_fcsv_point(line, number, columns, frame, where))
    return points


def _fcsv_frame(value: str, line: int, where: Path | str) -> str:
    code = value.strip().upper()
    if code not in SLICER_FRAMES:
        msg = f"{where}: line {line}: CoordinateSystem {value.strip()!r:.40} is not RAS (0) or LPS (1)"
        raise InputError(msg)
    return SLICER_FRAMES[code]


def _fcsv_columns(value: str, line: int, where: Path | str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in value.split(","))
    missing = [c for c in ("x", "y", "z", "label") if c not in columns]
    if missing:
        msg = f"{where}: line {line}: the columns line names no {missing[0]!r} column"
        raise InputError(msg)
    return columns


def _fcsv_point(line: str, number: int, columns: Sequence[str], frame: str, where: Path | str) -> MarkedPoint:
    fields = next(csv.reader([line]))  # Slicer quotes a label or description holding a comma
    row = dict(zip(columns, fields, strict=False))
    name = row.get("label", "")
    xyz = _numbers([row.get(axis, "") for axis in "xyz"], name, f"line {number}", where)
    return _point(name, xyz, _kind_of_description(row.get("desc")), f"line {number}", frame)


def _kind_of_description(description: object) -> str:
    return TARGET if isinstance(description, str) and description.strip().lower() == TARGET else FIDUCIAL


# --- plain CSV -----------------------------------------------------------------------------------


def _from_csv(text: str, where: Path | str) -> list[MarkedPoint]:
    points: list[MarkedPoint] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([line]))
        if not points and tuple(f.strip().lower() for f in fields[1:4]) == CSV_HEADER:
            continue  # the header line
        if len(fields) not in (4, 5):
            msg = f"{where}: line {number}: expected name,x,y,z[,kind] (LPS mm), got {len(fields)} fields"
            raise InputError(msg)
        at = f"line {number}"
        xyz = _numbers(fields[1:4], fields[0], at, where)
        points.append(_point(fields[0], xyz, _csv_kind(fields[4] if len(fields) == 5 else "", at, where), at, LPS))
    return points


def _csv_kind(value: str, at: str, where: Path | str) -> str:
    kind = value.strip().lower() or FIDUCIAL
    if kind not in (FIDUCIAL, TARGET):
        msg = f"{where}: {at}: kind must be {FIDUCIAL!r} or {TARGET!r}, got {value!r:.40}"
        raise InputError(msg)
    return kind


# --- shared --------------------------------------------------------------------------------------


def _numbers(fields: Sequence[str], name: str, at: str, where: Path | str) -> np.ndarray:
    try:
        return np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError:
        shown = ",".join(fields)
        msg = f"{where}: landmark {name.strip()!r:.80} ({at}): x,y,z must be numbers in mm, got {shown!r:.80}"
        raise InputError(msg) from None


def _point(name: str, xyz: np.ndarray, kind: str, at: str, frame: str) -> MarkedPoint:
    """The point in LPS: a RAS position is mapped with ``RAS_TO_LPS``."""
    lps = RAS_TO_LPS @ xyz if frame == RAS else xyz
    return MarkedPoint(name.strip(), (float(lps[0]), float(lps[1]), float(lps[2])), kind, at, frame)


def _check_points(points: Sequence[MarkedPoint], where: Path | str) -> None:
    if not points:
        msg = f"{where}: holds no landmarks"
        raise InputError(msg)
    if len(points) > MAX_LANDMARKS:
        msg = f"{where}: {len(points)} landmarks; at most {MAX_LANDMARKS} (is it a curve or a point cloud?)"
        raise InputError(msg)
    seen: dict[str, MarkedPoint] = {}
    for p in points:
        _check_name(p, where)
        if not all(math.isfinite(v) for v in p.position_mm):
            msg = f"{where}: landmark {p.name!r} ({p.where}): position {p.position_mm} is not finite"
            raise InputError(msg)
        first = seen.setdefault(p.name.casefold(), p)
        if first is not p:
            msg = f"{where}: landmark {p.name!r} ({p.where}): the name is taken by {first.name!r} ({first.where})"
            raise InputError(msg)


def _check_name(p: MarkedPoint, where: Path | str) -> None:
    if not p.name:
        msg = f"{where}: the landmark at {p.where} has no name"
        raise InputError(msg)
    if len(p.name) > MAX_NAME_CHARS:
        msg = f"{where}: landmark {p.name[:24]!r}... ({p.where}): name of {len(p.name)} characters; at most {MAX_NAME_CHARS}"
        raise InputError(msg)
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in p.name):
        msg = f"{where}: landmark {p.name!r} ({p.where}): the name holds a control character"
        raise InputError(msg)


# --- against the scan ----------------------------------------------------------------------------


def distance_outside_mm(geometry: Geometry, points_mm: Any) -> np.ndarray:
    """(N,) distance in mm from each LPS point (N, 3) to the volume's box (voxel edges, along
    the grid axes); 0 inside."""
    points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    axes = geometry.direction_matrix * spacing  # columns: one voxel step along each grid axis
    along_mm = np.linalg.solve(axes, (points - np.asarray(geometry.origin)).T).T * spacing
    low = -0.5 * spacing
    high = (np.asarray(geometry.size) - 0.5) * spacing
    excess = np.maximum(np.maximum(low - along_mm, along_mm - high), 0.0)
    distances: np.ndarray = np.linalg.norm(excess, axis=1)
    return distances


def check_in_scan(marks: LandmarkFile, geometry: Geometry, where: Path | str) -> None:
    """Refuse a landmark more than ``SCAN_MARGIN_MM`` outside the CT. The common mistake, a
    RAS file read as LPS (or the reverse), mirrors x and y: the message says when the other
    reading would put the landmark inside."""
    positions = np.array([p.position_mm for p in marks.points])
    outside = distance_outside_mm(geometry, positions)
    bad = np.flatnonzero(outside > SCAN_MARGIN_MM)
    if bad.size == 0:
        return
    p = marks.points[int(bad[0])]
    other = RAS if p.file_frame == LPS else LPS
    mirrored_inside = distance_outside_mm(geometry, RAS_TO_LPS @ positions[bad[0]])[0] <= SCAN_MARGIN_MM
    if mirrored_inside:
        hint = f"is the file {other}? (read as {other} it would lie inside)"
    elif p.file_frame == LPS:
        hint = "is the file RAS, or were the landmarks marked on another scan?"
    else:
        hint = "were the landmarks marked on another scan?"
    count = f" ({bad.size} of {len(marks.points)} landmarks are)" if bad.size > 1 else ""
    x, y, z = p.position_mm
    msg = (
        f"{where}: landmark {p.name!r} ({p.where}) at ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS lies "
        f"{outside[bad[0]]:.0f} mm outside the scan{count}: {hint}"
    )
    raise InputError(msg)
