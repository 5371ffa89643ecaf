"""``scrubin prepare`` and ``scrubin series``: progress bar, summary table, no PHI printed
beyond what the operator already has on screen (UIDs only in ``series``)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from imaging.dicom_series import SeriesEntry
from imaging.errors import InputError

console = Console(highlight=False)
_STAGES = ("synthesize", "load", "segment", "surface", "write")


def run_prepare(
    *,
    input: Path | None,
    out: Path,
    phantom: bool,
    series: str | None,
    labels: Path | None,
    label_names: Path | None,
    segments: str,
    budget: int,
    max_memory_gb: float,
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
        triangle_budget=budget,
        series_uid=series,
        labels_path=labels,
        label_names_path=label_names,
        memory_budget_bytes=int(max_memory_gb * 1024**3),
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

        def announce(entries: list[SeriesEntry], used: SeriesEntry) -> None:
            _announce_series(input, entries, used, chosen_by_user=series is not None)  # type: ignore[arg-type]

        if phantom:
            result = prepare_phantom(out, options, progress)
        else:
            result = prepare_path(input, out, options, progress, announce)  # type: ignore[arg-type]
        bar.update(task, description="done", completed=len(stages))
    _summary(result.manifest, result.timings_s, out)


def _summary(manifest: dict, timings_s: dict[str, float], out: Path) -> None:  # type: ignore[type-arg]
    kind = "SYNTHETIC phantom" if manifest["synthetic"] else "study"
    table = Table(title=f"patient model {manifest['study_id']} ({kind}), {manifest['units']} in {manifest['frame']}")
    for column in ("mesh", "triangles", "vertices", "bounds min (mm)", "bounds max (mm)"):
        table.add_column(column, justify="right" if column in ("triangles", "vertices") else "left")
    for mesh in manifest["meshes"]:
        lo, hi = mesh["bounds_mm"]
        table.add_row(mesh["name"], f"{mesh['triangles']:,}", f"{mesh['vertices']:,}", _fmt(lo), _fmt(hi))
    total = sum(m["triangles"] for m in manifest["meshes"])
    table.add_row("[bold]total", f"[bold]{total:,}", "", "", f"budget {manifest['triangle_budget']:,}")
    console.print(table)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in timings_s.items())
    console.print(f"timings: {timings}")
    console.print(f"wrote {out}/model.glb, {out}/meshes/*.ply|stl, {out}/manifest.json")


def _fmt(v: list[float]) -> str:
    return "(" + ", ".join(f"{x:.1f}" for x in v) + ")"


def _announce_series(folder: Path, entries: list[SeriesEntry], used: SeriesEntry, *, chosen_by_user: bool) -> None:
    """With several series in the folder, say which one is used (the operator's terminal only)."""
    if len(entries) > 1:
        console.print(f"{len(entries)} DICOM series in {folder}:")
        for e in entries:
            mark = "->" if e is used else "  "
            console.print(f" {mark} {e.uid or '(blank UID)'}  {e.n_files} slices  {e.modality or '?'}", soft_wrap=True)
        if not chosen_by_user:
            console.print("using the largest; choose another with --series UID")


def run_series(folder: Path) -> None:
    from imaging.dicom_series import list_series

    if not folder.is_dir():
        msg = f"{folder}: not a folder"
        raise InputError(msg)
    entries = list_series(folder)
    if not entries:
        msg = f"{folder}: no DICOM image series found"
        raise InputError(msg)
    table = Table(title=f"DICOM series in {folder} (largest first; prepare takes the first unless --series)")
    table.add_column("series UID", overflow="fold")
    for column in ("slices", "modality", "size"):
        table.add_column(column)
    for e in entries:
        first = e.slices[0]
        table.add_row(
            e.uid or "(blank UID)", str(e.n_files), e.modality or "?", f"{first.columns}x{first.rows}x{e.n_files}"
        )
    console.print(table)
