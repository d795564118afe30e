"""The "existing label map" engine: a segmentation the user already has (VerSe ids,
TotalSegmentator ids, a Slicer .seg.nrrd with level names, or a folder of TotalSegmentator binary
masks), mapped to VerSe ids on the CT's grid.
"""

from __future__ import annotations

import itertools
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.file_headers import nifti_form_warning
from spinefrac.io.images import IMAGE_SUFFIX_PATTERN, CtVolume, ImageGrid, read_image, require_3d_scalar, to_canonical
from spinefrac.levels import (
    LEVEL_BY_ID,
    LEVELS,
    TOTALSEGMENTATOR_V1_IDS,
    TOTALSEGMENTATOR_V2_IDS,
    Level,
    level_for_name,
    sort_craniocaudal,
)
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import LabelConvention, SegmentationEngine, VertebraSegmentation, labelled_box


class ExistingLabelMap(SegmentationEngine):
    """Use a segmentation the user already has, mapped to our level ids."""

    name = "existing segmentation"

    def __init__(self, path: Path | str, convention: LabelConvention | str = LabelConvention.AUTO,
                 read_label_file=None):
        self.path = Path(path)
        self.convention = LabelConvention(convention)
        self._read_label_file = read_label_file  # a read begun ahead (InputReads.label_image), or None: read here

    def segment(self, ct: CtVolume, progress: Progress = silent) -> VertebraSegmentation:
        progress(0.0, f"reading segmentation {self.path.name}")
        if not self.path.exists():
            raise InputError(f"segmentation not found: {self.path}")
        if self.path.is_dir() and self.convention in (LabelConvention.AUTO, LabelConvention.NAMES):
            result = self._from_mask_folder(ct)
        else:
            result = self._from_label_file(ct)
        levels = result.levels
        if not levels:
            ignored = ", ".join(result.ignored_labels) or "none"
            raise InputError(
                f"segmentation {self.path} contains no vertebra labels "
                f"(convention {result.convention.value}; labels found: {ignored})"
            )
        progress(1.0, f"{len(levels)} levels in the segmentation")
        return result

    # -- one label map file -------------------------------------------------------------

    def _from_label_file(self, ct: CtVolume) -> VertebraSegmentation:
        image = self._read_label_file() if self._read_label_file else read_image(self.path, "segmentation")
        reading = read_label_ids(image, self.path, self.convention,
                                 on_grid=lambda read: _on_ct_grid(read, ct, self.path))
        label_map = reading.verse_ids
        label_map.CopyInformation(ct.image)  # the same grid within GRID_TOLERANCE_MM: the CT's header exactly
        return VertebraSegmentation(
            label_map=label_map,
            engine=self.name,
            source=str(self.path),
            convention=reading.convention,
            ignored_labels=reading.ignored_labels,
            notes=reading.notes,
        )

    # -- a folder of binary masks (TotalSegmentator's default output) --------------------

    def _from_mask_folder(self, ct: CtVolume) -> VertebraSegmentation:
        verse_ids = np.zeros(ct.array().shape, dtype=np.uint8)
        overlap_voxels = 0
        mask_files = sorted(p for p in self.path.iterdir() if _is_image_file(p))
        if not mask_files:
            raise InputError(f"segmentation folder {self.path} holds no NIfTI or NRRD masks")
        by_level, ignored = _masks_by_level(self.path, mask_files)
        for level, mask_path in by_level:
            mask_image = read_image(mask_path, "mask")
            require_3d_scalar(mask_image, mask_path, "mask")
            mask = sitk.GetArrayFromImage(_on_ct_grid(mask_image, ct, mask_path)) > 0  # a copy: the image is a temporary
            overlap_voxels += int(np.count_nonzero(mask & (verse_ids > 0) & (verse_ids != level.verse_id)))
            verse_ids[mask] = level.verse_id
        notes = []
        if overlap_voxels:
            notes.append(f"{overlap_voxels} voxels were claimed by two masks; the later file in name order kept them")
        label_map = sitk.GetImageFromArray(verse_ids)
        label_map.CopyInformation(ct.image)
        return VertebraSegmentation(
            label_map=label_map,
            engine=self.name,
            source=str(self.path),
            convention=LabelConvention.NAMES,
            ignored_labels=dict.fromkeys(ignored),
            notes=notes,
        )


def _masks_by_level(folder: Path, mask_files: list[Path]) -> tuple[list[tuple[Level, Path]], list[str]]:
    """(level, mask file) in name order, and the names of the other structures. Two files for one level
    (vertebrae_L1.nii.gz and vertebrae_L1.nrrd, or L1 and vertebrae_L1) are refused: merged, they would be
    graded as one vertebra."""
    by_level: dict[str, tuple[Level, Path]] = {}
    ignored: list[str] = []
    for mask_path in mask_files:
        level = level_for_name(_stem(mask_path))
        if level is None:
            ignored.append(_stem(mask_path))  # another structure: not even read
        elif level.name in by_level:
            raise InputError(f"segmentation folder {folder} has two masks for {level.name}: "
                             f"{by_level[level.name][1].name} and {mask_path.name}; remove one (merged, they "
                             "would be graded as one vertebra)")
        else:
            by_level[level.name] = (level, mask_path)
    return list(by_level.values()), ignored


_MASK_FILE = re.compile(rf"^(?P<stem>.+?)(?:\.seg)?{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and _MASK_FILE.match(path.name) is not None


def _stem(path: Path) -> str:
    return _MASK_FILE.match(path.name).group("stem")


def _on_ct_grid(image: sitk.Image, ct: CtVolume, path: Path) -> sitk.Image:
    """The label map in canonical orientation, refused unless it lies on the CT's grid; where a NIfTI's
    qform and sform disagree (the likely cause: one tool wrote the map with the other form), that is said."""
    canonical = to_canonical(image)
    differences = ImageGrid.of(canonical).differences(ct.grid)
    if differences:
        causes = form_disagreements([(ct.source_path, ct.source_grid), (path, ImageGrid.of(image))])
        raise InputError(
            f"segmentation {path} is not on the CT's voxel grid ({'; '.join(differences)}); "
            + (f"{causes}; " if causes else "") + "resample it onto the CT first"
        )
    return canonical


def form_disagreements(files: list[tuple[Path, ImageGrid]]) -> str:
    """What each NIfTI file among ``files`` (path, grid as ITK read it) says of its qform and sform when they
    disagree, joined; empty when none does."""
    found = []
    for path, grid in files:
        if Path(path).is_file() and Path(path).name.lower().endswith((".nii", ".nii.gz")):
            try:
                warning = nifti_form_warning(Path(path), grid.origin_mm, grid.direction, grid.spacing_mm)
            except (OSError, EOFError, ValueError, zlib.error):
                warning = None
            found += [warning] if warning else []
    return "; ".join(found)


def _integer_labels(values: np.ndarray, path: Path, background_outside: bool = False) -> np.ndarray:
    """The label values as uint16 (no copy when they are already unsigned and that small); refused when
    not whole numbers in 0..65535. ``background_outside``: the values are a box of a map that is 0 elsewhere."""
    if values.dtype in (np.uint8, np.uint16):
        return values
    if values.dtype.kind == "f" and (not np.all(np.isfinite(values))
                                     or not np.array_equal(values, np.round(values))):
        raise InputError(f"segmentation {path} has non-integer voxel values; a label map is needed")
    if values.size and (values.min() < 0 or values.max() > 65535):
        low = min(values.min(), 0) if background_outside else values.min()
        raise InputError(
            f"segmentation {path} has label values outside 0..65535 "
            f"(min {low}, max {values.max()}); a label map is needed"
        )
    return values.astype(np.uint16)


@dataclass
class LabelReading:
    """A label map read as VerSe ids: the ids image (uint8, canonical orientation), the convention read,
    the labels that are no vertebra (name -> voxels) and a note on how the convention was chosen."""

    verse_ids: sitk.Image
    convention: LabelConvention
    ignored_labels: dict[str, int]
    notes: list[str]


def read_label_ids(image: sitk.Image, path: Path, convention: LabelConvention | str = LabelConvention.AUTO,
                   on_grid=None) -> LabelReading:
    """A label map image (VerSe or TotalSegmentator v1/v2 ids, a Slicer .seg.nrrd with names, one layer or
    several) as VerSe ids, with the same convention detection for 'run --segmentation' and 'evaluate'.
    ``on_grid``: image -> the image in canonical orientation, refusing one off the CT's grid (default:
    to_canonical)."""
    convention = LabelConvention(convention)
    segment_names = slicer_segment_names(image)  # before re-orientation, which drops the header
    if image.GetNumberOfComponentsPerPixel() > 1 and segment_names:
        image, segment_names = flatten_segment_layers(image, path)
    require_3d_scalar(image, path, "segmentation")
    image = (on_grid or to_canonical)(image)
    values = sitk.GetArrayViewFromImage(image)
    box = labelled_box(values)  # outside it every voxel is 0, background in every convention
    source_ids = _integer_labels(values[box], path, background_outside=values[box].size < values.size)
    counts = np.bincount(source_ids.ravel(), minlength=1)  # voxels per source id, one pass over the box
    counts[0] += values.size - source_ids.size
    notes: list[str] = []
    if convention is LabelConvention.AUTO:
        convention, notes = _guess_convention(counts, segment_names, _boxed_image(source_ids, image, box), path)
    lookup, ignored = _id_lookup(counts, convention, segment_names, path)
    verse_ids = np.zeros(values.shape, dtype=np.uint8)
    verse_ids[box] = lookup[source_ids]
    labels = sitk.GetImageFromArray(verse_ids)
    labels.CopyInformation(image)
    return LabelReading(labels, convention,
                        {name: int(counts[source_id]) for source_id, name in ignored.items()}, notes)


def _boxed_image(source_ids: np.ndarray, image: sitk.Image, box: tuple[slice, ...]) -> sitk.Image:
    """The label values inside ``box`` as an image at their place in space (centroids are physical)."""
    if source_ids.size == 0:
        return image
    boxed = sitk.GetImageFromArray(source_ids)
    boxed.SetSpacing(image.GetSpacing())
    boxed.SetDirection(image.GetDirection())
    boxed.SetOrigin(image.TransformIndexToPhysicalPoint([int(box[2].start), int(box[1].start), int(box[0].start)]))
    return boxed


def slicer_segment_names(image: sitk.Image) -> dict[int, str]:
    """Label value -> segment name from a Slicer .seg.nrrd header (empty for other files)."""
    names: dict[int, str] = {}
    keys = set(image.GetMetaDataKeys())
    index = 0
    while f"Segment{index}_Name" in keys:
        label_key = f"Segment{index}_LabelValue"
        try:
            label_value = int(image.GetMetaData(label_key)) if label_key in keys else index + 1
        except ValueError:
            raise InputError(f"segment {index} ('{image.GetMetaData(f'Segment{index}_Name')}') has the label value "
                             f"'{image.GetMetaData(label_key)}', not a whole number: the .seg.nrrd header is damaged"
                             ) from None
        names[label_value] = image.GetMetaData(f"Segment{index}_Name")
        index += 1
    return names


def slicer_segments(image: sitk.Image) -> list[tuple[int, int, str]]:
    """(layer, label value, name) of every segment in a Slicer .seg.nrrd header."""
    keys = set(image.GetMetaDataKeys())
    segments = []
    index = 0
    while f"Segment{index}_Name" in keys:
        name = image.GetMetaData(f"Segment{index}_Name")
        fields = [f"Segment{index}_Layer", f"Segment{index}_LabelValue"]
        try:
            layer, value = (int(image.GetMetaData(key)) if key in keys else default
                            for key, default in zip(fields, (0, index + 1)))
        except ValueError:
            raise InputError(f"segment {index} ('{name}') has a layer or label value that is not a whole number: "
                             "the .seg.nrrd header is damaged") from None
        segments.append((layer, value, name))
        index += 1
    return segments


def flatten_segment_layers(image: sitk.Image, path: Path) -> tuple[sitk.Image, dict[int, str]]:
    """A .seg.nrrd with several layers (3D Slicer writes overlapping segments into separate layers: a 4-D
    file, read as a vector image) as one label map with a value per segment. Every segment is recovered
    from its layer and label value; two vertebrae claiming one voxel cannot be, so that is refused with the
    segments, the voxel count and the fix. Other segments (canal, discs) yield to the vertebrae."""
    layers = sitk.GetArrayViewFromImage(image)  # [k, j, i, layer]
    segments = slicer_segments(image)
    if any(not 0 <= layer < layers.shape[-1] for layer, _, _ in segments):
        raise InputError(f"segmentation {path} names a layer it does not have ({layers.shape[-1]} layers): "
                         "the .seg.nrrd header is damaged")
    flat = np.zeros(layers.shape[:3], dtype=np.uint16)
    names = {index: name for index, (_, _, name) in enumerate(segments, start=1)}
    is_level = {index: level_for_name(name) is not None for index, name in names.items()}
    for index in sorted(names, key=lambda i: is_level[i]):  # other segments first: vertebrae overwrite them
        layer, value, _ = segments[index - 1]
        mask = layers[..., layer] == value
        if is_level[index]:
            _refuse_overlap(flat, mask, index, names, is_level, path)
        flat[mask] = index
    result = sitk.GetImageFromArray(flat)
    result.SetOrigin(image.GetOrigin())
    result.SetSpacing(image.GetSpacing())
    result.SetDirection(image.GetDirection())
    return result, names


def _refuse_overlap(flat: np.ndarray, mask: np.ndarray, index: int, names: dict[int, str], is_level: dict[int, bool],
                    path: Path) -> None:
    claimed = flat[mask]
    other = next((int(v) for v in np.unique(claimed) if v and is_level[int(v)]), None)
    if other is None:
        return
    shared = int(np.count_nonzero(claimed == other))
    raise InputError(f"segmentation {path}: segments '{names[other]}' and '{names[index]}' overlap in {shared} voxels "
                     "(3D Slicer stored them in separate layers); a voxel cannot belong to two vertebrae: remove the "
                     "overlap in Segment Editor (Logical operators > Subtract, or paint with 'Modify other segments: "
                     "Overwrite all') and save again")


@dataclass(frozen=True, eq=False)  # compared by identity: one object per reading
class IdReading:
    """One way to read label ids: which ids name which level, and which ids the tool can write at all."""

    convention: LabelConvention
    title: str
    option: str  # the --labels value that picks it
    vertebra_ids: dict[int, int]  # source id -> VerSe id
    max_known_id: int | None  # the tool's largest class id (None: only the vertebra ids exist)
    min_levels: int  # levels in cranio-caudal order needed before ids are read this way unasked


# TotalSegmentator's class maps ("total" and "total_v1" in its map_to_binary.py): v2 has 117 classes
# with vertebrae 25-50, v1 104 classes with vertebrae 18-41 and the sacrum at 92.
ID_READINGS = (
    IdReading(LabelConvention.VERSE, "VerSe", "verse", {i: i for i in LEVEL_BY_ID}, None, 1),
    IdReading(LabelConvention.TOTALSEGMENTATOR, "TotalSegmentator v2", "totalseg-v2", TOTALSEGMENTATOR_V2_IDS, 117, 3),
    IdReading(LabelConvention.TOTALSEGMENTATOR_V1, "TotalSegmentator v1", "totalseg-v1", TOTALSEGMENTATOR_V1_IDS, 104,
              3),
)
READING_BY_CONVENTION = {reading.convention: reading for reading in ID_READINGS}
# --labels value -> convention ('totalseg' was the option's name before v1 could be read).
LABEL_OPTIONS = {"auto": LabelConvention.AUTO.value, "names": LabelConvention.NAMES.value,
                 "totalseg": LabelConvention.TOTALSEGMENTATOR.value,
                 **{reading.option: reading.convention.value for reading in ID_READINGS}}
PICK_OPTION = "pick one with " + ", ".join(f"--labels {r.option}" for r in ID_READINGS) + " (other ids are ignored)"
# A label that another reading calls a vertebra lies in this reading's column when its centroid is this
# close (left-right and front-back) to the nearest vertebra and at most this far above or below it.
COLUMN_RADIUS_MM = 20.0
COLUMN_REACH_MM = 70.0


def _guess_convention(counts: np.ndarray, segment_names: dict[int, str], image: sitk.Image,
                      path: Path) -> tuple[LabelConvention, list[str]]:
    """The label convention from the whole id set, never from the largest id alone. Each reading (VerSe,
    TotalSegmentator v2, v1) must know every id and put its levels in cranio-caudal order (v1 and v2
    number the spine in opposite directions from VerSe, and v1's ids are v2's shifted). When more than
    one fits, a reading loses if a label it calls an organ continues its vertebral column, then if it
    leaves a level missing inside the spine; what is still ambiguous, or fits nothing, is refused with
    the candidates and the option that picks one. Returns the convention and a note on the choice."""
    if segment_names:
        return LabelConvention.NAMES, []
    if counts[1:].sum() == 0:
        return LabelConvention.VERSE, []  # no labels at all: said as such by the caller
    present = [int(v) for v in np.flatnonzero(counts) if v]
    centroids = _centroids(image)
    problems = {reading: _reading_problem(reading, present, counts, centroids) for reading in ID_READINGS}
    fitting = [reading for reading, problem in problems.items() if problem is None]
    if not fitting:
        described = "; ".join(f"as {reading.title}: {problem}" for reading, problem in problems.items())
        raise InputError(f"segmentation {path} has label ids that read as no known convention ({described}); "
                         + PICK_OPTION)
    plausible = fitting if len(fitting) == 1 else _without_contradicted(fitting, present, centroids)
    chosen = plausible[0]
    missing = _missing_levels(chosen, present)
    if len(plausible) == 1 and (chosen.convention is LabelConvention.VERSE or not missing):
        others = ", ".join(r.title for r in fitting if r is not chosen)
        note = (f"label ids read as {chosen.title} ({_level_span(chosen, present)}); they also fit {others}, whose "
                "reading calls a bone of the column an organ or skips a level")
        return chosen.convention, [note] if others else []
    if len(plausible) == 1:  # e.g. VerSe ids on an image flipped head to foot read as v1 with a level skipped
        described = "; ".join(f"as {reading.title}: {problem}" for reading, problem in problems.items() if problem)
        raise InputError(f"segmentation {path} has label ids that read only as {chosen.title} "
                         f"({_level_span(chosen, present)}), with {', '.join(missing)} missing inside the spine "
                         f"({described}); " + PICK_OPTION)
    described = "; ".join(f"{r.title}: {_level_span(r, present)}" for r in plausible)
    raise InputError(f"segmentation {path} has label ids that fit more than one convention ({described}); "
                     + PICK_OPTION)


def _reading_problem(reading: IdReading, present: list[int], counts: np.ndarray,
                     centroids: dict[int, np.ndarray]) -> str | None:
    """Why these ids cannot be read this way (None: they can)."""
    if reading.max_known_id is None:
        unknown = [v for v in present if v not in reading.vertebra_ids]
    else:
        unknown = [v for v in present if v > reading.max_known_id]
    if unknown:
        listed = ", ".join(f"{v} ({int(counts[v])} voxels)" for v in unknown[:6])
        return f"not {reading.title} vertebra ids: {listed}{' ...' if len(unknown) > 6 else ''}"
    levels = _distinct_levels(reading, present)
    if len(levels) < reading.min_levels:
        return f"{len(levels)} of its vertebra ids present, {reading.min_levels} needed"
    if not _in_craniocaudal_order(centroids, levels):
        return "its levels are not in cranio-caudal order on the image"
    return None


def _distinct_levels(reading: IdReading, present: list[int]) -> dict[int, Level]:
    """Source id -> level for the reading's vertebra ids present, one source id per level (v2's S1 and
    sacrum both name the sacrum)."""
    levels: dict[int, Level] = {}
    for source_id in present:
        verse_id = reading.vertebra_ids.get(source_id)
        if verse_id is not None and verse_id not in {level.verse_id for level in levels.values()}:
            levels[source_id] = LEVEL_BY_ID[verse_id]
    return levels


def _centroids(image: sitk.Image) -> dict[int, np.ndarray]:
    """Physical centroid (LPS mm; the image is canonical, so z runs superiorly) of every label."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(image)
    return {int(label): np.array(shape.GetCentroid(label)) for label in shape.GetLabels()}


def _in_craniocaudal_order(centroids: dict[int, np.ndarray], levels_by_id: dict[int, Level]) -> bool:
    """True when the labels' centroids run from cranial to caudal in the levels' order."""
    ordered = sorted(levels_by_id, key=lambda label: levels_by_id[label].craniocaudal_rank)
    heights = [centroids[label][2] for label in ordered]
    return all(upper > lower for upper, lower in itertools.pairwise(heights))


def _without_contradicted(fitting: list[IdReading], present: list[int],
                          centroids: dict[int, np.ndarray]) -> list[IdReading]:
    """Drop readings that call a bone of the spinal column an organ, then readings with a gap."""
    vertebra_sets = {reading: set(_distinct_levels(reading, present)) for reading in fitting}
    in_column = [reading for reading in fitting
                 if not _organ_in_column(vertebra_sets[reading], set().union(*vertebra_sets.values())
                                         - set(reading.vertebra_ids), centroids)]
    without_gap = [reading for reading in in_column if not _missing_levels(reading, present)]
    return without_gap or in_column


def _organ_in_column(vertebrae: set[int], contested: set[int], centroids: dict[int, np.ndarray]) -> bool:
    """True when a label this reading calls no vertebra sits on its column, next to one of its vertebrae."""
    for label in contested:
        nearest = min(vertebrae, key=lambda v: abs(centroids[v][2] - centroids[label][2]))
        offset = centroids[label] - centroids[nearest]
        if np.hypot(offset[0], offset[1]) <= COLUMN_RADIUS_MM and abs(offset[2]) <= COLUMN_REACH_MM:
            return True
    return False


def _missing_levels(reading: IdReading, present: list[int]) -> list[str]:
    """Usual levels this reading skips between its highest and lowest level (T13 and L6 may be absent)."""
    ranks = {level.craniocaudal_rank for level in _distinct_levels(reading, present).values()}
    return [level.name for level in LEVELS if level.name not in ("T13", "L6")
            and min(ranks) < level.craniocaudal_rank < max(ranks) and level.craniocaudal_rank not in ranks]


def _level_span(reading: IdReading, present: list[int]) -> str:
    levels = sort_craniocaudal(_distinct_levels(reading, present).values())
    return f"{levels[0].name}-{levels[-1].name}" if len(levels) > 1 else levels[0].name


def _id_lookup(
    counts: np.ndarray, convention: LabelConvention, segment_names: dict[int, str], path: Path
) -> tuple[np.ndarray, dict[int, str]]:
    """From the voxel count per source id: a table source id -> VerSe id (0 = not a vertebra), and the
    ignored source labels."""
    present = [int(v) for v in np.flatnonzero(counts) if v]
    lookup = np.zeros(counts.size, dtype=np.uint8)
    ignored: dict[int, str] = {}
    named_by: dict[int, int] = {}  # VerSe id -> the source id that named it
    for source_id in present:
        verse_id = _map_one(source_id, convention, segment_names)
        if verse_id is None:
            ignored[source_id] = segment_names.get(source_id, str(source_id))
            continue
        if convention is LabelConvention.NAMES and verse_id in named_by and LEVEL_BY_ID[verse_id].is_vertebra:
            first = segment_names.get(named_by[verse_id], str(named_by[verse_id]))
            raise InputError(f"segmentation {path}: segments '{first}' and '{segment_names.get(source_id)}' both "
                             f"name {LEVEL_BY_ID[verse_id].name}; rename one (merging them would grade two "
                             "vertebrae as one)")
        named_by[verse_id] = source_id
        lookup[source_id] = verse_id
    return lookup, ignored


def _map_one(source_id: int, convention: LabelConvention, segment_names: dict[int, str]) -> int | None:
    if convention in READING_BY_CONVENTION:
        return READING_BY_CONVENTION[convention].vertebra_ids.get(source_id)
    level = level_for_name(segment_names.get(source_id, ""))
    return level.verse_id if level else None

