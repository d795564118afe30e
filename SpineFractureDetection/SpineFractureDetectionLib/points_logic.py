"""Vertebra points in the scene: a markups point list in, guided segmentation out, and back.

A clinician places one point per vertebral body in a point list (``vtkMRMLMarkupsFiducialNode``) and
names one of them; "Segment from points" hands the list to ``spinefrac run --points`` in the child
process; every run (automatic or guided) fills the list with the body centre of each level it found,
named, so the next correction starts from the engine's points. "This segment is L1" renames the level
segments by counting from the one the clinician names, voxels untouched. Imports ``slicer`` (MRML)
but not Qt, like ``mrml_logic``: it runs in 3D Slicer and on ``slicer-core`` alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.coordinates import lps_from_ras, ras_from_lps
from spinefrac.errors import InputError
from spinefrac.io.filenames import LABEL_MAP_FILE, POINTS_FILE
from spinefrac.io.points import VertebraPoint, level_of_label, read_points, write_points_markups
from spinefrac.levels import LEVEL_BY_ID, LEVELS, level_for_name, sort_craniocaudal
from spinefrac.segmentation.guided.naming import name_points
from spinefrac.segmentation.guided.rename import rename_by_points
from SpineFractureDetectionLib.mrml_logic import (
    ct_from_volume,
    export_volume,
    import_segmentation_result,
    level_segments,
    name_segment_after_level,
    place_beside_volume,
    segmentation_command,
    segmentation_from_node,
    style_level_segments,
)

POINTS_NODE_NAME = "Vertebra points"
# The names "This segment is ..." offers, cranial first (T13 and L6 where they sit).
LEVEL_CHOICES = tuple(level.name for level in sort_craniocaudal(LEVELS))


# -- point list <-> VertebraPoint ------------------------------------------------------------------


def points_from_node(markups_node) -> list[VertebraPoint]:
    """The placed points of a point list, in its order: world RAS -> LPS mm, each label read as a level
    (Slicer's default "F-3" names none; "L9" is refused). Points not placed (undefined, preview,
    missing) are left out, as in a saved .mrk.json."""
    if markups_node is None:
        raise InputError("no point list is selected: place one point in each vertebral body")
    points = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(index) != markups_node.PositionDefined:
            continue
        position_ras = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, position_ras)
        label = markups_node.GetNthControlPointLabel(index).strip() or f"point {index + 1}"
        where = f"point list '{markups_node.GetName()}', point '{label}'"
        if not all(np.isfinite(position_ras)):
            raise InputError(f"{where}: its position is not a finite number")
        position_lps = tuple(float(v) for v in lps_from_ras(position_ras))
        points.append(VertebraPoint(position_lps, level_of_label(label, where), label))
    return points


def fill_points_node(markups_node, points: list[VertebraPoint], description: str = "") -> None:
    """Replace the list's points with ``points`` (LPS -> world RAS), each labelled with its level's name
    (or left to the list's own label format when unnamed)."""
    was_modifying = markups_node.StartModify()
    try:
        markups_node.RemoveAllControlPoints()
        for point in points:
            label = point.level.name if point.level is not None else ""
            index = markups_node.AddControlPointWorld(*ras_from_lps(point.position_lps_mm), label)
            markups_node.SetNthControlPointDescription(index, description)
    finally:
        markups_node.EndModify(was_modifying)


def new_points_node(scene, volume_node, name: str = POINTS_NODE_NAME):
    """An empty point list, displayed, under the CT's study in Subject Hierarchy."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.CreateDefaultDisplayNodes()
    place_beside_volume(node, volume_node)
    return node


def write_points_file(markups_node, path: Path) -> Path:
    """The list's placed points as a markups file for the child process. Refused here, before a child
    starts, when no point is placed or the names contradict each other or the points' order."""
    points = points_from_node(markups_node)
    if not points:
        raise InputError(f"point list '{markups_node.GetName()}' holds no placed point: place one point "
                         "in each vertebral body, and name one (its label a level, e.g. L1)")
    name_points(points)  # two points named alike, names against the order, counting past C1 or the sacrum
    return write_points_markups(path, points, "vertebra point placed in 3D Slicer")


def import_points(points_node, volume_node, path: Path) -> list[VertebraPoint]:
    """A run's points.mrk.json (one named point per level found) into the point list, under the CT's study."""
    points = read_points(path)
    fill_points_node(points_node, points, "vertebral body centre found by the last run")
    place_beside_volume(points_node, volume_node)
    return points


# -- the run in the child process --------------------------------------------------------------------


def child_command(python_executable: str, volume_node, work_folder: Path, engine: str, device: str,
                  points_node=None) -> list[str]:
    """Export the CT (and, for "Segment from points", the point list) into ``work_folder`` and build the
    ``spinefrac run`` command. With points and engine auto/offline the child segments from them
    (guided engine); with a learned engine the points name its levels."""
    work_folder = Path(work_folder)
    ct_path = export_volume(volume_node, work_folder / "ct.nrrd")
    points_path = write_points_file(points_node, work_folder / "points-in.mrk.json") if points_node else None
    return segmentation_command(python_executable, ct_path, work_folder / "out", engine, device, points_path)


def import_run_result(segmentation_node, volume_node, points_node, out_folder: Path,
                      overwrite_edits: bool = False) -> list[str]:
    """The child's label map into level segments, then its points into ``points_node`` (when given).
    Segments edited since they were written are not replaced without ``overwrite_edits``
    (EditedSegmentsError, as for every run); the point list is then left as it was too."""
    out_folder = Path(out_folder)
    ordered = import_segmentation_result(segmentation_node, volume_node, out_folder / LABEL_MAP_FILE,
                                         overwrite_edits)
    if points_node is not None:
        import_points(points_node, volume_node, out_folder / POINTS_FILE)
    return ordered


# -- "This segment is ..." -------------------------------------------------------------------------


def rename_segment_as(segmentation_node, segment_id: str, level_name: str, volume_node) -> dict[str, str]:
    """Rename the segment ``segment_id`` to ``level_name`` and every other level segment by counting along
    the segments' cranio-caudal order from it (the sacrum counts as one more), as ``spinefrac run
    --points`` renames by a named point. Only names, colours and codes change, no voxel; the segments
    are reordered cranial first. Returns old name -> new name of the segments renamed."""
    level = level_for_name(level_name)
    if level is None:
        raise InputError(f"'{level_name}' is not a vertebral level (C1-C7, T1-T13, L1-L6 or sacrum)")
    levels, _ = level_segments(segmentation_node)
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id) if segment_id else None
    if segment is None:
        raise InputError("select the segment to rename")
    if segment_id not in levels:
        raise InputError(f"segment '{segment.GetName()}' is not named after a level; only level segments are "
                         "counted (name it C1..L5, T13, L6 or sacrum first)")
    new_ids = _renamed_verse_ids(segmentation_node, volume_node, levels[segment_id], level, segment.GetName())
    changed = [sid for sid, old in levels.items() if new_ids[old.verse_id] != old.verse_id]
    for changed_id in changed:  # 'sacrum' and 'vertebrae_S1' both name the sacrum: one name for two segments
        if sum(other == levels[changed_id] for other in levels.values()) > 1:
            raise InputError(f"several segments name {levels[changed_id].name} (e.g. 'sacrum' and 'vertebrae_S1'); "
                             "merge them before renaming by counting")
    renamed = {}
    for changed_id in changed:
        changed_segment = segmentation.GetSegment(changed_id)
        new_level = LEVEL_BY_ID[new_ids[levels[changed_id].verse_id]]
        renamed[changed_segment.GetName()] = new_level.name
        name_segment_after_level(changed_segment, new_level)
    style_level_segments(segmentation_node)  # cranial first again
    return renamed


def _renamed_verse_ids(segmentation_node, volume_node, old_level, new_level, segment_name: str) -> dict[int, int]:
    """Old VerSe id -> new one for every level in the segments, by rename_by_points with one point, named
    ``new_level``, in a voxel of the ``old_level`` segment."""
    ct = ct_from_volume(volume_node)
    labelled = segmentation_from_node(segmentation_node, volume_node, ct)
    values = sitk.GetArrayViewFromImage(labelled.label_map)
    voxels = np.argwhere(values == old_level.verse_id)
    if not len(voxels):
        raise InputError(f"segment '{segment_name}' is empty: nothing to count from")
    centre = voxels[np.argmin(np.linalg.norm(voxels - voxels.mean(axis=0), axis=1))]  # a voxel of it, central
    position = labelled.label_map.TransformIndexToPhysicalPoint([int(v) for v in centre[::-1]])
    point = VertebraPoint(tuple(position), new_level, new_level.name)
    renamed = sitk.GetArrayFromImage(rename_by_points(labelled, [point]).label_map)  # a copy: the image is temporary
    old_ids, first = np.unique(values, return_index=True)
    return {int(old): int(new) for old, new in zip(old_ids, renamed.ravel()[first]) if old}
