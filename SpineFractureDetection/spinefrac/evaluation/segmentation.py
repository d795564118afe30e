"""Evaluation of vertebra segmentation and level identification against a reference label map.

Segmentation, per level (VerSe ids; prediction and reference must lie on the same voxel grid,
in any axis order: both are brought to the canonical orientation first):
  dice             2 |P and R| / (|P| + |R|); 0 for a level found in one map only
  hd95_mm          95th-percentile symmetric Hausdorff distance between the two surfaces, mm:
                   the larger of the two directed 95th percentiles (surface voxel to nearest
                   surface voxel of the other map, Euclidean in physical space)
  localisation_mm  distance between the level's centroids (physical, mm) in both maps
  identified       VerSe challenge rule: the predicted centroid of the level lies within
                   20 mm of the reference centroid, and no other reference centroid is nearer
A case's mean Dice averages over every level in either map (missed and extra levels count 0);
its identification rate is identified levels / reference levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import SimpleITK as sitk

from spinefrac.coordinates import ras_from_lps
from spinefrac.errors import InputError
from spinefrac.evaluation.grading import LevelGrade
from spinefrac.evaluation.metrics import dice_coefficient, hausdorff95_mm, mean
from spinefrac.io.images import ImageGrid, read_image, require_3d_scalar, to_canonical
from spinefrac.io.outputs import rounded_or_none
from spinefrac.levels import LEVEL_BY_ID, Level, sort_craniocaudal

IDENTIFICATION_RADIUS_MM = 20.0  # VerSe challenge

MAX_VERSE_ID = max(LEVEL_BY_ID)

STATUS_MATCHED, STATUS_MISSED, STATUS_EXTRA = "matched", "missed", "extra"


# -- result types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelSegmentationScore:
    """One level of one case: overlap, surface distance and identification."""

    level: Level
    reference_voxels: int
    predicted_voxels: int
    dice: float  # 0 when the level is in one map only
    hd95_mm: float | None  # None unless the level is in both maps
    reference_centroid_ras_mm: tuple[float, float, float] | None
    predicted_centroid_ras_mm: tuple[float, float, float] | None
    localisation_mm: float | None  # None unless the level is in both maps
    identified: bool  # VerSe rule; always False for a level absent from the reference

    @property
    def status(self) -> str:
        if self.reference_voxels and self.predicted_voxels:
            return STATUS_MATCHED
        return STATUS_MISSED if self.reference_voxels else STATUS_EXTRA

    def to_dict(self) -> dict:
        return {
            "level": self.level.name,
            "verse_id": self.level.verse_id,
            "status": self.status,
            "reference_voxels": self.reference_voxels,
            "predicted_voxels": self.predicted_voxels,
            "dice": rounded_or_none(self.dice, 4),
            "hd95_mm": rounded_or_none(self.hd95_mm, 2),
            "localisation_mm": rounded_or_none(self.localisation_mm, 2),
            "identified": self.identified,
            "reference_centroid_ras_mm": _rounded_point(self.reference_centroid_ras_mm),
            "predicted_centroid_ras_mm": _rounded_point(self.predicted_centroid_ras_mm),
        }


@dataclass
class CaseEvaluation:
    """Everything measured on one case."""

    name: str
    prediction_source: str
    reference_source: str
    levels: list[LevelSegmentationScore]  # cranial to caudal, every level in either map
    grades: list[LevelGrade] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the label maps were read, when not as VerSe ids

    @property
    def reference_levels(self) -> list[LevelSegmentationScore]:
        return [score for score in self.levels if score.reference_voxels]

    @property
    def matched_levels(self) -> list[LevelSegmentationScore]:
        return [score for score in self.levels if score.status == STATUS_MATCHED]

    @property
    def missed_levels(self) -> list[str]:
        return [score.level.name for score in self.levels if score.status == STATUS_MISSED]

    @property
    def extra_levels(self) -> list[str]:
        return [score.level.name for score in self.levels if score.status == STATUS_EXTRA]

    @property
    def identified_count(self) -> int:
        return sum(score.identified for score in self.levels)

    @property
    def identification_rate(self) -> float | None:
        reference_count = len(self.reference_levels)
        return self.identified_count / reference_count if reference_count else None

    @property
    def mean_dice(self) -> float | None:
        return mean(score.dice for score in self.levels)

    @property
    def mean_hd95_mm(self) -> float | None:
        return mean(score.hd95_mm for score in self.matched_levels)

    @property
    def mean_localisation_mm(self) -> float | None:
        return mean(score.localisation_mm for score in self.matched_levels)

    def to_dict(self) -> dict:
        return {
            "case": self.name,
            "prediction": self.prediction_source,
            "reference": self.reference_source,
            "reference_level_count": len(self.reference_levels),
            "identified_level_count": self.identified_count,
            "identification_rate": rounded_or_none(self.identification_rate, 4),
            "mean_dice": rounded_or_none(self.mean_dice, 4),
            "mean_hd95_mm": rounded_or_none(self.mean_hd95_mm, 2),
            "mean_localisation_mm": rounded_or_none(self.mean_localisation_mm, 2),
            "missed_levels": self.missed_levels,
            "extra_levels": self.extra_levels,
            "levels": [score.to_dict() for score in self.levels],
            "grades": [grade.to_dict() for grade in self.grades],
            "notes": self.notes,
        }


# -- segmentation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _LabelMapStatistics:
    voxels: dict[int, int]
    centroid_lps_mm: dict[int, np.ndarray]
    bounding_box_kji: dict[int, tuple[np.ndarray, np.ndarray]]  # [start, stop) in array axis order


def read_label_map(path: Path | str, what: str = "label map") -> sitk.Image:
    """A VerSe-id label map file in canonical orientation, as uint8 (other ids are refused)."""
    return verse_label_image(read_3d(path, what), f"{what} {path}")


def read_3d(path: Path | str, what: str) -> sitk.Image:
    image = read_image(Path(path), what)
    require_3d_scalar(image, Path(path), what)
    return image


def verse_label_image(image: sitk.Image, what: str = "label map") -> sitk.Image:
    """``image`` in canonical orientation as uint8 VerSe ids; InputError for anything else."""
    return _verse_labels(image, what)[0]


def _verse_labels(image: sitk.Image, what: str) -> tuple[sitk.Image, _LabelMapStatistics]:
    values = sitk.GetArrayViewFromImage(image)
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if not np.isfinite([low, high]).all():  # NaN or infinity anywhere
        raise InputError(f"{what} has non-integer voxel values; a label map is needed")
    if low < 0 or high > MAX_VERSE_ID:
        outside = np.unique(values[(values < 0) | (values > MAX_VERSE_ID)])
        raise InputError(f"{what} has label ids that are not VerSe vertebra ids: {_id_list(outside)}")
    ids = values.astype(np.uint8)  # in range now; VerSe masks are often float64: 8 times the memory
    if values.dtype.kind == "f" and not np.array_equal(values, ids):
        raise InputError(f"{what} has non-integer voxel values; a label map is needed")
    labels = sitk.GetImageFromArray(ids)
    labels.CopyInformation(image)
    labels = to_canonical(labels)
    statistics = _label_statistics(labels)
    unknown = [label for label in statistics.voxels if label not in LEVEL_BY_ID]
    if unknown:
        raise InputError(f"{what} has label ids that are not VerSe vertebra ids: {_id_list(unknown)}")
    return labels, statistics


def _id_list(ids: Iterable) -> str:
    shown = [f"{float(v):g}" for v in list(ids)[:10]]
    return ", ".join(shown) + " (VerSe: 1-25 C1-L6, 26 sacrum, 28 T13)"


def _label_statistics(labels: sitk.Image) -> _LabelMapStatistics:
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputePerimeterOff()
    shape.Execute(labels)
    voxels, centroids, boxes = {}, {}, {}
    for label in shape.GetLabels():
        voxels[label] = int(shape.GetNumberOfPixels(label))
        centroids[label] = np.array(shape.GetCentroid(label))
        box = shape.GetBoundingBox(label)  # (i0, j0, k0, ni, nj, nk)
        start = np.array(box[:3][::-1])
        boxes[label] = (start, start + np.array(box[3:][::-1]))
    return _LabelMapStatistics(voxels, centroids, boxes)


def evaluate_segmentation(predicted: sitk.Image, reference: sitk.Image, name: str = "",
                          prediction_source: str = "", reference_source: str = "") -> CaseEvaluation:
    """Score a predicted label map against a reference on the same grid (VerSe ids, any axis order)."""
    prefix = f"case {name}: " if name else ""
    predicted, predicted_stats = _verse_labels(predicted, _described(f"{prefix}predicted label map", prediction_source))
    reference, reference_stats = _verse_labels(reference, _described(f"{prefix}reference label map", reference_source))
    differences = ImageGrid.of(predicted).differences(ImageGrid.of(reference))
    if differences:
        raise InputError(f"{prefix}prediction and reference are not on the same voxel grid "
                         f"({'; '.join(differences)}); resample the prediction onto the reference grid")
    identified = _identified_levels(predicted_stats.centroid_lps_mm, reference_stats.centroid_lps_mm)
    predicted_array = sitk.GetArrayViewFromImage(predicted)
    reference_array = sitk.GetArrayViewFromImage(reference)
    array_spacing_mm = tuple(reversed(predicted.GetSpacing()))
    present = predicted_stats.voxels.keys() | reference_stats.voxels.keys()
    scores = [
        _level_score(level, predicted_array, reference_array, predicted_stats, reference_stats,
                     array_spacing_mm, identified)
        for level in sort_craniocaudal(LEVEL_BY_ID[label] for label in present)
    ]
    return CaseEvaluation(name, prediction_source, reference_source, scores)


def _described(what: str, source: str) -> str:
    return f"{what} {source}".strip() if source else what


def _level_score(level: Level, predicted: np.ndarray, reference: np.ndarray,
                 predicted_stats: _LabelMapStatistics, reference_stats: _LabelMapStatistics,
                 array_spacing_mm: tuple[float, ...], identified: set[int]) -> LevelSegmentationScore:
    label = level.verse_id
    predicted_voxels = predicted_stats.voxels.get(label, 0)
    reference_voxels = reference_stats.voxels.get(label, 0)
    predicted_centroid = predicted_stats.centroid_lps_mm.get(label)
    reference_centroid = reference_stats.centroid_lps_mm.get(label)
    dice, hd95, localisation = 0.0, None, None
    if predicted_voxels and reference_voxels:
        box = _union_box(predicted_stats.bounding_box_kji[label], reference_stats.bounding_box_kji[label])
        predicted_mask, reference_mask = predicted[box] == label, reference[box] == label
        overlap = int(np.count_nonzero(predicted_mask & reference_mask))
        dice = dice_coefficient(overlap, reference_voxels, predicted_voxels)
        hd95 = hausdorff95_mm(reference_mask, predicted_mask, array_spacing_mm)
        localisation = float(np.linalg.norm(predicted_centroid - reference_centroid))
    return LevelSegmentationScore(
        level=level,
        reference_voxels=reference_voxels,
        predicted_voxels=predicted_voxels,
        dice=dice,
        hd95_mm=hd95,
        reference_centroid_ras_mm=_ras(reference_centroid),
        predicted_centroid_ras_mm=_ras(predicted_centroid),
        localisation_mm=localisation,
        identified=label in identified,
    )


def _union_box(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]) -> tuple[slice, ...]:
    start, stop = np.minimum(first[0], second[0]), np.maximum(first[1], second[1])
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def _identified_levels(predicted_lps_mm: Mapping[int, np.ndarray],
                       reference_lps_mm: Mapping[int, np.ndarray]) -> set[int]:
    """Reference levels identified by the VerSe rule (near enough, and nearest to the right level)."""
    reference_ids = sorted(reference_lps_mm)
    if not reference_ids:
        return set()
    reference_points = np.array([reference_lps_mm[label] for label in reference_ids])
    identified = set()
    for label in reference_ids:
        if label not in predicted_lps_mm:
            continue
        distances = np.linalg.norm(reference_points - predicted_lps_mm[label], axis=1)
        nearest = reference_ids[int(np.argmin(distances))]
        if nearest == label and distances[reference_ids.index(label)] <= IDENTIFICATION_RADIUS_MM:
            identified.add(label)
    return identified


def _ras(point_lps: np.ndarray | None) -> tuple[float, float, float] | None:
    return None if point_lps is None else ras_from_lps(point_lps)


# -- small helpers --------------------------------------------------------------------------


def _rounded_point(point: tuple[float, float, float] | None) -> list[float] | None:
    return None if point is None else [round(v, 2) for v in point]
