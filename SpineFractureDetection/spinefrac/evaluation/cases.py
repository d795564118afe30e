"""Evaluation against references: vertebra segmentation, level identification, fracture grading.

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

Fracture, against reference Genant grades (0 normal, 1 mild, 2 moderate, 3 severe):
  "fractured" is grade >= 1. A level counts when the reference grades it and the prediction
  gives a grade or a fracture probability (a probability alone decides "fractured" by the
  threshold, 0.5 by default). Sensitivity and specificity per level and per patient (a patient
  is fractured when any of its counted levels is); AUC from the probabilities (Mann-Whitney,
  ties count one half); agreement of the grades as weighted Cohen's kappa, linear and
  quadratic. Undefined values (no positives, no negatives, a single category) are None.

Reference grade files. Beside a reference label map NAME.nii.gz (or NAME_seg-vert_msk.nii.gz,
...) put NAME_genant.csv or NAME_genant.json; inside a run-output folder put genant.csv or
genant.json (without one, the rows of its report.json are read). The same files beside a
predicted label map give predicted grades; a run's report.json rows give them when they carry
the keys. One row per level:
  CSV:   header "level,genant_grade[,fracture_probability]", e.g. "L1,2"; a verse_id column
         may replace level; other columns are ignored; an empty cell means "not given"
  JSON:  [{"level": "L1", "genant_grade": 2}, ...]  or  {"levels": [...]}  (report.json's shape)
Level names as in reports (C1..L5, T13, L6); "vertebrae_L1", "L1 vertebra" are accepted too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.stats import rankdata

from spinefrac import __version__
from spinefrac.io.datasets import LABEL_FOLDERS, read_dataset
from spinefrac.errors import InputError
from spinefrac.io.images import IMAGE_SUFFIX_PATTERN, ImageGrid, read_image, require_3d_scalar, to_canonical
from spinefrac.levels import LEVEL_BY_ID, Level, level_for_name, sort_craniocaudal
from spinefrac.coordinates import ras_from_lps
from spinefrac.io.filenames import EVALUATION_CSV_FILE, EVALUATION_JSON_FILE, LABEL_MAP_FILE, REPORT_JSON_FILE
from spinefrac.io.outputs import rounded_or_none, write_text_atomically
from spinefrac.progress import Progress, silent

EVALUATION_SCHEMA = "spinefrac-evaluation"
EVALUATION_SCHEMA_VERSION = "1.0.0"

IDENTIFICATION_RADIUS_MM = 20.0  # VerSe challenge
HAUSDORFF_PERCENTILE = 95.0
GENANT_GRADES = (0, 1, 2, 3)
FRACTURED_MIN_GRADE = 1
DEFAULT_PROBABILITY_THRESHOLD = 0.5

MAX_VERSE_ID = max(LEVEL_BY_ID)
LABEL_MAP_SUFFIXES = ("_seg-vert_msk", "_vertebrae", "_labels", "_label", "_seg", "_msk", "_mask")
GRADES_FILE_STEM = "genant"  # NAME_genant.csv beside a label map, genant.csv in a run folder
_LABEL_MAP_FILE = re.compile(rf"^(?P<stem>.+?)(?:\.seg)?{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)
_CT_STEM = re.compile(r"_ct$", re.IGNORECASE)  # CTs often sit beside their label maps
_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)

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


@dataclass(frozen=True)
class LevelGrade:
    """Reference and predicted fracture grading of one level (None: not given)."""

    level: Level
    reference_grade: int | None
    predicted_grade: int | None
    fracture_probability: float | None

    @property
    def is_paired(self) -> bool:
        """Graded by the reference and assessed by the prediction: counts in the fracture metrics."""
        return self.reference_grade is not None and (
            self.predicted_grade is not None or self.fracture_probability is not None
        )

    def to_dict(self) -> dict:
        return {
            "level": self.level.name,
            "reference_grade": self.reference_grade,
            "predicted_grade": self.predicted_grade,
            "fracture_probability": rounded_or_none(self.fracture_probability, 4),
        }


@dataclass
class CaseEvaluation:
    """Everything measured on one case."""

    name: str
    prediction_source: str
    reference_source: str
    levels: list[LevelSegmentationScore]  # cranial to caudal, every level in either map
    grades: list[LevelGrade] = field(default_factory=list)

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
        return _mean(score.dice for score in self.levels)

    @property
    def mean_hd95_mm(self) -> float | None:
        return _mean(score.hd95_mm for score in self.matched_levels)

    @property
    def mean_localisation_mm(self) -> float | None:
        return _mean(score.localisation_mm for score in self.matched_levels)

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
        }


@dataclass(frozen=True)
class BinaryAgreement:
    """Fractured or not, prediction against reference, counted per level or per patient."""

    unit: str  # "level" or "patient"
    true_positives: int
    false_negatives: int
    true_negatives: int
    false_positives: int
    auc: float | None  # None without probabilities for every unit, or without both classes
    probability_count: int  # units that carry a fracture probability

    @property
    def count(self) -> int:
        return self.true_positives + self.false_negatives + self.true_negatives + self.false_positives

    @property
    def positives(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def negatives(self) -> int:
        return self.true_negatives + self.false_positives

    @property
    def sensitivity(self) -> float | None:
        return self.true_positives / self.positives if self.positives else None

    @property
    def specificity(self) -> float | None:
        return self.true_negatives / self.negatives if self.negatives else None

    def to_dict(self) -> dict:
        return {
            "unit": self.unit,
            "count": self.count,
            "positives": self.positives,
            "negatives": self.negatives,
            "true_positives": self.true_positives,
            "false_negatives": self.false_negatives,
            "true_negatives": self.true_negatives,
            "false_positives": self.false_positives,
            "sensitivity": rounded_or_none(self.sensitivity, 4),
            "specificity": rounded_or_none(self.specificity, 4),
            "auc": rounded_or_none(self.auc, 4),
            "probability_count": self.probability_count,
        }


@dataclass(frozen=True)
class FractureAgreement:
    """Fracture detection and Genant grading against the reference, over all cases."""

    per_level: BinaryAgreement
    per_patient: BinaryAgreement
    graded_level_count: int  # levels with a reference grade and a predicted grade
    kappa_linear: float | None
    kappa_quadratic: float | None
    exact_grade_agreement: float | None  # fraction of graded levels with the same grade
    reference_levels_without_prediction: int  # graded by the reference, not assessed by the prediction
    probability_threshold: float

    def to_dict(self) -> dict:
        return {
            "per_level": self.per_level.to_dict(),
            "per_patient": self.per_patient.to_dict(),
            "graded_level_count": self.graded_level_count,
            "kappa_linear": rounded_or_none(self.kappa_linear, 4),
            "kappa_quadratic": rounded_or_none(self.kappa_quadratic, 4),
            "exact_grade_agreement": rounded_or_none(self.exact_grade_agreement, 4),
            "reference_levels_without_prediction": self.reference_levels_without_prediction,
            "probability_threshold": self.probability_threshold,
        }


@dataclass
class EvaluationSummary:
    """The evaluation of a set of cases, with the cases that could not be matched."""

    cases: list[CaseEvaluation]
    unmatched_predictions: list[str] = field(default_factory=list)  # case names in the prediction only
    unmatched_references: list[str] = field(default_factory=list)  # case names in the reference only
    fracture: FractureAgreement | None = None
    prediction_source: str = ""
    reference_source: str = ""
    notes: list[str] = field(default_factory=list)
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def mean_dice(self) -> float | None:
        """Mean over cases of each case's mean Dice."""
        return _mean(case.mean_dice for case in self.cases)

    @property
    def identification_rate(self) -> float | None:
        """Identified reference levels / reference levels, pooled over cases."""
        reference_count = sum(len(case.reference_levels) for case in self.cases)
        identified = sum(case.identified_count for case in self.cases)
        return identified / reference_count if reference_count else None

    @property
    def mean_hd95_mm(self) -> float | None:
        return _mean(score.hd95_mm for case in self.cases for score in case.matched_levels)

    @property
    def mean_localisation_mm(self) -> float | None:
        return _mean(score.localisation_mm for case in self.cases for score in case.matched_levels)

    def to_dict(self) -> dict:
        return {
            "schema": EVALUATION_SCHEMA,
            "schema_version": EVALUATION_SCHEMA_VERSION,
            "software": {"name": "spinefrac", "version": __version__},
            "created_utc": self.created_utc,
            "prediction": self.prediction_source,
            "reference": self.reference_source,
            "definitions": DEFINITIONS,
            "summary": {
                "case_count": len(self.cases),
                "reference_level_count": sum(len(case.reference_levels) for case in self.cases),
                "mean_dice": rounded_or_none(self.mean_dice, 4),
                "mean_hd95_mm": rounded_or_none(self.mean_hd95_mm, 2),
                "identification_rate": rounded_or_none(self.identification_rate, 4),
                "mean_localisation_mm": rounded_or_none(self.mean_localisation_mm, 2),
                "missed_level_count": sum(len(case.missed_levels) for case in self.cases),
                "extra_level_count": sum(len(case.extra_levels) for case in self.cases),
            },
            "unmatched_predictions": self.unmatched_predictions,
            "unmatched_references": self.unmatched_references,
            "fracture": self.fracture.to_dict() if self.fracture else None,
            "cases": [case.to_dict() for case in self.cases],
            "notes": self.notes,
        }


DEFINITIONS: dict[str, str] = {
    "dice": "2 |P and R| / (|P| + |R|) of the level's voxels; 0 when the level is in one map only",
    "hd95_mm": "95th-percentile symmetric Hausdorff distance of the level's surfaces, mm: the larger of the "
    "two directed 95th percentiles of surface-voxel to nearest-other-surface-voxel distances",
    "localisation_mm": "distance between the level's centroids in prediction and reference, mm",
    "identified": f"predicted centroid within {IDENTIFICATION_RADIUS_MM:g} mm of the reference centroid and "
    "nearer to it than to any other reference centroid (VerSe challenge)",
    "identification_rate": "identified reference levels / reference levels",
    "mean_dice": "per case: mean Dice over every level in either map (missed and extra levels count 0); "
    "summary: mean over cases",
    "status": "matched (in both maps), missed (reference only), extra (prediction only)",
    "genant_grade": "0 normal, 1 mild (20-25 % height loss), 2 moderate (25-40 %), 3 severe (> 40 %)",
    "fractured": f"Genant grade >= {FRACTURED_MIN_GRADE}; from a probability alone: probability >= threshold",
    "sensitivity": "true positives / reference positives (None without positives)",
    "specificity": "true negatives / reference negatives (None without negatives)",
    "auc": "area under the ROC curve of the fracture probabilities (Mann-Whitney U; ties count 1/2)",
    "per_patient": "a patient is fractured when any of its counted levels is; its score is the highest probability",
    "kappa_linear": "Cohen's kappa of the Genant grades, linear disagreement weights |i-j|/3",
    "kappa_quadratic": "Cohen's kappa of the Genant grades, quadratic disagreement weights ((i-j)/3)^2",
}


# -- metrics on arrays ----------------------------------------------------------------------


def dice_coefficient(overlap_voxels: int, reference_voxels: int, predicted_voxels: int) -> float | None:
    """Dice from voxel counts; None when both masks are empty."""
    total = reference_voxels + predicted_voxels
    return 2.0 * overlap_voxels / total if total else None


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face neighbour outside it (the array border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def hausdorff95_mm(reference_mask: np.ndarray, predicted_mask: np.ndarray,
                   array_spacing_mm: Sequence[float]) -> float | None:
    """95th-percentile symmetric surface distance in mm; None when either mask is empty.

    ``array_spacing_mm`` is the spacing along the array's axes, i.e. (k, j, i) for a
    SimpleITK array. Crop both masks to their common bounding box first: the cost is that of
    a distance transform of the arrays given.
    """
    if not reference_mask.any() or not predicted_mask.any():
        return None
    reference_surface = surface_voxels(reference_mask)
    predicted_surface = surface_voxels(predicted_mask)
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=array_spacing_mm)[predicted_surface]
    to_prediction = ndimage.distance_transform_edt(~predicted_surface, sampling=array_spacing_mm)[reference_surface]
    return float(max(np.percentile(to_reference, HAUSDORFF_PERCENTILE),
                     np.percentile(to_prediction, HAUSDORFF_PERCENTILE)))


def auc_mann_whitney(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve as P(score of a positive > score of a negative), ties 1/2."""
    scores = np.asarray(scores, dtype=float)
    positives = np.asarray(positives, dtype=bool)
    positive_count = int(positives.sum())
    negative_count = positives.size - positive_count
    if positive_count == 0 or negative_count == 0:
        return None
    ranks = rankdata(scores)  # average ranks: a tie between classes adds one half
    u_statistic = ranks[positives].sum() - positive_count * (positive_count + 1) / 2.0
    return float(u_statistic / (positive_count * negative_count))


def weighted_kappa(reference: Sequence[int], predicted: Sequence[int], weighting: str = "linear",
                   categories: Sequence[int] = GENANT_GRADES) -> float | None:
    """Cohen's kappa with linear or quadratic disagreement weights; None when undefined.

    Undefined when chance disagreement is zero: no pairs, or every grade in one category in
    both ratings (then the agreement is perfect but carries no information beyond chance).
    """
    if weighting not in ("linear", "quadratic"):
        raise ValueError(f"weighting must be 'linear' or 'quadratic', not {weighting!r}")
    reference = np.asarray(reference, dtype=int)
    predicted = np.asarray(predicted, dtype=int)
    if reference.shape != predicted.shape:
        raise ValueError("reference and predicted grades differ in length")
    if reference.size == 0:
        return None
    index = {category: position for position, category in enumerate(categories)}
    count = len(categories)
    observed = np.zeros((count, count))
    np.add.at(observed, ([index[g] for g in reference], [index[g] for g in predicted]), 1.0)
    observed /= reference.size
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    distance = np.abs(np.subtract.outer(np.arange(count), np.arange(count))) / (count - 1)
    weights = distance if weighting == "linear" else distance**2
    chance_disagreement = float((weights * expected).sum())
    if chance_disagreement == 0.0:
        return None
    return 1.0 - float((weights * observed).sum()) / chance_disagreement


# -- segmentation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _LabelMapStatistics:
    voxels: dict[int, int]
    centroid_lps_mm: dict[int, np.ndarray]
    bounding_box_kji: dict[int, tuple[np.ndarray, np.ndarray]]  # [start, stop) in array axis order


def read_label_map(path: Path | str, what: str = "label map") -> sitk.Image:
    """A VerSe-id label map file in canonical orientation, as uint8 (other ids are refused)."""
    return verse_label_image(_read_3d(path, what), f"{what} {path}")


def _read_3d(path: Path | str, what: str) -> sitk.Image:
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


# -- fracture -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grading:
    """What a grade file or report row says about one level."""

    genant_grade: int | None = None
    fracture_probability: float | None = None


def read_gradings(path: Path | str | None) -> dict[int, Grading]:
    """VerSe id -> grading from a CSV or JSON grade file or a report.json (empty for None).

    Levels whose row gives neither a grade nor a probability are left out.
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets often add a byte-order mark
    except OSError as error:
        raise InputError(f"grade file {path} cannot be read ({error.strerror})") from None
    rows = _csv_rows(text, path) if path.suffix.lower() == ".csv" else _json_rows(text, path)
    gradings: dict[int, Grading] = {}
    seen: set[int] = set()
    for number, row in enumerate(rows, start=1):
        where = f"{path}, row {number}"
        level = _row_level(row, where)
        if level.verse_id in seen:
            raise InputError(f"{where}: level {level.name} is listed twice")
        seen.add(level.verse_id)
        grading = Grading(_optional_grade(row.get("genant_grade"), where),
                          _optional_probability(row.get("fracture_probability"), where))
        if grading != Grading():  # rows without either (a report of an ungraded run) say nothing
            gradings[level.verse_id] = grading
    return gradings


def _csv_rows(text: str, path: Path) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    columns = {name.strip() for name in reader.fieldnames or []}
    if not columns & {"level", "verse_id"}:
        found = ", ".join(sorted(columns)) or "none"
        raise InputError(f"grade file {path} needs a 'level' or 'verse_id' column (columns found: {found})")
    return [{key.strip(): value for key, value in row.items() if key} for row in reader]


def _json_rows(text: str, path: Path) -> list[dict]:
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"grade file {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    rows = content.get("levels") if isinstance(content, dict) else content
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InputError(f"grade file {path} is neither a list of level rows nor an object with 'levels'")
    return rows


def _row_level(row: Mapping, where: str) -> Level:
    name = str(row.get("level") or "").strip()
    if name:
        level = level_for_name(name)
        if level is None:
            raise InputError(f"{where}: '{name}' is not a vertebral level name (C1..L5, T13, L6, sacrum)")
        return level
    try:
        return LEVEL_BY_ID[int(row.get("verse_id"))]
    except (TypeError, ValueError, KeyError):
        raise InputError(f"{where}: no level name and no VerSe id") from None


def _optional_number(value) -> float | None:
    """None for a missing or empty cell; NaN for text that is not a number (then refused)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _optional_grade(value, where: str) -> int | None:
    grade = _optional_number(value)
    if grade is None:
        return None
    if grade not in GENANT_GRADES:
        raise InputError(f"{where}: genant_grade {value!r} is not 0, 1, 2 or 3")
    return int(grade)


def _optional_probability(value, where: str) -> float | None:
    probability = _optional_number(value)
    if probability is not None and not 0.0 <= probability <= 1.0:
        raise InputError(f"{where}: fracture_probability {value!r} is not a number from 0 to 1")
    return probability


def pair_gradings(reference: Mapping[int, Grading], predicted: Mapping[int, Grading]) -> list[LevelGrade]:
    """One LevelGrade per level graded by either side, cranial to caudal."""
    levels = sort_craniocaudal(LEVEL_BY_ID[label] for label in reference.keys() | predicted.keys())
    empty = Grading()
    return [
        LevelGrade(level, reference.get(level.verse_id, empty).genant_grade,
                   predicted.get(level.verse_id, empty).genant_grade,
                   predicted.get(level.verse_id, empty).fracture_probability)
        for level in levels
    ]


def _predicted_fractured(grade: LevelGrade, threshold: float) -> bool:
    if grade.predicted_grade is not None:
        return grade.predicted_grade >= FRACTURED_MIN_GRADE
    return grade.fracture_probability >= threshold


def binary_agreement(unit: str, reference_fractured: Sequence[bool], predicted_fractured: Sequence[bool],
                     probabilities: Sequence[float | None]) -> BinaryAgreement:
    """Confusion counts and AUC; the AUC needs a probability for every unit."""
    reference_fractured = np.asarray(reference_fractured, dtype=bool)
    predicted_fractured = np.asarray(predicted_fractured, dtype=bool)
    scored = [p for p in probabilities if p is not None]
    auc = auc_mann_whitney(scored, reference_fractured) if scored and len(scored) == len(probabilities) else None
    return BinaryAgreement(
        unit=unit,
        true_positives=int(np.sum(reference_fractured & predicted_fractured)),
        false_negatives=int(np.sum(reference_fractured & ~predicted_fractured)),
        true_negatives=int(np.sum(~reference_fractured & ~predicted_fractured)),
        false_positives=int(np.sum(~reference_fractured & predicted_fractured)),
        auc=auc,
        probability_count=len(scored),
    )


def fracture_agreement(grades_by_case: Mapping[str, Sequence[LevelGrade]],
                       probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD) -> FractureAgreement | None:
    """Per-level and per-patient detection, and grade agreement; None when no level is paired."""
    paired = {case: [g for g in grades if g.is_paired] for case, grades in grades_by_case.items()}
    paired = {case: grades for case, grades in paired.items() if grades}
    if not paired:
        return None
    levels = [g for grades in paired.values() for g in grades]
    per_level = binary_agreement(
        "level",
        [g.reference_grade >= FRACTURED_MIN_GRADE for g in levels],
        [_predicted_fractured(g, probability_threshold) for g in levels],
        [g.fracture_probability for g in levels],
    )
    per_patient = binary_agreement(
        "patient",
        [any(g.reference_grade >= FRACTURED_MIN_GRADE for g in grades) for grades in paired.values()],
        [any(_predicted_fractured(g, probability_threshold) for g in grades) for grades in paired.values()],
        [_highest_probability(grades) for grades in paired.values()],
    )
    graded = [g for g in levels if g.predicted_grade is not None]
    reference_grades = [g.reference_grade for g in graded]
    predicted_grades = [g.predicted_grade for g in graded]
    unassessed = sum(g.reference_grade is not None and not g.is_paired
                     for grades in grades_by_case.values() for g in grades)
    return FractureAgreement(
        per_level=per_level,
        per_patient=per_patient,
        graded_level_count=len(graded),
        kappa_linear=weighted_kappa(reference_grades, predicted_grades, "linear"),
        kappa_quadratic=weighted_kappa(reference_grades, predicted_grades, "quadratic"),
        exact_grade_agreement=_mean(float(r == p) for r, p in zip(reference_grades, predicted_grades)),
        reference_levels_without_prediction=unassessed,
        probability_threshold=probability_threshold,
    )


def _highest_probability(grades: Sequence[LevelGrade]) -> float | None:
    probabilities = [g.fracture_probability for g in grades]
    return None if any(p is None for p in probabilities) else max(probabilities)


# -- cases on disk --------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseSource:
    """Where one case of a prediction or reference folder is."""

    name: str
    label_path: Path
    grades_path: Path | None  # grade file, or a run's report.json; None: no grades


def case_name(label_path: Path) -> str:
    """File name without extension and without one label-map suffix (_seg-vert_msk, _vertebrae, ...)."""
    stem = _LABEL_MAP_FILE.match(label_path.name).group("stem")
    for suffix in LABEL_MAP_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def discover_cases(folder: Path | str, what: str = "cases") -> dict[str, CaseSource]:
    """Case name -> source for label map files, ``spinefrac run`` output folders or a data set."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    if (folder / "derivatives").is_dir() or any((folder / name).is_dir() for name in LABEL_FOLDERS):
        return _dataset_cases(folder)
    cases: dict[str, CaseSource] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):  # hidden: partial outputs, system files
            continue
        source = _run_folder_case(entry) if entry.is_dir() else _label_file_case(entry)
        if source is None:
            continue
        if source.name in cases:
            raise InputError(f"{what} folder {folder} has two cases named '{source.name}': "
                             f"{cases[source.name].label_path.name} and {source.label_path.name}")
        cases[source.name] = source
    if not cases:
        raise InputError(f"{what} folder {folder} holds no label maps (.nii.gz, .nii, .nrrd) "
                         f"and no spinefrac run folders ({LABEL_MAP_FILE} + {REPORT_JSON_FILE})")
    return cases


def _dataset_cases(folder: Path) -> dict[str, CaseSource]:
    return {
        case.name: CaseSource(case.name, case.label_path, _grade_file(case.label_path.parent, f"{case.name}_"))
        for case in read_dataset(folder, require_ct=False)
    }


def _run_folder_case(folder: Path) -> CaseSource | None:
    label_path = folder / LABEL_MAP_FILE
    if not label_path.is_file():
        return None
    report = folder / REPORT_JSON_FILE
    grades = _grade_file(folder, "") or (report if report.is_file() else None)
    return CaseSource(folder.name, label_path, grades)


def _label_file_case(path: Path) -> CaseSource | None:
    match = _LABEL_MAP_FILE.match(path.name)
    if not path.is_file() or not match or _CT_STEM.search(match.group("stem")):
        return None
    name = case_name(path)
    return CaseSource(name, path, _grade_file(path.parent, f"{name}_"))


def _grade_file(folder: Path, prefix: str) -> Path | None:
    found = [folder / f"{prefix}{GRADES_FILE_STEM}{ext}" for ext in (".csv", ".json")]
    found = [path for path in found if path.is_file()]
    if len(found) > 1:
        raise InputError(f"two grade files for one case: {found[0]} and {found[1]}; keep one")
    return found[0] if found else None


def evaluate_case(prediction: CaseSource, reference: CaseSource) -> CaseEvaluation:
    """Segmentation and, when graded, fracture agreement of one matched case."""
    case = evaluate_segmentation(
        _read_3d(prediction.label_path, f"case {prediction.name}: predicted label map"),
        _read_3d(reference.label_path, f"case {reference.name}: reference label map"),
        reference.name, str(prediction.label_path), str(reference.label_path),
    )
    case.grades = pair_gradings(read_gradings(reference.grades_path), read_gradings(prediction.grades_path))
    return case


def evaluate_folders(prediction_dir: Path | str, reference_dir: Path | str,
                     probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD,
                     progress: Progress = silent) -> EvaluationSummary:
    """Evaluate every case found in both folders, matched by case name."""
    predictions = discover_cases(prediction_dir, "prediction")
    references = discover_cases(reference_dir, "reference")
    matched = sorted(predictions.keys() & references.keys())
    if not matched:
        raise InputError(f"no case names in common between {prediction_dir} ({_names(predictions)}) "
                         f"and {reference_dir} ({_names(references)})")
    cases = []
    for index, name in enumerate(matched):
        progress(index / len(matched), f"evaluating {name}")
        cases.append(evaluate_case(predictions[name], references[name]))
    progress(1.0, f"{len(cases)} cases evaluated")
    fracture = fracture_agreement({case.name: case.grades for case in cases}, probability_threshold)
    return EvaluationSummary(
        cases=cases,
        unmatched_predictions=sorted(predictions.keys() - references.keys()),
        unmatched_references=sorted(references.keys() - predictions.keys()),
        fracture=fracture,
        prediction_source=str(prediction_dir),
        reference_source=str(reference_dir),
        notes=_fracture_notes(cases, fracture),
    )


def _names(cases: Mapping[str, CaseSource], shown: int = 3) -> str:
    names = sorted(cases)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _fracture_notes(cases: Sequence[CaseEvaluation], fracture: FractureAgreement | None) -> list[str]:
    if fracture is not None:
        return []
    if not any(g.reference_grade is not None for case in cases for g in case.grades):
        return ["no reference Genant grades found: fracture metrics not computed"]
    return ["the predictions carry no genant_grade or fracture_probability: fracture metrics not computed"]


# -- writers --------------------------------------------------------------------------------

CSV_COLUMNS = (
    "case", "level", "verse_id", "status", "reference_voxels", "predicted_voxels", "dice", "hd95_mm",
    "localisation_mm", "identified", "reference_grade", "predicted_grade", "fracture_probability",
)


def summary_rows(summary: EvaluationSummary) -> list[dict]:
    """One row per case and level (segmented or graded), as written to the CSV."""
    rows = []
    for case in summary.cases:
        scores = {score.level.verse_id: score for score in case.levels}
        grades = {grade.level.verse_id: grade for grade in case.grades}
        for level in sort_craniocaudal(LEVEL_BY_ID[label] for label in scores.keys() | grades.keys()):
            row = dict.fromkeys(CSV_COLUMNS, "")
            row.update(case=case.name, level=level.name, verse_id=level.verse_id)
            if level.verse_id in scores:
                row.update({key: value for key, value in scores[level.verse_id].to_dict().items() if key in row})
            if level.verse_id in grades:
                row.update({key: value for key, value in grades[level.verse_id].to_dict().items() if key in row})
            rows.append({key: "" if value is None else value for key, value in row.items()})
    return rows


def to_json(summary: EvaluationSummary) -> str:
    return json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n"


def to_csv(summary: EvaluationSummary) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_rows(summary))
    return buffer.getvalue()


def write_evaluation(summary: EvaluationSummary, folder: Path | str) -> dict[str, Path]:
    """evaluation.json and evaluation.csv in ``folder``, each replaced atomically."""
    folder = Path(folder)
    json_path, csv_path = folder / EVALUATION_JSON_FILE, folder / EVALUATION_CSV_FILE
    write_text_atomically(json_path, to_json(summary))
    write_text_atomically(csv_path, to_csv(summary))
    return {"json": json_path, "csv": csv_path}


def format_table(summary: EvaluationSummary) -> str:
    """A plain-text summary for the terminal: one line per case, totals, fracture agreement."""
    header = (f"{'case':<24} {'ref':>4} {'pred':>4} {'Dice':>6} {'HD95 mm':>8} {'id rate':>8} {'loc mm':>7}"
              "  missed / extra")
    lines = [header, "-" * len(header)]
    for case in summary.cases:
        predicted_count = sum(1 for score in case.levels if score.predicted_voxels)
        lines.append(
            f"{case.name[:24]:<24} {len(case.reference_levels):>4} {predicted_count:>4} "
            f"{_text(case.mean_dice, '.3f'):>6} {_text(case.mean_hd95_mm, '.1f'):>8} "
            f"{_text(case.identification_rate, '.1%'):>8} {_text(case.mean_localisation_mm, '.1f'):>7}  "
            f"{_level_list(case.missed_levels)} / {_level_list(case.extra_levels)}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'all (' + str(len(summary.cases)) + ' cases)':<24} {'':>4} {'':>4} {_text(summary.mean_dice, '.3f'):>6} "
        f"{_text(summary.mean_hd95_mm, '.1f'):>8} {_text(summary.identification_rate, '.1%'):>8} "
        f"{_text(summary.mean_localisation_mm, '.1f'):>7}"
    )
    if summary.fracture:
        lines.extend(_fracture_lines(summary.fracture))
    lines.extend(summary.notes)
    if summary.unmatched_predictions:
        lines.append("unmatched, prediction only: " + ", ".join(summary.unmatched_predictions))
    if summary.unmatched_references:
        lines.append("unmatched, reference only: " + ", ".join(summary.unmatched_references))
    return "\n".join(lines)


def _fracture_lines(fracture: FractureAgreement) -> list[str]:
    lines = ["fracture (Genant grade >= 1):"]
    for agreement in (fracture.per_level, fracture.per_patient):
        lines.append(
            f"  per {agreement.unit:<7} n={agreement.count:<4} ({agreement.positives} fractured)  "
            f"sensitivity {_text(agreement.sensitivity, '.1%')}  specificity {_text(agreement.specificity, '.1%')}  "
            f"AUC {_text(agreement.auc, '.3f')}"
        )
    lines.append(
        f"  Genant grade agreement over {fracture.graded_level_count} levels: kappa linear "
        f"{_text(fracture.kappa_linear, '.3f')}, quadratic {_text(fracture.kappa_quadratic, '.3f')}, "
        f"exact {_text(fracture.exact_grade_agreement, '.1%')}"
    )
    if fracture.reference_levels_without_prediction:
        lines.append(f"  {fracture.reference_levels_without_prediction} reference-graded levels have no prediction")
    return lines


def _text(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _level_list(names: list[str]) -> str:
    return ",".join(names) if names else "-"


# -- small helpers --------------------------------------------------------------------------


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _rounded_point(point: tuple[float, float, float] | None) -> list[float] | None:
    return None if point is None else [round(v, 2) for v in point]
