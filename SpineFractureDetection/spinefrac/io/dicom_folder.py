"""Reading the CT of a DICOM folder: its series (each as the largest stack of one geometry), the choice
of the CT among them, and the slices placed by their real positions.

GDCM groups the files and SimpleITK reads the chosen stack; the geometry is taken from each slice's
Image Position and Orientation (Patient). A series without them is refused (slice order and spacing
would be guessed); slices unevenly spaced are resampled onto a regular grid by their positions, since
ITK would place them evenly and squeeze what lies between the uneven steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.input_checks import MAX_GAP_FACTOR, check_memory, check_slice_positions, itk_reason, read_header

DICOM_MODALITY_TAG = "0008|0060"
DICOM_SERIES_DESCRIPTION_TAG = "0008|103e"
DICOM_SERIES_UID_TAG = "0020|000e"
DICOM_IMAGE_TYPE_TAG = "0008|0008"
DICOM_POSITION_TAG = "0020|0032"
DICOM_ORIENTATION_TAG = "0020|0037"
DICOM_ROWS_TAG, DICOM_COLUMNS_TAG, DICOM_PIXEL_SPACING_TAG = "0028|0010", "0028|0011", "0028|0030"
_GEOMETRY_TAGS = (DICOM_ORIENTATION_TAG, DICOM_ROWS_TAG, DICOM_COLUMNS_TAG, DICOM_PIXEL_SPACING_TAG)
GEOMETRY_TAG_NAMES = {DICOM_POSITION_TAG: "ImagePositionPatient (0020,0032)",
                      DICOM_ORIENTATION_TAG: "ImageOrientationPatient (0020,0037)"}

# A CT volume is a few hundred pixels across or covers a body's width; a smaller stack (a test or
# calibration series, a reconstruction of one region) is only taken when there is nothing else.
CT_MIN_MATRIX = 256
CT_MIN_FIELD_OF_VIEW_MM = 150.0
# Slices off a regular grid by more than this share of a step are resampled by their positions.
MAX_POSITION_DEVIATION = 0.1
MAX_NAMED_FILES = 5
SERIES_CHOICE_PREFIX = "DICOM folder: read CT series "


@dataclass(frozen=True)
class DicomStack:
    """The slices of one series that share one geometry (orientation, rows x columns, pixel spacing),
    in order along their normal; regular when no slice is repeated or missing."""

    series_uid: str
    modality: str
    description: str
    file_names: tuple[str, ...]
    localizer: bool  # ImageType says LOCALIZER (a scout): never a volume
    regular: bool
    left_out: int  # images of the series with another geometry (a localizer or reformat in the series)
    matrix: tuple[int, int] = (0, 0)  # rows, columns
    field_of_view_mm: float = 0.0  # the smaller in-plane extent (0: no pixel spacing)
    image_type: str = ""
    missing_geometry: str = ""  # "<tag> on n of m slices" when some slice lacks its position or orientation
    positions_mm: tuple[tuple[float, float, float], ...] = ()  # Image Position (Patient) in file order
    cosines: tuple[float, ...] = ()  # Image Orientation (Patient) of the first slice
    series_file_names: tuple[str, ...] = ()  # every file GDCM put in the series, images or not

    def named(self) -> str:
        kind = (", localizer" if self.localizer else ", no slice positions" if self.missing_geometry
                else "" if self.regular else ", irregular slice positions")
        text = f"{self.series_uid or '(no series UID)'} ({self.modality or 'no modality'}, {len(self.file_names)} "
        text += f"image{'s' if len(self.file_names) != 1 else ''}"
        if self.matrix != (0, 0):
            text += f", {self.matrix[0]} x {self.matrix[1]}"
        return text + kind + (f", '{self.description}')" if self.description else ")")

    @property
    def ct_like(self) -> bool:
        return min(self.matrix) >= CT_MIN_MATRIX or self.field_of_view_mm >= CT_MIN_FIELD_OF_VIEW_MM

    @property
    def original(self) -> bool:
        """ImageType does not say DERIVED (a reformat, projection or screen capture)."""
        return not self.image_type.upper().startswith("DERIVED")


def _slice_tags(file_name: str) -> dict[str, str] | None:
    tags = sitk.ImageFileReader()
    tags.SetFileName(file_name)
    try:
        tags.ReadImageInformation()
    except RuntimeError:
        return None  # no pixel data (a structured dose report) or not DICOM
    return {key: tags.GetMetaData(key).strip() for key in tags.GetMetaDataKeys()}


def list_dicom_series(folder: Path) -> list[DicomStack]:
    """Every DICOM series in a folder (not recursive), as the largest stack of one geometry."""
    reader = sitk.ImageSeriesReader()
    found = []
    for uid in reader.GetGDCMSeriesIDs(str(folder)):
        names = reader.GetGDCMSeriesFileNames(str(folder), uid)
        slices = [(name, tags) for name in names if (tags := _slice_tags(name)) is not None]
        if slices:
            found.append(replace(_largest_stack(uid, slices), series_file_names=tuple(names)))
    return found


def unread_files(folder: Path, series: list[DicomStack]) -> list[str]:
    """Names of the folder's files that are in no series: not DICOM, or DICOM cut short or damaged."""
    read = {Path(name).name for stack in series for name in stack.series_file_names}
    return sorted(path.name for path in Path(folder).iterdir()
                  if path.is_file() and path.name not in read and not path.name.startswith("."))


def _named_files(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED_FILES])
    return shown + (f" and {len(names) - MAX_NAMED_FILES} more" if len(names) > MAX_NAMED_FILES else "")


def _largest_stack(uid: str, slices: list[tuple[str, dict[str, str]]]) -> DicomStack:
    groups: dict[tuple, list[tuple[str, dict[str, str]]]] = {}
    for name, tags in slices:
        groups.setdefault(tuple(tags.get(tag, "") for tag in _GEOMETRY_TAGS), []).append((name, tags))
    stack = max(groups.values(), key=len)
    first = stack[0][1]
    geometry = slice_positions([tags for _, tags in stack])
    ordered, regular = _along_normal(stack, geometry)
    matrix = (_integer(first.get(DICOM_ROWS_TAG)), _integer(first.get(DICOM_COLUMNS_TAG)))
    placed = () if isinstance(geometry, str) else (tuple(map(tuple, geometry[0][ordered])), tuple(geometry[1]))
    return DicomStack(uid, first.get(DICOM_MODALITY_TAG, ""), first.get(DICOM_SERIES_DESCRIPTION_TAG, ""),
                      tuple(stack[i][0] for i in ordered), "LOCALIZER" in first.get(DICOM_IMAGE_TYPE_TAG, "").upper(),
                      regular, len(slices) - len(stack), matrix, _field_of_view_mm(first, matrix),
                      first.get(DICOM_IMAGE_TYPE_TAG, ""), geometry if isinstance(geometry, str) else "", *placed)


def _integer(text: str | None) -> int:
    try:
        return int(float(text or 0))
    except ValueError:
        return 0


def _field_of_view_mm(tags: dict[str, str], matrix: tuple[int, int]) -> float:
    try:
        row_spacing, column_spacing = (float(v) for v in tags[DICOM_PIXEL_SPACING_TAG].split("\\")[:2])
    except (KeyError, ValueError):
        return 0.0
    return min(matrix[0] * row_spacing, matrix[1] * column_spacing)


def slice_positions(tags_of_slices: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray] | str:
    """The [n, 3] Image Position (Patient) of each slice and the first slice's six orientation cosines;
    where some slice lacks one of them (or it holds no numbers): which tag, on how many slices."""
    found = {}
    for tag, count in ((DICOM_ORIENTATION_TAG, 6), (DICOM_POSITION_TAG, 3)):
        values = [_numbers(tags.get(tag, ""), count) for tags in tags_of_slices]
        lacking = sum(v is None for v in values)
        if lacking:
            return f"{GEOMETRY_TAG_NAMES[tag]} on {lacking} of {len(values)} slices"
        found[tag] = np.array(values)
    return found[DICOM_POSITION_TAG], found[DICOM_ORIENTATION_TAG][0]


def _numbers(text: str, count: int) -> list[float] | None:
    try:
        values = [float(v) for v in text.split("\\")]
    except ValueError:
        return None
    return values if len(values) == count and np.all(np.isfinite(values)) else None


def _along_normal(stack: list, geometry: tuple[np.ndarray, np.ndarray] | str) -> tuple[list[int], bool]:
    """The slices' order along their normal and whether the steps are regular (no slice repeated, none
    missing); without positions, GDCM's order and not regular."""
    if isinstance(geometry, str):
        return list(range(len(stack))), False
    positions, cosines = geometry
    along = positions @ np.cross(cosines[:3], cosines[3:6])
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    regular = len(stack) > 1 and bool(steps.min() > 1e-3 and steps.max() <= MAX_GAP_FACTOR * np.median(steps))
    return [int(i) for i in order], regular


def choose_ct_series(series: list[DicomStack], folder: Path) -> DicomStack:
    """The CT stack most like a CT volume: in-plane size or field of view of a CT before all, then slice
    positions present and regular, ORIGINAL before DERIVED images, then the most slices; localizers and
    single images are never taken."""
    if not series:
        raise InputError(f"no DICOM series found in folder {folder}")
    ct_series = [s for s in series if s.modality.upper() == "CT"]
    if not ct_series:
        modalities = ", ".join(sorted({s.modality or "unknown" for s in series}))
        raise InputError(f"folder {folder} holds no CT series (modalities found: {modalities})")
    volumes = [s for s in ct_series if not s.localizer and len(s.file_names) > 1]
    if not volumes:
        raise InputError(f"folder {folder} holds no CT volume, only single CT images or localizers: "
                         + "; ".join(s.named() for s in ct_series))
    return max(volumes, key=lambda s: (s.ct_like, not s.missing_geometry, s.regular, s.original, len(s.file_names)))


def read_dicom_series(folder: Path, what: str = "image", warnings: list[str] | None = None) -> tuple[sitk.Image, str]:
    """Read the CT series of a DICOM folder; returns the image and a description of the choice. What was
    left out (other series, images of another geometry in the chosen one) goes to the warnings."""
    series = list_dicom_series(folder)
    chosen = choose_ct_series(series, folder)
    others = [s for s in series if s is not chosen]
    choice = series_choice_note(chosen, others)
    unread = unread_files(folder, series)
    try:  # a refusal of the series read names the others of the folder, which were not read
        if chosen.missing_geometry:
            raise InputError(f"{what}: the DICOM series {chosen.named()} in {folder} has no "
                             f"{chosen.missing_geometry}: where its slices lie is unknown (SliceThickness and "
                             "InstanceNumber do not place them); export the series with its geometry")
        found = _checked_positions(chosen, folder, unread)
        image, resampled = _placed_by_positions(_read_stack(chosen, folder, what), chosen)
    except InputError as error:
        raise InputError(f"{error} [{choice}]") if others else error from None
    found += resampled
    if unread:
        found.append(f"DICOM folder: {len(unread)} file(s) not read as DICOM images (not DICOM, or cut short or "
                     f"damaged): {_named_files(unread)}")
    if others or chosen.left_out:
        found.insert(0, choice)
    if warnings is not None:
        warnings.extend(found)
    description = f"DICOM CT series {chosen.series_uid or '(no series UID)'}, {len(chosen.file_names)} slices"
    if chosen.description:
        description += f", '{chosen.description}'"
    if others:
        description += f"; {len(others)} other series in the folder ignored"
    return image, description


def series_choice_note(chosen: DicomStack, others: list[DicomStack]) -> str:
    """Which series of the folder was read, and which were not."""
    return (f"{SERIES_CHOICE_PREFIX}{chosen.named()}"
            + (f" without its {chosen.left_out} images of another geometry" if chosen.left_out else "")
            + ("; ignored: " + "; ".join(s.named() for s in others) if others else ""))


def _read_stack(chosen: DicomStack, folder: Path, what: str) -> sitk.Image:
    first = read_header(Path(chosen.file_names[0]))
    if first is not None:
        check_memory(first.size[0] * first.size[1] * len(chosen.file_names), first.bytes_per_component, folder, what)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.file_names))
    reader.MetaDataDictionaryArrayUpdateOn()
    # ITK warns on stderr of slices unevenly spaced; they are resampled and said in the report instead.
    warned = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(warned and _evenly_spaced(chosen))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{what}: DICOM series in {folder} cannot be read ({itk_reason(error)})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warned)
    _require_pixel_spacing(reader, folder, what)
    return image


def _evenly_spaced(chosen: DicomStack) -> bool:
    return len(chosen.positions_mm) < 3 or regular_slices(_along_normal_mm(chosen)) is None


def _require_pixel_spacing(reader: sitk.ImageSeriesReader, folder: Path, what: str) -> None:
    """Without PixelSpacing (0028,0030) or ImagerPixelSpacing (0018,1164) the reader assumes 1 mm:
    every height and volume would be silently wrong, so such a series is refused."""
    if not any(reader.HasMetaDataKey(0, tag) and reader.GetMetaData(0, tag).strip()
               for tag in (DICOM_PIXEL_SPACING_TAG, "0018|1164")):
        raise InputError(f"{what}: the DICOM series in {folder} has no PixelSpacing (0028,0030): its voxel size is "
                         "unknown, and millimetres measured on it would be wrong")


def _checked_positions(chosen: DicomStack, folder: Path, unread: list[str]) -> list[str]:
    """Before the voxels are read: duplicated or missing slices refused (naming the files around them, and
    the files of the folder that could not be read), gantry tilt warned."""
    if len(chosen.file_names) < 2:
        return []
    names = [Path(name).name for name in chosen.file_names]
    unread_note = f" (files in the folder not read as DICOM images: {_named_files(unread)})" if unread else ""
    return check_slice_positions(np.array(chosen.positions_mm), np.array(chosen.cosines), folder, names, unread_note)


def _along_normal_mm(chosen: DicomStack) -> np.ndarray:
    cosines = np.array(chosen.cosines)
    return np.array(chosen.positions_mm) @ np.cross(cosines[:3], cosines[3:6])


def _placed_by_positions(image: sitk.Image, chosen: DicomStack) -> tuple[sitk.Image, list[str]]:
    """The image as read, or resampled onto a regular grid by the slices' positions when they lie off an
    even grid (ITK spaces them evenly); with a note saying so."""
    if len(chosen.file_names) < 3:
        return image, []
    along = _along_normal_mm(chosen)
    regular = regular_slices(along)
    if regular is None:
        return image, []
    steps = np.diff(along)
    resampled = resample_along_slices(image, along, regular[1])
    return resampled, [f"uneven slice spacing ({steps.min():.2f}-{steps.max():.2f} mm, slices up to "
                       f"{_off_even_grid_mm(along):.2f} mm off an even grid): resampled by the slices' positions onto "
                       f"a regular {resampled.GetSpacing()[2]:.2f} mm grid (linear interpolation along the slice "
                       f"normal; {len(along)} slices -> {resampled.GetSize()[2]})"]


def _off_even_grid_mm(along_mm: np.ndarray) -> float:
    """How far the farthest slice lies from an even grid from the first slice to the last (ITK's grid)."""
    even = np.linspace(along_mm[0], along_mm[-1], len(along_mm))
    return float(np.abs(along_mm - even).max())


def regular_slices(along_mm: np.ndarray) -> tuple[int, float] | None:
    """For slices at ``along_mm`` (ascending) off an even grid by more than a tenth of a step: the slice count
    and step of the regular grid they are resampled onto (the median step, fitted to end on the last
    slice); None when the even grid from the first slice to the last places every slice closely enough."""
    if len(along_mm) < 3:
        return None
    span_mm = float(along_mm[-1] - along_mm[0])
    if _off_even_grid_mm(along_mm) <= MAX_POSITION_DEVIATION * span_mm / (len(along_mm) - 1):
        return None
    count = max(2, int(round(span_mm / float(np.median(np.diff(along_mm))))) + 1)
    return count, span_mm / (count - 1)


def resample_along_slices(image: sitk.Image, along_mm: np.ndarray, step_mm: float) -> sitk.Image:
    """``image`` (slice k at ``along_mm[k]`` along its normal, ascending) on a regular grid from the first
    slice to the last, with the step nearest ``step_mm`` that ends on the last slice; each new slice
    interpolated linearly between the two real slices around it. Same pixel type, origin and direction."""
    values = sitk.GetArrayViewFromImage(image)
    span_mm = float(along_mm[-1] - along_mm[0])
    count = max(2, int(round(span_mm / step_mm)) + 1)
    targets = along_mm[0] + np.linspace(0.0, span_mm, count)
    below = np.clip(np.searchsorted(along_mm, targets, side="right") - 1, 0, len(along_mm) - 2)
    weights = (targets - along_mm[below]) / (along_mm[below + 1] - along_mm[below])
    out = np.empty((count, *values.shape[1:]), values.dtype)
    for k, (index, weight) in enumerate(zip(below, weights)):  # slice by slice: no volume-sized float copy
        mixed = (1.0 - weight) * values[index].astype(np.float32) + weight * values[index + 1]
        out[k] = np.rint(mixed) if values.dtype.kind in "iu" else mixed
    resampled = sitk.GetImageFromArray(out)
    resampled.SetOrigin(image.GetOrigin())
    resampled.SetDirection(image.GetDirection())
    resampled.SetSpacing((*image.GetSpacing()[:2], span_mm / (count - 1)))
    return resampled
