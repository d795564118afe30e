"""Drawing conventions shared by the pictures (overview, gallery): the bone window, the label
colours (the level's own, or its decision's once findings exist) and the level captions.
"""

from __future__ import annotations

import numpy as np

from spinefrac.assessment.fracture import DECISION_COLORS_RGB, FractureFindings
from spinefrac.assessment.morphometry import HEIGHTS_FROM_USER_POINTS
from spinefrac.assessment.quality import QcVerdict
from spinefrac.levels import LEVEL_BY_ID

BONE_WINDOW_LEVEL_HU = 400.0
BONE_WINDOW_WIDTH_HU = 1800.0
LABEL_ALPHA = 0.45
# zlib level 3 instead of 6: the same pixels, files about 13 % larger, written in half the time.
PNG_OPTIONS = {"compress_level": 3}


def colour_table(findings: FractureFindings | None = None) -> np.ndarray:
    """Label id -> RGBA: the level's own colour, or its decision colour once findings exist."""
    table = np.zeros((256, 4), dtype=float)
    decisions = {f.level.verse_id: f.decision for f in findings.findings} if findings else {}
    for verse_id, level in LEVEL_BY_ID.items():
        rgb = DECISION_COLORS_RGB[decisions[verse_id]] if verse_id in decisions else level.color_rgb
        table[verse_id, :3] = np.array(rgb) / 255.0
        table[verse_id, 3] = LABEL_ALPHA
    return table


def level_caption(name: str, findings: FractureFindings | None) -> str:
    """The level's name, with its Genant grade when it is fractured."""
    finding = findings.by_name().get(name) if findings else None
    if finding is None or finding.genant_grade is None:
        return name
    return f"{name} G{finding.genant_grade}" if finding.genant_grade else name


USER_HEIGHTS_COLOUR = "cyan"  # height lines of a level measured from points the user placed or moved


def height_line_colour(source: str) -> str:
    """White for heights measured on the CT, cyan for heights from the user's points."""
    return USER_HEIGHTS_COLOUR if source == HEIGHTS_FROM_USER_POINTS else "white"


def user_heights_levels(findings: FractureFindings | None) -> list[str]:
    """The levels whose heights come from points the user placed or moved, cranial first."""
    return [f.level.name for f in findings.findings if f.height_source == HEIGHTS_FROM_USER_POINTS] if findings else []


def bone_window(hu: np.ndarray) -> np.ndarray:
    """HU -> 0..1 grey through the bone window."""
    low = BONE_WINDOW_LEVEL_HU - BONE_WINDOW_WIDTH_HU / 2
    return np.clip((hu.astype(np.float32) - low) / BONE_WINDOW_WIDTH_HU, 0.0, 1.0)


QC_CAPTION_COLOURS = {QcVerdict.FAIL: "#ff8c00", QcVerdict.WARN: "#ffd700"}  # orange fail, yellow warn


def qc_marked(caption: str, colour, verdict: QcVerdict | None) -> tuple[str, object]:
    """A level's caption and colour, marked 'QC fail' (orange) or 'QC warn' (yellow) where quality
    control flagged its mask, so the pictures show which masks to check."""
    if verdict is None or verdict is QcVerdict.PASS:
        return caption, colour
    return f"{caption} QC {verdict.value}", QC_CAPTION_COLOURS[verdict]
