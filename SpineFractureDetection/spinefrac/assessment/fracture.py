"""Stage 3b: fracture findings — Genant semi-quantitative grade and type, and the decision.

Genant HK et al., "Vertebral fracture assessment using a semiquantitative technique",
J Bone Miner Res 1993;8:1137-1148. Height reduction (against the vertebra's own posterior or
anterior height, or against the expected height from adjacent levels):
  < 20 %: grade 0 (normal); 20-25 %: grade 1 (mild); 25-40 %: grade 2 (moderate); > 40 %: grade 3.
Both comparisons of Genant's method are made (expected_heights.py says how):
  within the vertebra
    wedge      anterior height against the posterior one, less this level's physiological
               wedging (thoracic kyphotic wedge, lower lumbar reverse wedge): 1 - Ha / (Hp - d tan w)
    biconcave  middle height against the central height Hc = (Ha + Hp) / 2, relative to the
               neighbours' own middle/central ratio (normal endplate concavity): 1 - (Hm/Hc) / c
  against the expected heights from undeformed neighbours (relative height loss per section)
    anterior, middle, posterior loss   1 - H / H_expected; the posterior one is the crush reduction
The grade comes from the largest of these reductions. Type: crush when the posterior height
is reduced nearly as much as the most reduced one (the whole body is lower), else wedge when
the anterior height is reduced more than the middle, else biconcave.
Decision: fractured (red) when grade >= 1 or, with a learned classifier, when its calibrated
probability reaches the user's threshold; normal (green) otherwise; not assessable (grey) with
the reason when the level cannot be measured reliably.

Opportunistic osteoporosis screening: Pickhardt PJ et al., "Opportunistic screening for
osteoporosis using abdominal computed tomography scans obtained for other indications",
Ann Intern Med 2013;158:588-595 — L1 trabecular attenuation <= 160 HU gave 90 % sensitivity,
<= 110 HU more than 90 % specificity for osteoporosis (DXA reference), on 120 kVp CT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from spinefrac.assessment.expected_heights import (
    NO_NEIGHBOUR_LEVELS,
    LevelHeights,
    expected_heights,
    physiological_difference_mm,
)
from spinefrac.assessment.measurement import FovStatus, SpineMeasurements
from spinefrac.assessment.morphometry import (
    HEIGHT_SAMPLE_FRACTION,
    SpineMorphometry,
    VertebraMorphometry,
    is_validated_region,
)
from spinefrac.hounsfield import METAL_HU
from spinefrac.levels import Level

GRADE_THRESHOLDS = (0.20, 0.25, 0.40)  # height reduction at which grades 1, 2, 3 begin
NEIGHBOUR_DEFORMATION_LIMIT = 0.15  # neighbours wedged more than this do not set expectations
REFERENCE_PASSES = 4
NEIGHBOUR_CONCAVITY_LIMIT = 0.20  # nor those whose middle height is this far under their central height
CRUSH_SHARE = 0.75  # posterior loss at least this share of the largest loss: the whole body is lower
MAX_AXIAL_VOXEL_FRACTION = 0.2  # heights need at least five voxels along the body axis
L1_OSTEOPOROSIS_HU = 110.0
L1_OSTEOPENIA_HU = 160.0
DEFAULT_PROBABILITY_THRESHOLD = 0.5
LUMBOSACRAL_LEVELS = ("L5", "L6")
# Genant's grading and the normal ratios it is judged against are defined for thoracic and lumbar
# bodies; cervical bodies (and C1, which has none) are measured and shown, never graded.
OUTSIDE_VALIDATED_RANGE = "outside the validated range of the method (C1-C7): Genant grading is for T1-L5"


class GenantType(str, Enum):
    NONE = "none"
    WEDGE = "wedge"
    BICONCAVE = "biconcave"
    CRUSH = "crush"


class Decision(str, Enum):
    FRACTURED = "fractured"
    NORMAL = "normal"
    NOT_ASSESSABLE = "not_assessable"


DECISION_COLORS_RGB = {
    Decision.FRACTURED: (220, 50, 47),
    Decision.NORMAL: (46, 160, 67),
    Decision.NOT_ASSESSABLE: (150, 150, 150),
}


@dataclass
class VertebraFinding:
    level: Level
    decision: Decision
    reason: str
    height_anterior_mm: float = math.nan
    height_middle_mm: float = math.nan
    height_posterior_mm: float = math.nan
    height_anterior_expected_mm: float = math.nan
    height_middle_expected_mm: float = math.nan
    height_posterior_expected_mm: float = math.nan
    expected_from: tuple[str, ...] = ()  # the neighbouring levels that set the expected heights
    physiological_wedge_mm: float = 0.0  # Hp - Ha of a normal body of this level and depth
    wedge_reduction: float = math.nan  # 1 - Ha / (Hp - physiological wedge)
    biconcave_reduction: float = math.nan  # 1 - (Hm/Hc) / neighbours' Hm/Hc
    anterior_loss: float = math.nan  # 1 - Ha / Ha_expected
    middle_loss: float = math.nan  # 1 - Hm / Hm_expected
    crush_reduction: float = math.nan  # posterior loss, 1 - Hp / Hp_expected
    genant_grade: int | None = None
    genant_type: GenantType = GenantType.NONE
    trabecular_hu: float = math.nan
    fracture_probability: float | None = None
    in_validated_range: bool = True
    height_source: str | None = None  # morphometry's HEIGHTS_MEASURED or HEIGHTS_FROM_USER_POINTS (None: no heights)

    @property
    def height_loss(self) -> float:
        reductions = [r for r in self.reductions().values() if math.isfinite(r)]
        return max(reductions) if reductions else math.nan

    def reductions(self) -> dict[str, float]:
        return {"wedge": self.wedge_reduction, "biconcave": self.biconcave_reduction,
                "anterior": self.anterior_loss, "middle": self.middle_loss, "posterior": self.crush_reduction}


@dataclass
class OsteoporosisScreen:
    level: str
    trabecular_hu: float
    category: str  # "likely osteoporosis" | "low bone density" | "normal density"
    method: str


@dataclass
class FractureFindings:
    """Stage 3b result: one finding per level (same order as the measurements)."""

    findings: list[VertebraFinding]
    probability_threshold: float
    osteoporosis: OsteoporosisScreen | None = None
    notes: list[str] = field(default_factory=list)

    def by_name(self) -> dict[str, VertebraFinding]:
        return {f.level.name: f for f in self.findings}


# Offline- and guided-engine masks: their level borders are estimated, and where one strays the heights
# between them read as fractures of normal vertebrae (grade 2-3 on chest CTs it was not tuned
# on); so a level QC has any doubt about keeps its heights but not its grade (assessment.chain).
UNCHECKED_MASK_PREFIX = "grade withheld: estimated-border mask"


def unchecked_mask_reason(doubt: str) -> str:
    """Why a level with estimated borders (offline or guided engine) is not graded (``doubt``: what QC
    found), and what to do."""
    return (f"{UNCHECKED_MASK_PREFIX} ({doubt}); heights shown as measured; check or correct the masks "
            "(Slicer: Segment Editor, then Classify) or use a learned model")


def genant_grade(height_reduction: float) -> int:
    """0-3 from the fractional height reduction (0.22 -> grade 1)."""
    return int(sum(height_reduction >= threshold for threshold in GRADE_THRESHOLDS))


def assess_fractures(
    measurements: SpineMeasurements,
    morphometry: SpineMorphometry,
    probabilities: dict[str, float] | None = None,
    probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD,
    masks_fit_for_density: bool = True,
    withheld: dict[str, str] | None = None,
) -> FractureFindings:
    """Grade every level. ``masks_fit_for_density`` False (bone-threshold masks, which leave out
    low-density marrow and bias the trabecular mean high) withholds the density; ``withheld``
    (level name -> reason) measures and shows those levels' heights but withholds their grade,
    and they serve no neighbour as a reference."""
    probabilities, withheld = probabilities or {}, withheld or {}
    fov = {m.level.name: m for m in measurements.vertebrae}
    findings = []
    for m in morphometry.vertebrae:
        reason = _not_assessable_reason(m, fov[m.level.name], morphometry.spacing_mm)
        if reason is None:
            reason = withheld.get(m.level.name)
        trabecular_hu = m.trabecular_hu if masks_fit_for_density else math.nan
        finding = VertebraFinding(m.level, Decision.NOT_ASSESSABLE, reason or "",
                                  trabecular_hu=trabecular_hu,
                                  in_validated_range=is_validated_region(m.level))
        if m.heights is not None:
            _record_heights(finding, m)  # shown even when not graded: the reason says why
        if reason is None:
            _intra_vertebral(finding, m)
        findings.append(finding)
    _against_neighbours(findings, {m.level.name: m for m in morphometry.vertebrae})
    for finding in findings:
        if finding.decision is Decision.NOT_ASSESSABLE and finding.reason:
            continue
        _decide(finding, probabilities.get(finding.level.name), probability_threshold)
    return FractureFindings(findings, probability_threshold, _osteoporosis(findings))


def _not_assessable_reason(m: VertebraMorphometry, fov, spacing_mm) -> str | None:
    if not m.level.is_vertebra:
        return "sacrum: not graded"
    if not is_validated_region(m.level):
        return OUTSIDE_VALIDATED_RANGE
    if fov.fov_status is FovStatus.CUT:
        return "cut by the field of view"
    if m.heights is None:
        return "; ".join(m.problems) or "vertebral body not found"
    if fov.fov_status is FovStatus.TOUCHES_BORDER and _body_touches_axial_border(fov):
        return f"body reaches the {'/'.join(fov.fov_border_faces)} image border: heights may be cut"
    if m.body_max_hu >= METAL_HU:
        return f"metal or cement in the body (max {m.body_max_hu:.0f} HU)"
    axial_voxel_mm = _axial_voxel_mm(m, spacing_mm)
    typical_height_mm = max(m.heights.posterior_mm, m.heights.anterior_mm)
    if axial_voxel_mm > MAX_AXIAL_VOXEL_FRACTION * typical_height_mm:
        return f"too coarse: {axial_voxel_mm:.1f} mm voxels along a {typical_height_mm:.0f} mm body"
    return None


def _body_touches_axial_border(fov) -> bool:
    return any(face in ("superior", "inferior") for face in fov.fov_border_faces)


def _axial_voxel_mm(m: VertebraMorphometry, spacing_mm) -> float:
    """Voxel size along the body's axis, mm: the length of the spacing vector taken along the
    (unit) axis, so 5 mm slices still count nearly 5 mm along a body leaning 30 degrees (a
    spacing-weighted mean of the axes gave 3.5 mm there and let such bodies be graded) and an
    isotropic grid counts its spacing in every direction."""
    superior = np.asarray(m.frame.superior, dtype=float)
    return float(np.linalg.norm(superior / np.linalg.norm(superior) * np.asarray(spacing_mm)))


def _record_heights(finding: VertebraFinding, m: VertebraMorphometry) -> None:
    h = m.heights
    finding.height_anterior_mm, finding.height_middle_mm, finding.height_posterior_mm = (
        h.anterior_mm, h.middle_mm, h.posterior_mm)
    finding.height_source = h.source


def _intra_vertebral(finding: VertebraFinding, m: VertebraMorphometry) -> None:
    h = m.heights
    finding.physiological_wedge_mm = physiological_difference_mm(m.level, _point_distance_mm(m))
    finding.wedge_reduction = max(0.0, 1.0 - h.anterior_mm / (h.posterior_mm - finding.physiological_wedge_mm))
    finding.biconcave_reduction = max(0.0, 1.0 - h.middle_mm / _central_mm(finding))  # until neighbours are known
    finding.decision = Decision.NORMAL  # provisional until the neighbour comparison is done


def _point_distance_mm(m: VertebraMorphometry) -> float:
    """Between the anterior and posterior height points: where the user placed them, else as measured."""
    if m.heights is not None and m.heights.point_distance_mm is not None:
        return m.heights.point_distance_mm
    return 2.0 * HEIGHT_SAMPLE_FRACTION * 0.5 * m.body_depth_mm


def _central_mm(f: VertebraFinding) -> float:
    return 0.5 * (f.height_anterior_mm + f.height_posterior_mm)


def _against_neighbours(findings: list[VertebraFinding], morphometry: dict[str, VertebraMorphometry]) -> None:
    """Expected heights from undeformed neighbours: first those whose own shape is normal, then
    again without any whose heights fall short of their own expectation by as much as a deformed
    shape (a crushed neighbour, or two adjacent fractures judging each other), until none drops."""
    measured = [f for f in findings if math.isfinite(f.wedge_reduction)]  # graded levels only
    heights = {f.level.name: LevelHeights(f.level, f.height_anterior_mm, f.height_middle_mm, f.height_posterior_mm,
                                          _point_distance_mm(morphometry[f.level.name]),
                                          morphometry[f.level.name].heights.middle_profile_mm) for f in measured}
    references = [f for f in measured if f.wedge_reduction < NEIGHBOUR_DEFORMATION_LIMIT
                  and f.biconcave_reduction < NEIGHBOUR_CONCAVITY_LIMIT]
    concavity = {f.level.name: f.biconcave_reduction for f in measured}
    for _ in range(REFERENCE_PASSES):
        for finding in measured:
            finding.biconcave_reduction = concavity[finding.level.name]
            _compare(finding, heights, references)
        kept = [f for f in references if not math.isfinite(f.crush_reduction)
                or max(f.anterior_loss, f.middle_loss, f.crush_reduction) < NEIGHBOUR_DEFORMATION_LIMIT]
        if len(kept) == len(references):
            break
        references = kept


def _compare(finding: VertebraFinding, heights: dict[str, LevelHeights], references: list[VertebraFinding]) -> None:
    expected = expected_heights(heights[finding.level.name], [heights[r.level.name] for r in references])
    if expected is None:
        return
    finding.height_middle_mm, finding.height_middle_expected_mm = _most_reduced_middle(
        heights[finding.level.name], expected)
    finding.height_anterior_expected_mm = expected.anterior_mm
    finding.height_posterior_expected_mm = expected.posterior_mm
    finding.expected_from = expected.references
    finding.anterior_loss = max(0.0, 1.0 - finding.height_anterior_mm / expected.anterior_mm)
    finding.middle_loss = max(0.0, 1.0 - finding.height_middle_mm / finding.height_middle_expected_mm)
    finding.crush_reduction = max(0.0, 1.0 - finding.height_posterior_mm / expected.posterior_mm)
    own_concavity = finding.height_middle_mm / _central_mm(finding)
    neighbours_concavity = finding.height_middle_expected_mm / (0.5 * (expected.anterior_mm + expected.posterior_mm))
    finding.biconcave_reduction = max(0.0, 1.0 - own_concavity / neighbours_concavity)


def _most_reduced_middle(target: LevelHeights, expected) -> tuple[float, float]:
    """(measured, expected) middle height, mm, at the point of the central part reduced most
    against the neighbours' heights at the same point (the deepest one without a profile)."""
    points = [(h, e) for h, e in zip(target.middle_profile_mm, expected.middle_profile_mm)
              if math.isfinite(h) and math.isfinite(e) and e > 0]
    if not points:
        return target.middle_mm, expected.middle_mm
    return min(points, key=lambda pair: pair[0] / pair[1])


def _decide(finding: VertebraFinding, probability: float | None, threshold: float) -> None:
    worst = finding.height_loss
    finding.genant_grade = genant_grade(worst)
    finding.genant_type = _genant_type(finding) if finding.genant_grade > 0 else GenantType.NONE
    finding.fracture_probability = probability
    by_morphometry = finding.genant_grade >= 1
    by_classifier = probability is not None and probability >= threshold
    finding.decision = Decision.FRACTURED if (by_morphometry or by_classifier) else Decision.NORMAL
    finding.reason = _explain(finding, worst, by_morphometry, by_classifier, threshold)


def _genant_type(f: VertebraFinding) -> GenantType:
    if math.isfinite(f.crush_reduction):
        anterior, middle = max(f.anterior_loss, f.wedge_reduction), max(f.middle_loss, f.biconcave_reduction)
        if f.crush_reduction >= CRUSH_SHARE * max(anterior, middle):
            return GenantType.CRUSH
    else:
        anterior, middle = f.wedge_reduction, f.biconcave_reduction
    return GenantType.WEDGE if anterior >= middle else GenantType.BICONCAVE


def _explain(finding, worst, by_morphometry, by_classifier, threshold) -> str:
    parts = []
    if by_morphometry:
        parts.append(f"Genant grade {finding.genant_grade} {finding.genant_type.value}: "
                     f"{worst:.0%} height reduction")
    else:
        parts.append(f"largest height reduction {worst:.0%} (< 20 %)")
    if finding.fracture_probability is not None:
        relation = ">=" if by_classifier else "<"
        parts.append(f"classifier probability {finding.fracture_probability:.2f} {relation} {threshold:.2f}")
    if finding.level.name in NO_NEIGHBOUR_LEVELS:
        parts.append(f"{finding.level.name}: transitional body, smaller than the levels below it: "
                     "within-vertebra ratios only")
    elif not math.isfinite(finding.crush_reduction):
        parts.append("no undeformed neighbour to compare heights with: within-vertebra ratios only")
    if finding.level.name in LUMBOSACRAL_LEVELS and by_morphometry:
        parts.append("lumbosacral level: physiological wedging and tilt make morphometric grades less specific; "
                     "check the gallery")
    return "; ".join(parts)


def _osteoporosis(findings: list[VertebraFinding]) -> OsteoporosisScreen | None:
    l1 = next((f for f in findings if f.level.name == "L1"), None)
    if l1 is None or not math.isfinite(l1.trabecular_hu):
        return None
    if l1.trabecular_hu <= L1_OSTEOPOROSIS_HU:
        category = "likely osteoporosis"
    elif l1.trabecular_hu <= L1_OSTEOPENIA_HU:
        category = "low bone density"
    else:
        category = "normal density"
    method = ("L1 trabecular attenuation against Pickhardt et al. 2013 thresholds: <= 110 HU likely "
              "osteoporosis (>90 % specific), <= 160 HU low density (90 % sensitive); 120 kVp, non-contrast "
              "or portal-venous CT; not a DXA substitute")
    return OsteoporosisScreen("L1", l1.trabecular_hu, category, method)
