"""The spine as the points give it: an axis through the body centres near the points, and one disc
between each two consecutive points.

A clinician's point sits in a body, a few millimetres off its centre: the axis follows the thickest
bone near a smooth curve through the points (the offline engine's body-centre tracking, with the
points as its guide), and between two consecutive points exactly one disc lies. It is the dip of
the disc profile there that two endplates flank most clearly; where none does, the disc has merged
with its endplates into a bright band over fatty marrow (its centre is the band's brightest point),
or it is lost to partial volume on thick slices (the darkest point). The end vertebrae reach half a
pitch beyond their points, to the disc found there, or to the image's face where it cuts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from spinefrac.errors import InputError
from spinefrac.segmentation.offline.axis import SpineAxis, WorkGrid, axis_near_guide
from spinefrac.segmentation.offline.discs import DISC_PROMINENCE_HU, PROFILE_STEP_MM, Segment, arc_profile
from spinefrac.segmentation.offline.endplate_bands import ENDPLATE_REACH_MM, flanking_endplate_hu

GUIDE_SMOOTHING_MM = 8.0  # a few mm of scatter in the points must not bend the axis
BODY_SEARCH_MM = 12.0  # the body centre lies within this of the curve through the points
DISC_WINDOW = (0.2, 0.8)  # of the way between two body centres: where their disc can lie
OUTER_DISC_WINDOW = (0.3, 0.75)  # of a pitch beyond an end point: where the outer disc can lie
BAND_HU = 40.0  # a window brighter than the bodies' marrow by this holds a disc merged with its endplates
FAINT_DISC_HU = 5.0  # endplates this much brighter than the dip between them: a disc blurred by thick voxels
# Two points are in one vertebra when they lie closer than this share of the spine's pitch (or MIN_PITCH_MM)
# and no disc lies between them; a vertebra is skipped when they lie farther apart than SKIPPED_VERTEBRA_RATIO
# pitches (or MAX_PITCH_MM) and two discs lie between them. A point a few mm off its body's middle moves a
# gap by as much: the distances alone cannot tell in the upper thoracic spine, where bodies are 15 mm high.
SAME_VERTEBRA_RATIO = 0.55
SKIPPED_VERTEBRA_RATIO = 1.6
MIN_PITCH_MM = 10.0  # closer than any two vertebral body centres (upper cervical about 15 mm)
MAX_PITCH_MM = 60.0  # farther than any two neighbouring body centres (lower lumbar about 40 mm)
NEVER_ONE_VERTEBRA_MM = 4.0  # closer than this: one vertebra, whatever the profile shows
DISC_MARGIN_MM = 3.0  # a disc between two points lies this far from either
MIN_DISC_SEPARATION_MM = 12.0  # two discs are a vertebra apart (upper cervical about 15 mm)
DEFAULT_PITCH_MM = 30.0  # a lone point: a thoracolumbar body plus its disc
SACRUM_REACH_MM = 110.0  # S1 to the coccyx along the curve


@dataclass
class PointOnAxis:
    label: str  # the point's name in messages
    arc_mm: float  # its position along the axis


def guide_through_points(points_work_mm: np.ndarray, slices: int, slice_mm: float) -> np.ndarray:
    """Per working slice, the (j, i) mm of a smooth curve through the points: linear between them, level
    beyond the ends (a straight continuation of the last two points runs off the spine where it curves,
    as at the sacrum; the body tracking then follows the bone from there), then smoothed."""
    order = np.argsort(points_work_mm[:, 0])
    k_mm, ji_mm = points_work_mm[order, 0], points_work_mm[order, 1:]
    slice_k_mm = (np.arange(slices) + 0.5) * slice_mm
    guide = np.column_stack([np.interp(slice_k_mm, k_mm, ji_mm[:, c]) for c in (0, 1)])
    return ndimage.gaussian_filter1d(guide, GUIDE_SMOOTHING_MM / slice_mm, axis=0, mode="nearest")


def axis_through_points(work: WorkGrid, bone: np.ndarray, canal: np.ndarray, points_work_mm: np.ndarray) -> SpineAxis:
    guide = guide_through_points(points_work_mm, bone.shape[0], float(work.spacing_mm[0]))
    return axis_near_guide(work, bone, guide, canal, search_radius_mm=BODY_SEARCH_MM)


def arc_at(axis: SpineAxis, points_work_mm: np.ndarray) -> np.ndarray:
    """Arc length of the axis point nearest each point (its projection onto the spine)."""
    distance = np.linalg.norm(axis.points_mm[None, :, :] - points_work_mm[:, None, :], axis=2)
    nearest = distance.argmin(axis=1)
    # Between axis samples: the tangent component of the remaining offset.
    along = np.einsum("ij,ij->i", points_work_mm - axis.points_mm[nearest], axis.tangents[nearest])
    return axis.arc_mm[nearest] + along


def check_spacing(points: list[PointOnAxis], arc_grid: np.ndarray, profile: np.ndarray) -> None:
    """Consecutive points (caudal first) must lie one vertebra apart: not in one vertebra (looked for first:
    a doubled point makes its neighbours' gaps look short), and none skipped. The gaps between the points
    raise the question, the discs on the profile between them answer it."""
    gaps = np.diff([p.arc_mm for p in points])
    for n, gap in enumerate(gaps):
        typical = _typical_gap(gaps, n)
        close = gap < MIN_PITCH_MM or (typical is not None and gap < SAME_VERTEBRA_RATIO * typical)
        discs = _clear_discs(arc_grid, profile, points[n].arc_mm, points[n + 1].arc_mm) if close else []
        if gap < NEVER_ONE_VERTEBRA_MM or (close and not discs):
            raise InputError(f"points '{points[n].label}' and '{points[n + 1].label}' are {gap:.0f} mm apart along "
                             f"the spine{_compared(typical)} with no disc between them: two points in one vertebra? "
                             "Keep one point per vertebral body")
    for n, gap in enumerate(gaps):
        typical = _typical_gap(gaps, n)
        far = gap > MAX_PITCH_MM or (typical is not None and gap > SKIPPED_VERTEBRA_RATIO * typical)
        if far and len(_clear_discs(arc_grid, profile, points[n].arc_mm, points[n + 1].arc_mm)) >= 2:
            raise InputError(f"points '{points[n].label}' and '{points[n + 1].label}' are {gap:.0f} mm apart along "
                             f"the spine{_compared(typical)} with two discs between them: a vertebra between them "
                             "has no point; place one in every vertebral body between the first and the last")


def _clear_discs(arc_grid: np.ndarray, profile: np.ndarray, low_mm: float, high_mm: float) -> list[float]:
    """Arc positions of the clear discs between two points: dips two endplates flank by DISC_PROMINENCE_HU,
    or bands BAND_HU brighter than their surroundings (a disc merged with its endplates over fatty marrow),
    one per MIN_DISC_SEPARATION_MM."""
    inside = np.flatnonzero((arc_grid > low_mm + DISC_MARGIN_MM) & (arc_grid < high_mm - DISC_MARGIN_MM))
    if inside.size < 3:
        return []
    reach = int(round(ENDPLATE_REACH_MM / PROFILE_STEP_MM))
    dips = [d for d in signal.argrelmin(profile, order=1)[0] if inside[0] < d < inside[-1]
            and flanking_endplate_hu(profile, d, reach) - profile[d] >= DISC_PROMINENCE_HU]
    bands = (inside[0] + signal.find_peaks(profile[inside], prominence=BAND_HU)[0]).tolist()
    found: list[float] = []
    for where in sorted(dips + bands):
        if not found or arc_grid[where] - found[-1] >= MIN_DISC_SEPARATION_MM:
            found.append(float(arc_grid[where]))
    return found


def _typical_gap(gaps: np.ndarray, n: int) -> float | None:
    """The median of up to three gaps on each side of gap n (None with fewer than two: one other gap may be
    a vertebra cut by the field of view, its point off its body's middle). Each gap is as far off as the
    two points' error along the spine: the median of several stays near the pitch."""
    others = np.concatenate([gaps[max(n - 3, 0):n], gaps[n + 1:n + 4]])
    return float(np.median(others)) if others.size >= 2 else None


def _compared(typical: float | None) -> str:
    return f" (their neighbours about {typical:.0f} mm)" if typical else ""


def segments_from_points(work: WorkGrid, axis: SpineAxis, points: list[PointOnAxis],
                         sacrum_at_bottom: bool) -> list[Segment]:
    """One segment per point (caudal first), bounded by the disc between each two consecutive points
    and, at the ends, by the disc half a pitch beyond or the image's face; points not one vertebra
    apart are refused by name (check_spacing)."""
    arc_grid, profile = arc_profile(work, axis)
    check_spacing(points, arc_grid, profile)
    arcs_mm = np.array([p.arc_mm for p in points])
    inner = [_disc_between(arc_grid, profile, low, high) for low, high in zip(arcs_mm[:-1], arcs_mm[1:])]
    pitch = np.diff(arcs_mm)
    bottom_pitch = float(pitch[0]) if pitch.size else DEFAULT_PITCH_MM
    top_pitch = float(pitch[-1]) if pitch.size else DEFAULT_PITCH_MM
    low, cut_below = _outer_disc(arc_grid, profile, float(arcs_mm[0]), -bottom_pitch, axis.arc_mm[0])
    if sacrum_at_bottom:
        low = max(float(arcs_mm[0]) - SACRUM_REACH_MM, float(axis.arc_mm[0]))
        cut_below = low <= axis.arc_mm[0]
    high, cut_above = _outer_disc(arc_grid, profile, float(arcs_mm[-1]), top_pitch, axis.arc_mm[-1])
    bounds = [low, *inner, high]
    segments = [Segment(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    segments[0].cut_below, segments[-1].cut_above = cut_below, cut_above
    return segments


def _disc_between(arc_grid: np.ndarray, profile: np.ndarray, low_mm: float, high_mm: float) -> float:
    """The disc between two body centres, in arc mm."""
    gap = high_mm - low_mm
    window = (arc_grid >= low_mm + DISC_WINDOW[0] * gap) & (arc_grid <= low_mm + DISC_WINDOW[1] * gap)
    return _disc_in(arc_grid, profile, window, _marrow_hu(arc_grid, profile, (low_mm, high_mm), gap),
                    low_mm + gap / 2)


def _outer_disc(arc_grid: np.ndarray, profile: np.ndarray, point_mm: float, pitch_mm: float,
                axis_end_mm: float) -> tuple[float, bool]:
    """The disc beyond an end point (pitch_mm < 0: below it), and whether the image cuts the vertebra first."""
    near, far = sorted(point_mm + np.array(OUTER_DISC_WINDOW) * pitch_mm)
    expected = point_mm + 0.5 * pitch_mm
    reach_end = (axis_end_mm >= expected) if pitch_mm < 0 else (axis_end_mm <= expected)
    if reach_end:  # the face cuts the vertebra before its disc
        return float(axis_end_mm), True
    window = (arc_grid >= near) & (arc_grid <= far)
    if window.sum() < 3:
        return expected, False
    return _disc_in(arc_grid, profile, window, _marrow_hu(arc_grid, profile, (point_mm,), abs(pitch_mm)), expected), False


def _marrow_hu(arc_grid: np.ndarray, profile: np.ndarray, centres_mm: tuple[float, ...], pitch_mm: float) -> float:
    """The profile's median over the middle of the bodies at the given centres."""
    near = np.zeros(arc_grid.shape, dtype=bool)
    for centre in centres_mm:
        near |= np.abs(arc_grid - centre) <= 0.15 * pitch_mm
    return float(np.median(profile[near])) if near.any() else float(np.median(profile))


def _disc_in(arc_grid: np.ndarray, profile: np.ndarray, window: np.ndarray, marrow_hu: float, middle_mm: float) -> float:
    """The disc in a window of the profile: a dip below the marrow that two endplates flank (the
    clearest, nearer the middle of equals); else, where the window holds a band brighter than the
    marrow (a disc merged with its endplates over fatty marrow), a dark dip inside the band or the
    band's centre; else a dip two endplates flank faintly; else the darkest point."""
    where = np.flatnonzero(window)
    if where.size == 0:
        return middle_mm
    reach = int(round(ENDPLATE_REACH_MM / PROFILE_STEP_MM))
    dips = np.array([d for d in signal.argrelmin(profile, order=1)[0] if where[0] < d < where[-1]], dtype=int)
    contrast = np.array([flanking_endplate_hu(profile, d, reach) - profile[d] for d in dips])
    flanked = contrast >= DISC_PROMINENCE_HU if dips.size else np.zeros(0, dtype=bool)
    below_marrow = flanked & (profile[dips] <= marrow_hu - DISC_PROMINENCE_HU) if dips.size else flanked
    if below_marrow.any():
        return _clearest(arc_grid, dips[below_marrow], contrast[below_marrow], middle_mm)
    section = profile[where]
    if section.max() - marrow_hu >= BAND_HU:
        band = _band_run(profile, where[int(np.argmax(section))], (marrow_hu + section.max()) / 2)
        in_band = flanked & (dips >= band[0]) & (dips <= band[1]) if dips.size else flanked
        if in_band.any():
            return _clearest(arc_grid, dips[in_band], contrast[in_band], middle_mm)
        return float(arc_grid[(band[0] + band[1]) // 2])
    faint = contrast >= FAINT_DISC_HU if dips.size else flanked
    if faint.any():  # a thin disc in partial volume between two faint endplates, over fatty marrow
        return _clearest(arc_grid, dips[faint], contrast[faint], middle_mm)
    return float(arc_grid[where[int(np.argmin(section))]])


def _clearest(arc_grid: np.ndarray, dips: np.ndarray, contrast: np.ndarray, middle_mm: float) -> float:
    score = contrast - 0.5 * np.abs(arc_grid[dips] - middle_mm)
    return float(arc_grid[dips[int(np.argmax(score))]])


def _band_run(profile: np.ndarray, peak: int, level_hu: float) -> tuple[int, int]:
    """The run of profile samples above level_hu around a peak (first and last index)."""
    low = peak
    while low > 0 and profile[low - 1] >= level_hu:
        low -= 1
    high = peak
    while high < profile.size - 1 and profile[high + 1] >= level_hu:
        high += 1
    return low, high
