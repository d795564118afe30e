"""Vertebra points: one point per vertebral body, placed by a clinician or written by a run.

Read from a Slicer markups point list (``.mrk.json``), a VerSe centroid file (``*_ctd.json``) or a
CSV (x, y, z in LPS mm, optional level); written as a Slicer markups point list. Positions are
held in LPS millimetres (ITK's patient coordinates), whatever the file used.
"""

from __future__ import annotations

from dataclasses import dataclass

from spinefrac.levels import Level


@dataclass(frozen=True)
class VertebraPoint:
    """One point in a vertebral body, with the level it names (None: unnamed)."""

    position_lps_mm: tuple[float, float, float]
    level: Level | None
    label: str  # how the file names the point (its markups label, "row 4", ...), for messages
