"""Intervertebral discs along the spine axis (step 3): the median HU on small disks perpendicular
to the axis gives a profile whose low-HU dips are the discs; a segment much longer than the
shorter of its neighbours is cut at its best endplate-flanked dips (thin discs vanish in partial
volume at 3 mm, several in a row in the neck). Where those dips lie in the bodies (fatty marrow,
discs merged with their endplates into bright bands), the discs are read from the bands
(endplate_bands.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from spinefrac.segmentation.offline.axis import SpineAxis, WorkGrid, longest_run
from spinefrac.segmentation.offline.endplate_bands import (
    ENDPLATE_REACH_MM,
    band_discs,
    flanking_endplate_hu,
    phase_inverted,
)

PROFILE_RADII_MM = (0.0, 3.0, 6.0, 9.0, 12.0)
PROFILE_SMOOTHING_MM = 1.0
SPINE_PROFILE_HU = 75.0
DISC_WIDTH_RATIO = 0.55
PROFILE_STEP_MM = 1.0
MIN_SEGMENT_MM = 13.0  # shortest body + disc (upper cervical)
DISC_PROMINENCE_HU = 15.0
DISC_MAX_HU = 150.0  # discs are soft tissue (70-130 HU); dips inside bone are not discs
SPLIT_LENGTH_RATIO = 1.6  # a segment this many times its neighbours' length hides a disc
MIN_PIECE_RATIO = 0.6
MAX_SACRUM_RATIO = 3.3  # S1 to the coccyx along the curve: up to about three lumbar segments
ENDPLATE_PEAK_HU = 3.0
THICK_SLICE_MM = 4.0
FIELD_EDGE_MM = 15.0  # an end of the spine this close to the image's face may continue beyond it
JOIN_PIECE_RATIO = 0.75  # a segment shorter than this fraction of its stretch's vertebrae may be a piece
JOIN_LENGTH_RATIO = 1.3  # two pieces join when together no longer than this many of its vertebrae
JOIN_HU = 12.0  # a dip this much shallower than the discs on both sides is inside a body ...
JOIN_MAX_SLICE_MM = 2.0  # dips inside bodies pass for discs on fine cranio-caudal voxels only
MAX_JOINED_MM = 50.0  # ... when the vertebra it leaves is no longer than the longest lumbar one


@dataclass
class Segment:
    low_mm: float  # arc-length interval along the axis
    high_mm: float
    cut_below: bool = False  # the lowest segment, cut by the field of view
    cut_above: bool = False  # the highest segment, cut by the field of view
    verse_id: int = 0
    # How far the image reaches to the nearer side of the axis beside this segment: bone further out
    # (ribs, iliac bones) is not seen, so its absence proves nothing.
    lateral_view_mm: float = float("inf")

    @property
    def length_mm(self) -> float:
        return self.high_mm - self.low_mm


def find_segments(work: WorkGrid, axis: SpineAxis, bone: np.ndarray) -> list[Segment]:
    """Disc-bounded slabs along the axis, caudal first. bone: bone_mask on the working grid."""
    arc_grid, profile = arc_profile(work, axis)
    if arc_grid.size < 3:
        return []
    # Sparse trabecular bone can sit below the bone threshold; soft tissue stays below SPINE_PROFILE_HU.
    spine = longest_run(profile > SPINE_PROFILE_HU, int(round(MIN_SEGMENT_MM / PROFILE_STEP_MM)))
    if not spine.any():
        return []
    first, last = np.nonzero(spine)[0][[0, -1]]
    section = profile[first:last + 1]
    discs = _disc_positions(section, thick_slices=work.spacing_mm[0] >= THICK_SLICE_MM)
    if work.spacing_mm[0] <= JOIN_MAX_SLICE_MM:  # on thick slices a thin disc's depth varies with its phase
        discs = _joined_pieces(discs, section, first == 0, last == arc_grid.size - 1)
    discs = _split_long_segments(discs, section)
    bone_share = np.interp(arc_grid, axis.arc_mm, _disk_bone_share(bone, work, axis))[first:last + 1]
    bands = band_discs(section, PROFILE_STEP_MM, cut_below=first == 0, cut_above=last == arc_grid.size - 1)
    if phase_inverted(section, discs, bands, bone_share):  # discs as bright as their endplates: the dips are the bodies' marrow
        discs = bands
    discs = discs + first
    bounds = [arc_grid[first]] + [arc_grid[d] for d in discs] + [arc_grid[last] + PROFILE_STEP_MM]
    segments = [Segment(low, high) for low, high in zip(bounds[:-1], bounds[1:])]
    segments[0].cut_below = first == 0
    segments[-1].cut_above = last == arc_grid.size - 1
    return segments


def _disc_positions(profile: np.ndarray, thick_slices: bool = False) -> np.ndarray:
    """Profile indices of the discs.

    A body with sparse trabecular bone dips between its own endplates too; a disc is the dip
    whose flanking endplate peaks are close together compared with the spacing of the dips
    around it (disc height is a fraction of body height at every level of the spine). Thick slices
    cannot show the endplates on both sides of a dip: every deep enough dip is then a disc.
    """
    dips = signal.find_peaks(-profile, prominence=DISC_PROMINENCE_HU)[0]
    # Endplate peaks rise a few HU at least: flat tops (equal samples on thick slices) make no spurious peak.
    peaks = signal.find_peaks(profile, prominence=ENDPLATE_PEAK_HU)[0]
    if dips.size == 0:
        return dips
    discs = []
    for n, dip in enumerate(dips):
        left = peaks[peaks < dip]
        right = peaks[peaks > dip]
        before = dip - left[-1] if left.size else None
        after = right[0] - dip if right.size else None
        width = (before or after or 0) + (after or before or 0)
        previous_dip = dips[n - 1] if n > 0 else dip - profile.size
        next_dip = dips[n + 1] if n + 1 < dips.size else dip + profile.size
        narrow = thick_slices or width < DISC_WIDTH_RATIO * (next_dip - previous_dip)
        if narrow and profile[dip] < DISC_MAX_HU:
            discs.append(dip)
    return _thinned(np.array(discs, dtype=int), profile, int(MIN_SEGMENT_MM / PROFILE_STEP_MM))


def _joined_pieces(discs: np.ndarray, profile: np.ndarray, cut_below: bool = False,
                   cut_above: bool = False) -> np.ndarray:
    """Drop dips that split one vertebra. Where trabecular bone is sparse a body dips between its
    own endplates too; on fine cranio-caudal voxels such dips can pass for discs and alternate
    with them. Two neighbouring segments that are each short for their stretch of spine and
    together as long as its vertebrae, parted by a dip shallower than the discs at their outer
    ends, are one vertebra (the shallowest such dip is joined first)."""
    kept = [int(d) for d in discs]
    while True:
        bounds = [0] + kept + [profile.size]
        lengths = np.diff(bounds)
        best, best_hu = -1, -np.inf
        for n in range(len(kept)):  # dip kept[n] parts segments n and n + 1
            if not _joinable_at_cut_end(kept, profile, n, cut_below, cut_above):
                continue
            others = np.concatenate([lengths[max(n - 4, 0):n], lengths[n + 2:n + 6]])
            if others.size < 2:
                continue
            typical = float(np.percentile(others, 75))
            pair = lengths[n:n + 2]
            outer = [profile[d] for d in (bounds[n], bounds[n + 2]) if 0 < d < profile.size]
            pieces_of_its_stretch = pair.max() <= JOIN_PIECE_RATIO * typical and pair.sum() <= JOIN_LENGTH_RATIO * typical
            if ((pieces_of_its_stretch or _alternates(kept, profile, n)) and pair.sum() <= MAX_JOINED_MM
                    and all(profile[kept[n]] >= hu for hu in outer) and profile[kept[n]] > best_hu):
                best, best_hu = n, profile[kept[n]]
        if best < 0:
            return np.array(kept, dtype=int)
        kept.pop(best)


def _joinable_at_cut_end(kept: list[int], profile: np.ndarray, n: int, cut_below: bool, cut_above: bool) -> bool:
    """A segment cut by the field of view is short for that reason, and has no disc at its outer end
    to compare with: the dip parting it from its neighbour joins only when it is clearly (JOIN_HU)
    shallower than the disc on the neighbour's other side."""
    inner = n + 1 if (cut_below and n == 0) else n - 1 if (cut_above and n == len(kept) - 1) else None
    if inner is None:
        return True
    return 0 <= inner < len(kept) and profile[kept[n]] - profile[kept[inner]] >= JOIN_HU


def _shallower(kept: list[int], profile: np.ndarray, n: int) -> bool:
    """Whether dip n is shallower by JOIN_HU than the dips on both sides of it."""
    return 0 < n < len(kept) - 1 and \
        profile[kept[n]] - max(profile[kept[n - 1]], profile[kept[n + 1]]) >= JOIN_HU


def _alternates(kept: list[int], profile: np.ndarray, n: int) -> bool:
    """Dip n is shallower than its neighbours, and so is the dip two further on one side: deep discs
    alternating with shallow dips inside bodies, where every segment is a piece and none sets the
    standard length."""
    return _shallower(kept, profile, n) and (_shallower(kept, profile, n - 2) or _shallower(kept, profile, n + 2))


def _split_long_segments(discs: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Add the discs that partial volume hid: a segment much longer than its neighbours holds
    whole vertebrae, cut where a narrow dip is flanked by two endplate peaks."""
    discs = list(discs)
    for _ in range(len(discs) + 1):
        bounds = [0] + discs + [profile.size]
        lengths = np.diff(bounds)
        added = False
        for n in range(1, len(lengths)):  # the caudal block may be the sacrum: not split here
            neighbours = np.concatenate([lengths[max(n - 3, 1):n], lengths[n + 1:n + 4]])
            if neighbours.size == 0:
                continue
            # The shorter neighbours: a run of merged segments must not set its own standard.
            typical = float(np.percentile(neighbours, 25))
            pieces = int(round(lengths[n] / typical))
            if lengths[n] < SPLIT_LENGTH_RATIO * typical or pieces < 2:
                continue
            cuts = _best_cuts(profile, bounds[n], bounds[n + 1], pieces - 1, MIN_PIECE_RATIO * typical)
            discs.extend(cuts)
            added = added or bool(cuts)
        discs.sort()
        if not added:
            break
    return np.array(_split_caudal_block(discs, profile), dtype=int)


def _split_caudal_block(discs: list[int], profile: np.ndarray) -> list[int]:
    """A caudal block longer than any sacrum carries the lowest lumbar vertebra: cut it off the top."""
    lengths = np.diff([0] + discs + [profile.size])
    if lengths.size < 3:
        return discs
    typical = float(np.median(lengths[1:4]))
    if lengths[0] < MAX_SACRUM_RATIO * typical:
        return discs
    # The lumbar piece cut off is 0.6-1.4 typical segments long.
    low = int(discs[0] - 2 * typical)
    return sorted(discs + _best_cuts(profile, low, discs[0], 1, MIN_PIECE_RATIO * typical))


def _best_cuts(profile: np.ndarray, low: int, high: int, count: int, min_piece: float) -> list[int]:
    """Up to count dips in [low, high) of highest endplate contrast, min_piece from the ends and each other.
    A disc dips below the marrow (the segment's median HU); a ripple in a flat body between its two
    bright endplates does not, however bright the endplates either side of it: where dips below the
    marrow exist only they are cut (a thin disc lost to partial volume may not dip below it, and is
    taken where none does)."""
    reach = int(round(ENDPLATE_REACH_MM / PROFILE_STEP_MM))
    dips = [d for d in signal.argrelmin(profile, order=1)[0] if low + min_piece <= d <= high - min_piece]
    contrast = [flanking_endplate_hu(profile, d, reach) - profile[d] for d in dips]
    marrow_hu = float(np.median(profile[low:high]))
    below_marrow = [profile[d] <= marrow_hu - DISC_PROMINENCE_HU for d in dips]
    if any(below_marrow):
        dips, contrast = [d for d, b in zip(dips, below_marrow) if b], [c for c, b in zip(contrast, below_marrow) if b]
    cuts: list[int] = []
    for order in np.argsort(contrast)[::-1]:
        if len(cuts) == count:
            break
        if contrast[order] >= DISC_PROMINENCE_HU and all(abs(dips[order] - cut) >= min_piece for cut in cuts):
            cuts.append(int(dips[order]))
    return cuts


def _thinned(discs: np.ndarray, profile: np.ndarray, min_gap: int) -> np.ndarray:
    """Of discs closer than min_gap keep the deeper one."""
    kept: list[int] = []
    for disc in discs[np.argsort(profile[discs])] if discs.size else []:
        if all(abs(disc - other) >= min_gap for other in kept):
            kept.append(int(disc))
    return np.array(sorted(kept), dtype=int)


def arc_profile(work: WorkGrid, axis: SpineAxis) -> tuple[np.ndarray, np.ndarray]:
    """The disc profile every PROFILE_STEP_MM of arc: (arc positions in mm, lightly smoothed median HU)."""
    arc_grid = np.arange(axis.arc_mm[0], axis.arc_mm[-1], PROFILE_STEP_MM)
    if arc_grid.size < 3:
        return arc_grid, np.zeros(arc_grid.shape)
    profile = ndimage.gaussian_filter1d(np.interp(arc_grid, axis.arc_mm, disk_profile(work, axis)),
                                        PROFILE_SMOOTHING_MM / PROFILE_STEP_MM)
    return arc_grid, profile


def disk_profile(work: WorkGrid, axis: SpineAxis) -> np.ndarray:
    """Median HU on a disk perpendicular to the axis at every axis point (robust to the canal's edge)."""
    return np.median(_disk_samples(work.smooth, work.spacing_mm, axis, order=1), axis=0)


def _disk_bone_share(bone: np.ndarray, work: WorkGrid, axis: SpineAxis) -> np.ndarray:
    """The share of the same disk that is bone with its marrow (bone_mask fills axial cortical rings)."""
    return np.mean(_disk_samples(bone.view(np.uint8), work.spacing_mm, axis, order=0), axis=0)


def _disk_samples(volume: np.ndarray, spacing_mm: np.ndarray, axis: SpineAxis, order: int) -> list[np.ndarray]:
    left, anterior = axis.frame()
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    offsets = [(0.0, 0.0)] + [(r * np.cos(a), r * np.sin(a)) for r in PROFILE_RADII_MM[1:] for a in angles]
    samples = []
    for du, dv in offsets:
        points_mm = axis.points_mm + du * left + dv * anterior
        index = points_mm / spacing_mm - 0.5
        samples.append(ndimage.map_coordinates(volume, index.T, order=order, mode="nearest"))
    return samples


def mark_field_of_view_cuts(segments: list[Segment], axis: SpineAxis, bottom_mm: float, top_mm: float) -> None:
    """An end segment within FIELD_EDGE_MM of the image's bottom or top face is cut by the field
    of view, whatever the profile says: an image edge ends the spine in view, not the anatomy
    (the atlas, the sacrum's tip). bottom_mm and top_mm: the image faces in working-grid mm (k)."""
    if not segments:
        return
    k_low = float(np.interp(segments[0].low_mm, axis.arc_mm, axis.points_mm[:, 0]))
    k_high = float(np.interp(segments[-1].high_mm, axis.arc_mm, axis.points_mm[:, 0]))
    segments[0].cut_below |= k_low - bottom_mm < FIELD_EDGE_MM
    segments[-1].cut_above |= top_mm - k_high < FIELD_EDGE_MM


def mark_lateral_view(segments: list[Segment], axis: SpineAxis, first_face_mm: float, last_face_mm: float) -> None:
    """Each segment's lateral_view_mm: the smallest distance from the axis beside it to the image's
    left or right face (a narrow field of view, such as 3 mm sagittal slices over 10 cm, cuts off
    the ribs and iliac bones). first_face_mm, last_face_mm: those faces in working-grid mm (i)."""
    for segment in segments:
        inside = (axis.arc_mm >= segment.low_mm) & (axis.arc_mm <= segment.high_mm)
        middle_mm = float(np.interp((segment.low_mm + segment.high_mm) / 2, axis.arc_mm, axis.points_mm[:, 2]))
        i_mm = np.append(axis.points_mm[inside, 2], middle_mm)
        segment.lateral_view_mm = float(min((i_mm - first_face_mm).min(), (last_face_mm - i_mm).min()))
