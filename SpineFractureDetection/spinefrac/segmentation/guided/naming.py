"""Naming vertebra points: one named point names the others by counting along the spine.

The points are ordered cranio-caudally (by the LPS z, superior first) and every unnamed point takes the
level its place in that order gives, counted from the nearest named point along C1..C7, T1..T12,
L1..L5, sacrum. The transitional T13 and L6 are in that sequence only when a point is named so: a
clinician who sees them says so. Named points that contradict each other are refused, never averaged.
"""

from __future__ import annotations

from spinefrac.errors import InputError
from spinefrac.io.points import VertebraPoint, describe_point
from spinefrac.levels import LEVELS, Level


def order_craniocaudal(points) -> list[VertebraPoint]:
    """The points cranial first (largest LPS z first; equal heights keep their order)."""
    return sorted(points, key=lambda point: -point.position_lps_mm[2])


def level_sequence(named_levels) -> list[Level]:
    """C1..sacrum, with T13 and L6 only when one of ``named_levels`` is that level."""
    named = set(named_levels)
    return [level for level in LEVELS if not level.is_transitional or level in named]


def name_points(points, noun: str = "point") -> list[Level] | None:
    """The level of each point, in the order given (``result[i]`` names ``points[i]``); None when no point is
    named. An InputError when named points share a name or contradict their cranio-caudal order or the
    count between them, or when counting runs past C1 or the sacrum. ``noun`` says what the points
    stand for in messages ("point", "segment")."""
    points = list(points)
    order = sorted(range(len(points)), key=lambda i: -points[i].position_lps_mm[2])
    ordered = [points[i] for i in order]
    anchors = [(rank, point) for rank, point in enumerate(ordered) if point.level is not None]
    if not anchors:
        return None
    _refuse_shared_names(anchors, noun)
    sequence = level_sequence(point.level for _, point in anchors)
    place = {level: index for index, level in enumerate(sequence)}
    for (rank_a, a), (rank_b, b) in zip(anchors, anchors[1:]):
        _check_pair(rank_a, a, rank_b, b, sequence, place, noun)
    levels: list[Level | None] = [None] * len(points)
    for rank, point in enumerate(ordered):
        anchor_rank, anchor = min(anchors, key=lambda item: abs(item[0] - rank))  # any anchor agrees (checked)
        index = place[anchor.level] + rank - anchor_rank
        if not 0 <= index < len(sequence):
            _refuse_overrun(anchor, rank - anchor_rank, place[anchor.level], len(sequence), noun)
        levels[order[rank]] = sequence[index]
    return levels


def _refuse_shared_names(anchors, noun: str) -> None:
    seen: dict[Level, VertebraPoint] = {}
    for _, point in anchors:
        if point.level in seen:
            raise InputError(f"{noun}s {describe_point(seen[point.level])} and {describe_point(point)} are both "
                             f"named {point.level.name}: name each vertebra once")
        seen[point.level] = point


def _check_pair(rank_a: int, a: VertebraPoint, rank_b: int, b: VertebraPoint, sequence, place, noun: str) -> None:
    """Two consecutive named points (a cranial to b): b's level must lie below a's by exactly their distance
    in the order."""
    steps = place[b.level] - place[a.level]
    if steps <= 0:
        raise InputError(f"{noun} {describe_point(a)} lies above {noun} {describe_point(b)}, but "
                         f"{a.level.name} is not above {b.level.name}: the names contradict their order")
    between, room = rank_b - rank_a - 1, steps - 1
    if between == room:
        return
    levels_between = sequence[place[a.level] + 1 : place[b.level]]
    names = f" ({_span(levels_between)})" if levels_between else ""
    hint = _transitional_hint(a.level, b.level, sequence) if between > room else ""
    raise InputError(f"{noun}s {describe_point(a)} and {describe_point(b)} have {between} {noun}"
                     f"{'' if between == 1 else 's'} between them; {a.level.name} to {b.level.name} leaves room for "
                     f"{room or 'none'}{names}: {_MISMATCH.get(noun, f'a {noun} is missing or one too many')}{hint}")


# What a count that does not fit means, for the segments of a label map (points: one missing or too many).
_MISMATCH = {"segment": "the segmentation split or merged a vertebra, or a point lies in the wrong body"}


def _span(levels) -> str:
    names = [level.name for level in levels]
    return ", ".join(names) if len(names) <= 4 else f"{names[0]}..{names[-1]}"


def _transitional_hint(upper: Level, lower: Level, sequence) -> str:
    """When more points than levels lie between two named ones across T12/L1 or L5/sacrum, the extra one
    may be a transitional vertebra the names left out."""
    names = {level.name for level in sequence}
    hints = []
    if "T13" not in names and upper.craniocaudal_rank <= _rank("T12") and lower.craniocaudal_rank >= _rank("L1"):
        hints.append("T13")
    if "L6" not in names and upper.craniocaudal_rank <= _rank("L5") and lower.craniocaudal_rank >= _rank("sacrum"):
        hints.append("L6")
    return f", or name a transitional {' or '.join(hints)}" if hints else ""


def _rank(name: str) -> int:
    return next(level.craniocaudal_rank for level in LEVELS if level.name == name)


def _refuse_overrun(anchor: VertebraPoint, offset: int, anchor_index: int, length: int, noun: str) -> None:
    if offset < 0:
        side, end, room = "above", "C1", anchor_index
    else:
        side, end, room = "below", "the sacrum", length - 1 - anchor_index
    levels = "1 level does" if room == 1 else f"{room} levels do"
    raise InputError(f"counting from {noun} {describe_point(anchor)} runs past {end}: {abs(offset)} {noun}s lie {side} "
                     f"it and only {levels}; check the names")
