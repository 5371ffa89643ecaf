"""Generate a corpus of hostile imaging inputs (malformed DICOM, NIfTI, NRRD, MetaImage).

Everything is built at test time in a temporary folder; nothing large is stored in the
repository. Each :class:`Case` says which path to load and which problem the one-line
``InputError`` must name (a regular expression over the message).

The DICOM cases start from a small valid series written by ``dicom_factory`` and damage
it the way broken exports, hostile uploads or fuzzers do; the header-only formats are
written byte by byte so that any field can hold any value, which SimpleITK's writers
would refuse to produce.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dicom_factory import head_like_volume, write_series
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SHAPE = (6, 16, 16)  # z, y, x: small enough to build dozens of cases in well under a second
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class Case:
    name: str
    path: Path  # what ``load_ct`` / ``scrubin prepare`` is given
    problem: str  # regex the error message must match (besides naming the file)
    names: Path  # the path the message must name (the file itself, or its folder)


Builder = Callable[[Path], tuple[Path, str, Path]]


# --------------------------------------------------------------------- DICOM
def _series(folder: Path, **kw: object) -> list[Path]:
    return write_series(folder, head_like_volume(SHAPE), **kw)  # type: ignore[arg-type]


def dicom_truncated_header(root: Path) -> tuple[Path, str, Path]:
    folder = root / "truncated_header"
    paths = _series(folder)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:300])  # cut inside the dataset, before the position tags
    return folder, r"damaged or incomplete DICOM slice \(no Image Position", paths[2]


def dicom_truncated_pixels(root: Path) -> tuple[Path, str, Path]:
    folder = root / "truncated_pixels"
    paths = _series(folder)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) - 200])  # header intact, pixel data short
    return folder, r"DICOM pixel data could not be read", folder


def _wrong_vr(name: str, tag: tuple[int, int], vr: bytes, problem: str) -> Builder:
    """Every slice declares ``vr`` for ``tag`` in its explicit-VR header.

    A wrong VR label whose value layout is unchanged (US or ZZ on a text tag) still reads
    as the tag means, in GDCM as in the fast path; these VRs change the layout instead.
    """

    def build(root: Path) -> tuple[Path, str, Path]:
        folder = root / name
        paths = _series(folder)
        for p in paths:
            data = bytearray(p.read_bytes())
            at = data.find(struct.pack("<HH", *tag))
            assert at > 0, "the factory writes every tag that is damaged here"
            data[at + 4 : at + 6] = vr
            p.write_bytes(bytes(data))
        return folder, problem, paths[0]

    build.__name__ = f"dicom_{name}"
    return build


def dicom_rows_text(root: Path) -> tuple[Path, str, Path]:
    """Rows (US, 2 bytes) with a 6-byte value: a length that no parser should trust."""
    folder = root / "rows_wrong_length"
    paths = _series(folder)
    for p in paths:
        data = bytearray(p.read_bytes())
        tag = struct.pack("<HH", 0x0028, 0x0010) + b"US" + struct.pack("<H", 2)
        at = data.find(tag)
        assert at > 0
        data[at + 6 : at + 10] = struct.pack("<H", 6) + b"ab"  # claims 6 bytes: shifts the stream
        p.write_bytes(bytes(data))
    return folder, r"damaged DICOM file \(ValueError: Rows must be one integer", paths[0]


def dicom_deep_nesting(root: Path, depth: int = 20_000) -> tuple[Path, str, Path]:
    """A slice whose first element is a sequence nested ``depth`` levels deep."""
    folder = root / "deep_nesting"
    paths = _series(folder)
    raw = paths[1].read_bytes()
    meta_end = _meta_end(raw)
    sq = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nested = (sq + item) * depth + (item_end + seq_end) * depth
    paths[1].write_bytes(raw[:meta_end] + nested + raw[meta_end:])
    return folder, r"damaged DICOM file \(RecursionError", paths[1]


def dicom_huge_rows_columns(root: Path) -> tuple[Path, str, Path]:
    folder = root / "huge_rows_columns"
    paths = _series(folder)
    for p in paths:
        data = bytearray(p.read_bytes())
        for element in (0x0010, 0x0011):  # Rows, Columns
            tag = struct.pack("<HH", 0x0028, element) + b"US" + struct.pack("<H", 2)
            at = data.find(tag)
            data[at + 8 : at + 10] = struct.pack("<H", 65535)
        p.write_bytes(bytes(data))
    return folder, r"volume of 65535x65535x6 voxels needs about .* GiB, over the memory budget", folder


def dicom_huge_frames(root: Path) -> tuple[Path, str, Path]:
    """Every slice declares 2**31 - 1 frames but holds one."""
    folder = root / "huge_frames"
    paths = _series(folder)
    import pydicom

    for p in paths:
        ds = pydicom.dcmread(p)
        ds.NumberOfFrames = "2147483647"
        ds.save_as(p, enforce_file_format=True)
    return folder, r"\(0028,0008\) Number of Frames is 2147483647; only single-frame", paths[0]


def dicom_mixed_series(root: Path) -> tuple[Path, str, Path]:
    """Two acquisitions under one Series Instance UID: slices of different sizes."""
    folder = root / "mixed_series"
    uid = generate_uid()
    _series(folder, series_uid=uid, prefix="A")
    small = head_like_volume((SHAPE[0], 12, 12))
    write_series(folder, small, series_uid=uid, prefix="B", origin=(-50.0, -60.0, -19.0))
    return folder, r"slice size 12x12 differs from 16x16 in the same series", folder / "B0000.dcm"


def dicom_garbage_after_preamble(root: Path) -> tuple[Path, str, Path]:
    folder = root / "garbage_after_preamble"
    paths = _series(folder)
    rng = np.random.default_rng(7)
    paths[0].write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(4000))
    return folder, r"damaged or incomplete DICOM slice \(file meta lacks", paths[0]


def dicom_dicomdir_only(root: Path) -> tuple[Path, str, Path]:
    folder = root / "dicomdir_only"
    folder.mkdir(parents=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DICOMDIR_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("DICOMDIR", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "SCRUBIN"
    ds.save_as(folder / "DICOMDIR", enforce_file_format=True)
    return folder, r"no DICOM image series found", folder


def _meta_end(raw: bytes) -> int:
    """Byte offset where the dataset starts: after the explicit-VR group 0002."""
    pos = 132
    while struct.unpack_from("<H", raw, pos)[0] == 0x0002:
        vr = raw[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
            pos += 12 + struct.unpack_from("<I", raw, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", raw, pos + 6)[0]
    return pos


# --------------------------------------------------------------------- NIfTI-1
def nifti_bytes(
    dims: tuple[int, ...] = (16, 16, 6),
    *,
    datatype: int = 4,
    bitpix: int = 16,
    pixdim: tuple[float, float, float] = (1.0, 1.0, 2.0),
    data: bytes | None = None,
    sizeof_hdr: int = 348,
) -> bytes:
    """A single-file NIfTI-1 (``n+1``) image with an sform; int16 voxels by default."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, sizeof_hdr)
    dim = [len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into("<8h", header, 40, *dim)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, *pixdim, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    struct.pack_into("<ff", header, 112, 1.0, 0.0)  # scl_slope, scl_inter
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code, sform_code
    struct.pack_into("<4f", header, 280, pixdim[0], 0.0, 0.0, 0.0)
    struct.pack_into("<4f", header, 296, 0.0, pixdim[1], 0.0, 0.0)
    struct.pack_into("<4f", header, 312, 0.0, 0.0, pixdim[2], 0.0)
    header[344:348] = b"n+1\0"
    if data is None:
        n = int(np.prod(np.asarray(dims, dtype=np.int64)))
        data = np.full(abs(n), -1000, np.int16).tobytes() if abs(n) < 1 << 20 else b""
    return bytes(header) + b"\0" * 4 + data


def _nifti(name: str, problem: str, **kw: object) -> Builder:
    def build(root: Path) -> tuple[Path, str, Path]:
        path = root / f"{name}.nii"
        path.write_bytes(nifti_bytes(**kw))  # type: ignore[arg-type]
        return path, problem, path

    build.__name__ = f"nifti_{name}"
    return build


# --------------------------------------------------------------------- NRRD / MetaImage
def _text_image(name: str, suffix: str, header: str, data: bytes | None, problem: str) -> Builder:
    def build(root: Path) -> tuple[Path, str, Path]:
        path = root / f"{name}{suffix}"
        body = header.encode()
        path.write_bytes(body if data is None else body + data)
        return path, problem, path

    build.__name__ = f"{suffix[1:]}_{name}"
    return build


_VOXELS = np.full(16 * 16 * 6, -1000, np.int16).tobytes()


def _nrrd(sizes: str = "16 16 6", spacings: str = "1 1 2", kind: str = "short", extra: str = "") -> str:
    return (
        "NRRD0004\n"
        f"type: {kind}\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {sizes}\n"
        f"space directions: ({spacings.split()[0]},0,0) (0,{spacings.split()[1]},0) (0,0,{spacings.split()[2]})\n"
        "endian: little\n"
        "encoding: raw\n"
        "space origin: (0,0,0)\n"
        f"{extra}\n"
    )


def _mha(dims: str = "16 16 6", spacing: str = "1 1 2", kind: str = "MET_SHORT", data_file: str = "LOCAL") -> str:
    return (
        "ObjectType = Image\n"
        "NDims = 3\n"
        "BinaryData = True\n"
        "BinaryDataByteOrderMSB = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\n"
        "Offset = 0 0 0\n"
        "AnatomicalOrientation = RAI\n"
        f"ElementSpacing = {spacing}\n"
        f"DimSize = {dims}\n"
        f"ElementType = {kind}\n"
        f"ElementDataFile = {data_file}\n"
    )


HUGE = r"voxels needs about .* GiB, over the memory budget of 6\.0 GiB"
SPACING = r"invalid voxel spacing \(1\.0, (0\.0|-1\.0), (2\.0|0\.0)\)"
DATATYPE = (
    r"not a readable (nifti|nrrd|metaimage) image \(.*(not recognized as a NIFTI|couldn't parse type|Unknown PixelType)"
)
TRUNCATED = r"pixel data (truncated \(the header declares \d+ bytes .* the file holds \d+\)|could not be read \(.*fread got only 500)"
MISSING_DATA = r"(couldn't open .*gone\.raw|detached data file 'gone\.raw' named by the header is missing)"

BUILDERS: tuple[Builder, ...] = (
    dicom_truncated_header,
    dicom_truncated_pixels,
    _wrong_vr(
        "wrong_vr_binary_code", (0x0020, 0x0032), b"\x01\x02", r"Image Position \(Patient\) should hold 3 numbers"
    ),
    _wrong_vr("wrong_vr_sq_rows", (0x0028, 0x0010), b"SQ", r"damaged DICOM file .*Rows must be one integer"),
    _wrong_vr("wrong_vr_ob_rows", (0x0028, 0x0010), b"OB", r"damaged DICOM file .*Rows must be one integer"),
    _wrong_vr("wrong_vr_ut_orientation", (0x0020, 0x0037), b"UT", r"Image Orientation \(Patient\) should hold 6"),
    dicom_rows_text,
    dicom_deep_nesting,
    dicom_huge_rows_columns,
    dicom_huge_frames,
    dicom_mixed_series,
    dicom_garbage_after_preamble,
    dicom_dicomdir_only,
    _nifti("huge_dims", HUGE, dims=(32767, 32767, 32767)),
    _nifti("zero_spacing", r"not a readable nifti image \(.*orthonormal", pixdim=(1.0, 0.0, 2.0)),
    _nifti("negative_spacing", SPACING, pixdim=(1.0, -1.0, 2.0)),
    _nifti("nan_spacing", r"direction matrix is not orthonormal .*nan", pixdim=(1.0, float("nan"), 2.0)),
    _nifti("wrong_datatype", DATATYPE, datatype=9999, bitpix=16),
    _nifti("truncated_data", TRUNCATED, data=_VOXELS[:1000]),
    _nifti("negative_dims", r"expected a 3D volume, got size \(16, 1, 6\)", dims=(16, -16, 6)),
    _text_image("huge_dims", ".nrrd", _nrrd(sizes="100000 100000 100000"), b"", HUGE),
    _text_image("zero_spacing", ".nrrd", _nrrd(spacings="1 0 2"), _VOXELS, SPACING),
    _text_image(
        "nan_spacing", ".nrrd", _nrrd(spacings="1 nan 2"), _VOXELS, r"not a readable nrrd image .*space vector"
    ),
    _text_image("wrong_datatype", ".nrrd", _nrrd(kind="quaternion"), _VOXELS, DATATYPE),
    _text_image("truncated_data", ".nrrd", _nrrd(), _VOXELS[:1000], TRUNCATED),
    _text_image("missing_data_file", ".nhdr", _nrrd(extra="data file: gone.raw"), None, MISSING_DATA),
    _text_image("huge_dims", ".mha", _mha(dims="100000 100000 100000"), b"", HUGE),
    _text_image("zero_spacing", ".mha", _mha(spacing="1 0 2"), _VOXELS, SPACING),
    _text_image("negative_spacing", ".mha", _mha(spacing="1 -1 2"), _VOXELS, SPACING),
    _text_image("nan_spacing", ".mha", _mha(spacing="1 nan 2"), _VOXELS, SPACING),
    _text_image("wrong_datatype", ".mha", _mha(kind="MET_QUATERNION"), _VOXELS, DATATYPE),
    _text_image("truncated_data", ".mha", _mha(), _VOXELS[:1000], TRUNCATED),
    _text_image("missing_data_file", ".mhd", _mha(data_file="gone.raw"), None, MISSING_DATA),
)


def build_case(builder: Builder, root: Path) -> Case:
    root.mkdir(parents=True, exist_ok=True)
    path, problem, names = builder(root)
    return Case(builder.__name__, path, problem, names)


def case_names() -> list[str]:
    return [b.__name__ for b in BUILDERS]


def builder(name: str) -> Builder:
    return next(b for b in BUILDERS if b.__name__ == name)
