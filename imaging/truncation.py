"""Header-declared data size against what the file holds, for the formats whose readers
do not check it themselves.

ITK reads a short NIfTI file without complaint and fills the missing voxels with zeros, and
reports a short or missing MetaImage data file only as "No such file or directory". Both
are refused here from the header, before any pixel is read, with the sizes in the message.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from imaging.raw_header import NIFTI1_SIZE, NiftiHeader, read_metaimage_header, read_nifti_header


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
    declared = _nifti_declared_bytes(read_nifti_header(path))
    if declared is None:
        return None  # ITK accepted a header we cannot parse: leave the verdict to ITK
    have = _gzip_data_bytes(path, declared) if path.name.lower().endswith(".gz") else path.stat().st_size
    if have >= declared:
        return None
    return f"the header declares {declared} bytes up to the end of the voxels, the file holds {have}"


def _nifti_declared_bytes(header: NiftiHeader | None) -> int | None:
    """vox_offset + voxel bytes, or None when the header is not one ITK would read."""
    if header is None or header.bitpix <= 0 or any(d < 1 for d in header.dims):
        return None
    if not 0 <= header.vox_offset < 2**62:  # NaN, negative or absurd: ITK will refuse the file
        return None
    return max(int(header.vox_offset), NIFTI1_SIZE) + header.n_voxels * int(header.bitpix) // 8


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
INFLATE_CHUNK_BYTES = 1 << 22


def metaimage_truncation(path: Path) -> str | None:
    """Missing detached data file, a LOCAL block shorter than declared, or a zlib stream that
    does not inflate to the declared size (ITK gives zeros for a corrupt one)."""
    parsed = read_metaimage_header(path)
    if parsed is None:
        return None  # not the text header we know: leave the verdict to ITK
    fields, end = parsed
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
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        item = _MET_BYTES[fields["ElementType"]]
    except (KeyError, ValueError):
        return None
    voxel_bytes = int(np.prod(np.asarray(dims, dtype=np.int64))) * channels * item
    if fields.get("CompressedData", "False").lower() == "true":
        return _inflate_problem(source, start, voxel_bytes)
    have = source.stat().st_size
    if have >= start + voxel_bytes:
        return None
    where = "" if source == path else f" of {data_file!r}"
    return f"the header declares {start + voxel_bytes} bytes up to the end of the voxels{where}, the file holds {have}"


def _inflate_problem(path: Path, offset: int, declared: int) -> str | None:
    """Inflate the zlib stream in bounded chunks, counting bytes only (never holding them)."""
    inflater = zlib.decompressobj()
    total = 0
    with path.open("rb") as handle:
        handle.seek(offset)
        try:
            while total < declared and (block := handle.read(INFLATE_CHUNK_BYTES)):
                data = inflater.decompress(block, INFLATE_CHUNK_BYTES)
                total += len(data)
                while inflater.unconsumed_tail and total < declared:
                    total += len(inflater.decompress(inflater.unconsumed_tail, INFLATE_CHUNK_BYTES))
            total += len(inflater.flush()) if total < declared else 0
        except zlib.error as exc:
            return f"the compressed pixel data is corrupt (zlib: {exc}) after {total} of {declared} bytes"
    if total < declared:
        return f"the compressed pixel data inflates to {total} bytes, the header declares {declared}"
    return None
