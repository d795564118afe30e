"""Quality control of a segmentation, before any level is measured for heights or graded.

Every segmentation passes here (offline, learned, a user's label map, Slicer segments; the one
chain in ``assessment/chain.py`` calls it). Each level gets pass / warn / fail with its reasons:

- volume: within an anatomical range for its level (``anatomy.py``) and, where three or more
  comparable levels are labelled, in proportion to the patient's other levels;
- on bone: the HU distribution of cortex plus marrow (a bright tail and a wide spread, a rim
  brighter than the interior); soft tissue (a flipped or shifted label) and contrast-filled blood
  (bright but homogeneous, rim darker) fail;
- shape: one piece, not merged with a neighbour; a spinal canal enclosed behind the body where
  the in-plane resolution shows it;
- position: cranio-caudal order of the centroids, and centroid spacing against the level's
  expected pitch (too close: one vertebra split between two labels; numbering that skips a
  level where the distance fits one: the count disagrees with the labels);
- borders: neighbouring labels that touch face to face over much of the bodies' front (a border
  through a vertebral body instead of the disc: heights and grades from such masks are wrong)
  fail both levels.

A failing level is never graded (the chain withholds it, grey, with the reason), and the
identification confidence drops with failures. Thresholds were set from physiology and checked
for no false failure on real masks: the sample CT's references, the VerSe expert masks, phantoms
(``Testing/Python/test_quality.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from itertools import pairwise

import numpy as np

from spinefrac.assessment.anatomy import expected_distance_mm, expected_volume_ml, steps_between
from spinefrac.assessment.measurement import FovStatus, SpineMeasurements, VertebraMeasurement
from spinefrac.assessment.quality_evidence import (
    BODY_FRONT_FRACTION,
    BONE_HU,
    MARROW_HU,
    LevelEvidence,
    border_contact,
    index_box,
    level_evidence,
)
from spinefrac.io.images import CtVolume
from spinefrac.levels import LEVELS, Level
from spinefrac.segmentation.base import VertebraSegmentation

# Volume against the anatomical table: an adult vertebra is within 0.35-2.5 x the mid value.
VOLUME_RANGE_FACTORS = (0.35, 2.5)
SACRUM_VOLUME_RANGE_FACTORS = (0.1, 3.3)  # S1 alone or the whole bone
# Volume against the patient's own other levels (scaled by the table): fail / warn limits.
RELATIVE_VOLUME_FAIL = (0.4, 1.8)
RELATIVE_VOLUME_WARN = (0.6, 1.45)
MERGED_RELATIVE_VOLUME = 1.6
MIN_COMPARABLE_LEVELS = 3
# On bone.
SOFT_TISSUE_BONE_FRACTION = 0.15  # under this fraction of voxels >= 150 HU: soft tissue
SOFT_TISSUE_P95_HU = 200.0  # no cortex: the brightest 5 % stay under 200 HU
DISPLACED_BONE_FRACTION = 0.4  # with a rim darker than the interior: the label misses the bone
WEAK_BONE_FRACTION = 0.35
WEAK_RIM_HU = 30.0
CONTRAST_MEDIAN_HU = (150.0, 700.0)  # iodinated blood 150-600 HU; sclerotic bone lies above
CONTRAST_RELATIVE_SPREAD = 0.35  # bone ~0.7-1.2, enhanced blood 0.1-0.3
# Pieces: a second piece with this share of the level's volume means the level is split.
SPLIT_PIECE_FRACTION = 0.10
STRAY_PIECE_FRACTION = 0.01
# Canal: judged only where axial voxels are this fine (at 3 mm partial volume closes it).
CANAL_MAX_IN_PLANE_MM = 1.0
# Centroid spacing against the expected pitch, after one scale factor per patient.
SPACING_TOO_CLOSE = 0.6
SPACING_GAP = 1.6
PATIENT_SCALE_LIMITS = (0.7, 1.4)
# Borders: contact area in front of the canal over volume^(2/3) of the larger of the two levels.
# Measured: reference masks (the sample CT's, four VerSe expert sets) 0.00-0.17, offline masks
# whose borders run through the bodies (POPI, lung1, lung2) 0.37-0.97; the cut halves the gap.
BORDER_CONTACT_RATIO = 0.25
# ... of which this share at least must have marrow on both sides (MARROW_HU, each side's HU
# averaged over 3 x 3 voxels in the border's plane): touching on soft tissue or on the endplates of
# a disc thinner than a voxel is no body cut. Measured 0.75-1.00 on those offline borders, 0.00 on
# phantoms with discs thinner than their voxels (labels touching over 0.4-0.7 x volume^(2/3)).
BORDER_MARROW_SHARE = 0.5
MISPLACED_REASONS = ("labels on soft tissue", "label does not follow", "bright but homogeneous",
                     "wrong cranio-caudal order")
CONFIDENCE_STEPS = ("uncertain", "low", "medium", "high")

QC_METHOD = (
    "Per level, before grading: volume against an anatomical range (Panjabi et al. body dimensions, "
    "whole vertebra) and against the patient's other levels; voxels on bone (share >= 150 HU, 95th "
    "percentile, rim vs interior HU, relative spread: soft tissue and homogeneous contrast-filled blood "
    "fail); one piece, not merged; a canal behind the body where axial voxels are <= 1 mm; cranio-caudal "
    "order of centroids; centroid spacing against the expected pitch; neighbouring labels touching over "
    f">= {BORDER_CONTACT_RATIO} x volume^(2/3) in the front {BODY_FRONT_FRACTION:.0%} of their antero-posterior "
    f"extent (the bodies), >= {BORDER_MARROW_SHARE:.0%} of it with marrow ({MARROW_HU[0]:.0f}-"
    f"{MARROW_HU[1]:.0f} HU) on both sides: a border through a body, both fail. fail: never graded "
    "(grey); warn: graded, check the mask. Offline-engine masks (estimated borders) are graded only where a "
    "level passes, both its neighbours do not fail and the identification stays high or medium."
)


class QcVerdict(str, Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass
class LevelQuality:
    """QC of one labelled level: the verdict, what caused it, and the evidence (units in names)."""

    level: Level
    evidence: LevelEvidence
    volume_ml: float
    volume_expected_ml: float
    volume_relative_to_others: float = math.nan  # volume / the patient's other levels scaled by the table
    spacing_ratios: dict[str, float] = field(default_factory=dict)  # neighbour -> distance / expected
    # neighbour -> contact area in front of the canal / volume^(2/3) of the larger level
    border_contact_ratios: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> QcVerdict:
        return QcVerdict.FAIL if self.failures else QcVerdict.WARN if self.warnings else QcVerdict.PASS

    @property
    def reasons(self) -> list[str]:
        return self.failures + self.warnings

    def fail(self, reason: str) -> None:
        if reason not in self.failures:
            self.failures.append(reason)

    def warn(self, reason: str) -> None:
        if reason not in self.warnings:
            self.warnings.append(reason)


@dataclass
class SegmentationQuality:
    """QC of a whole segmentation: one LevelQuality per level (cranial to caudal) and the
    identification confidence after QC."""

    levels: list[LevelQuality]
    identification_confidence_before: str | None
    identification_confidence: str | None
    identity_failures: int  # failures of order or spacing: the numbering itself is in doubt

    @property
    def verdict(self) -> QcVerdict:
        verdicts = {q.verdict for q in self.levels}
        return next((v for v in (QcVerdict.FAIL, QcVerdict.WARN) if v in verdicts), QcVerdict.PASS)

    def by_name(self) -> dict[str, LevelQuality]:
        return {q.level.name: q for q in self.levels}

    def failing(self) -> dict[str, str]:
        """Level name -> its failure reasons, for levels that must not be graded."""
        return {q.level.name: "; ".join(q.failures) for q in self.levels if q.failures}

    def verdicts(self) -> dict[str, QcVerdict]:
        """Level name -> its verdict (the pictures mark flagged levels by it)."""
        return {q.level.name: q.verdict for q in self.levels}

    def warned(self) -> dict[str, str]:
        """Level name -> its warnings, for levels that pass with warnings (none failing)."""
        return {q.level.name: "; ".join(q.warnings) for q in self.levels if q.warnings and not q.failures}

    def counts(self) -> dict[str, int]:
        return {v.value: sum(q.verdict is v for q in self.levels) for v in QcVerdict}

    def summary(self) -> str:
        counts = self.counts()
        text = f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail"
        if self.identification_confidence != self.identification_confidence_before:
            before = self.identification_confidence_before or "as labelled"
            text += f"; level identification confidence {before} -> {self.identification_confidence}"
        return text


def check_quality(ct: CtVolume, segmentation: VertebraSegmentation,
                  measurements: SpineMeasurements) -> SegmentationQuality:
    """Judge every measured level; see the module docstring for the checks."""
    labels = segmentation.array()
    hu = ct.array()
    spacing_kji = tuple(float(s) for s in reversed(segmentation.label_map.GetSpacing()))
    image = segmentation.label_map
    boxes = [index_box(image, m.bbox_min_ras_mm, m.bbox_max_ras_mm) for m in measurements.vertebrae]
    levels = [_level_quality(m, level_evidence(hu, labels, m.level.verse_id, box, spacing_kji))
              for m, box in zip(measurements.vertebrae, boxes)]
    by_name = {q.level.name: (q, m) for q, m in zip(levels, measurements.vertebrae)}
    _check_relative_volumes(by_name)
    identity_failures = _check_order(by_name) + _check_spacing(by_name)
    _check_merged(by_name)
    _check_borders(list(zip(levels, measurements.vertebrae, boxes)), hu, labels, spacing_kji)
    before = segmentation.identification.confidence if segmentation.identification else None
    return SegmentationQuality(levels, before, _confidence_after(before, levels, identity_failures),
                               identity_failures)


def _level_quality(m: VertebraMeasurement, evidence: LevelEvidence) -> LevelQuality:
    quality = LevelQuality(m.level, evidence, m.volume_mm3 / 1000.0, expected_volume_ml(m.level))
    _check_volume(quality, m)
    _check_bone(quality)
    _check_pieces(quality)
    _check_canal(quality, m)
    return quality


def _check_volume(q: LevelQuality, m: VertebraMeasurement) -> None:
    low, high = SACRUM_VOLUME_RANGE_FACTORS if not m.level.is_vertebra else VOLUME_RANGE_FACTORS
    low_ml, high_ml = low * q.volume_expected_ml, high * q.volume_expected_ml
    if q.volume_ml > high_ml:
        q.fail(f"volume {q.volume_ml:.0f} ml is above the anatomical range for {m.level.name} "
               f"({low_ml:.0f}-{high_ml:.0f} ml): not one vertebra")
    elif q.volume_ml < low_ml and m.fov_status is FovStatus.INSIDE:
        q.fail(f"volume {q.volume_ml:.1f} ml is below the anatomical range for {m.level.name} "
               f"({low_ml:.0f}-{high_ml:.0f} ml) though the level is fully in view: a fragment")


def _check_bone(q: LevelQuality) -> None:
    e = q.evidence
    share = f"{e.bone_fraction:.0%} of its voxels >= {BONE_HU:.0f} HU"
    if e.bone_fraction < SOFT_TISSUE_BONE_FRACTION or e.hu_p95 < SOFT_TISSUE_P95_HU:
        q.fail(f"labels on soft tissue, not bone: {share}, 95th percentile {e.hu_p95:.0f} HU "
               "(a vertebra's cortex reaches several hundred HU): labels flipped or shifted against the CT?")
    elif e.rim_minus_interior_hu < 0 and e.bone_fraction < DISPLACED_BONE_FRACTION:
        q.fail(f"label does not follow the bone: its rim is {-e.rim_minus_interior_hu:.0f} HU darker than its "
               f"interior (a vertebra's cortex makes the rim brighter) and only {share}: labels shifted or "
               "flipped against the CT")
    elif (CONTRAST_MEDIAN_HU[0] <= e.hu_median <= CONTRAST_MEDIAN_HU[1]
          and e.hu_relative_spread < CONTRAST_RELATIVE_SPREAD and not e.rim_minus_interior_hu >= WEAK_RIM_HU):
        q.fail(f"bright but homogeneous like contrast-filled blood, not bone: median {e.hu_median:.0f} HU, "
               f"inter-quartile range {e.hu_p75 - e.hu_p25:.0f} HU, no cortical rim: a vessel or the heart?")
    elif e.bone_fraction < WEAK_BONE_FRACTION:
        q.warn(f"little bone: only {share}")


def _check_pieces(q: LevelQuality) -> None:
    pieces = q.evidence.piece_volumes_ml
    total = sum(pieces)
    large = [p for p in pieces if p >= SPLIT_PIECE_FRACTION * total]
    stray = [p for p in pieces[1:] if STRAY_PIECE_FRACTION * total <= p < SPLIT_PIECE_FRACTION * total]
    if len(large) > 1:
        q.fail(f"split into {len(large)} pieces ({', '.join(f'{p:.1f}' for p in large)} ml): "
               "one level must be one connected bone")
    elif stray:
        q.warn(f"{len(stray)} stray piece(s) apart from the vertebra ({sum(stray):.1f} ml)")


def _check_canal(q: LevelQuality, m: VertebraMeasurement) -> None:
    e = q.evidence
    if (not m.level.is_vertebra or m.fov_status is not FovStatus.INSIDE
            or e.in_plane_spacing_mm > CANAL_MAX_IN_PLANE_MM or e.canal_slices > 0):
        return
    q.warn("no spinal canal enclosed behind the body on any axial slice: not a whole vertebra "
           "(arch missing or open)")


def _check_borders(entries: list, hu: np.ndarray, labels: np.ndarray, spacing_kji_mm) -> None:
    """Consecutive labelled levels whose labels touch over much of the bodies' front, with marrow on
    both sides: their border runs through a vertebral body, not the disc. Both masks are wrong
    there, so both levels fail."""
    for (upper, upper_m, upper_box), (lower, lower_m, lower_box) in pairwise(entries):
        contact = border_contact(hu, labels, upper.level.verse_id, lower.level.verse_id, upper_box, lower_box,
                                 spacing_kji_mm)
        ratio = contact.body_contact_mm2 / max(upper_m.volume_mm3, lower_m.volume_mm3) ** (2.0 / 3.0)
        upper.border_contact_ratios[lower.level.name] = lower.border_contact_ratios[upper.level.name] = ratio
        if (ratio < BORDER_CONTACT_RATIO
                or contact.marrow_contact_mm2 < BORDER_MARROW_SHARE * contact.body_contact_mm2):
            continue
        reason = (f"border with {{other}} runs through a vertebral body, not the disc: marrow on both sides over "
                  f"{contact.marrow_contact_mm2:.0f} mm2 (the labels touch over {contact.body_contact_mm2:.0f} mm2 "
                  f"in front of the canal, {ratio:.2f} x volume^(2/3)): check the masks")
        upper.fail(reason.format(other=lower.level.name))
        lower.fail(reason.format(other=upper.level.name))


def _check_relative_volumes(by_name: dict) -> None:
    """Each complete vertebra against the median of the patient's other complete vertebrae,
    each scaled to this level by the anatomical table."""
    complete = [(q, m) for q, m in by_name.values() if m.level.is_vertebra and m.fov_status is FovStatus.INSIDE]
    if len(complete) < MIN_COMPARABLE_LEVELS:
        return
    for q, m in by_name.values():
        if not m.level.is_vertebra:
            continue
        scaled = [o.volume_ml * q.volume_expected_ml / o.volume_expected_ml for o, _ in complete if o is not q]
        q.volume_relative_to_others = ratio = q.volume_ml / float(np.median(scaled))
        cut = m.fov_status is not FovStatus.INSIDE
        detail = f"volume {q.volume_ml:.0f} ml is {ratio:.1f} x what the other levels give for {m.level.name}"
        if ratio > RELATIVE_VOLUME_FAIL[1] or (ratio < RELATIVE_VOLUME_FAIL[0] and not cut):
            q.fail(detail)
        elif ratio > RELATIVE_VOLUME_WARN[1] or (ratio < RELATIVE_VOLUME_WARN[0] and not cut):
            q.warn(detail)


def _check_merged(by_name: dict) -> None:
    """A level of about twice its expected volume next to a level that is not labelled holds both."""
    present = set(by_name)
    for q, m in by_name.values():
        ratio = q.volume_relative_to_others
        if not math.isfinite(ratio):
            ratio = q.volume_ml / q.volume_expected_ml
        if not m.level.is_vertebra or ratio < MERGED_RELATIVE_VOLUME:
            continue
        missing = _gap_neighbours(m.level, present)
        if missing:
            q.fail(f"merged with a neighbour: {ratio:.1f} x the volume of one level, and {'/'.join(missing)} "
                   "next to it is not labelled")


def _gap_neighbours(level: Level, present: set[str]) -> list[str]:
    """Neighbours of ``level`` that are not labelled while the level beyond them is: a gap inside
    the labelled run (a level missing at its end is just out of view)."""
    regular = [candidate for candidate in LEVELS if not candidate.is_transitional]
    if level not in regular:
        return []
    index = regular.index(level)
    gaps = []
    for step in (-1, 1):
        neighbour, beyond = index + step, index + 2 * step
        if (0 <= beyond < len(regular) and regular[neighbour].name not in present
                and regular[beyond].name in present):
            gaps.append(regular[neighbour].name)
    return gaps


def _check_order(by_name: dict) -> int:
    """Centroids must descend with the level; levels outside every longest well-ordered run fail."""
    entries = [(q, m) for q, m in by_name.values()]
    heights = [m.centroid_ras_mm[2] for _, m in entries]  # S, cranial to caudal by level
    keep = _in_every_longest_descending_run(heights)
    failed = 0
    for index, (q, m) in enumerate(entries):
        if keep[index]:
            continue
        wrong = [o.level.name for o, om in entries
                 if (om.level.craniocaudal_rank < m.level.craniocaudal_rank) != (om.centroid_ras_mm[2] > m.centroid_ras_mm[2])
                 and o is not q]
        q.fail(f"wrong cranio-caudal order: its centroid (S {m.centroid_ras_mm[2]:.0f} mm) is on the wrong side of "
               f"{', '.join(wrong)}")
        failed += 1
    return failed


def _in_every_longest_descending_run(values: list[float]) -> list[bool]:
    """For each index: does it belong to every longest strictly descending subsequence?"""
    n = len(values)
    ending = [1] * n  # longest run ending at i
    for i in range(n):
        for j in range(i):
            if values[j] > values[i]:
                ending[i] = max(ending[i], ending[j] + 1)
    starting = [1] * n  # longest run starting at i
    for i in reversed(range(n)):
        for j in range(i + 1, n):
            if values[i] > values[j]:
                starting[i] = max(starting[i], starting[j] + 1)
    best = max((e + s - 1 for e, s in zip(ending, starting)), default=0)
    on_best = [ending[i] + starting[i] - 1 == best for i in range(n)]
    return [on_best[i] and sum(on_best[j] and ending[j] == ending[i] for j in range(n)) == 1 for i in range(n)]


def _check_spacing(by_name: dict) -> int:
    """Neighbouring labelled vertebrae against the expected pitch, scaled to the patient."""
    pairs = _spacing_pairs(by_name)
    if not pairs:
        return 0
    scale = float(np.clip(np.median([d / e for _, _, d, e in pairs]), *PATIENT_SCALE_LIMITS))
    failed = 0
    for (upper, upper_m), (lower, lower_m), distance, expected in pairs:
        ratio = distance / (expected * scale)
        upper.spacing_ratios[lower.level.name] = lower.spacing_ratios[upper.level.name] = ratio
        steps = steps_between(upper.level, lower.level)
        fits = f"{distance:.0f} mm, about {expected * scale:.0f} mm expected"
        if ratio < SPACING_TOO_CLOSE and steps == 1:
            reason = (f"too close to {{other}} ({fits}): one vertebra split between two labels, or a "
                      "duplicate label")
        elif ratio < SPACING_TOO_CLOSE:
            reason = (f"numbering skips {steps - 1} level(s) between {upper.level.name} and {lower.level.name} but "
                      f"the distance fits fewer ({fits}): the count disagrees with the labels")
        else:
            if ratio > SPACING_GAP and steps == 1:
                gap = (f"{fits} to {{other}}: a vertebra between them may be unlabelled, so the count "
                       "may not fit the numbering")
                upper.warn(gap.format(other=lower.level.name))
                lower.warn(gap.format(other=upper.level.name))
            continue
        upper.fail(reason.format(other=lower.level.name))
        lower.fail(reason.format(other=upper.level.name))
        failed += 1
    return failed


def _spacing_pairs(by_name: dict) -> list:
    """Consecutive labelled vertebrae in level order, both fully in view and on bone."""
    usable = [(q, m) for q, m in by_name.values()
              if m.level.is_vertebra and m.fov_status is not FovStatus.CUT and not _misplaced(q)]
    pairs = []
    for (upper, upper_m), (lower, lower_m) in pairwise(usable):
        distance = float(np.linalg.norm(np.subtract(upper_m.centroid_ras_mm, lower_m.centroid_ras_mm)))
        pairs.append(((upper, upper_m), (lower, lower_m), distance, expected_distance_mm(upper.level, lower.level)))
    return pairs


def _misplaced(q: LevelQuality) -> bool:
    """Off the bone or out of order: its centroid says nothing about the spacing of vertebrae."""
    return any(reason.startswith(MISPLACED_REASONS) for reason in q.failures)


def _confidence_after(before: str | None, levels: list[LevelQuality], identity_failures: int) -> str | None:
    """Failures lower the confidence: one step for failing masks, to low when the numbering itself
    failed (order, spacing), to uncertain when most vertebrae fail (a count carried through more
    failed masks than good ones says little about which vertebra is which)."""
    vertebrae = [q for q in levels if q.level.is_vertebra]
    if vertebrae and sum(bool(q.failures) for q in vertebrae) > len(vertebrae) / 2:
        return "uncertain"
    if identity_failures:
        return "uncertain" if before == "uncertain" else "low"
    if before is None or not any(q.failures for q in levels):
        return before
    return CONFIDENCE_STEPS[max(CONFIDENCE_STEPS.index(before) - 1, 0)]
