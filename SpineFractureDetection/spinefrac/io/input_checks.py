"""One place that decides whether an image can enter the pipeline, before any work starts.

Header checks run before the voxels are read (so a huge file is refused with a memory
estimate instead of being loaded); value checks run on the loaded image. Each failure is an
InputError with one line that says what is wrong and what to do; doubtful but usable inputs
produce warnings that end up in the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.hounsfield import AIR_MAX_HU, METAL_HU, PLAUSIBLE_MAX_HU

MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
MIN_EXTENT_MM = 20.0  # smaller than a vertebral body: nothing to label
MAX_VOXELS = 2**31 - 1  # ITK index limits and any sane CT
# Peak bytes per voxel of the heaviest stages with an existing segmentation: the CT as read and
# in canonical order, the label map as read (up to 32 bit), as ids and canonical, its lookup
# table result, and working copies while writing (measured: about 2 GB for 268 M voxels, int16).
PEAK_BYTES_PER_VOXEL = 8.0
MEMORY_LIMIT_ENV = "SPINEFRAC_MEMORY_LIMIT_MB"  # override of the available memory, for tests and shared hosts
MR_MODALITIES = {"MR", "PT", "NM", "US", "XA", "CR", "DX", "MG"}


@dataclass(frozen=True)
class ImageHeader:
    size: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    direction: tuple[float, ...]
    components: int
    bytes_per_component: int
    pixel_type: str

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size, dtype=np.int64))


def read_header(path: Path) -> ImageHeader | None:
    """Size, spacing and pixel type without reading the voxels (None: the reader cannot tell)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return ImageHeader(
        size=tuple(reader.GetSize()),
        spacing_mm=tuple(reader.GetSpacing()),
        direction=tuple(reader.GetDirection()),
        components=reader.GetNumberOfComponents(),
        bytes_per_component=_bytes_per_component(reader.GetPixelID()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
    )


def _bytes_per_component(pixel_id: int) -> int:
    name = sitk.GetPixelIDValueAsString(pixel_id)
    for token, size in (("8-bit", 1), ("16-bit", 2), ("32-bit", 4), ("64-bit", 8)):
        if token in name:
            return size
    return 8


def available_memory_bytes() -> int | None:
    """MemAvailable from the kernel, or the override; None when neither is known."""
    override = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if override:
        try:
            megabytes = float(override)
        except ValueError:
            raise InputError(f"{MEMORY_LIMIT_ENV}={override} is not a number of megabytes (e.g. 4096)") from None
        if not megabytes > 0:
            raise InputError(f"{MEMORY_LIMIT_ENV}={override} must be a positive number of megabytes")
        return int(megabytes * 2**20)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimated_peak_bytes(voxels: int, bytes_per_voxel: int = 2) -> int:
    return int(voxels * (PEAK_BYTES_PER_VOXEL + 2 * max(bytes_per_voxel - 2, 0)))


def check_memory(voxels: int, bytes_per_voxel: int, path: Path, what: str = "CT") -> None:
    """Refuse up front when the run would not fit in memory, instead of being killed mid-way."""
    if voxels > MAX_VOXELS:
        raise InputError(f"{what} {path} has {voxels:,} voxels, more than the {MAX_VOXELS:,} supported")
    needed = estimated_peak_bytes(voxels, bytes_per_voxel)
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise InputError(
            f"{what} {path} ({voxels / 1e6:.0f} M voxels) needs about {needed / 2**30:.1f} GiB of memory, "
            f"{available / 2**30:.1f} GiB available: crop it to the spine or resample it to coarser slices"
        )


def _mm(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ") mm"


def check_geometry(size, spacing_mm, direction, path: Path, what: str = "CT") -> None:
    spacing = np.asarray(spacing_mm, dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{what} {path} has invalid voxel spacing {_mm(spacing)}")
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InputError(
            f"{what} {path} has voxel spacing {_mm(spacing)}, outside "
            f"{MIN_SPACING_MM}-{MAX_SPACING_MM} mm: the header's units or spacing are wrong"
        )
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-3):
        raise InputError(f"{what} {path} has non-orthogonal direction cosines (a sheared grid): resample it first")
    extent_mm = np.asarray(size, dtype=float) * spacing
    if np.any(extent_mm < MIN_EXTENT_MM):
        raise InputError(
            f"{what} {path} covers only {_mm(extent_mm.round(1))}: too small to hold a vertebra "
            f"(at least {MIN_EXTENT_MM:.0f} mm along every axis)"
        )


def check_hounsfield(image: sitk.Image, path: Path, what: str = "CT") -> list[str]:
    """Refuse images whose values cannot be CT in Hounsfield units; warn on doubtful ones."""
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise InputError(f"{what} {path} contains NaN or infinite values")
    sample = values.ravel()[:: max(1, values.size // 2_000_000)]  # a strided sample is plenty
    low, high = float(sample.min()), float(sample.max())
    if low == high:
        raise InputError(f"{what} {path} is blank: every voxel is {low:g}")
    if high > PLAUSIBLE_MAX_HU or low < -32768:
        raise InputError(f"{what} {path} has values from {low:g} to {high:g}: not Hounsfield units")
    if low > AIR_MAX_HU:
        raise InputError(
            f"{what} {path} has no air or lung values (minimum {low:g}): not a CT in Hounsfield units "
            "(an MR image, or a CT stored without its rescale intercept); pass --no-hu-check to use it anyway"
        )
    warnings = []
    if float(np.percentile(sample, 99.9)) >= METAL_HU:
        warnings.append(f"{what} has values above {METAL_HU:.0f} HU (metal implants or contrast): nearby levels may be "
                        "not assessable")
    return warnings


def check_modality(modality: str, path: Path) -> None:
    if modality.upper() in MR_MODALITIES:
        raise InputError(f"{path} is a {modality} image, not a CT")


# -- DICOM slice geometry ---------------------------------------------------------------------

MAX_GAP_FACTOR = 1.5  # a step over 1.5 x the usual slice distance means slices are missing
MAX_TILT_DEG = 0.5


def check_slice_positions(positions_mm: np.ndarray, orientation: np.ndarray, folder: Path,
                          names: list[str] | None = None, unread_note: str = "") -> list[str]:
    """Refuse duplicated or missing slices, naming the files around them; warn on gantry tilt.

    positions_mm: [n, 3] Image Position (Patient) of each slice in reading order; orientation: the six
    Image Orientation (Patient) cosines of the first slice; names: the slices' file names in that order;
    unread_note: what to add to a gap (files of the folder that could not be read: a slice may be among them)."""
    if len(positions_mm) < 2:
        return []
    names = names or [f"slice {k + 1}" for k in range(len(positions_mm))]
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, column)
    along = positions_mm @ normal
    order = np.argsort(along)
    steps = np.diff(along[order])
    if np.any(steps < 1e-3):
        at = int(np.argmax(steps < 1e-3))
        raise InputError(f"DICOM series in {folder} has duplicated slices ({names[order[at]]} and "
                         f"{names[order[at + 1]]} both at {along[order][at]:.2f} mm along the slice normal): "
                         "export the series again")
    typical = float(np.median(steps))
    if steps.max() > MAX_GAP_FACTOR * typical:
        at = int(np.argmax(steps))
        raise InputError(
            f"DICOM series in {folder} misses slices: a {steps.max():.2f} mm gap after {along[order][at]:.2f} mm "
            f"(between {names[order[at]]} and {names[order[at + 1]]}) where slices are {typical:.2f} mm apart"
            + unread_note)
    warnings = []
    travel = positions_mm[order[-1]] - positions_mm[order[0]]
    tilt_deg = float(np.degrees(np.arccos(np.clip(abs(travel @ normal) / np.linalg.norm(travel), 0, 1))))
    if tilt_deg > MAX_TILT_DEG:
        warnings.append(f"gantry tilt of {tilt_deg:.1f} degrees: slices are sheared against their normal; "
                        "distances along the table axis are approximate")
    return warnings


def itk_reason(error: Exception) -> str:
    """The useful line of an ITK exception: its last line, without the file:line location."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown reason"
    return reason.split(": ", 1)[-1] if "itk::ERROR" in reason else reason
