"""An outside corpus for ``scrubin prepare``: files third-party packages ship, plus variants.

Sources, all generated at test time in a temporary folder (nothing is copied into the repo):
- every DICOM file that pydicom and pydicom-data ship, and nibabel's two: each alone in a
  folder, and each stacked into a small series (copies moved along the slice normal), the way
  a user would hand a folder of them to ``prepare``;
- every NIfTI/Analyze/MINC/MGH file that nibabel ships, given as is;
- nibabel's volumes rewritten as NRRD by pynrrd (raw and gzip; pynrrd ships no test files) and
  as MetaImage;
- hand-made variants of a small head-like CT in each format: the good one (must give a model)
  and one per defect of issue 15 (must be refused).

``run_case`` runs ``scrubin prepare`` on one case in a fresh process with a time and an
address-space bound and ``classify`` sorts the outcome into model / clean refusal / anything
else. tests/test_imaging_corpus.py runs a sample in CI; bench/corpus_prepare.py runs all of it
and writes the table in docs/reliability.md.
"""

from __future__ import annotations

import gzip
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dicom_factory import head_like_volume, write_series

REPO = Path(__file__).resolve().parents[1]
MODEL, REFUSE, EITHER = "model", "refuse", "either"  # what a case must give
MODEL_MADE, REFUSED, OTHER = "model", "clean refusal", "anything else"  # what it gave
SKIN_ONLY = ("--segments", "skin")  # the strict run: an empty bone mask cannot rescue a box model
CASE_TIMEOUT_S = 180.0
CASE_ADDRESS_SPACE = 12 * 1024**3  # the run's own bound; the budget below is scrubin's
CASE_MEMORY_GB = "3"
CT_SHAPE = (24, 64, 64)  # z, y, x of the hand-made CT: 64 x 64 x 48 mm at 1 x 1 x 2 mm
CT_SPACING = (1.0, 1.0, 2.0)  # x, y, z mm


@dataclass(frozen=True)
class CorpusCase:
    name: str  # "group/what"
    source: str  # "pydicom", "pydicom-data", "nibabel", "pynrrd", "hand-made", "real"
    expect: str  # MODEL, REFUSE or EITHER
    build: Callable[[Path], Path]  # writes the input under the folder given, returns its path
    args: tuple[str, ...] = SKIN_ONLY


@dataclass(frozen=True)
class Outcome:
    case: CorpusCase
    kind: str  # MODEL_MADE, REFUSED or OTHER
    returncode: int
    stderr: str
    seconds: float
    peak_rss_mib: float
    stdout: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def wrong_model(self) -> bool:
        return self.kind == MODEL_MADE and self.case.expect == REFUSE

    @property
    def missing_model(self) -> bool:
        return self.kind != MODEL_MADE and self.case.expect == MODEL


# ------------------------------------------------------------------ running and classifying
def classify(returncode: int, stdout: str, stderr: str, out: Path) -> str:
    """model: exit 0 and a manifest; clean refusal: exit 2, one stderr line 'error: ...', no
    traceback, no folder written; anything else otherwise."""
    if returncode == 0 and (out / "manifest.json").is_file():
        return MODEL_MADE
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    clean = len(lines) == 1 and lines[0].startswith("error: ")
    if returncode == 2 and clean and "Traceback" not in stdout + stderr and not out.exists():
        return REFUSED
    return OTHER


# ``python -c PEAK_WRAPPER ARGS`` runs ``scrubin ARGS`` and writes its peak resident memory (KiB)
# to the descriptor named by SCRUBIN_PEAK_FD: the CLI process's own high-water mark since exec
# (VmHWM) or its forked children's (RUSAGE_CHILDREN), whichever is larger. wait4's ru_maxrss of
# the run would also count the launching process's memory at exec (vfork), not the run's own.
PEAK_WRAPPER = """
import os, resource, runpy, sys
def report():
    with open('/proc/self/status') as status:
        hwm = next((int(ln.split()[1]) for ln in status if ln.startswith('VmHWM:')), 0)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    os.write(int(os.environ['SCRUBIN_PEAK_FD']), f'{max(hwm, kids)}'.encode())
sys.argv = ['scrubin', *sys.argv[1:]]
try:
    runpy.run_module('scrubin.cli', run_name='__main__', alter_sys=True)
finally:
    report()
"""


def run_scrubin(
    args: list[str], *, cwd: Path = REPO, timeout_s: float = CASE_TIMEOUT_S
) -> tuple[int, str, str, float, float]:
    """``scrubin ARGS`` in a fresh process under ``CASE_ADDRESS_SPACE``:
    (exit code, stdout, stderr, seconds, peak resident MiB of the run)."""
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "COLUMNS": "200", "SCRUBIN_PEAK_FD": str(write_fd)}
    cmd = [sys.executable, "-c", PEAK_WRAPPER, *args]
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out_file, stderr=err_file, cwd=cwd, env=env, pass_fds=(write_fd,),
            preexec_fn=_bound_address_space,
        )  # fmt: skip
        os.close(write_fd)
        try:
            returncode = proc.wait(timeout=timeout_s)
            killed = False
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode, killed = proc.wait(), True
        seconds = time.perf_counter() - start
        with os.fdopen(read_fd, "rb") as peak_pipe:
            peak = peak_pipe.read().decode() or "0"
        out_file.seek(0)
        err_file.seek(0)
        out_text = out_file.read().decode("utf-8", "replace")
        err_text = err_file.read().decode("utf-8", "replace")
    if killed:
        err_text += f"\n(killed after {timeout_s:g} s)"
    return returncode, out_text, err_text, seconds, int(peak) / 1024.0


def run_case(case: CorpusCase, work: Path, *, timeout_s: float = CASE_TIMEOUT_S, repo: Path = REPO) -> Outcome:
    """Build the case under ``work`` and run ``scrubin prepare`` on it in a fresh process
    (the code of the checkout ``repo``: this one unless a benchmark compares another)."""
    folder = work / case.name.replace("/", "__")
    folder.mkdir(parents=True)
    source = case.build(folder / "in")
    out = folder / "model"
    args = ["prepare", str(source), "--out", str(out), "--max-memory-gb", CASE_MEMORY_GB, *case.args]
    returncode, out_text, err_text, seconds, peak = run_scrubin(args, cwd=repo, timeout_s=timeout_s)
    kind = classify(returncode, out_text, err_text, out)
    return Outcome(case, kind, returncode, err_text, seconds, peak, out_text)


def _bound_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CASE_ADDRESS_SPACE, CASE_ADDRESS_SPACE))


# ------------------------------------------------------------------ third-party files
def _site_packages_dir(module: str, *parts: str) -> Path | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    path = Path(mod.__file__).parent.joinpath(*parts)  # type: ignore[arg-type]
    return path if path.is_dir() else None


def third_party_dicom_files() -> list[tuple[str, Path]]:
    """(source, file) for every file that pydicom, pydicom-data and nibabel ship as DICOM test data."""
    found: list[tuple[str, Path]] = []
    for source, module, parts in (
        ("pydicom", "pydicom", ("data", "test_files")),
        ("pydicom-data", "data_store", ("data",)),
        ("nibabel", "nibabel", ("tests", "data")),
    ):
        root = _site_packages_dir(module, *parts)
        if root is None:
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and _looks_dicom(path, source):
                found.append((source, path))
    return found


def _looks_dicom(path: Path, source: str) -> bool:
    if path.suffix in (".json", ".txt", ".dump", ".icc", ".py", ".gz", ".rst"):
        return False
    if source == "nibabel":
        return path.suffix == ".dcm"
    return True  # pydicom's tests include extension-less and damaged files on purpose


_NIBABEL_IMAGES = (".nii", ".nii.gz", ".hdr", ".mgz", ".mnc", ".img")


def nibabel_image_files() -> list[Path]:
    root = _site_packages_dir("nibabel", "tests", "data")
    if root is None:
        return []
    return [p for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(_NIBABEL_IMAGES)]


def _modality(path: Path) -> str:
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's own test files are odd on purpose
            return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("Modality", "") or "")
    except Exception:  # a file pydicom cannot parse has no modality to speak of
        return ""


def _dicom_expect(path: Path) -> str:
    """A third-party CT slice may or may not make a model; anything else must be refused."""
    return EITHER if _modality(path) == "CT" else REFUSE


def _single(path: Path) -> Callable[[Path], Path]:
    def build(where: Path) -> Path:
        where.mkdir(parents=True)
        shutil.copy(path, where / path.name)
        return where

    return build


def _stacked(path: Path, n: int = 6) -> Callable[[Path], Path]:
    """A series of ``n`` copies of one file, moved along the slice normal (as if scanned)."""

    def build(where: Path) -> Path:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's own test files are odd on purpose
            return _stack(where)

    def _stack(where: Path) -> Path:
        import pydicom
        from pydicom.uid import generate_uid

        where.mkdir(parents=True)
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:  # unreadable for pydicom: stack the bytes as they are
            for k in range(n):
                shutil.copy(path, where / f"S{k:03d}.dcm")
            return where
        orientation = _floats(ds.get("ImageOrientationPatient"), 6) or [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        origin = _floats(ds.get("ImagePositionPatient"), 3) or [0.0, 0.0, 0.0]
        thickness = _floats(ds.get("SliceThickness"), 1)
        gap = thickness[0] if thickness and 0.1 < thickness[0] < 20 else 2.0
        normal = np.cross(orientation[:3], orientation[3:])
        series = generate_uid()
        for k in range(n):
            ds.ImagePositionPatient = [f"{v:.4f}" for v in np.asarray(origin) + k * gap * normal]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = k + 1
            try:
                ds.save_as(where / f"S{k:03d}.dcm")
            except Exception:  # pydicom cannot write it back: stack the bytes as they are
                shutil.copy(path, where / f"S{k:03d}.dcm")
        return where

    return build


def _floats(value: object, n: int) -> list[float] | None:
    try:
        numbers = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        try:
            numbers = [float(v) for v in value]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            return None
    return numbers if len(numbers) == n and np.all(np.isfinite(numbers)) else None


def _given(path: Path) -> Callable[[Path], Path]:
    def build(where: Path) -> Path:
        where.mkdir(parents=True)
        target = where / path.name
        shutil.copy(path, target)
        return target

    return build


def _nibabel_array(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray] | None:
    """(array [x, y, z], spacing, affine) of a nibabel image, 3D or the first volume of 4D."""
    import nibabel

    try:
        image = nibabel.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception:  # not an image nibabel reads
        return None
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim != 3:
        return None
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return data, zooms, np.asarray(image.affine)


def _converted(
    path: Path, suffix: str, write: Callable[[Path, np.ndarray, tuple[float, ...], np.ndarray], None]
) -> Callable[[Path], Path]:
    """A builder that rewrites nibabel's image ``path`` as ``<stem><suffix>`` with ``write``."""

    def build(where: Path) -> Path:
        where.mkdir(parents=True)
        loaded = _nibabel_array(path)
        assert loaded is not None, "only images nibabel reads are converted"
        target = where / f"{path.name.split('.')[0]}{suffix}"
        write(target, *loaded)
        return target

    return build


def _as_nrrd(path: Path, encoding: str) -> Callable[[Path], Path]:
    def write(target: Path, data: np.ndarray, _spacing: tuple[float, ...], affine: np.ndarray) -> None:
        import nrrd

        ras_to_lps = np.diag([-1.0, -1.0, 1.0])
        header = {
            "space": "left-posterior-superior",
            "space directions": (ras_to_lps @ affine[:3, :3]).T,
            "space origin": ras_to_lps @ affine[:3, 3],
            "encoding": encoding,
        }
        nrrd.write(str(target), np.ascontiguousarray(data), header)

    return _converted(path, ".nrrd", write)


def _as_mha(path: Path, compressed: bool) -> Callable[[Path], Path]:
    def write(target: Path, data: np.ndarray, spacing: tuple[float, ...], _affine: np.ndarray) -> None:
        target.write_bytes(mha_bytes(np.ascontiguousarray(data.transpose(2, 1, 0)), spacing, compressed=compressed))

    return _converted(path, ".mha", write)


# ------------------------------------------------------------------ writers for hand-made files
_MET_TYPES = {
    np.dtype(np.int16): "MET_SHORT",
    np.dtype(np.uint16): "MET_USHORT",
    np.dtype(np.uint8): "MET_UCHAR",
    np.dtype(np.int8): "MET_CHAR",
    np.dtype(np.int32): "MET_INT",
    np.dtype(np.float32): "MET_FLOAT",
    np.dtype(np.float64): "MET_DOUBLE",
}


def mha_bytes(
    voxels: np.ndarray,
    spacing: tuple[float, ...] = CT_SPACING,
    *,
    origin: str = "0 0 0",
    compressed: bool = False,
    channels: int = 1,
    dims: str | None = None,
    data: bytes | None = None,
) -> bytes:
    """A MetaImage file of ``voxels`` [z, y, x] (numpy order), little-endian."""
    voxels = voxels.astype(voxels.dtype.newbyteorder("="))  # native order: the table's keys
    raw = np.ascontiguousarray(voxels).astype(voxels.dtype.newbyteorder("<")).tobytes()
    body = zlib.compress(raw) if compressed else raw
    shape = voxels.shape[:3] if channels > 1 else voxels.shape
    header = [
        "ObjectType = Image",
        f"NDims = {len(shape)}",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        f"CompressedData = {compressed}",
    ]
    if compressed:
        header.append(f"CompressedDataSize = {len(body)}")
    header += [
        "TransformMatrix = " + " ".join("1" if i == j else "0" for i in range(len(shape)) for j in range(len(shape))),
        f"Offset = {origin}",
        f"ElementSpacing = {' '.join(f'{s:g}' for s in spacing[: len(shape)])}",
        f"DimSize = {dims or ' '.join(str(s) for s in reversed(shape))}",
    ]
    if channels > 1:
        header.append(f"ElementNumberOfChannels = {channels}")
    header += [f"ElementType = {_MET_TYPES[np.dtype(voxels.dtype)]}", "ElementDataFile = LOCAL"]
    return ("\n".join(header) + "\n").encode() + (body if data is None else data)


def write_nifti(
    path: Path,
    voxels: np.ndarray,
    spacing: tuple[float, float, float] = CT_SPACING,
    *,
    qform_only: bool = False,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    slope: float | None = None,
) -> Path:
    """A NIfTI-1 file of ``voxels`` [z, y, x] written by nibabel (an independent writer), then
    its raw header fields set as asked (nibabel would normalise a zero pixdim or a NaN)."""
    import nibabel

    image = nibabel.Nifti1Image(np.ascontiguousarray(voxels.transpose(2, 1, 0)), np.eye(4))
    image.header.set_qform(np.eye(4), code=1)
    image.header.set_sform(np.eye(4), code=0 if qform_only else 1)
    image.to_filename(str(path))
    _patch_nifti(path, spacing=spacing, origin=origin, slope=slope)
    return path


def _patch_nifti(
    path: Path, *, spacing: tuple[float, float, float], origin: tuple[float, float, float], slope: float | None
) -> None:
    import struct

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = bytearray(handle.read())
    struct.pack_into("<3f", raw, 80, *spacing)  # pixdim[1..3]
    struct.pack_into("<3f", raw, 268, *origin)  # qoffset_x, y, z
    for axis, row in enumerate((280, 296, 312)):  # srow_x, srow_y, srow_z
        struct.pack_into("<4f", raw, row, *[spacing[axis] if j == axis else 0.0 for j in range(3)], origin[axis])
    if slope is not None:
        struct.pack_into("<2f", raw, 112, slope, 0.0)  # scl_slope, scl_inter
    with opener(path, "wb") as handle:
        handle.write(bytes(raw))


def ct_volume(shape: tuple[int, int, int] = CT_SHAPE) -> np.ndarray:
    """The hand-made CT: head-like tissue and bone in air, HU, [z, y, x] int16."""
    return head_like_volume(shape)


def no_air_volume(shape: tuple[int, int, int] = CT_SHAPE) -> np.ndarray:
    """Tissue and bone everywhere: a scan cropped inside the body (no air at all)."""
    hu = head_like_volume(shape)
    hu[hu < -300] = 40
    return hu


# ------------------------------------------------------------------ hand-made DICOM variants
def _dicom(name: str, expect: str, damage: Callable[[list[Path]], None] | None = None, **kw: object) -> CorpusCase:
    def build(where: Path) -> Path:
        voxels = kw.pop("voxels", None)
        paths = write_series(where, ct_volume() if voxels is None else voxels, **kw)  # type: ignore[arg-type]
        if damage is not None:
            damage(paths)
        return where

    kw = dict(kw)
    return CorpusCase(f"hand-made/dicom_{name}", "hand-made", expect, build)


def _edit_each(edit: Callable[[object, int], None]) -> Callable[[list[Path]], None]:
    def damage(paths: list[Path]) -> None:
        import pydicom

        for k, path in enumerate(paths):
            ds = pydicom.dcmread(path)
            edit(ds, k)
            ds.save_as(path, enforce_file_format=True)

    return damage


def _set(**values: object) -> Callable[[object, int], None]:
    def edit(ds: object, _k: int) -> None:
        for key, value in values.items():
            setattr(ds, key, value)

    return edit


def _raw_ds(tag: int, value: str) -> Callable[[object, int], None]:
    """Write a DS text pydicom's validation would refuse (NaN, inf): as raw bytes."""

    def edit(ds: object, _k: int) -> None:
        from pydicom.dataelem import DataElement

        ds[tag] = DataElement(tag, "DS", value.encode())  # type: ignore[index]

    return edit


def _truncate_last(fraction: float) -> Callable[[list[Path]], None]:
    def damage(paths: list[Path]) -> None:
        data = paths[-1].read_bytes()
        pixel_bytes = CT_SHAPE[1] * CT_SHAPE[2] * 2
        paths[-1].write_bytes(data[: len(data) - int(pixel_bytes * fraction)])

    return damage


def _rgb(paths: list[Path]) -> None:
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        grey = np.clip(ds.pixel_array // 8, 0, 255).astype(np.uint8)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.repeat(grey[..., None], 3, axis=2).tobytes()
        ds.save_as(path, enforce_file_format=True)


def _relabel(modality: str, sop_class: str) -> Callable[[object, int], None]:
    def edit(ds: object, _k: int) -> None:
        ds.Modality = modality  # type: ignore[attr-defined]
        ds.SOPClassUID = sop_class  # type: ignore[attr-defined]
        ds.file_meta.MediaStorageSOPClassUID = sop_class  # type: ignore[attr-defined]

    return edit


MR_STORAGE, SC_STORAGE, US_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.6.1",
)
RESCALE_SLOPE, PIXEL_SPACING = 0x00281053, 0x00280030


def _nonuniform_spacing(ds: object, k: int) -> None:
    if k == 3:
        ds.PixelSpacing = ["0.5", "0.5"]  # type: ignore[attr-defined]


def _drop(keyword: str) -> Callable[[object, int], None]:
    def edit(ds: object, _k: int) -> None:
        delattr(ds, keyword)

    return edit


def hand_made_dicom() -> list[CorpusCase]:
    gap_400 = [(-50.0, -60.0, -20.0 + 400.0 * k) for k in range(CT_SHAPE[0])]
    return [
        _dicom("ct", MODEL),
        _dicom("ct_implicit_vr", MODEL, implicit_vr=True),
        _dicom("truncated_last_slice_half", REFUSE, _truncate_last(0.5)),
        _dicom("truncated_last_slice_bytes", REFUSE, _truncate_last(0.01)),
        _dicom("missing_pixel_spacing", REFUSE, _edit_each(_drop("PixelSpacing"))),
        _dicom("inconsistent_pixel_spacing", REFUSE, _edit_each(_nonuniform_spacing)),
        _dicom("zero_pixel_spacing", REFUSE, _edit_each(_set(PixelSpacing=["0", "0"]))),
        _dicom("huge_pixel_spacing", REFUSE, _edit_each(_set(PixelSpacing=["1e30", "1e30"]))),
        _dicom("tiny_pixel_spacing", REFUSE, _edit_each(_set(PixelSpacing=["0.001", "0.001"]))),
        _dicom("slope_zero", REFUSE, _edit_each(_set(RescaleSlope="0"))),
        _dicom("slope_nan", REFUSE, _edit_each(_raw_ds(RESCALE_SLOPE, "NaN"))),
        _dicom("slope_inf", REFUSE, _edit_each(_raw_ds(RESCALE_SLOPE, "inf"))),
        _dicom("slice_gap_400mm", REFUSE, positions=gap_400),
        _dicom("no_air", REFUSE, voxels=no_air_volume()),
        _dicom("modality_mr", REFUSE, _edit_each(_relabel("MR", MR_STORAGE))),
        _dicom("modality_sc", REFUSE, _edit_each(_relabel("OT", SC_STORAGE))),
        _dicom("modality_us", REFUSE, _edit_each(_relabel("US", US_STORAGE))),
        _dicom("rgb", REFUSE, _rgb),
        _dicom("zero_orientation", REFUSE, _edit_each(_set(ImageOrientationPatient=["0"] * 6))),
        _dicom("single_slice", REFUSE, voxels=ct_volume()[:1]),
    ]


# ------------------------------------------------------------------ hand-made NIfTI / MHA / NRRD
def _file_case(name: str, expect: str, write: Callable[[Path], Path], args: tuple[str, ...] = SKIN_ONLY) -> CorpusCase:
    def build(where: Path) -> Path:
        where.mkdir(parents=True)
        return write(where)

    return CorpusCase(f"hand-made/{name}", "hand-made", expect, build, args)


def _nan_block(dtype: type) -> np.ndarray:
    voxels = ct_volume().astype(dtype)
    voxels[5:8, 20:30, 20:30] = np.nan
    return voxels


def _corrupt_zlib(where: Path) -> Path:
    data = bytearray(mha_bytes(ct_volume(), compressed=True))
    body = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    for i in range(body + 40, len(data) - 8, 97):
        data[i] ^= 0x5A
    (where / "corrupt_zlib.mha").write_bytes(bytes(data))
    return where / "corrupt_zlib.mha"


def _truncated_zlib(where: Path) -> Path:
    data = mha_bytes(ct_volume(), compressed=True)
    (where / "truncated_zlib.mha").write_bytes(data[: len(data) - len(data) // 3])
    return where / "truncated_zlib.mha"


def _no_spacing(where: Path) -> Path:
    path = where / "no_spacing.mha"
    path.write_bytes(mha_bytes(ct_volume()).replace(b"ElementSpacing = 1 1 2\n", b""))
    return path


def _corrupt_gzip_nrrd(where: Path) -> Path:
    path = _nrrd("corrupt_gzip", ct_volume(), encoding="gzip")(where)
    data = bytearray(path.read_bytes())
    body = data.index(b"\n\n") + 2
    for i in range(body + 40, len(data) - 8, 97):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def _bomb(where: Path) -> Path:
    """512 x 512 x 400 int16 of air, zlib: a few hundred KB that inflate to 200 MB, and to
    several GB of working memory (more than --max-memory-gb 2 allows)."""
    voxels = np.full((400, 512, 512), -1000, np.int16)
    path = where / "bomb.mha"
    path.write_bytes(mha_bytes(voxels, compressed=True))
    return path


def _nrrd(
    name: str, voxels: np.ndarray, spacing: tuple[float, ...] = CT_SPACING, **kw: object
) -> Callable[[Path], Path]:
    def write(where: Path) -> Path:
        import nrrd

        header: dict[str, object] = {
            "space": "left-posterior-superior",
            "space directions": np.diag(spacing),
            "space origin": np.asarray(kw.get("origin", (0.0, 0.0, 0.0)), dtype=float),
            "encoding": kw.get("encoding", "raw"),
        }
        path = where / f"{name}.nrrd"
        nrrd.write(str(path), np.ascontiguousarray(voxels.transpose(2, 1, 0)), header)
        return path

    return write


def _nifti(name: str, voxels: np.ndarray, **kw: object) -> Callable[[Path], Path]:
    def write(where: Path) -> Path:
        return write_nifti(where / f"{name}.nii.gz", voxels, **kw)  # type: ignore[arg-type]

    return write


def _mha(name: str, voxels: np.ndarray, **kw: object) -> Callable[[Path], Path]:
    def write(where: Path) -> Path:
        path = where / f"{name}.mha"
        path.write_bytes(mha_bytes(voxels, **kw))  # type: ignore[arg-type]
        return path

    return write


def hand_made_files() -> list[CorpusCase]:
    ct = ct_volume()
    rgb = np.repeat(np.clip((ct + 1024) // 8, 0, 255).astype(np.uint8)[..., None], 3, axis=3)
    return [
        _file_case("nifti_ct", MODEL, _nifti("ct", ct)),
        _file_case("nifti_ct_float32", MODEL, _nifti("ct", ct.astype(np.float32))),
        _file_case("nifti_ct_slope_zero_means_unscaled", MODEL, _nifti("ct", ct, slope=0.0)),
        _file_case("nifti_pixdim_zero", REFUSE, _nifti("pixdim0", ct, spacing=(1.0, 1.0, 0.0), qform_only=True)),
        _file_case("nifti_nan_origin", REFUSE, _nifti("nan_origin", ct, origin=(float("nan"), 0.0, 0.0))),
        _file_case("nifti_nan_voxels", REFUSE, _nifti("nan_voxels", _nan_block(np.float32))),
        _file_case("nifti_slope_nan", REFUSE, _nifti("slope_nan", ct, slope=float("nan"))),
        _file_case("nifti_slope_inf", REFUSE, _nifti("slope_inf", ct, slope=float("inf"))),
        _file_case("nifti_slice_gap_400mm", REFUSE, _nifti("gap", ct, spacing=(1.0, 1.0, 400.0))),
        _file_case("nifti_huge_spacing", REFUSE, _nifti("huge", ct, spacing=(1e30, 1e30, 1e30))),
        _file_case("nifti_no_air", REFUSE, _nifti("no_air", no_air_volume())),
        _file_case("nifti_unscaled_ct", REFUSE, _nifti("unscaled", (ct.astype(np.int32) + 1024).astype(np.uint16))),
        _file_case("nifti_2d", REFUSE, _nifti("flat", ct[:1])),
        _file_case("mha_ct", MODEL, _mha("ct", ct)),
        _file_case("mha_ct_zlib", MODEL, _mha("ct", ct, compressed=True)),
        _file_case("mha_corrupt_zlib", REFUSE, _corrupt_zlib),
        _file_case("mha_truncated_zlib", REFUSE, _truncated_zlib),
        _file_case("mha_nan_origin", REFUSE, _mha("nan_origin", ct, origin="nan 0 0")),
        _file_case("mha_nan_voxels", REFUSE, _mha("nan_voxels", _nan_block(np.float32))),
        _file_case("mha_slice_gap_400mm", REFUSE, _mha("gap", ct, spacing=(1.0, 1.0, 400.0))),
        _file_case("mha_no_air", REFUSE, _mha("no_air", no_air_volume())),
        _file_case("mha_rgb", REFUSE, _mha("rgb", rgb, channels=3)),
        _file_case("mha_no_spacing", REFUSE, _no_spacing),
        _file_case("nrrd_corrupt_gzip", REFUSE, _corrupt_gzip_nrrd),
        _file_case("mha_zlib_bomb_over_budget", REFUSE, _bomb, (*SKIN_ONLY, "--max-memory-gb", "2")),
        _file_case("nrrd_ct", MODEL, _nrrd("ct", ct)),
        _file_case("nrrd_ct_gzip", MODEL, _nrrd("ct", ct, encoding="gzip")),
        _file_case("nrrd_nan_voxels", REFUSE, _nrrd("nan_voxels", _nan_block(np.float64))),
        _file_case("nrrd_nan_origin", REFUSE, _nrrd("nan_origin", ct, origin=(float("nan"), 0.0, 0.0))),
        _file_case("nrrd_slice_gap_400mm", REFUSE, _nrrd("gap", ct, spacing=(1.0, 1.0, 400.0))),
        _file_case("nrrd_no_air", REFUSE, _nrrd("no_air", no_air_volume())),
    ]


# ------------------------------------------------------------------ the corpus
def third_party_cases() -> list[CorpusCase]:
    cases = []
    for source, path in third_party_dicom_files():
        expect = _dicom_expect(path)
        stem = (
            path.relative_to(path.parents[1]).as_posix()
            if source == "pydicom" and "dicomdirtests" in path.parts
            else path.name
        )
        cases.append(CorpusCase(f"{source}/file/{stem}", source, expect, _single(path)))
        cases.append(CorpusCase(f"{source}/stack/{stem}", source, expect, _stacked(path)))
    for path in nibabel_image_files():
        cases.append(CorpusCase(f"nibabel/file/{path.name}", "nibabel", REFUSE, _given(path)))
        if path.name.endswith((".nii", ".nii.gz")) and _nibabel_array(path) is not None:
            for encoding in ("raw", "gzip"):
                cases.append(CorpusCase(f"pynrrd/{encoding}/{path.name}", "pynrrd", REFUSE, _as_nrrd(path, encoding)))
            cases.append(CorpusCase(f"nibabel-mha/{path.name}", "nibabel", REFUSE, _as_mha(path, compressed=True)))
    return cases


def real_cases(data_dir: Path | None) -> list[CorpusCase]:
    """The real CTs under SCRUBIN_DATA_DIR (read in place, never copied): each must give a model."""
    if data_dir is None:
        return []
    found = [
        "ct/bti_demohead_dicom",
        "ct/dicom2stl_head/ct_example.nii.gz",
        "ct/elastix_lung/3DCT_lung_baseline_small.mha",
        "ct/totalsegmentator_abdomen/example_ct.nii.gz",
        "ct/totalsegmentator_abdomen/dicom",
    ]
    cases = []
    for relative in found:
        path = data_dir / relative
        if path.exists():
            cases.append(CorpusCase(f"real/{relative}", "real", MODEL, lambda _w, p=path: p, ()))
    return cases


def corpus_cases(data_dir: Path | None = None) -> list[CorpusCase]:
    return hand_made_dicom() + hand_made_files() + third_party_cases() + real_cases(data_dir)


# One of each kind of source and defect: what CI runs (tests/test_imaging_corpus.py).
SAMPLE = (
    "hand-made/dicom_ct",
    "hand-made/dicom_truncated_last_slice_half",
    "hand-made/dicom_missing_pixel_spacing",
    "hand-made/dicom_inconsistent_pixel_spacing",
    "hand-made/dicom_slope_zero",
    "hand-made/dicom_slope_nan",
    "hand-made/dicom_slice_gap_400mm",
    "hand-made/dicom_no_air",
    "hand-made/dicom_modality_mr",
    "hand-made/dicom_modality_sc",
    "hand-made/dicom_rgb",
    "hand-made/nifti_ct",
    "hand-made/nifti_pixdim_zero",
    "hand-made/nifti_nan_origin",
    "hand-made/nifti_nan_voxels",
    "hand-made/nifti_huge_spacing",
    "hand-made/mha_corrupt_zlib",
    "hand-made/mha_zlib_bomb_over_budget",
    "hand-made/nrrd_ct_gzip",
    "hand-made/nrrd_no_air",
    "pydicom/stack/CT_small.dcm",
    "pydicom/stack/MR_small.dcm",
    "pydicom-data/stack/US1_UNCR.dcm",
    "pydicom-data/stack/SC_rgb.dcm",
    "pydicom/stack/rtdose_1frame.dcm",
    "pydicom/file/MR_truncated.dcm",
    "nibabel/file/anatomical.nii",
    "nibabel/file/example4d.nii.gz",
    "pynrrd/gzip/anatomical.nii",
    "nibabel-mha/standard.nii.gz",
    # pydicom warns (logging and warnings) while the headers are scanned: still one line
    "pydicom/file/SC_rgb_jpeg.dcm",
    "pydicom/stack/SC_rgb_jpeg.dcm",
    "pydicom-data/file/bad_sequence.dcm",
)


def sample_cases() -> list[CorpusCase]:
    by_name = {c.name: c for c in corpus_cases()}
    return [by_name[name] for name in SAMPLE if name in by_name]
