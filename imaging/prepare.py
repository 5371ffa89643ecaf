"""CT to a headset-ready patient-model folder: the ``scrubin prepare`` pipeline.

Stages: load and check -> segment (skin, bone, label map) -> iso-surfaces -> share the
triangle budget -> smooth and decimate (two threads) -> GLB + PLY/STL + manifest.
The folder is written next to its destination and moved into place only when complete,
so a failed run never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imaging import label_table, segment
from imaging.dicom_series import SeriesChoice
from imaging.errors import InputError, SegmentationError
from imaging.field import Field, coarsen_in_plane
from imaging.gltf import write_glb
from imaging.landmarks import LandmarkFile, check_in_scan, read_landmarks
from imaging.load import DEFAULT_MEMORY_BUDGET_BYTES, LABEL_MAP, load_ct
from imaging.manifest import (
    GLB_NAME,
    MESH_DIR,
    Landmark,
    ManifestData,
    MeshEntry,
    build_manifest,
    write_manifest,
)
from imaging.memory import run_within_budget
from imaging.mesh import RGBA
from imaging.mesh_io import write_ply, write_stl
from imaging.output_folder import check_destination, remove_staging_left_by, replace_folder, staging_folder
from imaging.surface import RawSurface, finish_surface, raw_surface
from imaging.volume import Volume

log = logging.getLogger(__name__)

DEFAULT_TRIANGLE_BUDGET = 200_000
MIN_TRIANGLES_PER_MESH = 2_000
MAX_TRIANGLE_BUDGET = 10_000_000  # ~350 MB of GLB + PLY + STL; far beyond what a headset renders
COARSEN_RATIO = 2.0  # iso-surface triangles over budget share beyond which we mesh coarser
KNOWN_SEGMENTS = ("skin", "bone")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class PrepareOptions:
    segments: tuple[str, ...] = KNOWN_SEGMENTS
    triangle_budget: int = DEFAULT_TRIANGLE_BUDGET
    series_uid: str | None = None
    labels_path: Path | None = None
    label_names_path: Path | None = None
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
    force: bool = False  # replace an --out model even when its files no longer match its manifest
    allowed_modalities: tuple[str, ...] = ()  # DICOM modalities besides CT (--allow-modality)
    landmarks_path: Path | None = None  # anatomical landmarks marked on the CT (imaging.landmarks)

    def __post_init__(self) -> None:
        unknown = [s for s in self.segments if s not in KNOWN_SEGMENTS]
        if unknown:
            msg = f"--segments: unknown segment {unknown[0]!r} (choose from {', '.join(KNOWN_SEGMENTS)})"
            raise InputError(msg)
        if self.triangle_budget < MIN_TRIANGLES_PER_MESH:
            msg = f"--budget: at least {MIN_TRIANGLES_PER_MESH} triangles, got {self.triangle_budget}"
            raise InputError(msg)
        if self.triangle_budget > MAX_TRIANGLE_BUDGET:
            msg = f"--budget: at most {MAX_TRIANGLE_BUDGET:,} triangles, got {self.triangle_budget}"
            raise InputError(msg)
        bad = [m for m in self.allowed_modalities if not re.fullmatch(r"[A-Z0-9_]{1,16}", m)]
        if bad:
            msg = f"--allow-modality: {bad[0]!r} is not a DICOM modality code (such as OT, MR or PT)"
            raise InputError(msg)
        if self.memory_budget_bytes <= 0:
            msg = f"--max-memory-gb: must be above 0, got {self.memory_budget_bytes} bytes"
            raise InputError(msg)

    def inputs(self, source: Path | None = None) -> tuple[Path, ...]:
        """Every file or folder the run reads: ``--out`` must never be, hold or sit inside one."""
        given = (source, self.labels_path, self.label_names_path, self.landmarks_path)
        return tuple(p for p in given if p is not None)


@dataclass(frozen=True)
class PreparedModel:
    folder: Path
    manifest: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    name: str
    source: str
    label: int | None
    color: RGBA
    field: Field


class _Timer:
    def __init__(self, progress: Progress | None) -> None:
        self.timings: dict[str, float] = {}
        self._progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._progress:
            self._progress(name)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def prepare_path(
    source: Path,
    out: Path,
    options: PrepareOptions,
    progress: Progress | None = None,
    on_series: SeriesChoice | None = None,
) -> PreparedModel:
    """Runs in a child process held under ``options.memory_budget_bytes`` (``imaging.memory``):
    whatever a header declared, a volume that needs more is stopped with one line, and the
    staging folder it was writing beside ``out`` is removed."""
    return run_within_budget(
        source,
        options.memory_budget_bytes,
        lambda calls: _prepare_path(source, out, options, calls["progress"], calls["on_series"]),
        {"progress": progress, "on_series": on_series},
        cleanup=lambda pid: remove_staging_left_by(out, pid),
    )


def _prepare_path(
    source: Path,
    out: Path,
    options: PrepareOptions,
    progress: Progress | None,
    on_series: SeriesChoice | None,
) -> PreparedModel:
    check_destination(out, options.inputs(source), force=options.force)  # before minutes of work
    names = label_table.load_label_table(options.label_names_path) if options.label_names_path else None
    marks = read_landmarks(options.landmarks_path) if options.landmarks_path else None
    timer = _Timer(progress)
    with timer.stage("load"):
        volume = load_ct(
            source,
            series_uid=options.series_uid,
            memory_budget_bytes=options.memory_budget_bytes,
            on_series=on_series,
            allowed_modalities=options.allowed_modalities,
        )
        labels = (
            load_ct(options.labels_path, memory_budget_bytes=options.memory_budget_bytes, kind=LABEL_MAP)
            if options.labels_path
            else None
        )
    study_id = volume.source.study_key or "study-unknown"
    return prepare_volume(
        volume,
        out,
        options,
        study_id=study_id,
        labels=labels,
        label_names=names,
        landmarks=marks,
        timer=timer,
        where=source,
        inputs=(source,),
    )


def prepare_phantom(out: Path, options: PrepareOptions, progress: Progress | None = None) -> PreparedModel:
    """The built-in phantom with its own fiducials and target, unless ``options.landmarks_path``
    gives landmarks: those replace them."""
    from imaging import phantom

    marks = read_landmarks(options.landmarks_path) if options.landmarks_path else None
    timer = _Timer(progress)
    with timer.stage("synthesize"):
        ph = phantom.make_phantom()
    labels = Volume(ph.labels, ph.volume.geometry, ph.volume.source)
    names = {k: (v, phantom.LABEL_COLORS[k]) for k, v in phantom.LABELS.items()}
    fiducials = [Landmark(n, p) for n, p in ph.fiducials_mm.items()]
    return prepare_volume(
        ph.volume,
        out,
        options,
        study_id=phantom.SYNTHETIC_STUDY_ID,
        labels=labels,
        label_names=names,
        fiducials=fiducials,
        targets=[Landmark("lesion", ph.target_mm)],
        landmarks=marks,
        timer=timer,
        where="synthetic phantom",
    )


def prepare_volume(
    volume: Volume,
    out: Path,
    options: PrepareOptions,
    *,
    study_id: str,
    labels: Volume | None = None,
    label_names: dict[int, tuple[str, RGBA]] | None = None,
    fiducials: list[Landmark] | None = None,
    targets: list[Landmark] | None = None,
    landmarks: LandmarkFile | None = None,
    timer: _Timer | None = None,
    where: Path | str = "volume",
    inputs: Sequence[Path] = (),
) -> PreparedModel:
    """Segment, mesh and write ``volume`` as a model folder at ``out``; ``inputs`` are the
    files or folders it came from, which ``out`` may never replace (see ``output_folder``).
    ``landmarks`` (read from ``options.landmarks_path`` when not given) must lie in the scan
    and replace ``fiducials`` and ``targets``."""
    timer = timer or _Timer(None)
    protected = (*inputs, *options.inputs())
    check_destination(out, protected, force=options.force)
    if label_names is None and options.label_names_path is not None:
        label_names = label_table.load_label_table(options.label_names_path)
    if landmarks is None and options.landmarks_path is not None:
        landmarks = read_landmarks(options.landmarks_path)
    if landmarks is not None:
        check_in_scan(landmarks, volume.geometry, options.landmarks_path or "landmarks")
        fiducials, targets = landmarks.fiducials, landmarks.targets
    with timer.stage("segment"):
        jobs = _segment(volume, options, labels, label_names or {}, where)
    with timer.stage("surface"):
        meshes = _surfaces(jobs, options.triangle_budget)
    data = ManifestData(
        study_id=study_id,
        synthetic=volume.source.synthetic,
        volume=volume,
        meshes=meshes,
        triangle_budget=options.triangle_budget,
        fiducials=fiducials or [],
        targets=targets or [],
        landmark_source=landmarks.source() if landmarks is not None else None,
        timings_s=timer.timings,
    )
    with timer.stage("write"):
        manifest = _write_folder(data, out, protected, options.force)
    log.info("patient model %s written in %.2f s", study_id, sum(timer.timings.values()))
    return PreparedModel(out, manifest, dict(timer.timings))


def _segment(
    volume: Volume,
    options: PrepareOptions,
    labels: Volume | None,
    names: dict[int, tuple[str, RGBA]],
    where: Path | str,
) -> list[_Job]:
    jobs = []
    if "skin" in options.segments:
        jobs.append(_Job("skin", "skin", None, label_table.SKIN_COLOR, segment.skin_field(volume, where)))
    if "bone" in options.segments:
        jobs.append(_Job("bone", "bone", None, label_table.BONE_COLOR, segment.bone_field(volume, where)))
    if labels is not None:
        _check_overlap(volume, labels, options.labels_path or where)
        for label, fld in segment.label_fields(labels, options.labels_path or where):
            name, color = names.get(label, (f"label_{label}", label_table.default_color(label)))
            jobs.append(_Job(name, "label", label, color, fld))
    taken: set[str] = set()
    for job in jobs:
        if job.name in taken:
            msg = f"{options.label_names_path or where}: two meshes would both be named {job.name!r}"
            raise InputError(msg)
        taken.add(job.name)
    return jobs


def _check_overlap(volume: Volume, labels: Volume, where: Path | str) -> None:
    def corners(v: Volume) -> np.ndarray:
        size = np.asarray(v.geometry.size) - 1
        grid = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * size
        return v.geometry.index_to_lps(grid)

    a, b = corners(volume), corners(labels)
    if np.any(a.max(0) < b.min(0)) or np.any(b.max(0) < a.min(0)):
        msg = f"{where}: label map does not overlap the CT in patient space"
        raise InputError(msg)


def _surfaces(jobs: list[_Job], budget: int) -> list[MeshEntry]:
    """Iso-surfaces first, then the budget shared by raw triangle count (a proxy for area),
    then smoothing and decimation of each mesh on two threads (the engines release the GIL)."""
    raws = [raw_surface(job.field) for job in jobs]
    empty = [job.name for job, r in zip(jobs, raws, strict=True) if r.n_triangles == 0]
    if empty:
        msg = f"{empty[0]}: segmentation produced no surface"
        raise SegmentationError(msg)
    shares = share_budget([r.n_triangles for r in raws], budget)
    fields = [job.field for job in jobs]
    for i, share in enumerate(shares):
        fields[i], raws[i] = _coarsen_to_budget(fields[i], raws[i], share)
    work = [(r, f.geometry, j.name, j.color, s) for r, f, j, s in zip(raws, fields, jobs, shares, strict=True)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        meshes = list(pool.map(lambda a: finish_surface(*a), work))
    return [MeshEntry(m, j.source, j.label) for m, j in zip(meshes, jobs, strict=True)]


def _coarsen_to_budget(fld: Field, raw: RawSurface, share: int) -> tuple[Field, RawSurface]:
    """Mesh on a coarser grid when the iso-surface has far more triangles than its share.

    Decimating 656k triangles to 200k took ~1 s where meshing at 2x2 coarser in-plane
    resolution took 0.05 s, for a surface distance of 0.20 instead of 0.18 mm to the
    full-resolution surface (bti_demohead skin), so coarsen while over ``COARSEN_RATIO``.
    """
    while raw.n_triangles > COARSEN_RATIO * share:
        coarse = coarsen_in_plane(fld)
        if coarse is None:
            break
        coarse_raw = raw_surface(coarse)
        if coarse_raw.n_triangles < share // 2:  # too coarse for the budget: keep the finer one
            break
        fld, raw = coarse, coarse_raw
    return fld, raw


def share_budget(raw_triangles: list[int], budget: int) -> list[int]:
    """Split ``budget`` in proportion to each mesh's raw triangle count (a proxy for its area),
    with a floor so that small structures keep their shape; the sum never exceeds ``budget``
    unless the floors alone do (then each mesh gets an equal share)."""
    n = len(raw_triangles)
    floor = min(MIN_TRIANGLES_PER_MESH, budget // max(n, 1))
    counts = np.maximum(np.asarray(raw_triangles, dtype=np.float64), 1.0)
    shares = np.full(n, floor, dtype=np.int64)
    remaining = budget - floor * n
    if remaining > 0:
        shares += np.floor(remaining * counts / counts.sum()).astype(np.int64)
    return [int(s) for s in shares]


def _write_folder(data: ManifestData, out: Path, inputs: Sequence[Path], force: bool) -> dict[str, Any]:
    with staging_folder(out) as staging:
        (staging / MESH_DIR).mkdir()
        meshes = [entry.mesh for entry in data.meshes]
        write_glb(
            meshes,
            staging / GLB_NAME,
            scene_name=data.study_id,
            extras={"frame": "glTF from patient LPS", "synthetic": data.synthetic},
        )
        for mesh in meshes:
            write_ply(mesh, staging / MESH_DIR / f"{mesh.name}.ply")
            write_stl(mesh, staging / MESH_DIR / f"{mesh.name}.stl")
        manifest = build_manifest(data, staging)
        write_manifest(manifest, staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the model is meant to be shared
        replace_folder(staging, out, inputs, force=force)
    return manifest
