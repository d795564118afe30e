"""The assessment chain, one call for every caller: the command line's pipeline and the Slicer
module's MRML logic run the same stages in the same order with the same options.

segmentation -> measure_vertebrae -> SpineMeasurements -> check_quality -> SegmentationQuality
-> measure_morphometry -> SpineMorphometry -> (optional classifier probabilities)
-> assess_fractures -> FractureFindings (levels failing quality control withheld, grey)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from spinefrac.assessment.classifier import FractureClassifier
from spinefrac.assessment.fracture import (
    DEFAULT_PROBABILITY_THRESHOLD,
    Decision,
    FractureFindings,
    assess_fractures,
    unchecked_mask_reason,
)
from spinefrac.assessment.measurement import SpineMeasurements, measure_vertebrae
from spinefrac.assessment.morphometry import SpineMorphometry, measure_morphometry
from spinefrac.assessment.quality import SegmentationQuality, check_quality
from spinefrac.assessment.user_heights import apply_user_heights
from spinefrac.io.height_points import SixPoints
from spinefrac.io.images import CtVolume
from spinefrac.progress import SilentStages
from spinefrac.segmentation.base import VertebraSegmentation

MEASURING_STAGE = "Measuring vertebrae"
QUALITY_STAGE = "Quality control of the segmentation"
GRADING_STAGE = "Fracture assessment (Genant morphometry)"
QC_FAILED_PREFIX = "quality control failed: "
DOUBTFUL_IDENTIFICATION = ("low", "uncertain")


@dataclass
class SpineAssessment:
    """What the assessment stages found for one segmented CT."""

    measurements: SpineMeasurements
    quality: SegmentationQuality
    morphometry: SpineMorphometry
    findings: FractureFindings


def assess(
    ct: CtVolume,
    segmentation: VertebraSegmentation,
    classifier: FractureClassifier | None = None,
    probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD,
    stages=None,
    user_heights: list[SixPoints] | None = None,
) -> SpineAssessment:
    """Measure every level, check the segmentation's quality, isolate the bodies and their
    heights, and grade them. Levels are graded only where quality control does not fail them (for
    estimated level borders: see ``withheld_grades``); trabecular density only where the segmentation says its
    masks are fit for it; ``stages`` (``spinefrac.progress``) reports the stages. ``user_heights`` (an edited
    six-point file, io/height_points.py): those levels' heights come from its points, before any is graded."""
    stages = stages or SilentStages()
    measurements = measure_vertebrae(ct, segmentation, stages.stage(MEASURING_STAGE))
    stages.stage(QUALITY_STAGE)
    quality = check_quality(ct, segmentation, measurements)
    stages.stage(GRADING_STAGE)
    morphometry = withhold_failing(measure_morphometry(ct, segmentation, measurements), quality)
    if user_heights:
        morphometry = apply_user_heights(morphometry, user_heights)
    probabilities = classifier.probabilities(ct, segmentation, morphometry) if classifier else None
    if probabilities:
        probabilities = {name: p for name, p in probabilities.items() if name not in quality.failing()}
    findings = assess_fractures(measurements, morphometry, probabilities, probability_threshold,
                                segmentation.masks_fit_for_density, withheld_grades(segmentation, quality))
    _explain_withheld(findings, quality)
    return SpineAssessment(measurements, quality, morphometry, findings)


def withheld_grades(segmentation: VertebraSegmentation, quality: SegmentationQuality) -> dict[str, str]:
    """Level name -> why its grade is withheld although QC does not fail it. Estimated level
    borders (the offline engine) are graded only where QC passes the level without a warning,
    passes both its labelled neighbours (a border is shared: a neighbour failing for its volume or
    its border means this level's border is in doubt too), and leaves the level identification
    high or medium (low or uncertain: QC found the partition of the spine itself in doubt)."""
    if not segmentation.grading_needs_clean_qc:
        return {}
    failing = quality.failing()
    confidence = quality.identification_confidence
    if confidence in DOUBTFUL_IDENTIFICATION:
        return {q.level.name: unchecked_mask_reason(f"level identification confidence {confidence} after quality "
                                                    "control: the level borders are in doubt")
                for q in quality.levels if q.level.name not in failing}
    withheld = {name: unchecked_mask_reason(warnings) for name, warnings in quality.warned().items()}
    names = [q.level.name for q in quality.levels]
    for index, name in enumerate(names):
        next_to = [n for n in names[max(index - 1, 0):index + 2] if n != name and n in failing]
        if name not in failing and name not in withheld and next_to:
            withheld[name] = unchecked_mask_reason(f"its neighbour {' and '.join(next_to)} fails quality control, "
                                                   "so the border they share is in doubt")
    return withheld


def withhold_failing(morphometry: SpineMorphometry, quality: SegmentationQuality) -> SpineMorphometry:
    """Levels failing QC lose their heights and density: they are never graded, never serve as a
    neighbour's expected height, and never feed the L1 density screen."""
    failing = quality.failing()
    vertebrae = [replace(m, heights=None, trabecular_hu=math.nan, problems=[QC_FAILED_PREFIX + failing[m.level.name]])
                 if m.level.name in failing else m for m in morphometry.vertebrae]
    return replace(morphometry, vertebrae=vertebrae)


def _explain_withheld(findings: FractureFindings, quality: SegmentationQuality) -> None:
    """A failing level's reason starts with its QC failures, whatever else also applies."""
    failing = quality.failing()
    for finding in findings.findings:
        if finding.level.name not in failing:
            continue
        finding.decision = Decision.NOT_ASSESSABLE
        finding.genant_grade = None
        qc_reason = QC_FAILED_PREFIX + failing[finding.level.name]
        if not finding.reason.startswith(QC_FAILED_PREFIX):
            finding.reason = qc_reason + (f"; also {finding.reason}" if finding.reason else "")
