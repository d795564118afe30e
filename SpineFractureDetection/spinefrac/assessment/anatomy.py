"""Expected size of each vertebral level in an adult, for quality control of segmentations.

Whole-vertebra volume (body and posterior elements, ml): estimated, not measured: the vertebral
body taken as an elliptic cylinder (pi/4 x width x depth x height) with typical adult endplate
widths, depths and body heights as reported by Panjabi MM et al. (cervical: Spine 1991;16:861-869;
thoracic: Spine 1991;16:888-901; lumbar: Spine 1992;17:299-306), times the whole/body volume ratio
of 1.6-1.9 measured on the TotalSegmentator sample's whole-vertebra and body-only references
(T12-L5), rounded; approximate mid values, which is why QC's range around them is wide. Checked on
the expert VerSe masks in ../shared/data/verse-masks (C1-T5 of two necks, T9-L5 and L1-L5 of two
lumbar spines: 13-60 ml, all within QC's range; ``Testing/Python/test_quality.py``).

Centroid pitch (mm): the distance from a level's centroid to the next level's, i.e. body height
plus disc height (Panjabi's body heights; disc heights about 5 mm cervical, 5-7 mm thoracic and
10-12 mm lumbar). The VerSe masks give 17-22 mm in the neck, 21-30 mm in the chest and 26-35 mm
in the lumbar spine, within 0.8-1.2 of these values after one scale factor per patient.

Patients differ in size by far more than these tables' precision, so QC compares with a range
around them and, where enough levels are labelled, with the patient's own other levels.
"""

from __future__ import annotations

from spinefrac.levels import LEVELS, Level

# Level -> expected whole-vertebra volume, ml (adult, mid value).
EXPECTED_VOLUME_ML: dict[str, float] = {
    "C1": 16, "C2": 22, "C3": 15, "C4": 15, "C5": 16, "C6": 18, "C7": 21,
    "T1": 25, "T2": 26, "T3": 27, "T4": 28, "T5": 29, "T6": 31, "T7": 33, "T8": 35, "T9": 37,
    "T10": 40, "T11": 44, "T12": 48, "T13": 48,
    "L1": 52, "L2": 56, "L3": 59, "L4": 61, "L5": 60, "L6": 60,
    # The sacrum's label is S1 alone in some conventions, the whole bone in others.
    "sacrum": 120,
}

# Level -> expected distance from its centroid to the next level's caudally, mm.
CENTROID_PITCH_MM: dict[str, float] = {
    "C1": 20, "C2": 20, "C3": 18, "C4": 18, "C5": 18, "C6": 18, "C7": 19,
    "T1": 20, "T2": 21, "T3": 22, "T4": 22, "T5": 23, "T6": 24, "T7": 24, "T8": 25, "T9": 26,
    "T10": 27, "T11": 28, "T12": 30, "T13": 30,
    "L1": 32, "L2": 33, "L3": 34, "L4": 34, "L5": 34, "L6": 34,
}


def expected_volume_ml(level: Level) -> float:
    return float(EXPECTED_VOLUME_ML[level.name])


def levels_between(upper: Level, lower: Level) -> list[Level]:
    """The vertebrae passed going down from ``upper`` to ``lower`` (``lower`` included; a
    transitional slot, T13 or L6, counts only when it is ``lower`` itself)."""
    return [level for level in LEVELS
            if upper.craniocaudal_rank < level.craniocaudal_rank <= lower.craniocaudal_rank
            and (not level.is_transitional or level is lower)]


def expected_distance_mm(upper: Level, lower: Level) -> float:
    """Expected centroid distance between two labelled levels, summed step by step."""
    distance, current = 0.0, upper
    for level in levels_between(upper, lower):
        distance += CENTROID_PITCH_MM[current.name]
        current = level
    return distance


def steps_between(upper: Level, lower: Level) -> int:
    """How many vertebrae down ``lower`` is from ``upper`` (1 for neighbours)."""
    return len(levels_between(upper, lower))

