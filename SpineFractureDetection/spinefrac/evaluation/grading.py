"""Fracture agreement of predicted with reference grades, per level and per patient.

Fracture, against reference Genant grades (0 normal, 1 mild, 2 moderate, 3 severe):
  "fractured" is grade >= 1. A level counts when the reference grades it and the prediction
  gives a grade or a fracture probability (a probability alone decides "fractured" by the
  threshold, 0.5 by default). Sensitivity and specificity per level and per patient (a patient
  is fractured when any of its counted levels is); AUC from the probabilities (Mann-Whitney,
  ties count one half); agreement of the grades as weighted Cohen's kappa, linear and
  quadratic. Undefined values (no positives, no negatives, a single category) are None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from spinefrac.evaluation.metrics import auc_mann_whitney, mean, weighted_kappa
from spinefrac.io.grades import Grading
from spinefrac.io.outputs import rounded_or_none
from spinefrac.levels import LEVEL_BY_ID, Level, sort_craniocaudal

FRACTURED_MIN_GRADE = 1
DEFAULT_PROBABILITY_THRESHOLD = 0.5


# -- result types ---------------------------------------------------------------------------


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


# -- fracture -------------------------------------------------------------------------------


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
        exact_grade_agreement=mean(float(r == p) for r, p in zip(reference_grades, predicted_grades)),
        reference_levels_without_prediction=unassessed,
        probability_threshold=probability_threshold,
    )


def _highest_probability(grades: Sequence[LevelGrade]) -> float | None:
    probabilities = [g.fracture_probability for g in grades]
    return None if any(p is None for p in probabilities) else max(probabilities)
