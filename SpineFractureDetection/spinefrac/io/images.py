"""Reading CT images and label maps, and the canonical orientation used inside the pipeline.

Every image is brought to the axis order closest to LPS (ITK's identity direction: voxel
index i runs to the patient's left, j posterior, k superior), so that in a NumPy array
``array[k, j, i]`` axis 0 is always cranio-caudal. Oblique direction cosines are kept:
re-orientation only permutes and flips axes, so it is lossless and exactly reversible.
Outputs are mapped back onto the input's own grid (size, origin, spacing, direction).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError, OutputError
from spinefrac.io.file_headers import (
    check_data_size,
    gzip_trailer_matches,
    nifti_form_warning,
    nifti_header,
    nifti_stored_as_read,
)
from spinefrac.io.dicom_folder import SERIES_CHOICE_PREFIX, read_dicom_series
from spinefrac.io.input_checks import check_geometry, check_hounsfield, check_memory, itk_reason, read_header
from spinefrac.io.unmeasured import nifti_nonfinite, read_unmeasured_as_air, with_nonfinite

CANONICAL_ORIENTATION = "LPS"
# Physical tolerance for "same grid": well below any real voxel, above float32 header noise.
GRID_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-4
MIN_FREE_BYTES = 1 << 20  # below this, a file that came out short is taken for a full disk

# File names the readers take for a volume or label map, as a regex suffix (case-insensitive).
IMAGE_SUFFIX_PATTERN = r"\.(?:nii\.gz|nii|nrrd|mha)"
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")


@dataclass(frozen=True)
class ImageGrid:
    """Where an image's voxels are in space: size (i, j, k), spacing in mm, origin, direction."""

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major, columns are the axis directions (LPS)

    @classmethod
    def of(cls, image: sitk.Image) -> ImageGrid:
        return cls(
            tuple(int(s) for s in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    @property
    def orientation(self) -> str:
        """Three letters: the patient direction each voxel axis points to, e.g. 'RAS'."""
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    def differences(self, other: ImageGrid) -> list[str]:
        """Human-readable list of what differs between two grids (empty when they match)."""
        found = []
        if self.size != other.size:
            found.append(f"size {self.size} vs {other.size} voxels")
        if not np.allclose(self.spacing_mm, other.spacing_mm, atol=GRID_TOLERANCE_MM):
            found.append(f"spacing {_fmt(self.spacing_mm)} vs {_fmt(other.spacing_mm)} mm")
        if not np.allclose(self.origin_mm, other.origin_mm, atol=GRID_TOLERANCE_MM):
            found.append(f"origin {_fmt(self.origin_mm)} vs {_fmt(other.origin_mm)} mm")
        if not np.allclose(self.direction, other.direction, atol=DIRECTION_TOLERANCE):
            found.append(f"direction {self.orientation} vs {other.orientation}"
                         + (f", axes tilted {self.tilt_degrees(other):.2f} degrees apart"
                            if self.orientation == other.orientation else ""))
        return found

    def tilt_degrees(self, other: ImageGrid) -> float:
        """The largest angle between corresponding axes of two grids."""
        mine = np.array(self.direction).reshape(3, 3)
        theirs = np.array(other.direction).reshape(3, 3)
        cosines = np.clip(np.abs(np.sum(mine * theirs, axis=0)), 0.0, 1.0)  # columns are the axes
        return float(np.degrees(np.arccos(cosines.min())))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_mm)
        image.SetDirection(self.direction)
        return image


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


@dataclass
class CtVolume:
    """Stage 0 result: the CT in canonical orientation, and where it came from."""

    image: sitk.Image  # canonical orientation, Hounsfield units
    source_path: Path
    source_format: str  # "NIfTI", "NRRD", "DICOM series", ...
    source_grid: ImageGrid
    source_description: str = ""
    warnings: list[str] = field(default_factory=list)  # usable but doubtful input, said in the report
    series_choice: str = ""  # a DICOM folder of several series: which one was read and which were not

    def naming_series_choice(self, error: InputError) -> InputError:
        """``error`` with the series choice added, when there was one to make."""
        return InputError(f"{error} [{self.series_choice}]") if self.series_choice else error

    @property
    def grid(self) -> ImageGrid:
        return ImageGrid.of(self.image)

    def array(self) -> np.ndarray:
        """HU values as a [k, j, i] view (k cranio-caudal, increasing superiorly)."""
        return sitk.GetArrayViewFromImage(self.image)

    def to_source_grid(self, image: sitk.Image) -> sitk.Image:
        """Map an image on the canonical grid (e.g. a label map) back onto the input's grid."""
        restored = sitk.DICOMOrient(image, self.source_grid.orientation)
        drift = ImageGrid.of(restored).differences(self.source_grid)
        if drift:  # permutations are exact; anything else is a programming error
            raise AssertionError("re-orientation is not reversible: " + "; ".join(drift))
        # Copy the header bit for bit so the output grid is identical, not merely close.
        return self.source_grid.apply_to(restored)


def image_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "DICOM series"
    if name.endswith(_NIFTI_SUFFIXES):
        return "NIfTI"
    if name.endswith(_NRRD_SUFFIXES):
        return "NRRD"
    if name.endswith((".mha", ".mhd")):
        return "MetaImage"
    if name.endswith(".dcm"):
        return "DICOM file"
    return "image"


def require_regular_input(path: Path, what: str) -> None:
    """A named pipe or a device would make the reader wait forever or read something else: refused."""
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not (path.is_dir() or path.is_file()):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(path.stat().st_mode) else "a device or socket"
        raise InputError(f"{what} {path} is {kind}, not a file or folder")


def read_image(path: Path, what: str = "image") -> sitk.Image:
    """Read a file with SimpleITK, turning its errors into one-line messages. The NaN and infinite voxels of a
    float NIfTI (which ITK reads as 0) are given back as NaN, for the caller's checks to see them."""
    path = Path(path)
    require_regular_input(path, what)
    if path.is_dir():
        return read_dicom_series(path, what)[0]
    image = _read_file(path, what)
    return with_nonfinite(image, nifti_nonfinite(path, image)) if image_format(path) == "NIfTI" else image


def _read_file(path: Path, what: str) -> sitk.Image:
    # A .nii.gz is inflated twice, by the length check and by the reader, neither holding the GIL: side by side
    # they take the time of one. ITK reads a cut .nii.gz silently (other formats it reports on stderr), and the
    # check's verdict still comes first; a header announcing more than memory holds is checked before ITK reads.
    if not path.name.lower().endswith(".nii.gz") or not _announced_size_fits(path, what):
        _check_length(path, what)
        return _itk_read(path, what)
    if _stored_as_read(path):
        return _read_and_vouch(path, what)
    with ThreadPoolExecutor(max_workers=1) as pool:
        checked = pool.submit(_check_length, path, what)
        try:
            image, read_error = _itk_read(path, what), None
        except InputError as error:
            image, read_error = None, error
        checked.result()
    if read_error is not None:
        raise read_error
    return image


def _stored_as_read(path: Path) -> bool:
    try:
        return nifti_stored_as_read(nifti_header(path))
    except (OSError, EOFError, zlib.error):  # not gzip, cut inside the header: the readers below say so
        return False


def _read_and_vouch(path: Path, what: str) -> sitk.Image:
    """ITK's read of a .nii.gz whose voxels ITK holds as stored, vouched for by the file's gzip trailer (the
    CRC-32 and length of its header and voxels: a tenth of the time of inflating the file again, and one
    core left free). Where the trailer cannot vouch (a file cut short, a stream of several members) or ITK
    refuses the file, the length check is made in full, and its verdict comes first."""
    try:
        image = _itk_read(path, what)
    except InputError:
        _check_length(path, what)
        raise
    if not gzip_trailer_matches(path, sitk.GetArrayViewFromImage(image)):
        _check_length(path, what)
    return image


def _announced_size_fits(path: Path, what: str) -> bool:
    header = read_header(path)
    try:
        return header is not None and check_memory(header.voxels * header.components, header.bytes_per_component,
                                                   path, what) is None
    except InputError:
        return False


def _check_length(path: Path, what: str) -> None:
    try:
        check_data_size(path, what)
    except OSError as error:  # no permission to read, an I/O error of the disk
        raise InputError(f"{what} {path} cannot be read ({error.strerror})") from None


def _itk_read(path: Path, what: str) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{what} {path} is not a readable image ({itk_reason(error)})") from None


def require_3d_scalar(image: sitk.Image, path: Path, what: str) -> None:
    """Refuse images the pipeline cannot interpret as a single 3-D volume."""
    dimension = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{what} {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(colour or vector image); a scalar 3-D image is needed"
        )
    if dimension == 4:
        raise InputError(
            f"{what} {path} is 4-D (size {image.GetSize()}); a single 3-D volume is needed — "
            "extract one time point or channel first"
        )
    if dimension != 3:
        raise InputError(f"{what} {path} is {dimension}-D; a 3-D volume is needed")
    if min(image.GetSize()) < 2:
        raise InputError(
            f"{what} {path} is a single slice (size {image.GetSize()}); a 3-D volume is needed"
        )


def to_canonical(image: sitk.Image) -> sitk.Image:
    """The image in canonical axis order; itself when already so (images are never changed in place, and
    a copy of a 512^3 volume costs a quarter of a second)."""
    if ImageGrid.of(image).orientation == CANONICAL_ORIENTATION:
        return image
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def load_ct(path: Path | str, check_hu: bool = True) -> CtVolume:
    """Stage 0: read a CT (NIfTI, NRRD, MetaImage or DICOM folder) into canonical orientation.
    The header is checked (dimensions, geometry, memory) before the voxels are read."""
    path = Path(path)
    require_regular_input(path, "CT")
    description = ""
    warnings: list[str] = []
    if path.is_dir():
        image, description = read_dicom_series(path, "CT", warnings)
    else:
        _check_header_first(path, "CT")
        image = read_image(path, "CT")
        if image_format(path) == "NIfTI":
            warnings.extend(filter(None, [nifti_form_warning(path, image.GetOrigin(), image.GetDirection(),
                                                             image.GetSpacing())]))
    ct = ct_from_image(image, path, image_format(path), description or f"{image_format(path)} file", check_hu)
    ct.warnings[:0] = warnings
    ct.series_choice = next((w for w in warnings if w.startswith(SERIES_CHOICE_PREFIX) and "; ignored: " in w), "")
    return ct


class InputReads:
    """The CT (``load_ct``) and a label-map file (``read_image``), read one after the other in a thread of their
    own from the start of a run: ITK and zlib let go of the GIL, so the caller meanwhile imports the pipeline's
    measuring and drawing modules (scipy and matplotlib: about a second of a core). Not a daemon thread: an
    early exit (a refused output folder) waits for the read to end, since a thread stopped by the interpreter's
    exit inside ITK may abort the process. ``ct`` and ``label_image`` wait for their read and return its
    result or raise its error, as the readers called in the caller's thread would."""

    def __init__(self, ct_path: Path | str, segmentation_path: Path | str | None = None, check_hu: bool = True):
        self.ct_path, self.check_hu = Path(ct_path), check_hu
        labels = Path(segmentation_path) if segmentation_path is not None else None
        self.labels_path = labels if labels is not None and labels.is_file() else None  # not a folder of masks
        self._outcomes: dict[str, tuple] = {}
        self._ct_read = threading.Event()
        self._thread = threading.Thread(target=self._read, name="spinefrac-input-reads")
        self._thread.start()

    def _read(self) -> None:
        self._outcomes["ct"] = _outcome(load_ct, self.ct_path, check_hu=self.check_hu)
        self._ct_read.set()
        if self.labels_path is not None and self._outcomes["ct"][1] is None:
            self._outcomes["labels"] = _outcome(read_image, self.labels_path, "segmentation")

    def ct(self, path: Path | str, check_hu: bool) -> CtVolume:
        """The CT read here, or ``load_ct`` now for another file or HU check."""
        if Path(path) != self.ct_path or check_hu != self.check_hu:
            return load_ct(path, check_hu=check_hu)
        self._ct_read.wait()
        return _result(self._outcomes["ct"])

    def label_image(self) -> sitk.Image:
        """The label-map file read here (read now if the CT's read failed first)."""
        self.finish()
        if "labels" not in self._outcomes:
            return read_image(self.labels_path, "segmentation")
        return _result(self._outcomes["labels"])

    def finish(self) -> None:
        """Wait for the thread to end (before forking: a child must not inherit a lock it holds)."""
        self._thread.join()


def _outcome(read, *args, **kwargs) -> tuple:
    try:
        return read(*args, **kwargs), None
    except BaseException as error:  # noqa: BLE001 - raised in the caller's thread by _result
        return None, error


def _result(outcome: tuple):
    value, error = outcome
    if error is not None:
        raise error
    return value


def _check_header_first(path: Path, what: str) -> None:
    """Geometry and memory from the header alone, before read_image decompresses anything."""
    header = read_header(path)
    if header is None:
        return  # read_image gives the reader's own reason
    if len(header.size) == 3 and header.components == 1 and min(header.size) >= 2:
        check_geometry(header.size, header.spacing_mm, header.direction, path, what)
        check_memory(header.voxels, header.bytes_per_component, path, what)


def ct_from_image(image: sitk.Image, source: Path | str, source_format: str, description: str = "",
                  check_hu: bool = True) -> CtVolume:
    """Stage 0 from an image already in memory (e.g. a volume node in 3D Slicer)."""
    require_3d_scalar(image, Path(source), "CT")
    check_geometry(image.GetSize(), image.GetSpacing(), image.GetDirection(), Path(source), "CT")
    image, warnings = read_unmeasured_as_air(image, Path(source), "CT")
    warnings += check_hounsfield(image, Path(source), "CT") if check_hu else ["Hounsfield-unit check skipped"]
    return CtVolume(
        image=to_canonical(image),
        source_path=Path(source),
        source_format=source_format,
        source_grid=ImageGrid.of(image),
        source_description=description,
        warnings=warnings,
    )


def write_image(image: sitk.Image, path: Path) -> None:
    """Write with compression (NIfTI .gz / NRRD gzip) and a one-line error on failure. ITK's NIfTI writer
    does not report a full disk (the file is left cut short), so the written file is checked against
    its own header; a full disk is raised as such (ENOSPC) for the output folder to report."""
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as error:
        raise OutputError(f"cannot write {path} ({itk_reason(error)})") from None
    try:
        if not (image.GetNumberOfComponentsPerPixel() == 1 and str(path).lower().endswith(".nii.gz")
                and gzip_trailer_matches(Path(path), sitk.GetArrayViewFromImage(image))):
            check_data_size(Path(path), "written image")  # the trailer settles it in a tenth of the time
    except InputError:
        if shutil.disk_usage(Path(path).parent).free < MIN_FREE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise OutputError(f"cannot write {path} (the file came out incomplete)") from None
