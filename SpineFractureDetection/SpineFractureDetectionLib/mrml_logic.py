"""MRML side of SpineFractureDetection: volume and segmentation nodes in, segments and tables out.

Imports ``slicer`` (MRML, VTK) but neither Qt nor ``slicer.ScriptedLoadableModule``, so it runs
inside the 3D Slicer application and, for tests, on the PyPI ``slicer-core`` package alike.
Every decision about vertebrae lives in the ``spinefrac`` core; this file only translates
between MRML nodes and the core's typed results.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from slicer.util import arrayFromVolume, updateVolumeFromArray

from spinefrac.assessment.chain import assess
from spinefrac.assessment.fracture import DECISION_COLORS_RGB, DEFAULT_PROBABILITY_THRESHOLD
from spinefrac.assessment.measurement import measure_vertebrae
from spinefrac.assessment.quality import check_quality
from spinefrac.coordinates import LPS_RAS_MATRIX
from spinefrac.errors import InputError, SpineFracError
from spinefrac.io.images import CtVolume, ImageGrid, ct_from_image, to_canonical
from spinefrac.levels import LEVEL_BY_NAME, LEVELS, Level, level_for_name, sort_craniocaudal
from spinefrac.reporting.report import COLUMN_DEFINITIONS, SpineReport
from spinefrac.segmentation.base import LabelConvention, VertebraSegmentation
from spinefrac.segmentation.label_maps import ExistingLabelMap
from SpineFractureDetectionLib.terminology import terminology_entry

CHECKSUM_ATTRIBUTE = "SpineFractureDetection.WrittenLabelsSha256"
# "1" when the written segments' level borders were estimated (the offline engine): while they stay
# unedited, Classify grades them only where quality control has no doubt (assessment.chain).
ESTIMATED_BORDERS_ATTRIBUTE = "SpineFractureDetection.EstimatedBorders"
# "1" when the written segments follow a bone threshold (the offline engine), which leaves out
# low-density marrow: their trabecular density stays withheld, edited or not (an edit redraws a
# border, it does not fill the marrow in).
THRESHOLD_MASKS_ATTRIBUTE = "SpineFractureDetection.ThresholdMasks"
# Shifting labels walks C1..L5 then L6 (a sixth lumbar is the common variant below L5); T13 is
# reached only by name, and shifts to T12 cranially or L1 caudally.
SHIFT_SEQUENCE = tuple(level.name for level in sort_craniocaudal(LEVELS) if level.is_vertebra and level.name != "T13")


class EditedSegmentsError(SpineFracError):
    """The segments were edited since they were written; overwriting needs consent."""


# Table columns with a unit, shown in the table node's column properties.
_UNITS = {"_mm3": "mm3", "_ml": "ml", "_mm": "mm", "_hu": "HU"}


def ensure_segmentation_converters() -> None:
    """Register the labelmap <-> surface rules; the Slicer app does this, bare slicer-core does not."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def require_scalar_volume(volume_node) -> None:
    if volume_node is None:
        raise InputError("no input CT volume is selected")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"'{volume_node.GetName()}' is not a scalar (CT) volume")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InputError(f"volume '{volume_node.GetName()}' holds no voxels")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"volume '{volume_node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components "
            "per voxel; a scalar CT is needed"
        )
    if volume_node.GetParentTransformNode() is not None:
        raise InputError(f"volume '{volume_node.GetName()}' is under a transform; harden the transform first")


def set_volume_geometry(image: sitk.Image, volume_node) -> sitk.Image:
    """Give an image the volume node's grid: Slicer keeps RAS, ITK expects LPS."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(ijk_to_ras)
    direction_ras = np.array([[ijk_to_ras.GetElement(r, c) for c in range(3)] for r in range(3)])
    image.SetSpacing(volume_node.GetSpacing())
    image.SetOrigin((LPS_RAS_MATRIX @ np.array(volume_node.GetOrigin())).tolist())
    image.SetDirection((LPS_RAS_MATRIX @ direction_ras).ravel().tolist())
    return image


def sitk_from_volume(volume_node) -> sitk.Image:
    """The volume's voxels and grid as a SimpleITK image."""
    return set_volume_geometry(sitk.GetImageFromArray(arrayFromVolume(volume_node).copy()), volume_node)


def update_volume_from_sitk(volume_node, image: sitk.Image) -> None:
    """Put a SimpleITK image (voxels and grid) into a volume node."""
    updateVolumeFromArray(volume_node, sitk.GetArrayFromImage(image))
    direction_ras = LPS_RAS_MATRIX @ np.array(image.GetDirection()).reshape(3, 3)
    volume_node.SetSpacing(image.GetSpacing())
    volume_node.SetOrigin((LPS_RAS_MATRIX @ np.array(image.GetOrigin())).tolist())
    volume_node.SetIJKToRASDirections(*[direction_ras[row, column] for row in range(3) for column in range(3)])


def set_segment_mask(segmentation_node, segment_id: str, mask: np.ndarray, volume_node) -> None:
    """Replace one segment's voxels with a [k, j, i] mask on the volume's grid (as an edit would)."""
    ensure_segmentation_converters()
    scene = volume_node.GetScene()
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        updateVolumeFromArray(labelmap_node, (mask > 0).astype(np.uint8))
        ijk_to_ras = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(ijk_to_ras)
        labelmap_node.SetIJKToRASMatrix(ijk_to_ras)
        oriented = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelmap_node)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            oriented, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        )
    finally:
        scene.RemoveNode(labelmap_node)


def ct_from_volume(volume_node) -> CtVolume:
    require_scalar_volume(volume_node)
    return ct_from_image(sitk_from_volume(volume_node), volume_node.GetName(), "3D Slicer volume node")


def level_segments(segmentation_node) -> tuple[dict[str, Level], list[str]]:
    """Segment id -> level for segments named after a level; names of the other segments.
    Refuses two segments naming one vertebra (they would be graded as one); the sacrum may be
    named twice (TotalSegmentator's 'sacrum' and 'vertebrae_S1' are both parts of it)."""
    segmentation = segmentation_node.GetSegmentation()
    levels, unknown, named_by = {}, [], {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        name = segmentation.GetSegment(segment_id).GetName()
        level = level_for_name(name)
        if level is None:
            unknown.append(name)
            continue
        if level.is_vertebra and level.name in named_by:
            raise InputError(f"segments '{named_by[level.name]}' and '{name}' of '{segmentation_node.GetName()}' "
                             f"both name {level.name}; rename one (merging them would grade two vertebrae as one)")
        named_by[level.name] = name
        levels[segment_id] = level
    return levels, unknown


def segmentation_from_node(segmentation_node, volume_node, ct: CtVolume) -> VertebraSegmentation:
    """Stage 1 from a segmentation node (possibly edited by hand), on the CT's grid."""
    if segmentation_node is None:
        raise InputError("no segmentation is selected")
    levels, unknown = level_segments(segmentation_node)
    if not levels:
        names = ", ".join(unknown) or "none"
        raise InputError(
            f"segmentation '{segmentation_node.GetName()}' has no segment named after a vertebral level "
            f"(segments: {names}); name segments C1..L5, T13, L6 or sacrum"
        )
    ensure_segmentation_converters()
    ids = vtk.vtkStringArray()
    for segment_id in levels:
        ids.InsertNextValue(segment_id)
    scene = volume_node.GetScene()
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap_node, volume_node
        ):
            raise InputError(f"segments of '{segmentation_node.GetName()}' cannot be exported on the CT's grid")
        exported = arrayFromVolume(labelmap_node)
        # Export numbers segments 1..N in the order given; map those numbers to VerSe ids.
        lookup = np.zeros(len(levels) + 1, dtype=np.uint8)
        lookup[1:] = [level.verse_id for level in levels.values()]
        labels = sitk.GetImageFromArray(lookup[exported.astype(np.intp)])
    finally:
        scene.RemoveNode(labelmap_node)
    set_volume_geometry(labels, volume_node)
    notes = [f"segments not named after a level were ignored: {', '.join(unknown)}"] if unknown else []
    canonical = to_canonical(labels)
    drift = ImageGrid.of(canonical).differences(ct.grid)
    if drift:
        raise InputError(f"segments of '{segmentation_node.GetName()}' do not lie on the CT's grid: {'; '.join(drift)}")
    return VertebraSegmentation(
        label_map=canonical,
        engine="segments of the scene",
        source=segmentation_node.GetName(),
        convention=LabelConvention.NAMES,
        ignored_labels=dict.fromkeys(unknown),
        notes=notes,
    )


def labels_checksum(segmentation_node, volume_node, ct: CtVolume | None = None) -> str:
    """sha256 of the level labels the segments hold on the volume's grid (edits change it).
    Pass ``ct`` when the caller has the volume as a CtVolume already: reading it again is costly."""
    levels, _ = level_segments(segmentation_node)
    if not levels:
        return hashlib.sha256(b"").hexdigest()
    return _labels_sha256(segmentation_from_node(segmentation_node, volume_node, ct or ct_from_volume(volume_node)))


def _labels_sha256(segmentation: VertebraSegmentation) -> str:
    return hashlib.sha256(np.ascontiguousarray(segmentation.array()).tobytes()).hexdigest()


def with_written_policies(segmentation_node, segmentation: VertebraSegmentation) -> VertebraSegmentation:
    """The mask policies of the engine that wrote the segments: estimated borders hold while the
    segments are unedited (once a clinician edits them they are graded as drawn masks); threshold
    masks keep their density withheld."""
    unedited = segmentation_node.GetAttribute(CHECKSUM_ATTRIBUTE) == _labels_sha256(segmentation)
    estimated = segmentation_node.GetAttribute(ESTIMATED_BORDERS_ATTRIBUTE) == "1"
    threshold = segmentation_node.GetAttribute(THRESHOLD_MASKS_ATTRIBUTE) == "1"
    return replace(segmentation, grading_needs_clean_qc=estimated and unedited,
                   masks_fit_for_density=segmentation.masks_fit_for_density and not threshold)


def has_unsaved_edits(segmentation_node, volume_node, ct: CtVolume | None = None) -> bool:
    """True when segments written by this module were changed since (by hand or another tool)."""
    written = segmentation_node.GetAttribute(CHECKSUM_ATTRIBUTE)
    if written is None:
        return segmentation_node.GetSegmentation().GetNumberOfSegments() > 0  # someone else's segments
    return labels_checksum(segmentation_node, volume_node, ct) != written


def write_level_segments(segmentation_node, volume_node, segmentation: VertebraSegmentation, ct: CtVolume,
                         overwrite_edits: bool = False) -> list[str]:
    """Replace the segmentation's content with one segment per level, named, coloured and coded.
    Refuses (EditedSegmentsError) to replace segments edited since they were written, unless
    ``overwrite_edits``: the module asks the user first."""
    ensure_segmentation_converters()
    if not overwrite_edits and has_unsaved_edits(segmentation_node, volume_node, ct):
        raise EditedSegmentsError(
            f"segmentation '{segmentation_node.GetName()}' holds segments edited since they were written; "
            "confirm to replace them, or choose a new segmentation")
    labels = sitk.GetArrayFromImage(ct.to_source_grid(segmentation.label_map))
    scene = volume_node.GetScene()
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    display_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
    names = level_color_table(scene)
    try:
        updateVolumeFromArray(labelmap_node, labels)
        ijk_to_ras = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(ijk_to_ras)
        labelmap_node.SetIJKToRASMatrix(ijk_to_ras)
        # Import names each segment from this colour table (VerSe id -> level name), so that from
        # here on a segment's name, never its label value, says its level.
        display_node.SetAndObserveColorNodeID(names.GetID())
        labelmap_node.SetAndObserveDisplayNodeID(display_node.GetID())
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segmentation_node.GetSegmentation().RemoveAllSegments()
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node, segmentation_node):
            raise InputError("the level label map cannot be imported into the segmentation")
    finally:
        for node in (labelmap_node, display_node, names):
            scene.RemoveNode(node)
    ordered = style_level_segments(segmentation_node)
    segmentation_node.SetAttribute(CHECKSUM_ATTRIBUTE, labels_checksum(segmentation_node, volume_node, ct))
    segmentation_node.SetAttribute(ESTIMATED_BORDERS_ATTRIBUTE, "1" if segmentation.grading_needs_clean_qc else "0")
    segmentation_node.SetAttribute(THRESHOLD_MASKS_ATTRIBUTE, "0" if segmentation.masks_fit_for_density else "1")
    place_beside_volume(segmentation_node, volume_node)
    # Surfaces for the 3D view, as SlicerTotalSegmentator makes them (the labelmap shows in 2D only).
    segmentation_node.CreateClosedSurfaceRepresentation()
    return ordered


def level_color_table(scene):
    """A colour table naming every VerSe id after its level, for import (removed by the caller)."""
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "SpineFractureDetection levels")
    table.SetTypeToUser()
    table.SetNumberOfColors(max(level.verse_id for level in LEVELS) + 1)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for level in LEVELS:
        table.SetColor(level.verse_id, level.name, *(channel / 255.0 for channel in level.color_rgb), 1.0)
    return table


def place_beside_volume(node, volume_node) -> None:
    """Put a result node under the CT's parent in Subject Hierarchy (its study, when it has one),
    as Slicer's own segmentation extensions do, so that it is saved and exported with that study."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
    if hierarchy is None:
        return
    invalid = slicer.vtkMRMLSubjectHierarchyNode.GetInvalidItemID()
    volume_item = hierarchy.GetItemByDataNode(volume_node)
    if volume_item == invalid:
        return  # the CT is not in the hierarchy: nothing to place the result beside
    study_item = hierarchy.GetItemParent(volume_item)
    item = hierarchy.GetItemByDataNode(node)
    if item == invalid:
        hierarchy.CreateItem(study_item, node)
    elif hierarchy.GetItemParent(item) != study_item:
        hierarchy.SetItemParent(item, study_item)


def name_segment_after_level(segment, level: Level) -> None:
    """Name, colour and SNOMED CT code of one segment; its voxels are not touched."""
    segment.SetName(level.name)
    segment.SetColor(*(channel / 255.0 for channel in level.color_rgb))
    segment.SetTerminology(terminology_entry(level))


def style_level_segments(segmentation_node) -> list[str]:
    """Canonical name, colour and code for every segment whose NAME is a level ("vertebrae_L1"
    becomes "L1"); level segments first, in cranio-caudal order. Label values are never read:
    segments drawn in Segment Editor or imported from another tool number theirs 1, 2, 3..."""
    segmentation = segmentation_node.GetSegmentation()
    levels, _ = level_segments(segmentation_node)
    named = [level.name for level in levels.values()]
    for segment_id, level in levels.items():
        if named.count(level.name) == 1:  # 'sacrum' and 'vertebrae_S1' keep their own names
            name_segment_after_level(segmentation.GetSegment(segment_id), level)
    ordered = [segment_id for segment_id, _ in sorted(levels.items(), key=lambda item: item[1].craniocaudal_rank)]
    for position, segment_id in enumerate(ordered):
        segmentation.SetSegmentIndex(segment_id, position)
    return ordered


def fill_table(table_node, report: SpineReport) -> None:
    """One row per level, one column per report column, units and descriptions attached."""
    table_node.RemoveAllColumns()
    table = table_node.GetTable()
    for key in COLUMN_DEFINITIONS:
        values = [row.get(key) for row in report.rows]
        given = [v for v in values if v is not None]
        numeric = bool(given) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in given)
        column = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        column.SetName(key)
        for value in values:
            if numeric:
                column.InsertNextValue(float("nan") if value is None else float(value))
            elif value is None:
                column.InsertNextValue("")
            else:
                column.InsertNextValue(";".join(value) if isinstance(value, list) else str(value))
        table.AddColumn(column)
        table_node.SetColumnDescription(key, COLUMN_DEFINITIONS[key])
        unit = column_unit(key)
        if unit:
            table_node.SetColumnUnitLabel(key, unit)
        if hasattr(table_node, "SetColumnTitle"):
            table_node.SetColumnTitle(key, column_title(key))
    show_titles_as_header(table_node)
    table_node.Modified()


def column_unit(key: str) -> str:
    return next((unit for suffix, unit in _UNITS.items() if key.endswith(suffix)), "")


def column_title(key: str) -> str:
    """Header text: 'height_anterior_mm' -> 'height anterior (mm)'."""
    unit = column_unit(key)
    words = key[: -len(unit) - 1] if unit else key
    return f"{words.replace('_', ' ')} ({unit})" if unit else words.replace("_", " ")


def show_titles_as_header(table_node) -> None:
    """Column titles as the view's header, so view row i is table row i (the default shows the
    names as an extra row 0). Slicer renamed the property; set whichever this release has."""
    setter = getattr(table_node, "SetUseColumnTitleAsColumnHeader", None) or table_node.SetUseColumnNameAsColumnHeader
    setter(True)


def colour_by_decision(segmentation_node, report: SpineReport) -> None:
    """Red fractured, green normal, grey not assessable: one colour per level segment."""
    decisions = {row["level"]: row["decision"] for row in report.rows if row.get("decision")}
    segmentation = segmentation_node.GetSegmentation()
    for segment_id, level in level_segments(segmentation_node)[0].items():
        decision = decisions.get(level.name)
        if decision is None:
            continue
        rgb = next(c for d, c in DECISION_COLORS_RGB.items() if d.value == decision)
        segmentation.GetSegment(segment_id).SetColor(*(channel / 255.0 for channel in rgb))


def shift_levels(segmentation_node, offset: int) -> dict[str, str]:
    """Rename every level segment ``offset`` levels caudally (+) or cranially (-), e.g. when a
    transitional vertebra made the labels start one level off. The sacrum keeps its name, every
    mask stays in its segment. Returns old name -> new name; refuses a shift that leaves C1..L6."""
    levels, _ = level_segments(segmentation_node)
    renames = {}
    for segment_id, level in levels.items():
        if not level.is_vertebra:
            continue
        if level.name == "T13":  # sits between T12 and L1
            position = SHIFT_SEQUENCE.index("T12") + (offset if offset > 0 else offset + 1)
        else:
            position = SHIFT_SEQUENCE.index(level.name) + offset
        if not 0 <= position < len(SHIFT_SEQUENCE):
            raise InputError(f"shifting {level.name} by {offset:+d} leaves the spine (C1..L6)")
        renames[segment_id] = LEVEL_BY_NAME[SHIFT_SEQUENCE[position].lower()]
    # Only names, codes and colours move. A segment's label value is where its voxels sit in a
    # labelmap layer it may share with other segments: changing it would hand the voxels over.
    segmentation = segmentation_node.GetSegmentation()
    changed = {}
    for segment_id, new_level in renames.items():
        segment = segmentation.GetSegment(segment_id)
        changed[segment.GetName()] = new_level.name
        name_segment_after_level(segment, new_level)
    return changed


def uses_column_titles_as_header(table_node) -> bool:
    """Whether views show column titles as the header, not as an extra first row (Slicer renamed
    the property from ColumnName to ColumnTitle; both releases are read)."""
    getter = getattr(table_node, "GetUseColumnTitleAsColumnHeader", None) or table_node.GetUseColumnNameAsColumnHeader
    return bool(getter())


def table_row_of_view_row(table_node, view_row: int) -> int | None:
    """The table row shown in a view row, as qMRMLTableModel::mrmlTableRowIndex maps it: without
    a column header the view shows the column names as its row 0. None for the header row or
    a row past the table."""
    row = view_row if uses_column_titles_as_header(table_node) else view_row - 1
    return row if 0 <= row < table_node.GetNumberOfRows() else None


def level_of_row(table_node, row: int) -> str | None:
    """The level name a table row describes."""
    column = table_node.GetTable().GetColumnByName("level")
    if column is None or not 0 <= row < table_node.GetNumberOfRows():
        return None
    return column.GetValue(row)


def centroid_ras_of_row(table_node, row: int) -> tuple[float, float, float] | None:
    """The level centroid (RAS mm) stored in a table row, for centring the slice views on it;
    None when the row has none (an empty mask has no centroid: NaN in the table)."""
    table = table_node.GetTable()
    columns = [table.GetColumnByName(name) for name in ("centroid_r_mm", "centroid_a_mm", "centroid_s_mm")]
    if any(column is None for column in columns) or not 0 <= row < table.GetNumberOfRows():
        return None
    centroid = tuple(float(column.GetValue(row)) for column in columns)
    return centroid if all(np.isfinite(centroid)) else None


# -- segmentation out of the GUI process ------------------------------------------------------

PROGRESS_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.+?) \.\.\.$")


def segmentation_command(python_executable: str, ct_path: Path, output: Path, engine: str, device: str,
                         points_path: Path | None = None) -> list[str]:
    """The child-process command that segments (and measures) a CT exported from the scene; with
    ``points_path`` (vertebra points) it segments from them or names the engine's levels by them."""
    points = ["--points", str(points_path)] if points_path is not None else []
    return [python_executable, "-m", "spinefrac", "run", str(ct_path), "-o", str(output), "--engine", engine,
            "--device", device, *points, "--overwrite"]


def parse_progress(line: str) -> tuple[float, str] | None:
    """'[3/6] Measuring vertebrae ...' -> (fraction done before this stage, stage name)."""
    match = PROGRESS_LINE.match(line.strip())
    if not match:
        return None
    index, count, name = int(match.group(1)), int(match.group(2)), match.group(3)
    return (index - 1) / count, name


def export_volume(volume_node, path: Path) -> Path:
    """The CT as a file for the child process (NRRD, its grid exactly); a CT the result could not be
    imported onto (under a transform, say) is refused before anything is written."""
    require_scalar_volume(volume_node)
    sitk.WriteImage(sitk_from_volume(volume_node), str(path), useCompression=False)
    return path


def import_segmentation_result(segmentation_node, volume_node, labels_path: Path,
                               overwrite_edits: bool = False) -> list[str]:
    """Load the child's label map (VerSe ids, on the CT's grid) into level segments, with the
    mask policies its report states. Refuses to replace edited segments without consent
    (EditedSegmentsError)."""
    ct = ct_from_volume(volume_node)
    segmentation = ExistingLabelMap(labels_path, LabelConvention.VERSE).segment(ct)
    report_path = labels_path.parent / "report.json"
    if report_path.is_file():
        stated = json.loads(report_path.read_text(encoding="utf-8")).get("segmentation", {})
        segmentation = replace(segmentation, grading_needs_clean_qc=stated.get("grading_needs_clean_qc") is True,
                               masks_fit_for_density=stated.get("masks_fit_for_density") is not False)
    return write_level_segments(segmentation_node, volume_node, segmentation, ct, overwrite_edits)


class SpineMrmlLogic:
    """Measure and classify the (possibly hand-corrected) level segments of a CT."""

    def measure(self, volume_node, segmentation_node, table_node) -> SpineReport:
        """Per-level measurements and the quality control of each mask (no fracture assessment), so
        the table's QC column already shows which masks need correcting before Classify."""
        ct = ct_from_volume(volume_node)
        segmentation = segmentation_from_node(segmentation_node, volume_node, ct)
        measurements = measure_vertebrae(ct, segmentation)
        quality = check_quality(ct, segmentation, measurements)
        report = SpineReport.from_stages(ct, segmentation, measurements, quality=quality)
        report.notes.extend(segmentation.notes)
        if table_node is not None:
            fill_table(table_node, report)
            place_beside_volume(table_node, volume_node)
        return report

    def classify(self, volume_node, segmentation_node, table_node, classifier=None,
                 probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD) -> SpineReport:
        """Genant grading of the current segments (edits included), decision colours, table."""
        ct = ct_from_volume(volume_node)
        segmentation = with_written_policies(segmentation_node, segmentation_from_node(segmentation_node, volume_node, ct))
        assessment = assess(ct, segmentation, classifier, probability_threshold)
        report = SpineReport.from_stages(ct, segmentation, assessment.measurements, assessment.findings,
                                         assessment.quality)
        report.notes.extend(segmentation.notes)
        style_level_segments(segmentation_node)  # canonical names and codes ("vertebrae_L1" becomes "L1")
        colour_by_decision(segmentation_node, report)
        if table_node is not None:
            fill_table(table_node, report)
            place_beside_volume(table_node, volume_node)
        return report
