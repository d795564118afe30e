"""Vertebral level conventions, in one place.

Label ids follow the VerSe challenge convention (Sekuboyina et al., Med Image Anal 2021):
1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 26 sacrum, 28 T13. Every label map that enters
the pipeline is translated to these ids; every label map we write uses them.

Segment names and codes follow DICOM CID 7603 "Vertebra" (SNOMED CT), which is what 3D
Slicer's terminology uses. T13 and L6 have no concept of their own in SNOMED CT: they carry
the region concept ("Thoracic vertebra", "Lumbar vertebra") so that a terminology-aware
viewer still files them correctly.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass
from enum import Enum

SNOMED_SCHEME = "SCT"
ANATOMICAL_STRUCTURE_CATEGORY = ("123037004", "Anatomical Structure")
BACKGROUND_ID = 0


class Region(str, Enum):
    CERVICAL = "cervical"
    THORACIC = "thoracic"
    LUMBAR = "lumbar"
    SACRAL = "sacral"


@dataclass(frozen=True)
class Level:
    """One vertebral level: its label id, name, anatomy codes and display colour."""

    verse_id: int
    name: str  # display name and segment name, e.g. "L1"
    region: Region
    craniocaudal_rank: int  # 0 = C1; increases caudally; transitional levels slot in
    snomed_code: str
    snomed_meaning: str
    color_rgb: tuple[int, int, int]

    @property
    def is_vertebra(self) -> bool:
        """True for mobile vertebrae (C1-L6); the sacrum is a fused bone, not graded."""
        return self.region is not Region.SACRAL

    @property
    def is_transitional(self) -> bool:
        return self.name in ("T13", "L6")


# (verse id, name, region, SNOMED CT code, SNOMED CT meaning), cranial to caudal.
_LEVEL_TABLE: tuple[tuple[int, str, Region, str, str], ...] = (
    (1, "C1", Region.CERVICAL, "14806007", "C1 vertebra"),
    (2, "C2", Region.CERVICAL, "39976000", "C2 vertebra"),
    (3, "C3", Region.CERVICAL, "113205007", "C3 vertebra"),
    (4, "C4", Region.CERVICAL, "5329002", "C4 vertebra"),
    (5, "C5", Region.CERVICAL, "36978003", "C5 vertebra"),
    (6, "C6", Region.CERVICAL, "36054005", "C6 vertebra"),
    (7, "C7", Region.CERVICAL, "87391001", "C7 vertebra"),
    (8, "T1", Region.THORACIC, "64864005", "T1 vertebra"),
    (9, "T2", Region.THORACIC, "53733008", "T2 vertebra"),
    (10, "T3", Region.THORACIC, "1626008", "T3 vertebra"),
    (11, "T4", Region.THORACIC, "73071006", "T4 vertebra"),
    (12, "T5", Region.THORACIC, "56401006", "T5 vertebra"),
    (13, "T6", Region.THORACIC, "45296009", "T6 vertebra"),
    (14, "T7", Region.THORACIC, "62487009", "T7 vertebra"),
    (15, "T8", Region.THORACIC, "11068009", "T8 vertebra"),
    (16, "T9", Region.THORACIC, "82687006", "T9 vertebra"),
    (17, "T10", Region.THORACIC, "7610001", "T10 vertebra"),
    (18, "T11", Region.THORACIC, "12989004", "T11 vertebra"),
    (19, "T12", Region.THORACIC, "23215003", "T12 vertebra"),
    (28, "T13", Region.THORACIC, "122495006", "Thoracic vertebra"),
    (20, "L1", Region.LUMBAR, "66794005", "L1 vertebra"),
    (21, "L2", Region.LUMBAR, "14293000", "L2 vertebra"),
    (22, "L3", Region.LUMBAR, "36470004", "L3 vertebra"),
    (23, "L4", Region.LUMBAR, "11994002", "L4 vertebra"),
    (24, "L5", Region.LUMBAR, "49668003", "L5 vertebra"),
    (25, "L6", Region.LUMBAR, "122496007", "Lumbar vertebra"),
    (26, "sacrum", Region.SACRAL, "54735007", "Sacrum"),
)

# Hue per region so a glance tells the region; lightness alternates so neighbours differ.
_REGION_HUE = {Region.CERVICAL: 0.55, Region.THORACIC: 0.13, Region.LUMBAR: 0.80, Region.SACRAL: 0.08}


def _level_color(region: Region, rank: int) -> tuple[int, int, int]:
    lightness = 0.45 if rank % 2 else 0.68
    r, g, b = colorsys.hls_to_rgb(_REGION_HUE[region], lightness, 0.75)
    return (round(r * 255), round(g * 255), round(b * 255))


LEVELS: tuple[Level, ...] = tuple(
    Level(vid, name, region, rank, code, meaning, _level_color(region, rank))
    for rank, (vid, name, region, code, meaning) in enumerate(_LEVEL_TABLE)
)
LEVEL_BY_ID: dict[int, Level] = {level.verse_id: level for level in LEVELS}
LEVEL_BY_NAME: dict[str, Level] = {level.name.lower(): level for level in LEVELS}
SACRUM = LEVEL_BY_ID[26]


def level_for_id(verse_id: int) -> Level:
    try:
        return LEVEL_BY_ID[int(verse_id)]
    except KeyError:
        raise KeyError(f"{verse_id} is not a VerSe vertebra label id") from None


def sort_craniocaudal(levels) -> list[Level]:
    return sorted(levels, key=lambda level: level.craniocaudal_rank)


# Names seen in the wild for a level: "L1", "l1", "L1 vertebra", "vertebrae_L1" (TotalSegmentator),
# "Vertebra L1", "vertebra_L1". Sacrum: "sacrum", "vertebrae_S1" (TotalSegmentator's S1 is part
# of the sacrum, so it maps there).
_NAME_PATTERN = re.compile(
    r"^\s*(?:vertebra[e]?[\s_-]*)?(?P<level>[ctl]\d{1,2}|s1|sacrum)(?:[\s_-]*vertebra[e]?)?\s*$",
    re.IGNORECASE,
)


def level_for_name(name: str) -> Level | None:
    """The level a segment or file name refers to, or None when it names no known level."""
    match = _NAME_PATTERN.match(name)
    if not match:
        return None
    key = match.group("level").lower()
    if key in ("s1", "sacrum"):
        return SACRUM
    return LEVEL_BY_NAME.get(key)


# TotalSegmentator v2 "total" task label ids (25 sacrum, 26 S1, 27 L5 ... 31 L1, 32 T12 ... 43 T1,
# 44 C7 ... 50 C1). Other structures of that task (organs, ribs, ...) are not vertebrae.
TOTALSEGMENTATOR_V2_IDS: dict[int, int] = {25: 26, 26: 26}
TOTALSEGMENTATOR_V2_IDS.update({27 + i: 24 - i for i in range(5)})  # L5..L1 -> 24..20
TOTALSEGMENTATOR_V2_IDS.update({32 + i: 19 - i for i in range(12)})  # T12..T1 -> 19..8
TOTALSEGMENTATOR_V2_IDS.update({44 + i: 7 - i for i in range(7)})  # C7..C1 -> 7..1

# TotalSegmentator v1 (104 classes; also the MONAI wholeBody_ct_segmentation bundle's channels):
# 18 vertebrae_L5 ... 22 L1, 23 T12 ... 34 T1, 35 C7 ... 41 C1, and 92 sacrum (class_map "total_v1" in
# TotalSegmentator's map_to_binary.py).
TOTALSEGMENTATOR_V1_IDS: dict[int, int] = {92: 26}
TOTALSEGMENTATOR_V1_IDS.update({18 + i: 24 - i for i in range(5)})  # L5..L1 -> 24..20
TOTALSEGMENTATOR_V1_IDS.update({23 + i: 19 - i for i in range(12)})  # T12..T1 -> 19..8
TOTALSEGMENTATOR_V1_IDS.update({35 + i: 7 - i for i in range(7)})  # C7..C1 -> 7..1
