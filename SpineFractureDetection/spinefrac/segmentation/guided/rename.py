"""Renaming a segmentation's levels by the clinician's points, voxels untouched.

Each point names the segment it lies in; the segments without a point take their names by counting,
in the cranio-caudal order of their centroids, from the nearest segment that holds a point. Only label
values change (one lookup), so every mask keeps exactly its voxels: the renaming corrects a model's or
a file's level names (one off at a transitional spine is the usual error), never its borders.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.points import VertebraPoint, describe_point
from spinefrac.levels import LEVEL_BY_ID, Level
from spinefrac.segmentation.base import LevelIdentification, VertebraSegmentation, labelled_box
from spinefrac.segmentation.guided.naming import name_points

SEARCH_RADIUS_MM = 5.0  # a point this close to a segment (on its surface, between two voxels) lies in it


def rename_by_points(segmentation: VertebraSegmentation, points) -> VertebraSegmentation:
    """``segmentation`` with its levels renamed after ``points`` (at least one named); the voxels of each
    segment are unchanged. An InputError for a point in no segment, two points in one segment, or names
    that contradict the segments' order."""
    points = list(points)
    point_levels = name_points(points)
    if point_levels is None:
        raise InputError("name at least one point (its label a level, e.g. L1): the others are counted from it")
    image = segmentation.label_map
    values = sitk.GetArrayViewFromImage(image)
    holder = _segment_of_each_point(points, image, values)
    centroids = _segment_centroids_lps(image)
    segment_levels = _name_segments(centroids, holder, points, point_levels)
    lookup = np.arange(max(256, int(values.max()) + 1), dtype=values.dtype)  # ids of no level stay as they are
    for old_id, level in segment_levels.items():
        lookup[old_id] = level.verse_id
    renamed = sitk.GetImageFromArray(lookup[values])
    renamed.CopyInformation(image)
    return dataclasses.replace(segmentation, label_map=renamed,
                               notes=[*segmentation.notes, _rename_note(segment_levels)],
                               identification=_identification(points))


def segment_at_point(point: VertebraPoint, image: sitk.Image, values: np.ndarray | None = None) -> int:
    """The label at the point's voxel; in the background, the label nearest to it within 5 mm; else an
    InputError naming the point."""
    values = sitk.GetArrayViewFromImage(image) if values is None else values
    index = np.array(image.TransformPhysicalPointToContinuousIndex(point.position_lps_mm))
    nearest = np.round(index).astype(int)
    size = np.array(image.GetSize())
    if np.all(nearest >= 0) and np.all(nearest < size) and values[tuple(nearest[::-1])] != 0:
        return int(values[tuple(nearest[::-1])])
    spacing = np.array(image.GetSpacing())
    reach = np.ceil(SEARCH_RADIUS_MM / spacing).astype(int)
    low, high = np.maximum(nearest - reach, 0), np.minimum(nearest + reach + 1, size)
    if np.all(low < high):
        box = values[low[2] : high[2], low[1] : high[1], low[0] : high[0]]
        k, j, i = np.nonzero(box)
        if k.size:
            # distances in mm along the (orthonormal) image axes, from the point's exact position
            offsets_mm = (np.stack([i, j, k], axis=1) + low - index) * spacing
            distances_mm = np.linalg.norm(offsets_mm, axis=1)
            closest = int(np.argmin(distances_mm))
            if distances_mm[closest] <= SEARCH_RADIUS_MM:
                return int(box[k[closest], j[closest], i[closest]])
    raise InputError(f"point {describe_point(point)} lies in no vertebra segment (none within "
                     f"{SEARCH_RADIUS_MM:g} mm): place it inside the vertebral body")


def _segment_of_each_point(points, image: sitk.Image, values: np.ndarray) -> list[int]:
    holder = [segment_at_point(point, image, values) for point in points]
    first_point: dict[int, VertebraPoint] = {}
    for point, segment in zip(points, holder):
        if segment not in LEVEL_BY_ID:
            raise InputError(f"point {describe_point(point)} lies in label {segment}, which is no vertebral level")
        if segment in first_point:
            raise InputError(f"points {describe_point(first_point[segment])} and {describe_point(point)} both lie in "
                             f"the segment labelled {LEVEL_BY_ID[segment].name}: place one point per vertebral body")
        first_point[segment] = point
    return holder


def _segment_centroids_lps(image: sitk.Image) -> dict[int, tuple[float, float, float]]:
    """Each vertebra segment's centroid (LPS mm), computed inside the labelled box."""
    values = sitk.GetArrayViewFromImage(image)
    box = labelled_box(values)
    size, start = [int(s.stop - s.start) for s in box[::-1]], [int(s.start) for s in box[::-1]]
    cropped = sitk.RegionOfInterest(image, size, start)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(cropped)
    return {int(v): shape.GetCentroid(v) for v in shape.GetLabels() if int(v) in LEVEL_BY_ID}


def _name_segments(centroids, holder: list[int], points, point_levels: list[Level]) -> dict[int, Level]:
    """Each segment's new level: its point's name, or counted along the segments' cranio-caudal order
    (name_points on the centroids checks that the points' names fit that order)."""
    by_segment = {segment: (point, level) for segment, point, level in zip(holder, points, point_levels)}
    stand_ins = []
    for segment, centroid in centroids.items():
        old = LEVEL_BY_ID[segment].name
        if segment in by_segment:
            point, level = by_segment[segment]
            label = f"{old}, with point {point.label}"
        else:
            level, label = None, old
        stand_ins.append(VertebraPoint(tuple(centroid), level, label))
    levels = name_points(stand_ins, noun="segment")
    return dict(zip(centroids, levels))


def _rename_note(segment_levels: dict[int, Level]) -> str:
    changes = [f"{LEVEL_BY_ID[old].name} -> {new.name}" for old, new in
               sorted(segment_levels.items(), key=lambda item: LEVEL_BY_ID[item[0]].craniocaudal_rank)
               if new.verse_id != old]
    if not changes:
        return "levels confirmed by points: every segment keeps its name"
    return "renamed by points: " + ", ".join(changes)


def _identification(points) -> LevelIdentification:
    named = [point.level.name for point in points if point.level is not None]
    anchor = f"clinician's named point{'s' if len(named) > 1 else ''} ({', '.join(named)})"
    return LevelIdentification(
        anchors=(anchor,), confidence="high",
        summary=f"Levels named from the clinician's {len(named)} named point{'s' if len(named) > 1 else ''} "
                f"({', '.join(named)}); the other segments counted from the nearest segment holding a point.")
