"""The "existing label map" engine: a segmentation the user already has (VerSe ids,
TotalSegmentator ids, a Slicer .seg.nrrd with level names, or a folder of TotalSegmentator binary
masks), mapped to VerSe ids on the CT's grid.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.images import IMAGE_SUFFIX_PATTERN, CtVolume, ImageGrid, read_image, require_3d_scalar, to_canonical
from spinefrac.levels import LEVEL_BY_ID, TOTALSEGMENTATOR_V2_IDS, level_for_name
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import LabelConvention, SegmentationEngine, VertebraSegmentation


class ExistingLabelMap(SegmentationEngine):
    """Use a segmentation the user already has, mapped to our level ids."""

    name = "existing segmentation"

    def __init__(self, path: Path | str, convention: LabelConvention | str = LabelConvention.AUTO):
        self.path = Path(path)
        self.convention = LabelConvention(convention)

    def segment(self, ct: CtVolume, progress: Progress = silent) -> VertebraSegmentation:
        progress(0.0, f"reading segmentation {self.path.name}")
        if not self.path.exists():
            raise InputError(f"segmentation not found: {self.path}")
        if self.path.is_dir() and self.convention in (LabelConvention.AUTO, LabelConvention.NAMES):
            result = self._from_mask_folder(ct)
        else:
            result = self._from_label_file(ct)
        if not result.levels:
            ignored = ", ".join(result.ignored_labels) or "none"
            raise InputError(
                f"segmentation {self.path} contains no vertebra labels "
                f"(convention {result.convention.value}; labels found: {ignored})"
            )
        progress(1.0, f"{len(result.levels)} levels in the segmentation")
        return result

    # -- one label map file -------------------------------------------------------------

    def _from_label_file(self, ct: CtVolume) -> VertebraSegmentation:
        image = read_image(self.path, "segmentation")
        require_3d_scalar(image, self.path, "segmentation")
        segment_names = slicer_segment_names(image)  # before re-orientation, which drops the header
        image = _on_ct_grid(image, ct, self.path)
        source_ids = _integer_labels(image, self.path)
        counts = np.bincount(source_ids.ravel())  # voxels per source id, one pass over the map
        convention = self.convention
        if convention is LabelConvention.AUTO:
            convention = _guess_convention(counts, segment_names, image, self.path)
        lookup, ignored = _id_lookup(counts, convention, segment_names, self.path)
        verse_ids = lookup[source_ids]
        return VertebraSegmentation(
            label_map=_label_image(verse_ids, ct),
            engine=self.name,
            source=str(self.path),
            convention=convention,
            ignored_labels={name: int(counts[source_id]) for source_id, name in ignored.items()},
        )

    # -- a folder of binary masks (TotalSegmentator's default output) --------------------

    def _from_mask_folder(self, ct: CtVolume) -> VertebraSegmentation:
        verse_ids = np.zeros(ct.array().shape, dtype=np.uint8)
        ignored: list[str] = []
        overlap_voxels = 0
        mask_files = sorted(p for p in self.path.iterdir() if _is_image_file(p))
        if not mask_files:
            raise InputError(f"segmentation folder {self.path} holds no NIfTI or NRRD masks")
        for mask_path in mask_files:
            level = level_for_name(_stem(mask_path))
            if level is None:
                ignored.append(_stem(mask_path))  # another structure: not even read
                continue
            mask_image = read_image(mask_path, "mask")
            require_3d_scalar(mask_image, mask_path, "mask")
            mask = sitk.GetArrayFromImage(_on_ct_grid(mask_image, ct, mask_path)) > 0  # a copy: the image is a temporary
            overlap_voxels += int(np.count_nonzero(mask & (verse_ids > 0) & (verse_ids != level.verse_id)))
            verse_ids[mask] = level.verse_id
        notes = []
        if overlap_voxels:
            notes.append(f"{overlap_voxels} voxels were claimed by two masks; the later file in name order kept them")
        return VertebraSegmentation(
            label_map=_label_image(verse_ids, ct),
            engine=self.name,
            source=str(self.path),
            convention=LabelConvention.NAMES,
            ignored_labels=dict.fromkeys(ignored),
            notes=notes,
        )


_MASK_FILE = re.compile(rf"^(?P<stem>.+?)(?:\.seg)?{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and _MASK_FILE.match(path.name) is not None


def _stem(path: Path) -> str:
    return _MASK_FILE.match(path.name).group("stem")


def _on_ct_grid(image: sitk.Image, ct: CtVolume, path: Path) -> sitk.Image:
    """The label map in canonical orientation, refused unless it lies on the CT's grid."""
    canonical = to_canonical(image)
    differences = ImageGrid.of(canonical).differences(ct.grid)
    if differences:
        raise InputError(
            f"segmentation {path} is not on the CT's voxel grid ({'; '.join(differences)}); "
            "resample it onto the CT first"
        )
    return canonical


def _integer_labels(image: sitk.Image, path: Path) -> np.ndarray:
    values = sitk.GetArrayFromImage(image)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise InputError(f"segmentation {path} has non-integer voxel values; a label map is needed")
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise InputError(
            f"segmentation {path} has label values outside 0..65535 "
            f"(min {values.min()}, max {values.max()}); a label map is needed"
        )
    return values.astype(np.uint16)


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


TOTALSEGMENTATOR_MAX_ID = 117  # the v2 "total" task's ids run 1-117
MIN_TOTALSEGMENTATOR_LEVELS = 3  # vertebra ids of TotalSegmentator, in cranio-caudal order, to call it that


def _guess_convention(counts: np.ndarray, segment_names: dict[int, str], image: sitk.Image,
                      path: Path) -> LabelConvention:
    """The label convention from the whole id set, never from the largest id alone: VerSe when every
    id is a VerSe level; TotalSegmentator v2 when its vertebra ids (25-50) name at least three levels
    lying in cranio-caudal order; anything else (a stray voxel, an 'ignore' blob of 255, ids mixed
    from both) is refused with the ids and the option that picks a convention."""
    if segment_names:
        return LabelConvention.NAMES
    present = [int(v) for v in np.flatnonzero(counts) if v]
    beyond_verse = [v for v in present if v not in LEVEL_BY_ID]
    if not beyond_verse:
        return LabelConvention.VERSE
    ts_levels = {v: LEVEL_BY_ID[TOTALSEGMENTATOR_V2_IDS[v]] for v in present if v in TOTALSEGMENTATOR_V2_IDS
                 and v != 26}  # 26 (S1) shares the sacrum with 25
    if (max(present) <= TOTALSEGMENTATOR_MAX_ID and len(ts_levels) >= MIN_TOTALSEGMENTATOR_LEVELS
            and _in_craniocaudal_order(image, ts_levels)):
        return LabelConvention.TOTALSEGMENTATOR
    listed = ", ".join(f"{v} ({int(counts[v])} voxels)" for v in beyond_verse[:6])
    raise InputError(f"segmentation {path} has label ids that are not VerSe vertebra ids: {listed}"
                     f"{' ...' if len(beyond_verse) > 6 else ''}, and they do not read as TotalSegmentator v2 "
                     "either; pass --labels verse (those ids ignored) or --labels totalseg")


def _in_craniocaudal_order(image: sitk.Image, levels_by_id: dict) -> bool:
    """True when the labels' centroids run from cranial to caudal in the levels' order (LPS z superior)."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(sitk.Cast(image, sitk.sitkUInt32))
    ordered = sorted(levels_by_id, key=lambda label: levels_by_id[label].craniocaudal_rank)
    heights = [shape.GetCentroid(label)[2] for label in ordered]
    return all(upper > lower for upper, lower in zip(heights, heights[1:]))


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
    if convention is LabelConvention.VERSE:
        return source_id if source_id in LEVEL_BY_ID else None
    if convention is LabelConvention.TOTALSEGMENTATOR:
        return TOTALSEGMENTATOR_V2_IDS.get(source_id)
    level = level_for_name(segment_names.get(source_id, ""))
    return level.verse_id if level else None


def _label_image(verse_ids: np.ndarray, ct: CtVolume) -> sitk.Image:
    image = sitk.GetImageFromArray(verse_ids.astype(np.uint8, copy=False))
    image.CopyInformation(ct.image)
    return image
