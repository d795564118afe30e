"""The source DICOM series of a run, read as DICOM (headers, UIDs), for objects that refer to it.

The CT itself is read by SimpleITK (``dicom_folder.read_dicom_series``); DICOM Segmentation and
Structured Report objects also need each slice's identity (SOP Instance UID, study, frame of
reference) in the same slice order. The files are taken from the same series choice (the stack
most like a CT volume) in the same order along the slice normal, and the grid is rebuilt from
their headers, so frame k of an exported object lies on slice k of the series. Slices unevenly
spaced were resampled onto a regular grid for the CT: frame k then holds the labels of the grid
slice nearest slice k (half a step away at most).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.dicom_folder import choose_ct_series, list_dicom_series, regular_slices
from spinefrac.io.images import ImageGrid

# What an object referring to the series needs from every slice (a series stripped of them by
# anonymisation can be read as an image, but nothing can point back to it).
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")


@dataclass
class SourceSeries:
    """A CT series as DICOM: headers in slice order (no pixel data) and the grid they span."""

    folder: Path
    datasets: list  # pydicom Datasets in order along the slice normal
    grid: ImageGrid  # the CT's grid: the slices', or the regular grid unevenly spaced slices were resampled onto
    slice_index: np.ndarray | None = None  # for resampled slices: the grid slice nearest each dataset

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)


def read_source_series(folder: Path | str, what: str = "source DICOM series") -> SourceSeries:
    """The CT series of ``folder`` as DICOM headers; InputError when it is not a usable CT series."""
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} {folder} is not a folder of DICOM files")
    chosen = choose_ct_series(list_dicom_series(folder), folder)
    try:
        datasets = [pydicom.dcmread(name, stop_before_pixels=True) for name in chosen.file_names]
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(f"{what} {folder}: a file cannot be read as DICOM ({error})") from None
    return SourceSeries(folder, datasets, *series_grid(datasets, folder, what))


def missing_identifiers(series: SourceSeries) -> list[str]:
    """The identifying attributes some slice lacks (empty when every slice can be referred to)."""
    return [name for name in REQUIRED_UIDS if any(not str(ds.get(name, "") or "").strip() for ds in series.datasets)]


def series_grid(datasets: list, folder: Path, what: str) -> tuple[ImageGrid, np.ndarray | None]:
    """The grid the slices span, in the file order, as SimpleITK builds it from the same files; for slices off
    an even grid, the regular grid ``read_dicom_series`` resamples them onto, and the slice of it nearest
    each dataset."""
    try:
        first = datasets[0]
        row, column = np.array(first.ImageOrientationPatient[:3], float), np.array(first.ImageOrientationPatient[3:], float)
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
        size = (int(first.Columns), int(first.Rows), len(datasets))
    except (AttributeError, TypeError, ValueError, IndexError):
        raise InputError(f"{what} {folder}: slices lack position, orientation or pixel spacing") from None
    normal = np.cross(row, column)
    along = positions @ normal
    regular = regular_slices(along)
    nearest = None
    if regular is not None:
        size = (*size[:2], regular[0])
        nearest = np.rint((along - along[0]) / regular[1]).astype(int)
    if len(datasets) > 1:
        step = (positions[-1] - positions[0]) / (size[2] - 1)
        slice_spacing = float(np.linalg.norm(step))
        normal = step / slice_spacing
    else:
        slice_spacing = float(first.get("SliceThickness", 1.0) or 1.0)
    direction = np.column_stack([row, column, normal])
    return ImageGrid(size, (column_spacing, row_spacing, slice_spacing), tuple(float(v) for v in positions[0]),
                     tuple(direction.ravel().tolist())), nearest


def on_series_grid(image: sitk.Image, series: SourceSeries, what: str) -> np.ndarray:
    """A label map (any axis order of the same voxels) as a [slice, row, column] array on the series'
    slices; InputError naming the difference when it lies on another grid."""
    reoriented = sitk.DICOMOrient(image, series.grid.orientation)
    drift = ImageGrid.of(reoriented).differences(series.grid)
    if drift:
        raise InputError(f"{what} {series.folder} is not on the CT's grid: {'; '.join(drift)}")
    values = sitk.GetArrayFromImage(reoriented)
    return values if series.slice_index is None else values[series.slice_index]
