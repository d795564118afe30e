"""The assessment chain, one call for every caller: the command line's pipeline and the Slicer
module's MRML logic run the same stages in the same order with the same options.

segmentation -> measure_vertebrae -> SpineMeasurements -> measure_morphometry -> SpineMorphometry
-> (optional classifier probabilities) -> assess_fractures -> FractureFindings
"""

from __future__ import annotations

from dataclasses import dataclass

from spinefrac.assessment.classifier import FractureClassifier
from spinefrac.assessment.fracture import DEFAULT_PROBABILITY_THRESHOLD, FractureFindings, assess_fractures
from spinefrac.assessment.measurement import SpineMeasurements, measure_vertebrae
from spinefrac.assessment.morphometry import SpineMorphometry, measure_morphometry
from spinefrac.io.images import CtVolume
from spinefrac.progress import SilentStages
from spinefrac.segmentation.base import VertebraSegmentation

MEASURING_STAGE = "Measuring vertebrae"
GRADING_STAGE = "Fracture assessment (Genant morphometry)"


@dataclass
class SpineAssessment:
    """What the assessment stages found for one segmented CT."""

    measurements: SpineMeasurements
    morphometry: SpineMorphometry
    findings: FractureFindings


def assess(
    ct: CtVolume,
    segmentation: VertebraSegmentation,
    classifier: FractureClassifier | None = None,
    probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD,
    stages=None,
) -> SpineAssessment:
    """Measure every level, isolate the bodies and their heights, and grade them. Levels are
    graded only where the segmentation says its masks are fit for morphometry; ``stages``
    (``spinefrac.progress``) reports the two stages, measuring and grading."""
    stages = stages or SilentStages()
    measurements = measure_vertebrae(ct, segmentation, stages.stage(MEASURING_STAGE))
    stages.stage(GRADING_STAGE)
    morphometry = measure_morphometry(ct, segmentation, measurements)
    probabilities = classifier.probabilities(ct, segmentation, morphometry) if classifier else None
    findings = assess_fractures(measurements, morphometry, probabilities, probability_threshold,
                                segmentation.masks_fit_for_morphometry)
    return SpineAssessment(measurements, morphometry, findings)
