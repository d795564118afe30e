"""Voxels a CT stores as NaN or infinite: values that were not measured.

Some converters write NaN outside the reconstructed field of view (the circle of each axial slice):
that is air outside the body, read here as -1024 HU with a note in the report. Non-finite voxels
within the field of view (not reaching the edge of their slice) or a slice with no measured voxel
at all cannot be read as any HU: such a CT is refused, naming how many there are.

ITK's NIfTI reader turns NaN and infinite floats into 0 without a word (0 HU: soft tissue, and
inside a vertebra a lower density), so for a float NIfTI they are found in the file itself.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.file_headers import gzip_trailer_matches

AIR_HU = -1024.0  # what scanners store outside the field of view
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI-1 datatype codes: FLOAT32, FLOAT64
CHUNK_VOXELS = 1 << 22


def nifti_nonfinite(path: Path, read: sitk.Image) -> np.ndarray | None:
    """A [k, j, i] mask (the voxel order of ITK's array) of the voxels a float NIfTI-1 file stores as NaN
    or infinite, which ITK has read as 0; None when there are none, or the file is no 3-D float NIfTI-1."""
    layout = _float_nifti_layout(path)
    if layout is None or (path.name.lower().endswith(".gz")
                          and gzip_trailer_matches(path, sitk.GetArrayViewFromImage(read))):
        return None  # ITK's voxels are the file's bytes: nothing was replaced
    dtype, shape, offset = layout
    if shape != sitk.GetArrayViewFromImage(read).shape:
        return None
    mask = np.zeros(int(np.prod(shape)), bool)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        stream.read(offset)
        for start in range(0, mask.size, CHUNK_VOXELS):
            block = np.frombuffer(stream.read(min(CHUNK_VOXELS, mask.size - start) * dtype.itemsize), dtype)
            mask[start:start + block.size] = ~np.isfinite(block)
    return mask.reshape(shape) if mask.any() else None


def _float_nifti_layout(path: Path) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """(voxel dtype, [k, j, i] shape, data offset) of a 3-D float NIfTI-1 file; None for anything else."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(348)
    except (OSError, EOFError):
        return None
    endian = next((e for e in "<>" if len(header) == 348 and struct.unpack(e + "i", header[:4])[0] == 348), None)
    if endian is None:
        return None
    dims = struct.unpack(endian + "8h", header[40:56])
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    if datatype not in NIFTI_FLOAT_TYPES or not (dims[0] == 3 or (dims[0] == 4 and dims[4] == 1)):
        return None
    offset = int(struct.unpack(endian + "f", header[108:112])[0])
    return np.dtype(endian + NIFTI_FLOAT_TYPES[datatype]), (dims[3], dims[2], dims[1]), max(offset, 348)


def with_nonfinite(image: sitk.Image, mask: np.ndarray | None) -> sitk.Image:
    """``image`` with NaN where ``mask`` is set (voxels the reader turned into numbers)."""
    if mask is None:
        return image
    values = sitk.GetArrayFromImage(image)
    values[mask] = np.nan
    restored = sitk.GetImageFromArray(values)
    restored.CopyInformation(image)
    return restored


def read_unmeasured_as_air(image: sitk.Image, path: Path, what: str = "CT") -> tuple[sitk.Image, list[str]]:
    """NaN and infinite voxels at the edge of their axial slice (outside the reconstructed field of view) set
    to air, with a note; InputError when some lie within the field of view or fill a whole slice."""
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind != "f":
        return image, []
    unmeasured = ~np.isfinite(values)
    count = int(unmeasured.sum())
    if not count:
        return image, []
    slice_axis = _axial_array_axis(image)
    by_slice = np.moveaxis(unmeasured, slice_axis, 0)
    empty = np.flatnonzero(by_slice.all(axis=(1, 2)))
    if empty.size:
        raise InputError(f"{what} {path} has {count:,} NaN or infinite voxels, and {empty.size} slice(s) with no "
                         f"measured voxel (slice {empty[0]} along the body axis): values not measured cannot be read "
                         "as any HU")
    inside = sum(int((plane & ~_reaching_edge(plane)).sum()) for plane in by_slice)
    if inside:
        raise InputError(f"{what} {path} has {count:,} NaN or infinite voxels, {inside:,} of them within the field "
                         "of view (not reaching the edge of their slice): values not measured inside the body "
                         "cannot be read as any HU")
    filled = np.where(unmeasured, np.asarray(AIR_HU, values.dtype), values)
    result = sitk.GetImageFromArray(filled)
    result.CopyInformation(image)
    note = (f"{what} has {count:,} NaN or infinite voxels ({100.0 * count / values.size:.1f} %), all outside the "
            f"reconstructed field of view (at the edge of the slices): read as air ({AIR_HU:.0f} HU); no "
            "measurement includes them")
    return result, [note]


def _axial_array_axis(image: sitk.Image) -> int:
    """The NumPy axis of ``image``'s array closest to the body axis (superior-inferior)."""
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    return 2 - int(np.argmax(np.abs(direction[2])))  # row 2: the superior component of each voxel axis


def _reaching_edge(plane: np.ndarray) -> np.ndarray:
    """The set voxels of a 2-D mask connected (8-neighbourhood) to its border."""
    from scipy import ndimage

    labels, _ = ndimage.label(plane, structure=np.ones((3, 3), bool))
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])
