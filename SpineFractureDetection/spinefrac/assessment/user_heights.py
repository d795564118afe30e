"""Heights from points a clinician placed or moved (``spinefrac run --heights``): the levels of an edited
six-point file (io/height_points.py) take the distances of its pairs as their anterior, middle and posterior
heights, in place of the measured ones, before any level is graded. So their losses against the expected
heights, their grade, type and decision follow from the user's points, and so do the expected heights of
their neighbours (a level the points show deformed no longer serves as a neighbour's reference, as a
measured one would not); every other level is measured as usual. A level whose six points are still where
this run measured its heights (the file written by a run on the same CT and masks, that level left alone)
keeps its measured heights: only the levels the user placed or moved are measured from points.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spinefrac.assessment.geometry import VertebralFrame, make_frame
from spinefrac.assessment.morphometry import (
    HEIGHTS_FROM_USER_POINTS,
    BodyHeights,
    HeightLine,
    SpineMorphometry,
    VertebraMorphometry,
)
from spinefrac.errors import InputError
from spinefrac.io.height_points import HEIGHT_POSITIONS, SixPoints, pair_from_line

MIN_USER_HEIGHT_MM = 1.0  # a pair closer than this: two points dropped on one spot, not a vertebral body
UNMOVED_TOLERANCE_MM = 0.05  # a point this near where the run put it was not moved (the files keep 17 digits)


def apply_user_heights(morphometry: SpineMorphometry, user: list[SixPoints],
                       source: str = "heights file") -> SpineMorphometry:
    """``morphometry`` with the heights of the levels in ``user`` taken from their points. A level the CT's
    labels do not hold as a vertebra, or a pair of points closer than MIN_USER_HEIGHT_MM, is an InputError
    naming ``source``."""
    vertebrae = [m.level.name for m in morphometry.vertebrae if m.level.is_vertebra]
    by_name = {}
    for six in user:
        if six.level.name not in vertebrae:
            raise InputError(f"{source}: {six.level.name} is not one of the CT's measured levels "
                             f"({', '.join(vertebrae) or 'none'})")
        by_name[six.level.name] = six
    return replace(morphometry, vertebrae=[_with_user_heights(m, by_name[m.level.name], source)
                                           if m.level.name in by_name and not unmoved(m.heights, by_name[m.level.name])
                                           else m for m in morphometry.vertebrae])


def unmoved(heights: BodyHeights | None, six: SixPoints) -> bool:
    """Whether every pair of ``six`` lies where these measured ``heights`` put it in heights.mrk.json (on the
    line it was measured on, centred there, the measured height apart; the middle pair at any point of the
    middle profile, the one graded being one of them), within UNMOVED_TOLERANCE_MM."""
    if heights is None:
        return False
    lines = {line.name: line for line in heights.lines}
    candidates = {"anterior": [(lines.get("anterior"), heights.anterior_mm)],
                  "posterior": [(lines.get("posterior"), heights.posterior_mm)],
                  "middle": [(lines.get("middle"), heights.middle_mm),
                             *zip(heights.middle_lines, heights.middle_profile_mm)]}
    return all(any(_same_pair(six.pairs_lps_mm[position], line, height_mm) for line, height_mm in candidates[position])
               for position in HEIGHT_POSITIONS)


def _same_pair(pair, line: HeightLine | None, height_mm: float) -> bool:
    if line is None or not np.isfinite(height_mm):
        return False
    written = pair_from_line(line.inferior_lps_mm, line.superior_lps_mm, height_mm)
    return bool(np.all(np.linalg.norm(np.subtract(pair, written), axis=1) <= UNMOVED_TOLERANCE_MM))


def user_body_heights(six: SixPoints, source: str = "heights file") -> BodyHeights:
    """The heights the six points give: each pair's distance; the lines between the pairs; the distance
    between the anterior and posterior pairs' midpoints as the distance of the height points."""
    heights = {}
    for position in HEIGHT_POSITIONS:
        heights[position] = six.height_mm(position)
        if heights[position] < MIN_USER_HEIGHT_MM:
            raise InputError(f"{source}: {six.level.name} {position} height {heights[position]:.1f} mm: its "
                             "superior and inferior points (nearly) coincide")
    lines = tuple(HeightLine(position, tuple(six.pairs_lps_mm[position][1]), tuple(six.pairs_lps_mm[position][0]))
                  for position in HEIGHT_POSITIONS)
    anterior, middle, posterior = (heights[p] for p in HEIGHT_POSITIONS)
    distance = float(np.linalg.norm(six.midpoint_lps_mm("anterior") - six.midpoint_lps_mm("posterior")))
    return BodyHeights(anterior, middle, posterior, np.array([[anterior, middle, posterior]]), (0.0,), lines,
                       ct_edge_fraction=float("nan"), middle_lines=(lines[1],), source=HEIGHTS_FROM_USER_POINTS,
                       point_distance_mm=distance)


def frame_from_points(six: SixPoints) -> VertebralFrame:
    """A body frame from its six points (for a level whose body was not isolated on the mask): centred on
    them, its axis the mean inferior-to-superior direction of the pairs, anterior from the posterior pair
    towards the anterior one."""
    pairs = np.array([six.pairs_lps_mm[p] for p in HEIGHT_POSITIONS], dtype=float)  # [position, (sup, inf), 3]
    directions = pairs[:, 0] - pairs[:, 1]
    superior = (directions / np.linalg.norm(directions, axis=1, keepdims=True)).mean(axis=0)
    anterior = six.midpoint_lps_mm("anterior") - six.midpoint_lps_mm("posterior")
    return make_frame(pairs.reshape(-1, 3).mean(axis=0), superior / np.linalg.norm(superior), anterior)


def _with_user_heights(m: VertebraMorphometry, six: SixPoints, source: str) -> VertebraMorphometry:
    return replace(m, heights=user_body_heights(six, source), frame=m.frame or frame_from_points(six))
