"""What a file's own header declares, read from its bytes: the fields ITK's readers normalise.

ITK reads a NIfTI pixdim of 0 as 1 mm, a NaN qoffset or MetaImage Offset as 0, a non-finite
scl_slope as "no scaling", a NIfTI without qform or sform as an identity orientation, and NaN
voxels of a float NIfTI as numbers. None of that is visible in the image it returns, so these
fields are read here from the file and refused with the field's name (``raw_field_problem``),
and the raw voxels of a float NIfTI are scanned for NaN/inf (``nifti_nonfinite_voxels``).

Parsers take whatever bytes they are given: each returns None for a layout it does not
recognise, and the verdict is then ITK's.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NIFTI1_SIZE, NIFTI2_SIZE = 348, 540
NIFTI_FLOAT_TYPES: dict[int, np.dtype[Any]] = {
    16: np.dtype(np.float32),
    64: np.dtype(np.float64),
}  # NIfTI datatype codes
SCAN_CHUNK_BYTES = 1 << 23  # raw voxels are scanned 8 MiB at a time


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1 or NIfTI-2 header that decide geometry, scaling and data size."""

    byte_order: str  # "<" or ">"
    dims: tuple[int, ...]  # dim[1..dim[0]]
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]  # pixdim[1..3] (x, y, z voxel size)
    vox_offset: float
    scl_slope: float
    scl_inter: float
    qform_code: int
    sform_code: int
    quatern: tuple[float, ...]  # quatern_b, c, d, qoffset_x, y, z
    srow: tuple[float, ...]  # srow_x, srow_y, srow_z (12 values)

    @property
    def n_voxels(self) -> int:
        return int(np.prod(np.asarray(self.dims, dtype=np.int64)))


def read_nifti_header(path: Path) -> NiftiHeader | None:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read(NIFTI2_SIZE)
    except (OSError, EOFError, zlib.error):
        return None
    return parse_nifti_header(raw)


def parse_nifti_header(raw: bytes) -> NiftiHeader | None:
    """Either version, either byte order; None for anything else."""
    for order in "<>":
        if len(raw) >= NIFTI1_SIZE and struct.unpack_from(f"{order}i", raw, 0)[0] == NIFTI1_SIZE:
            return _nifti1(raw, order)
        if len(raw) >= NIFTI2_SIZE and struct.unpack_from(f"{order}i", raw, 0)[0] == NIFTI2_SIZE:
            return _nifti2(raw, order)
    return None


def _nifti1(raw: bytes, o: str) -> NiftiHeader | None:
    dim = struct.unpack_from(f"{o}8h", raw, 40)
    if not 1 <= dim[0] <= 7:
        return None
    return NiftiHeader(
        byte_order=o,
        dims=tuple(int(d) for d in dim[1 : dim[0] + 1]),
        datatype=struct.unpack_from(f"{o}h", raw, 70)[0],
        bitpix=struct.unpack_from(f"{o}h", raw, 72)[0],
        pixdim=struct.unpack_from(f"{o}3f", raw, 80),
        vox_offset=struct.unpack_from(f"{o}f", raw, 108)[0],
        scl_slope=struct.unpack_from(f"{o}f", raw, 112)[0],
        scl_inter=struct.unpack_from(f"{o}f", raw, 116)[0],
        qform_code=struct.unpack_from(f"{o}h", raw, 252)[0],
        sform_code=struct.unpack_from(f"{o}h", raw, 254)[0],
        quatern=struct.unpack_from(f"{o}6f", raw, 256),
        srow=struct.unpack_from(f"{o}12f", raw, 280),
    )


def _nifti2(raw: bytes, o: str) -> NiftiHeader | None:
    dim = struct.unpack_from(f"{o}8q", raw, 16)
    if not 1 <= dim[0] <= 7:
        return None
    return NiftiHeader(
        byte_order=o,
        dims=tuple(int(d) for d in dim[1 : dim[0] + 1]),
        datatype=struct.unpack_from(f"{o}h", raw, 12)[0],
        bitpix=struct.unpack_from(f"{o}h", raw, 14)[0],
        pixdim=struct.unpack_from(f"{o}3d", raw, 112),
        vox_offset=float(struct.unpack_from(f"{o}q", raw, 168)[0]),
        scl_slope=struct.unpack_from(f"{o}d", raw, 176)[0],
        scl_inter=struct.unpack_from(f"{o}d", raw, 184)[0],
        qform_code=struct.unpack_from(f"{o}i", raw, 344)[0],
        sform_code=struct.unpack_from(f"{o}i", raw, 348)[0],
        quatern=struct.unpack_from(f"{o}6d", raw, 352),
        srow=struct.unpack_from(f"{o}12d", raw, 400),
    )


def _finite(values: tuple[float, ...]) -> bool:
    return all(math.isfinite(v) for v in values)


def nifti_field_problem(header: NiftiHeader) -> str | None:
    """The first header field that ITK would silently replace, named, or None."""
    spatial = header.pixdim[: min(3, len(header.dims))]
    if not _finite(spatial) or min(spatial) <= 0:
        return f"pixdim[1..3] {tuple(float(v) for v in spatial)}: a voxel size must be a positive number; refusing to guess one"
    if header.qform_code <= 0 and header.sform_code <= 0:
        return "qform_code and sform_code are both 0: the orientation in the patient is unknown; refusing to guess one"
    if header.qform_code > 0 and not _finite(header.quatern):
        return f"qform (quatern_b/c/d, qoffset_x/y/z) {tuple(header.quatern)}: not finite; refusing to guess an origin"
    if header.sform_code > 0 and not _finite(header.srow):
        return f"sform (srow_x/y/z) {tuple(header.srow)}: not finite; refusing to guess an origin"
    if not math.isfinite(header.scl_slope) or (header.scl_slope != 0 and not math.isfinite(header.scl_inter)):
        return f"scl_slope {header.scl_slope:g} / scl_inter {header.scl_inter:g}: not finite, so the values cannot be turned into HU"
    return None


def nifti_nonfinite_voxels(path: Path, header: NiftiHeader) -> int:
    """NaN/inf voxels in a float NIfTI's raw data (ITK returns them as numbers); 0 for integers."""
    native = NIFTI_FLOAT_TYPES.get(header.datatype)
    if native is None:
        return 0
    dtype = native.newbyteorder(">" if header.byte_order == ">" else "<")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    left = header.n_voxels * dtype.itemsize
    chunk = SCAN_CHUNK_BYTES - SCAN_CHUNK_BYTES % dtype.itemsize
    bad = 0
    with opener(path, "rb") as handle:
        handle.seek(max(int(header.vox_offset), NIFTI1_SIZE))
        while left > 0 and (block := handle.read(min(chunk, left))):
            usable = len(block) - len(block) % dtype.itemsize
            bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(block[:usable], dtype=dtype))))
            left -= len(block)
    return bad


# ------------------------------------------------------------------ MetaImage
_MET_LINE = re.compile(rb"^\s*(\w+)\s*=\s*(.*?)\s*$")
MAX_METAIMAGE_HEADER = 64 * 1024
_MET_ORIGIN_KEYS = ("Offset", "Origin", "Position")


def read_metaimage_header(path: Path) -> tuple[dict[str, str], int] | None:
    """(fields, byte offset of the data) of a MetaImage header, or None if it is not one we know."""
    with path.open("rb") as handle:
        head = handle.read(MAX_METAIMAGE_HEADER)
    fields: dict[str, str] = {}
    end = 0
    for line in head.splitlines(keepends=True):
        end += len(line)
        match = _MET_LINE.match(line)
        if match is None:
            return None
        fields[match.group(1).decode("ascii", "replace")] = match.group(2).decode("utf-8", "replace")
        if match.group(1) == b"ElementDataFile":
            return fields, end
    return None


def metaimage_field_problem(fields: dict[str, str]) -> str | None:
    if "ElementSpacing" not in fields and "ElementSize" not in fields:
        return "header has no ElementSpacing (nor ElementSize): the voxel size is unknown; refusing to guess one"
    for key in _MET_ORIGIN_KEYS:
        if key in fields:
            try:
                values = tuple(float(v) for v in fields[key].split())
            except ValueError:
                return f"{key} {fields[key]!r:.80}: not numbers; refusing to guess an origin"
            if not _finite(values):
                return f"{key} {values}: not finite; refusing to guess an origin"
    return None


# ------------------------------------------------------------------ NRRD
_NRRD_FIELD = re.compile(rb"^([^:#][^:]*):=?\s*(.*?)\s*$")
MAX_NRRD_HEADER = 64 * 1024


def nrrd_field_problem(path: Path) -> str | None:
    """A NRRD without a patient space or voxel directions gets 1 mm and an identity from ITK."""
    with path.open("rb") as handle:
        head = handle.read(MAX_NRRD_HEADER)
    if not head.startswith(b"NRRD"):
        return None
    keys: set[str] = set()
    for line in head.splitlines()[1:]:
        if not line.strip():
            break
        match = _NRRD_FIELD.match(line)
        if match is not None:
            keys.add(match.group(1).decode("ascii", "replace").strip().lower())
    if "space directions" not in keys:
        which = "spacings only" if "spacings" in keys else "neither space directions nor spacings"
        return f"header has {which}: the voxel size and orientation in the patient are unknown; refusing to guess them"
    return None


def raw_field_problem(path: Path, fmt: str) -> str | None:
    """The first raw header field of ``path`` that ITK would silently replace, or None."""
    if fmt == "nifti":
        header = read_nifti_header(path)
        return None if header is None else nifti_field_problem(header)
    if fmt == "metaimage":
        parsed = read_metaimage_header(path)
        return None if parsed is None else metaimage_field_problem(parsed[0])
    if fmt == "nrrd":
        return nrrd_field_problem(path)
    return None
