"""Header-declared data size against what the file holds, for the formats whose readers
do not check it themselves.

ITK reads a short NIfTI file without complaint and fills the missing voxels with zeros, and
reports a short or missing MetaImage data file only as "No such file or directory". Both
are refused here from the header, before any pixel is read, with the sizes in the message.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np


def data_truncation(path: Path, fmt: str) -> str | None:
    """Why ``path`` holds fewer voxel bytes than its header declares, or None."""
    if fmt == "nifti":
        return nifti_truncation(path)
    if fmt == "metaimage":
        return metaimage_truncation(path)
    return None  # NRRD: teem checks the data length itself


def nifti_truncation(path: Path) -> str | None:
    """Why a NIfTI file holds fewer voxel bytes than its header declares, or None.

    ITK reads a short NIfTI file without complaint and fills the rest with zeros;
    NRRD and MetaImage readers refuse one themselves.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read(540)
    declared = _nifti_declared_bytes(raw)
    if declared is None:
        return None  # ITK accepted a header we cannot parse: leave the verdict to ITK
    have = _gzip_data_bytes(path, declared) if opener is gzip.open else path.stat().st_size
    if have >= declared:
        return None
    return f"the header declares {declared} bytes up to the end of the voxels, the file holds {have}"


def _nifti_declared_bytes(raw: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1 or NIfTI-2 header, either byte order."""
    for order in "<>":
        if len(raw) >= 348 and struct.unpack_from(f"{order}i", raw, 0)[0] == 348:
            dims = struct.unpack_from(f"{order}8h", raw, 40)
            bitpix = struct.unpack_from(f"{order}h", raw, 72)[0]
            vox_offset = struct.unpack_from(f"{order}f", raw, 108)[0]
            if not 0 <= vox_offset < 2**62:  # NaN, negative or absurd: ITK will refuse the file
                return None
            offset = int(vox_offset)
            break
        if len(raw) >= 540 and struct.unpack_from(f"{order}i", raw, 0)[0] == 540:
            dims = struct.unpack_from(f"{order}8q", raw, 16)
            bitpix = struct.unpack_from(f"{order}h", raw, 14)[0]
            offset = int(struct.unpack_from(f"{order}q", raw, 168)[0])
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or any(d < 1 for d in dims[1 : dims[0] + 1]):
        return None
    n_voxels = int(np.prod(np.asarray(dims[1 : dims[0] + 1], dtype=np.int64)))
    return max(offset, 348) + n_voxels * int(bitpix) // 8


def _gzip_data_bytes(path: Path, enough: int) -> int:
    """Uncompressed size of a .gz file, counting only as far as ``enough`` bytes.

    The gzip trailer's ISIZE (size mod 2**32) settles the common case without decompressing.
    """
    with path.open("rb") as handle:
        handle.seek(-4, 2)
        if struct.unpack("<I", handle.read(4))[0] == enough % 2**32:
            return enough
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < enough and (block := stream.read(1 << 22)):
                total += len(block)
    except (EOFError, OSError, zlib.error):
        pass  # a truncated or corrupt stream: what was decoded is what the file holds
    return total


_MET_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip
_MET_LINE = re.compile(rb"^\s*(\w+)\s*=\s*(.*?)\s*$")
MAX_METAIMAGE_HEADER = 64 * 1024


def metaimage_truncation(path: Path) -> str | None:
    """Missing detached data file, or a LOCAL uncompressed block shorter than declared."""
    with path.open("rb") as handle:
        head = handle.read(MAX_METAIMAGE_HEADER)
    fields: dict[str, str] = {}
    end = 0
    for line in head.splitlines(keepends=True):
        end += len(line)
        match = _MET_LINE.match(line)
        if match is None:
            return None  # not the text header we know: leave the verdict to ITK
        fields[match.group(1).decode("ascii", "replace")] = match.group(2).decode("utf-8", "replace")
        if match.group(1) == b"ElementDataFile":
            break
    else:
        return None
    data_file = fields["ElementDataFile"]
    source, start = path, end
    if data_file != "LOCAL":
        if data_file == "LIST" or "%" in data_file or " " in data_file:
            return None  # slice lists and patterns: ITK checks them
        source, start = path.parent / data_file, 0
        if not source.is_file():
            return f"the detached data file {data_file!r} named by the header is missing"
        if fields.get("HeaderSize", "0").strip() != "0":
            return None  # a header inside the data file (-1: at its end): leave the verdict to ITK
    if fields.get("CompressedData", "False").lower() == "true":
        return None  # zlib stream: its length says nothing; ITK's inflate reports a short one
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        item = _MET_BYTES[fields["ElementType"]]
    except (KeyError, ValueError):
        return None
    declared = start + int(np.prod(np.asarray(dims, dtype=np.int64))) * channels * item
    have = source.stat().st_size
    if have >= declared:
        return None
    where = "" if source == path else f" of {data_file!r}"
    return f"the header declares {declared} bytes up to the end of the voxels{where}, the file holds {have}"
