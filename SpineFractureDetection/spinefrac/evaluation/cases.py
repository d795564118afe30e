"""Evaluation of whole folders: cases found on disk, matched by name between predictions and references,
each scored (segmentation and, when graded, fracture), and the summary over all cases.

A folder holds label map files, ``spinefrac run`` output folders or a data set (VerSe layout or
CT + label pairs); grade files beside them are found as described in spinefrac.io.grades. Label map
files are read with the label-convention detection of ``spinefrac run --segmentation`` (VerSe,
TotalSegmentator v2 or v1 ids, Slicer segment names), or the convention given; a run's output folder
holds VerSe ids.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from spinefrac import __version__
from spinefrac.errors import InputError
from spinefrac.evaluation.grading import (
    DEFAULT_PROBABILITY_THRESHOLD,
    FRACTURED_MIN_GRADE,
    FractureAgreement,
    fracture_agreement,
    pair_gradings,
)
from spinefrac.evaluation.metrics import mean
from spinefrac.evaluation.segmentation import IDENTIFICATION_RADIUS_MM, CaseEvaluation, evaluate_segmentation
from spinefrac.io.datasets import LABEL_FOLDERS, read_dataset
from spinefrac.io.filenames import LABEL_MAP_FILE, REPORT_JSON_FILE
from spinefrac.io.grades import grade_file, read_gradings
from spinefrac.io.images import IMAGE_SUFFIX_PATTERN, ImageGrid, read_image
from spinefrac.io.outputs import rounded_or_none
from spinefrac.io.paths import require_usable_path
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import LabelConvention
from spinefrac.segmentation.label_maps import LabelReading, form_disagreements, read_label_ids

EVALUATION_SCHEMA = "spinefrac-evaluation"
EVALUATION_SCHEMA_VERSION = "1.0.0"

LABEL_MAP_SUFFIXES = ("_seg-vert_msk", "_vertebrae", "_labels", "_label", "_seg", "_msk", "_mask")
_LABEL_MAP_FILE = re.compile(rf"^(?P<stem>.+?)(?:\.seg)?{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)
_CT_STEM = re.compile(r"_ct$", re.IGNORECASE)  # CTs often sit beside their label maps


# -- the summary ----------------------------------------------------------------------------


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
        return mean(case.mean_dice for case in self.cases)

    @property
    def identification_rate(self) -> float | None:
        """Identified reference levels / reference levels, pooled over cases."""
        reference_count = sum(len(case.reference_levels) for case in self.cases)
        identified = sum(case.identified_count for case in self.cases)
        return identified / reference_count if reference_count else None

    @property
    def mean_hd95_mm(self) -> float | None:
        return mean(score.hd95_mm for case in self.cases for score in case.matched_levels)

    @property
    def mean_localisation_mm(self) -> float | None:
        return mean(score.localisation_mm for case in self.cases for score in case.matched_levels)

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


# -- cases on disk --------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseSource:
    """Where one case of a prediction or reference folder is."""

    name: str
    label_path: Path
    grades_path: Path | None  # grade file, or a run's report.json; None: no grades
    run_output: bool = False  # a 'spinefrac run' output folder: its label map holds VerSe ids


def case_name(label_path: Path) -> str:
    """File name without extension and without one label-map suffix (_seg-vert_msk, _vertebrae, ...)."""
    stem = _LABEL_MAP_FILE.match(label_path.name).group("stem")
    for suffix in LABEL_MAP_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def discover_cases(folder: Path | str, what: str = "cases") -> dict[str, CaseSource]:
    """Case name -> source for label map files, ``spinefrac run`` output folders or a data set."""
    folder = require_usable_path(folder, f"{what} folder", entries=False)
    if folder.is_file():
        raise InputError(f"{what} folder {folder} is a file, not a folder of label maps or run folders")
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
        require_usable_path(source.label_path, f"{what} label map")  # ITK aborts on a name that is not UTF-8
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
        case.name: CaseSource(case.name, case.label_path, grade_file(case.label_path.parent, f"{case.name}_"))
        for case in read_dataset(folder, require_ct=False)
    }


def _run_folder_case(folder: Path) -> CaseSource | None:
    label_path = folder / LABEL_MAP_FILE
    if not label_path.is_file():
        return None
    report = folder / REPORT_JSON_FILE
    grades = grade_file(folder, "") or (report if report.is_file() else None)
    return CaseSource(folder.name, label_path, grades, run_output=True)


def _label_file_case(path: Path) -> CaseSource | None:
    match = _LABEL_MAP_FILE.match(path.name)
    if not path.is_file() or not match or _CT_STEM.search(match.group("stem")):
        return None
    name = case_name(path)
    return CaseSource(name, path, grade_file(path.parent, f"{name}_"))


def evaluate_case(prediction: CaseSource, reference: CaseSource,
                  prediction_labels: str = LabelConvention.AUTO.value,
                  reference_labels: str = LabelConvention.AUTO.value) -> CaseEvaluation:
    """Segmentation and, when graded, fracture agreement of one matched case. Label map files are read as
    'run --segmentation' reads them (``*_labels``: a LabelConvention value, 'auto' to detect)."""
    images, readings = {}, {}
    for role, source, convention, option in (("predicted", prediction, prediction_labels, "--labels"),
                                             ("reference", reference, reference_labels, "--reference-labels")):
        what = f"case {source.name}: {role} label map"
        images[role] = read_image(require_usable_path(source.label_path, what), what)
        try:
            readings[role] = read_label_ids(images[role], source.label_path,
                                            LabelConvention.VERSE if source.run_output else convention)
        except InputError as error:
            raise InputError(f"{what}: " + str(error).replace("--labels ", f"{option} ")) from None
    _require_same_grid(prediction, reference, images, readings)
    case = evaluate_segmentation(readings["predicted"].verse_ids, readings["reference"].verse_ids,
                                 reference.name, str(prediction.label_path), str(reference.label_path))
    case.notes = [note for role in ("predicted", "reference") for note in _reading_notes(role, readings[role])]
    case.grades = pair_gradings(read_gradings(reference.grades_path), read_gradings(prediction.grades_path))
    return case


def _require_same_grid(prediction: CaseSource, reference: CaseSource, images: dict, readings: dict) -> None:
    """Prediction and reference on one grid; where not, a NIfTI whose qform and sform disagree is named."""
    differences = ImageGrid.of(readings["predicted"].verse_ids).differences(ImageGrid.of(readings["reference"].verse_ids))
    if not differences:
        return
    causes = form_disagreements([(prediction.label_path, ImageGrid.of(images["predicted"])),
                                 (reference.label_path, ImageGrid.of(images["reference"]))])
    raise InputError(f"case {reference.name}: prediction and reference are not on the same voxel grid "
                     f"({'; '.join(differences)}); " + (f"{causes}; " if causes else "")
                     + "resample the prediction onto the reference grid")


def _reading_notes(role: str, reading: LabelReading) -> list[str]:
    """How a label map was read, when not simply as VerSe ids."""
    notes = [f"{role} label map: {note}" for note in reading.notes]
    if reading.convention is not LabelConvention.VERSE:
        notes.insert(0, f"{role} label map read as {reading.convention.value} labels")
    if reading.ignored_labels:
        notes.append(f"{role} label map: {len(reading.ignored_labels)} labels that are no vertebra ignored")
    return notes


def evaluate_folders(prediction_dir: Path | str, reference_dir: Path | str,
                     probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD,
                     progress: Progress = silent, prediction_labels: str = LabelConvention.AUTO.value,
                     reference_labels: str = LabelConvention.AUTO.value) -> EvaluationSummary:
    """Evaluate every case found in both folders, matched by case name (label conventions as in
    evaluate_case)."""
    if not (isinstance(probability_threshold, (int, float)) and math.isfinite(probability_threshold)
            and 0.0 <= probability_threshold <= 1.0):
        raise InputError(f"probability threshold {probability_threshold} is not a probability between 0 and 1")
    predictions = discover_cases(prediction_dir, "prediction")
    references = discover_cases(reference_dir, "reference")
    matched = sorted(predictions.keys() & references.keys())
    if not matched:
        raise InputError(f"no case names in common between {prediction_dir} ({_names(predictions)}) "
                         f"and {reference_dir} ({_names(references)})")
    cases = []
    for index, name in enumerate(matched):
        progress(index / len(matched), f"evaluating {name}")
        cases.append(evaluate_case(predictions[name], references[name], prediction_labels, reference_labels))
    progress(1.0, f"{len(cases)} cases evaluated")
    fracture = fracture_agreement({case.name: case.grades for case in cases}, probability_threshold)
    return EvaluationSummary(
        cases=cases,
        unmatched_predictions=sorted(predictions.keys() - references.keys()),
        unmatched_references=sorted(references.keys() - predictions.keys()),
        fracture=fracture,
        prediction_source=str(prediction_dir),
        reference_source=str(reference_dir),
        notes=[f"case {case.name}: {note}" for case in cases for note in case.notes] + _fracture_notes(cases, fracture),
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
