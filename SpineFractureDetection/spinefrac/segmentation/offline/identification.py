"""Level identification (step 5): levels are counted from landmarks, the sacrum (upwards), the
atlas at the top of a spine that ends in view (downwards), the last and the first rib-bearing
vertebra (T12, T1); each level from its nearest landmark. The ``LevelIdentification`` says which
were used, whether they agree, and when none is in view that the levels are uncertain.

Confidence: counting down from C2 is the reference (Carrino et al., Radiology 2011;259:196-202).
Transitional lumbosacral vertebrae (about 4-30 % of people, Konin & Walz, AJNR 2010;31:1778-86) and
rib variants (a hypoplastic 12th rib, a 13th rib) move the sacrum's count and the last rib's together,
and on a narrow field of view both read bone beside the spine that the image may cut off: the two do
not confirm each other. Only an anchor counted from the top (atlas, T1) agreeing with another makes
a count through the thoracolumbar junction "high"; the sacrum alone is "high" only while it names
lumbar levels (up to T12), the convention for lumbar imaging.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinefrac.levels import LEVEL_BY_ID
from spinefrac.segmentation.base import NUMBERING_CHECK, LevelIdentification
from spinefrac.segmentation.offline.discs import Segment
from spinefrac.segmentation.offline.labelling import segment_index

SACRUM_ID = 26
C1_ID = 1
T1_ID = 8
T12_ID = 19
L5_ID = 24


SACRUM_LENGTH_RATIO = 1.9  # a caudal block this many typical segments long is the sacrum
SACRAL_PIECE_RATIO = 0.8
# Cervical body + disc is about 20 mm (lumbar about 40): the top segments of a spine that ends in view
# this short and without ribs are the cervical spine, the top one the atlas.
CERVICAL_SEGMENT_MAX_MM = 24.0
CERVICAL_RUN = 3
THORACIC_SEGMENT_MAX_MM = 34.0  # lower thoracic body + disc; lumbar segments are longer


RIB_ZONE_LATERAL_MM = (45.0, 90.0)
RIB_ZONE_AP_MM = (-60.0, 30.0)  # anterior positive, from the body centre
RIB_MIN_VOLUME_MM3 = 3000.0  # a pair of rib shafts gives about 7000; an iliac crest tip about 1500
PELVIS_ZONE_LATERAL_MM = (45.0, 80.0)
PELVIS_ZONE_AP_MM = (-50.0, 20.0)
PELVIS_SLICE_FRACTION = 0.8  # L5 beside the iliac crests reaches about 0.6
PELVIS_BIN_MM = 3.0
# A vertebra is rib-free only where the image reaches this far to both sides of the axis: the rib
# zone runs to 90 mm (the working crop keeps 80); a narrower view may have cut its ribs off.
RIB_FREE_VIEW_MM = 75.0


@dataclass
class Anchor:
    segment_index: int  # caudal first
    verse_id: int
    evidence: str
    # Counted from the top of the spine (atlas, T1): independent of the sacrum and the last rib, which a
    # transitional vertebra, a rib variant or a narrow field of view can all put one level off together.
    from_top: bool = False


def identify_levels(segments: list[Segment], lateral_mm: np.ndarray, anterior_mm: np.ndarray, arc_mm: np.ndarray,
              voxel_mm3: float) -> LevelIdentification:
    """Give each segment a VerSe id counted from the nearest anchor in view; returns which anchors
    were used, whether they agree, and how confident the count is."""
    index = segment_index(segments, arc_mm)
    ribs = _rib_bearing(segments, index, lateral_mm, anterior_mm, voxel_mm3)
    sacral = _sacral_segments(segments, ribs, index, lateral_mm, anterior_mm, arc_mm)
    anchors = _anchors(segments, sacral, ribs)
    if not anchors:
        # Ribs on every vertebra in view: a thoracic stretch; without them a lumbar one is likelier.
        count_from(segments, [Anchor(0, T12_ID if all(ribs) else L5_ID, "")])
        assumed = "every vertebra in view bears ribs, the lowest was assumed to be T12" if all(ribs) \
            else "the lowest vertebra in view was assumed to be L5"
        return LevelIdentification((), "uncertain", f"no anchor visible (no sacrum, C1 or first/last rib): levels "
                                                    f"uncertain ({assumed}); {NUMBERING_CHECK}")
    count_from(segments, anchors)
    for i in sacral:
        segments[i].verse_id = SACRUM_ID
    top_id = min((segment.verse_id for segment in segments if segment.verse_id), default=L5_ID)
    confidence, reason = numbering_confidence(anchors, top_id)
    return LevelIdentification(tuple(a.evidence for a in anchors), confidence, _summary(anchors, confidence, reason))


def numbering_confidence(anchors: list[Anchor], top_verse_id: int) -> tuple[str, str]:
    """The confidence of a count from ``anchors`` (most reliable first, at least one) and why, when it
    is not high. top_verse_id: the most cranial level named (VerSe ids grow caudally)."""
    used, others = anchors[0], anchors[1:]
    offset = used.verse_id + used.segment_index  # a segment's id counted from the most reliable anchor, plus its index
    disagreeing = [a for a in others if a.verse_id + a.segment_index != offset]
    if disagreeing:
        found = "; ".join(f"{a.evidence} would be {level_name(offset - a.segment_index)} counted from {used.evidence}"
                          for a in disagreeing)
        return "low", f"{found}; a transitional vertebra, a rib variant or a missed disc between them is possible"
    if any(a.from_top or used.from_top for a in others):
        return "high", ""
    if used.verse_id == L5_ID and top_verse_id >= T12_ID:
        return "high", ""  # lumbar levels named up from the sacrum, as lumbar imaging names them
    if used.verse_id == L5_ID:
        also = " (the last rib agrees, but a transitional vertebra or a rib variant moves both together)" \
            if others else ""
        return "medium", (f"levels above T12 named by counting five lumbar vertebrae up from the sacrum{also}, "
                          "and no landmark counted from the top of the spine")
    return "medium", "one landmark"


def _summary(anchors: list[Anchor], confidence: str, reason: str) -> str:
    used, others = anchors[0], anchors[1:]
    if confidence == "low":
        names = ", ".join(a.evidence for a in anchors)
        return f"levels counted from the nearest of {names} (confidence low: {reason}); {NUMBERING_CHECK}"
    agreeing = f", in agreement with {' and '.join(a.evidence for a in others)}" if others else ""
    if confidence == "high":
        return f"levels counted from {used.evidence} (confidence high{agreeing})"
    return f"levels counted from {used.evidence}{agreeing} (confidence {confidence}: {reason}); {NUMBERING_CHECK}"


def _anchors(segments: list[Segment], sacral: list[int], ribs: list[bool]) -> list[Anchor]:
    """Landmarks that fix a level, most reliable first: the sacrum, the atlas at the top of the
    spine, the last rib-bearing vertebra (T12) and the first (T1)."""
    anchors = []
    if sacral:
        anchors.append(Anchor(len(sacral), L5_ID, "the sacrum upwards"))
    if _atlas_on_top(segments, ribs):
        anchors.append(Anchor(len(segments) - 1, C1_ID, "the atlas (C1, top of the spine in view) downwards", True))
    # Ribs come in runs; an iliac crest beside L5 or the iliac bones beside the sacrum are single hits.
    rib_runs = [i for i in range(len(sacral), len(segments) - 1) if ribs[i] and ribs[i + 1]]
    if sacral and rib_runs and rib_runs[0] == len(sacral):  # bone beside the lowest lumbar levels: the iliac crests
        rib_runs = [i for i in rib_runs if i > len(sacral) and not _continues(rib_runs, i, len(sacral))]
    if rib_runs:
        lowest, highest = rib_runs[0], rib_runs[-1] + 1
        if lowest > len(sacral) and _seen_rib_free(segments[lowest - 1], ribs[lowest - 1]):
            anchors.append(Anchor(lowest, T12_ID, "the last rib-bearing vertebra (T12)"))
        if highest < len(segments) - 1 and _seen_rib_free(segments[highest + 1], ribs[highest + 1]):
            anchors.append(Anchor(highest, T1_ID, "the first rib-bearing vertebra (T1)", True))
    return anchors


def _seen_rib_free(segment: Segment, has_ribs: bool) -> bool:
    """No ribs beside a vertebra seen whole, with the image reaching past the rib zone's inner part on
    both sides: an end cut by the field of view (often a sliver of a body) may have lost its ribs to
    the crop, and so has a vertebra beside which the image stops short (a narrow sagittal stack)."""
    return (not has_ribs and not (segment.cut_below or segment.cut_above)
            and segment.lateral_view_mm >= RIB_FREE_VIEW_MM)


def _continues(runs: list[int], index: int, start: int) -> bool:
    """Whether the run of rib-bearing pairs holding ``index`` reaches down to ``start``."""
    return all(i in runs for i in range(start, index + 1))


def _atlas_on_top(segments: list[Segment], ribs: list[bool]) -> bool:
    """The spine ends inside the field of view above short rib-free segments, all seen whole: the top
    one is C1 (an end inside the view below the lumbar or thoracic spine is never the top of the spine;
    a piece cut by the image, such as the bottom of a lumbar crop, says nothing about vertebra size)."""
    top = segments[-CERVICAL_RUN:]
    return (len(segments) >= CERVICAL_RUN and not any(s.cut_above or s.cut_below for s in top)
            and not any(ribs[-CERVICAL_RUN:])
            and float(np.median([s.length_mm for s in top])) <= CERVICAL_SEGMENT_MAX_MM)


def level_name(verse_id: int) -> str:
    """A counted level's name; a count can run past either end of the spine when anchors disagree."""
    return LEVEL_BY_ID[verse_id].name if 1 <= verse_id <= L5_ID + 1 else "outside C1-L6"


def count_from(segments: list[Segment], anchors: list[Anchor]) -> None:
    """Number each segment (caudal first) by counting from its nearest anchor, the more reliable
    on a tie; C1..L6 only. Anchors that disagree then meet between them: a missed disc leaves a
    level out there, a spurious one gives one level two segments."""
    for i, segment in enumerate(segments):
        nearest = min(anchors, key=lambda anchor: abs(i - anchor.segment_index))  # first of equals
        verse_id = nearest.verse_id - (i - nearest.segment_index)
        segment.verse_id = verse_id if 1 <= verse_id <= L5_ID + 1 else 0


def _sacral_segments(segments: list[Segment], ribs: list[bool], index: np.ndarray, lateral_mm: np.ndarray,
                     anterior_mm: np.ndarray, arc_mm: np.ndarray) -> list[int]:
    """The caudal segments that make up the sacrum (empty when it is not in view). The pelvis
    lies under the lumbar spine: a block with rib-bearing or short (cervical, upper thoracic)
    vertebrae right above it is the lower edge of a neck or chest CT, and the bone beside it is ribs."""
    inner_mm = [s.length_mm for s in segments[1:-1]]
    typical_mm = float(np.median(inner_mm)) if inner_mm else 0.0
    sacral = []
    for i, segment in enumerate(segments[:-2]):  # at least two vertebrae must stay above it
        long_block = i == 0 and typical_mm > 0 and segment.length_mm >= SACRUM_LENGTH_RATIO * typical_mm
        # Lumbar-length vertebrae above: the bone beside them is the iliac crests, not ribs.
        under_rib_cage = ribs[i + 1] and ribs[i + 2] and \
            np.median([s.length_mm for s in segments[i + 1:i + 4]]) <= THORACIC_SEGMENT_MAX_MM
        under_short_vertebrae = np.median([s.length_mm for s in segments[i + 1:i + 4]]) <= CERVICAL_SEGMENT_MAX_MM
        if under_rib_cage or under_short_vertebrae:
            break
        # A piece cut by the image shorter than a sacral piece shows neither the sacrum's length nor bone
        # beside it over a vertebra's height: the iliac crests flank the lowest lumbar vertebrae too.
        cut_sliver = segment.cut_below and segment.length_mm < SACRAL_PIECE_RATIO * typical_mm
        if cut_sliver and not long_block:
            break
        if not (long_block or _flanked_by_pelvis(segment, index == i, lateral_mm, anterior_mm, arc_mm)):
            break
        # Above the first sacral piece only a short one (a remnant S1-S2 disc) is sacrum: a vertebra
        # as long as those above it is L5 between the iliac crests, the sacrum below it cut by the view.
        if i > 0 and segment.length_mm > SACRAL_PIECE_RATIO * typical_mm:
            break
        sacral.append(i)
    return sacral


def _flanked_by_pelvis(segment: Segment, in_segment: np.ndarray, lateral_mm: np.ndarray,
                       anterior_mm: np.ndarray, arc_mm: np.ndarray) -> bool:
    """Bone beside the axis, where the iliac bones meet the sacrum, over most of the segment's height."""
    zone = (in_segment & (np.abs(lateral_mm) >= PELVIS_ZONE_LATERAL_MM[0])
            & (np.abs(lateral_mm) <= PELVIS_ZONE_LATERAL_MM[1])
            & (anterior_mm >= PELVIS_ZONE_AP_MM[0]) & (anterior_mm <= PELVIS_ZONE_AP_MM[1]))
    bins = np.arange(segment.low_mm, segment.high_mm + PELVIS_BIN_MM, PELVIS_BIN_MM)
    if bins.size < 2 or not zone.any():
        return False
    occupied = np.histogram(arc_mm[zone], bins=bins)[0] > 0
    return float(occupied.mean()) >= PELVIS_SLICE_FRACTION


def _rib_bearing(segments: list[Segment], index: np.ndarray, lateral_mm: np.ndarray, anterior_mm: np.ndarray,
                 voxel_mm3: float) -> list[bool]:
    """Segments (caudal first) with enough bone far out laterally behind the bodies: ribs."""
    in_zone = ((np.abs(lateral_mm) >= RIB_ZONE_LATERAL_MM[0]) & (np.abs(lateral_mm) <= RIB_ZONE_LATERAL_MM[1])
               & (anterior_mm >= RIB_ZONE_AP_MM[0]) & (anterior_mm <= RIB_ZONE_AP_MM[1]) & (index >= 0))
    counts = np.bincount(index[in_zone], minlength=len(segments))
    return [bool(count * voxel_mm3 >= RIB_MIN_VOLUME_MM3) for count in counts]
