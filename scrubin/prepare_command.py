"""``scrubin prepare`` and ``scrubin series``: options checked, progress bar, summary table.

No identifier is printed: series are named by their keyed pseudonym with safe descriptors
(modality, slices, size) and paths by their role (``<input>``, ``<out>``) unless the operator
asks for ``--show-paths``; every line goes through the command's redactor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from imaging.dicom_series import FolderScan, SeriesEntry
from imaging.errors import InputError
from scrubin.console import plain

console = Console(highlight=False)
_STAGES = ("synthesize", "load", "segment", "surface", "write")
MAX_MEMORY_GB = 1024.0  # a terabyte: a typo, not a workstation
Redact = Callable[[str], str]


def parse_budget(text: str) -> int:
    """``--budget`` as a whole number (the range is checked by ``PrepareOptions``)."""
    try:
        return int(text.strip())
    except ValueError:
        msg = f"--budget: must be a whole number of triangles, got {text!r}"
        raise InputError(msg) from None


def parse_memory_gb(text: str) -> int:
    """``--max-memory-gb`` in bytes: a finite number above 0 and at most ``MAX_MEMORY_GB``."""
    try:
        gb = float(text.strip())
    except ValueError:
        gb = math.nan
    if not (math.isfinite(gb) and gb > 0):
        msg = f"--max-memory-gb: must be a finite number of GB above 0, got {text!r}"
        raise InputError(msg)
    if gb > MAX_MEMORY_GB:
        msg = f"--max-memory-gb: at most {MAX_MEMORY_GB:g} GB, got {text!r}"
        raise InputError(msg)
    return int(gb * 1024**3)


def parse_series(text: str | None) -> str | None:
    if text is not None and not text.strip():
        msg = "--series: must name a series (a name shown by `scrubin series`, or a Series Instance UID)"
        raise InputError(msg)
    return text.strip() if text is not None else None


def run_prepare(
    *,
    input: Path | None,
    out: Path,
    phantom: bool,
    series: str | None,
    labels: Path | None,
    label_names: Path | None,
    segments: str,
    budget: str,
    max_memory_gb: str,
    force: bool = False,
    redact: Redact = str,
    allow_modality: tuple[str, ...] = (),
    landmarks: Path | None = None,
) -> None:
    from imaging.prepare import PrepareOptions, prepare_path, prepare_phantom

    if phantom == (input is not None):
        msg = "give either INPUT or --phantom (exactly one)"
        raise InputError(msg)
    chosen = tuple(s.strip() for s in segments.split(",") if s.strip() and s.strip() != "none")
    if not chosen and labels is None and not phantom:
        msg = "--segments none needs --labels: nothing to mesh"
        raise InputError(msg)
    options = PrepareOptions(
        segments=chosen,
        triangle_budget=parse_budget(budget),
        series_uid=parse_series(series),
        labels_path=labels,
        label_names_path=label_names,
        memory_budget_bytes=parse_memory_gb(max_memory_gb),
        force=force,
        allowed_modalities=tuple(m.strip().upper() for m in allow_modality),
        landmarks_path=landmarks,
    )
    stages = [s for s in _STAGES if s != ("load" if phantom else "synthesize")]
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("prepare", total=len(stages))

        def progress(stage: str) -> None:
            done = stages.index(stage) if stage in stages else 0
            bar.update(task, description=stage, completed=done)

        def announce(scan: FolderScan, used: SeriesEntry) -> None:
            _announce_series(redact(str(input)), scan, used, chosen_by_user=series is not None)

        if phantom or input is None:
            result = prepare_phantom(out, options, progress)
        else:
            result = prepare_path(input, out, options, progress, announce)
        bar.update(task, description="done", completed=len(stages))
    _summary(result.manifest, result.timings_s, redact(str(out)))


def _summary(manifest: dict[str, Any], timings_s: dict[str, float], out_shown: str) -> None:
    kind = "SYNTHETIC phantom" if manifest["synthetic"] else "study"
    table = Table(
        title=plain(f"patient model {manifest['study_id']} ({kind}), {manifest['units']} in {manifest['frame']}")
    )
    for column in ("mesh", "triangles", "vertices", "bounds min (mm)", "bounds max (mm)"):
        table.add_column(column, justify="right" if column in ("triangles", "vertices") else "left")
    for mesh in manifest["meshes"]:
        lo, hi = mesh["bounds_mm"]
        table.add_row(plain(mesh["name"]), f"{mesh['triangles']:,}", f"{mesh['vertices']:,}", _fmt(lo), _fmt(hi))
    total = sum(m["triangles"] for m in manifest["meshes"])
    table.add_row("[bold]total", f"[bold]{total:,}", "", "", f"budget {manifest['triangle_budget']:,}")
    console.print(table)
    _landmark_line(manifest["landmarks"])
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in timings_s.items())
    console.print(f"timings: {timings}")
    console.print(plain(f"wrote {out_shown}: model.glb, meshes/*.ply|stl, manifest.json"), soft_wrap=True)


def _landmark_line(marks: dict[str, Any]) -> None:
    """How many fiducials and targets the model carries, by name (anatomical names such as
    "nasion" that the surgeon will be asked to touch), and the frame a file was given in."""
    parts = []
    for plural, singular in (("fiducials", "fiducial"), ("targets", "target")):
        names = [m["name"] for m in marks[plural]]
        listed = f" ({', '.join(names)})" if names else ""
        parts.append(f"{len(names)} {singular if len(names) == 1 else plural}{listed}")
    line = f"landmarks: {', '.join(parts)}"
    source = marks.get("from")
    if source:
        frame = source["coordinate_system"]
        line += f"; read from {source['format']} in {frame}" + (", converted to LPS" if "RAS" in frame else "")
    console.print(plain(line), soft_wrap=True)


def _fmt(v: list[float]) -> str:
    return "(" + ", ".join(f"{x:.1f}" for x in v) + ")"


def _size(entry: SeriesEntry) -> str:
    first = entry.slices[0]
    return f"{first.columns}x{first.rows}"


def _announce_series(folder_shown: str, scan: FolderScan, used: SeriesEntry, *, chosen_by_user: bool) -> None:
    """With several series in the folder, say which one is used, by pseudonym and descriptors."""
    entries = scan.series
    if scan.note():
        console.print(plain(f"note: {scan.note()}"), soft_wrap=True)
    if len(entries) > 1:
        console.print(plain(f"{len(entries)} DICOM series in {folder_shown}:"), soft_wrap=True)
        for e in entries:
            mark = "->" if e is used else "  "
            line = f" {mark} {e.name}  {e.modality or '?'}  {e.n_files} slices  {_size(e)}"
            console.print(plain(line), soft_wrap=True)
        if not chosen_by_user:
            console.print("using the largest; choose another with --series NAME (names from `scrubin series`)")


def run_series(folder: Path, redact: Redact = str) -> None:
    from imaging.dicom_series import choose_series, scan_folder

    if not folder.is_dir():
        msg = f"{folder}: not a folder"
        raise InputError(msg)
    scan = scan_folder(folder)
    choose_series(folder, scan, None)  # refuses a folder without an image series, naming what it skipped
    table = Table(title=plain(f"DICOM series in {redact(str(folder))}, largest first"))
    for column in ("series", "modality", "slices", "size"):
        table.add_column(column, no_wrap=column == "series")
    for e in scan.series:
        table.add_row(e.name, plain(e.modality or "?"), str(e.n_files), f"{_size(e)}x{e.n_files}")
    console.print(table)
    if scan.note():
        console.print(plain(f"note: {scan.note()}"), soft_wrap=True)
    console.print("prepare takes the largest; choose another with --series NAME")
