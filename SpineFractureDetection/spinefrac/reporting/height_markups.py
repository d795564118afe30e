"""Where each level's heights were measured, as six points (heights.mrk.json, written with every run):
the superior and inferior endplate points of the anterior, middle and posterior height, each pair exactly
the reported height apart, so a clinician sees in Slicer what was measured and can move a point
(``spinefrac run --heights``).
"""

from __future__ import annotations

import math

from spinefrac.assessment.fracture import FractureFindings, VertebraFinding
from spinefrac.assessment.morphometry import BodyHeights, HeightLine, SpineMorphometry
from spinefrac.io.height_points import HEIGHT_POSITIONS, SixPoints, height_points_document, pair_from_line

HEIGHTS_DESCRIPTION = ("Genant six-point morphometry: the endplate points of each reported height (a pair is the "
                       "height apart); move them and run again with --heights to measure those levels from them")


def height_points(morphometry: SpineMorphometry, findings: FractureFindings) -> list[SixPoints]:
    """Per level with reported heights (cranial first), its six points: each pair on the line where the height
    was measured on the CT (the user's own pair for a level measured from points), centred on that line and
    the reported height apart. Levels without heights get none."""
    by_name = findings.by_name()
    levels = []
    for m in morphometry.vertebrae:
        finding = by_name.get(m.level.name)
        if m.heights is None or finding is None:
            continue
        reported = _reported_heights(finding)
        lines = _measured_lines(m.heights, reported["middle"])
        if any(lines.get(p) is None or not math.isfinite(reported[p]) for p in HEIGHT_POSITIONS):
            continue
        levels.append(SixPoints(m.level, {p: pair_from_line(lines[p].inferior_lps_mm, lines[p].superior_lps_mm,
                                                             reported[p]) for p in HEIGHT_POSITIONS}))
    return levels


def heights_markups(morphometry: SpineMorphometry, findings: FractureFindings) -> dict:
    """heights.mrk.json's content: ``height_points`` as a Slicer markups point list (LPS mm)."""
    return height_points_document(height_points(morphometry, findings), HEIGHTS_DESCRIPTION)


def _reported_heights(finding: VertebraFinding) -> dict[str, float]:
    return {"anterior": finding.height_anterior_mm, "middle": finding.height_middle_mm,
            "posterior": finding.height_posterior_mm}


def _measured_lines(heights: BodyHeights, middle_mm: float) -> dict[str, HeightLine | None]:
    """The anterior and posterior lines; the middle one where the reported middle height was taken (the
    middle-profile point graded, not always mid-depth)."""
    lines = {line.name: line for line in heights.lines}
    profile = [(abs(h - middle_mm), line) for h, line in zip(heights.middle_profile_mm, heights.middle_lines)
               if line is not None and math.isfinite(h)]
    if profile and math.isfinite(middle_mm):
        lines["middle"] = min(profile, key=lambda pair: pair[0])[1]
    return lines
