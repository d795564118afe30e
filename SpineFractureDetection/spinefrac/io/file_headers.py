"""What a file's header announces against what the file holds: the length of its voxel data (a file
cut short is read by ITK as zeros, or refused with "No such file or directory"), and for NIfTI the
two transforms (qform and sform) it may carry.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from spinefrac.errors import InputError
from spinefrac.io.input_checks import read_header


def check_data_size(path: Path, what: str = "CT") -> None:
    """The voxel data a file holds against what its header announces, for every format we read. ITK
    reads a truncated .nii or .nii.gz without complaint (the missing voxels come out as zeros) and
    says "No such file or directory" for a truncated MetaImage, so the length is checked first."""
    name = path.name.lower()
    if name.endswith(".nii"):
        with open(path, "rb") as stream:
            expected = _nifti_expected_bytes(stream.read(352))
        if expected is not None:
            _require_length(path.stat().st_size, expected, path, what)
    elif name.endswith(".gz"):
        _check_nifti_gz(path, what)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path, what)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path, what)


def _require_length(actual: int, expected: int, path: Path, what: str, counted: str = "") -> None:
    if actual < expected:
        raise InputError(f"{what} {path} is truncated: {actual:,} bytes of the {expected:,} its header announces"
                         + (f" ({counted})" if counted else ""))


def _stream_length(stream, path: Path, what: str, kind: str = "gzip") -> tuple[int, bytes]:
    """Decompressed length of a stream read to its end, and its first 352 bytes (a NIfTI header)."""
    length, start = 0, b""
    try:
        while block := stream.read(1 << 24):
            if len(start) < 352:
                start += block[: 352 - len(start)]
            length += len(block)
    except gzip.BadGzipFile:
        raise InputError(f"{what} {path} is not a readable image (not {kind} data where its header says so)") from None
    except (EOFError, OSError, zlib.error):
        raise InputError(f"{what} {path} is truncated or corrupt (its {kind} stream breaks off)") from None
    return length, start


def _check_nifti_gz(path: Path, what: str) -> None:
    length, header = _gzip_length(path, what)
    expected = _nifti_expected_bytes(header) if path.name.lower().endswith(".nii.gz") else None
    if expected is not None:
        _require_length(length, expected, path, what, "decompressed")


GZIP_MAGIC = b"\x1f\x8b"
# zlib's words for a stream that is not gzip (or fails its checksum): Python's gzip module says BadGzipFile.
NOT_GZIP_ERRORS = ("incorrect header check", "unknown compression method", "incorrect data check",
                   "incorrect length check")


def _gzip_length(path: Path, what: str) -> tuple[int, bytes]:
    """``_stream_length`` of a gzip file, its members inflated in megabyte reads by zlib directly (the gzip
    module reads 8 KiB at a time: a third slower), with the gzip module's verdicts: zero padding between
    members is skipped, anything else after a member must be another member."""
    blocks = _Blocks()
    with open(path, "rb") as raw:
        pending = raw.read(1 << 20)
        while pending:
            if len(pending) < 2:
                pending += raw.read(1 << 20)
            if pending[:2] != GZIP_MAGIC:
                raise InputError(f"{what} {path} is not a readable image (not gzip data where its header says so)")
            try:
                pending = _inflate_member(raw, pending, blocks)
            except zlib.error as error:
                if any(words in str(error) for words in NOT_GZIP_ERRORS):
                    raise InputError(f"{what} {path} is not a readable image (not gzip data where its header says "
                                     "so)") from None
                raise InputError(f"{what} {path} is truncated or corrupt (its gzip stream breaks off)") from None
            except EOFError:
                raise InputError(f"{what} {path} is truncated or corrupt (its gzip stream breaks off)") from None
            pending = pending.lstrip(b"\x00")
            while not pending and (more := raw.read(1 << 20)):
                pending = more.lstrip(b"\x00")
    return blocks.length, blocks.start


class _Blocks:
    """Counts decompressed bytes and keeps the first 352 (a NIfTI header)."""

    def __init__(self):
        self.length, self.start = 0, b""

    def add(self, block: bytes) -> None:
        if len(self.start) < 352:
            self.start += block[: 352 - len(self.start)]
        self.length += len(block)


def _inflate_member(raw, pending: bytes, blocks: _Blocks) -> bytes:
    """Inflate one gzip member (zlib checks its CRC and length); returns the bytes read after it."""
    inflater = zlib.decompressobj(31)
    while not inflater.eof:
        if not pending and not (pending := raw.read(1 << 20)):
            blocks.add(inflater.flush())  # what zlib still holds back
            if not inflater.eof:
                raise EOFError("the stream ends before its end marker")
            break
        blocks.add(inflater.decompress(pending, 1 << 24))
        pending = inflater.unconsumed_tail
    return inflater.unused_data


def gzip_trailer_matches(path: Path, voxels: np.ndarray) -> bool:
    """True when a single-stream .nii.gz written from ``voxels`` (C order, as ITK writes a scalar image) ends
    with the gzip trailer of its header followed by exactly these voxels: the CRC-32 and length of all it
    should hold. A file cut short ends inside the compressed data, which matches that by chance once in
    2^64. False says nothing either way (another layout): the caller then inflates the file."""
    try:
        with open(path, "rb") as stream:
            inflater = zlib.decompressobj(31)
            head = inflater.decompress(stream.read(1 << 16), 352)
            offset = int(struct.unpack("<f", head[108:112])[0]) if len(head) == 352 else 0
            while len(head) < offset and not inflater.eof:  # NIfTI extensions before the voxels
                head += inflater.decompress(inflater.unconsumed_tail or stream.read(1 << 16), offset - len(head))
            stream.seek(-8, 2)
            crc, size = struct.unpack("<II", stream.read(8))
    except (OSError, zlib.error, struct.error):
        return False
    if len(head) != offset or offset < 352:
        return False
    return crc == zlib.crc32(voxels, zlib.crc32(head)) and size == (offset + voxels.nbytes) % 2**32


def _raw_bytes(path: Path) -> int | None:
    """Bytes of voxel data the header announces (None: the reader cannot tell)."""
    header = read_header(path)
    return None if header is None else header.voxels * header.components * header.bytes_per_component


def _header_fields(path: Path, separator: str, last_key: str | None) -> tuple[dict[str, str], int]:
    """Text header fields up to the blank line (NRRD) or up to last_key (MetaImage), and where the data
    starts in the file."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    fields, position = {}, 0
    for line in head.splitlines(keepends=True):
        position += len(line)
        text = line.decode("latin-1").strip()
        if not text and last_key is None:
            break
        key, found, value = text.partition(separator)
        if found:
            fields[key.strip().lower()] = value.strip()
        if last_key is not None and key.strip().lower() == last_key:
            break
    return fields, position


def _data_source(path: Path, named: str | None, offset: int, what: str) -> tuple[Path, int] | None:
    """The file that holds the voxels and where they start; None for lists of files (not checked)."""
    if named is None or named.upper() == "LOCAL":
        return path, offset
    if named.upper().startswith("LIST") or "%" in named or " " in named:
        return None
    data_path = path.parent / named
    if not data_path.is_file():
        raise InputError(f"{what} {path} names its voxel data file {named}, which is missing")
    return data_path, 0


def _check_metaimage(path: Path, what: str) -> None:
    fields, header_end = _header_fields(path, "=", "elementdatafile")
    expected = _raw_bytes(path)
    located = _data_source(path, fields.get("elementdatafile"), header_end, what)
    if expected is None or located is None or "headersize" in fields:
        return
    data_path, offset = located
    available = data_path.stat().st_size - offset
    if fields.get("compresseddata", "").lower() != "true":
        _require_length(available, expected, path, what)
        return
    if fields.get("compresseddatasize", "").isdigit():
        _require_length(available, int(fields["compresseddatasize"]), path, what, "compressed data")
    with open(data_path, "rb") as raw:
        raw.seek(offset)
        length, _ = _stream_length(_ZlibReader(raw), path, what, "zlib")
    _require_length(length, expected, path, what, "decompressed")


def _check_nrrd(path: Path, what: str) -> None:
    fields, header_end = _header_fields(path, ":", None)
    encoding = fields.get("encoding", "raw").lower()
    expected = _raw_bytes(path)
    named = fields.get("data file", fields.get("datafile"))
    located = _data_source(path, named, header_end if named is None else 0, what)
    skip = fields.get("byte skip", fields.get("byteskip", "0"))
    if expected is None or located is None or encoding not in ("raw", "gzip", "gz") or not skip.isdigit():
        return
    data_path, offset = located
    offset += int(skip) if encoding == "raw" else 0
    if encoding == "raw":
        _require_length(data_path.stat().st_size - offset, expected, path, what)
        return
    with open(data_path, "rb") as raw:
        raw.seek(offset)
        with gzip.GzipFile(fileobj=raw) as stream:
            length, _ = _stream_length(stream, path, what)
    _require_length(length, expected, path, what, "decompressed")


class _ZlibReader:
    """A zlib (deflate) stream read block by block, as MetaImage compresses voxels; EOFError when it
    ends before its end marker."""

    def __init__(self, raw):
        self.raw, self.inflate = raw, zlib.decompressobj()

    def read(self, size: int) -> bytes:
        while True:
            if self.inflate.eof:
                return b""
            compressed = self.raw.read(1 << 20)
            if not compressed:
                raise EOFError("zlib stream ends early")
            block = self.inflate.decompress(compressed)
            if block:
                return block


def _nifti_expected_bytes(header: bytes) -> int | None:
    """vox_offset + voxels x bytes per voxel from a NIfTI-1 header (None when it is not NIfTI-1)."""
    if len(header) < 348:
        return None
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bits = struct.unpack(endian + "h", header[72:74])[0]
            offset = struct.unpack(endian + "f", header[108:112])[0]
            count = int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]], dtype=np.int64)) if 0 < dims[0] <= 7 else 0
            return int(offset) + count * max(bits, 8) // 8
    return None


# -- NIfTI qform and sform ------------------------------------------------------------------------

FORM_TOLERANCE_MM = 0.1  # well below a voxel; float32 header noise is far smaller


def nifti_header(path: Path) -> bytes:
    """The first 348 bytes of a .nii or .nii.gz (the NIfTI-1 header)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        return stream.read(348)


def nifti_stored_as_read(header: bytes) -> bool:
    """True when ITK holds a NIfTI-1 file's voxels byte for byte as the file stores them (little-endian, no
    scl_slope/scl_inter rescaling, which ITK turns into floats), so that its gzip trailer can vouch for them."""
    if len(header) < 348 or struct.unpack("<i", header[:4])[0] != 348:
        return False
    slope, intercept = struct.unpack("<2f", header[112:120])
    return (slope == 0.0 or slope == 1.0) and intercept == 0.0


def nifti_forms(header: bytes) -> tuple[np.ndarray | None, np.ndarray | None, tuple[int, int, int]] | None:
    """The qform and sform voxel -> RAS mm matrices (4 x 4; None where the code is 0) and the grid size,
    from a NIfTI-1 header (None: not NIfTI-1). Formulas of the NIfTI-1 standard (nifti1.h)."""
    endian = next((e for e in "<>" if len(header) >= 348 and struct.unpack(e + "i", header[:4])[0] == 348), None)
    if endian is None:
        return None
    dims = struct.unpack(endian + "8h", header[40:56])
    pixdim = struct.unpack(endian + "8f", header[76:108])
    qform_code, sform_code = struct.unpack(endian + "2h", header[252:256])
    b, c, d, *offset = struct.unpack(endian + "6f", header[256:280])
    qform = None
    if qform_code > 0:
        a = float(np.sqrt(max(0.0, 1.0 - b * b - c * c - d * d)))
        rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                             [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                             [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        qform = np.eye(4)
        qform[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], qfac * pixdim[3]])
        qform[:3, 3] = offset
    sform = None
    if sform_code > 0:
        sform = np.eye(4)
        sform[:3] = np.array(struct.unpack(endian + "12f", header[280:328]), dtype=float).reshape(3, 4)
    return qform, sform, tuple(max(int(n), 1) for n in dims[1:4])


def nifti_form_warning(path: Path, origin_lps, direction, spacing_mm) -> str | None:
    """When a NIfTI's qform and sform put the voxels in different places: how far apart, which one ITK
    read (every output is then written with that one, in both forms), and that other tools may take the
    other. None when they agree or only one is set."""
    forms = nifti_forms(nifti_header(path))
    if forms is None or forms[0] is None or forms[1] is None:
        return None
    qform, sform, size = forms
    corners = np.array([[i, j, k, 1.0] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    apart_mm = float(np.linalg.norm((corners @ qform.T - corners @ sform.T)[:, :3], axis=1).max())
    if apart_mm <= FORM_TOLERANCE_MM:
        return None
    read = np.eye(4)
    read[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(direction, float).reshape(3, 3) @ np.diag(spacing_mm)
    read[:3, 3] = np.asarray(origin_lps, float) * [-1.0, -1.0, 1.0]
    distance = {name: float(np.abs(corners @ form.T - corners @ read.T).max()) for name, form in
                (("qform", qform), ("sform", sform))}
    used = min(distance, key=distance.get)
    other = "sform" if used == "qform" else "qform"
    return (f"{path.name}: its NIfTI qform and sform place the voxels up to {apart_mm:.1f} mm apart; read with the "
            f"{used} (as ITK reads it; a tool that takes the {other} puts the image elsewhere); every output is "
            f"written with the {used}, in both forms")
