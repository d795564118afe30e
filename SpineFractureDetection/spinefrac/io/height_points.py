"""Six-point morphometry points: per vertebral body the superior and inferior endplate at the anterior,
middle and posterior height (Genant's six points), as a Slicer markups point list (LPS mm) labelled
'<level> <position> <endplate>' ("L2 middle superior").

Every run writes them where its heights were measured (heights.mrk.json, each pair exactly the reported
height apart); a clinician moves them in Slicer and gives the file back (``spinefrac run --heights``): the
levels it holds are then measured from its points. Anything malformed is a one-line InputError.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinefrac.errors import InputError
from spinefrac.io.points import VertebraPoint, markups_document, read_points
from spinefrac.levels import Level, level_for_name

HEIGHT_POSITIONS = ("anterior", "middle", "posterior")
ENDPLATES = ("superior", "inferior")
_SIX_POINT_LABEL = re.compile(r"^\s*(?P<level>\S+)\s+(?P<position>\w+)\s+(?P<endplate>\w+)\s*$")


@dataclass(frozen=True)
class SixPoints:
    """One vertebral body's six points: position name -> (superior, inferior) endplate point, LPS mm."""

    level: Level
    pairs_lps_mm: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]]

    def height_mm(self, position: str) -> float:
        """The distance between the superior and the inferior point of ``position`` (anterior, middle, posterior)."""
        superior, inferior = self.pairs_lps_mm[position]
        return float(np.linalg.norm(np.subtract(superior, inferior)))

    def midpoint_lps_mm(self, position: str) -> np.ndarray:
        return np.mean(np.array(self.pairs_lps_mm[position], dtype=float), axis=0)


def six_point_label(level_name: str, position: str, endplate: str) -> str:
    """'L2 middle superior': the label of one of a level's six points."""
    return f"{level_name} {position} {endplate}"


def height_points_document(levels: list[SixPoints], description: str = "") -> dict:
    """The six points of every level (in the order given) as a Slicer markups point list."""
    points, labels = [], []
    for six in levels:
        for position in HEIGHT_POSITIONS:
            for endplate, point in zip(ENDPLATES, six.pairs_lps_mm[position]):
                points.append(VertebraPoint(tuple(float(v) for v in point), six.level,
                                            six_point_label(six.level.name, position, endplate)))
                labels.append(points[-1].label)
    return markups_document(points, description, labels)


def read_height_points(path: Path | str) -> list[SixPoints]:
    """The levels of an edited heights point list (any subset of levels, each with all six points), in
    the file's order. Refused in one line: a label that is not one of the six names, a point named twice,
    a level with fewer than its six points; positions that are not finite numbers (read_points)."""
    path = Path(path)
    found: dict[Level, dict[tuple[str, str], tuple[float, float, float]]] = {}
    for point in read_points(path):
        level, position, endplate = _parse_label(point.label, path)
        pairs = found.setdefault(level, {})
        if (position, endplate) in pairs:
            raise InputError(f"heights file {path} holds '{six_point_label(level.name, position, endplate)}' twice")
        pairs[(position, endplate)] = point.position_lps_mm
    levels = []
    for level, pairs in found.items():
        missing = [six_point_label(level.name, p, e) for p in HEIGHT_POSITIONS for e in ENDPLATES
                   if (p, e) not in pairs]
        if missing:
            raise InputError(f"heights file {path}: {level.name} has {len(pairs)} of its six points; missing: "
                             + ", ".join(f"'{label}'" for label in missing))
        levels.append(SixPoints(level, {p: (pairs[(p, "superior")], pairs[(p, "inferior")])
                                        for p in HEIGHT_POSITIONS}))
    return levels


def _parse_label(label: str, path: Path) -> tuple[Level, str, str]:
    match = _SIX_POINT_LABEL.match(label)
    level = level_for_name(match.group("level")) if match else None
    position = match.group("position").lower() if match else ""
    endplate = match.group("endplate").lower() if match else ""
    if level is None or position not in HEIGHT_POSITIONS or endplate not in ENDPLATES:
        raise InputError(f"heights file {path}: point label '{label}' is not one of a level's six points "
                         "('<level> anterior|middle|posterior superior|inferior', e.g. 'L2 middle superior')")
    return level, position, endplate


def pair_from_line(inferior_lps_mm, superior_lps_mm, height_mm: float) -> tuple[tuple, tuple]:
    """(superior, inferior) points on the line through two measured endplate points, centred on the line's
    middle and ``height_mm`` apart: where the height was measured, exactly the reported height long."""
    inferior, superior = np.asarray(inferior_lps_mm, dtype=float), np.asarray(superior_lps_mm, dtype=float)
    length = float(np.linalg.norm(superior - inferior))
    if not math.isfinite(height_mm) or length == 0.0:
        raise ValueError("a height line needs a finite height and two distinct end points")
    centre, along = 0.5 * (inferior + superior), (superior - inferior) / length
    return (tuple((centre + 0.5 * height_mm * along).tolist()), tuple((centre - 0.5 * height_mm * along).tolist()))
