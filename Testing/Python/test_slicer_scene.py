"""What the clinician sees in the scene after every action of the module: each vertebra mask in
exactly one segment, named after its level, coded from a loaded terminology, under the CT's
study. Voxel contents are checked, not only names, on the real MRML classes of ``slicer-core``."""

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")
pytest.importorskip("slicer.util", reason="slicer-core is not installed")

import vtk
from slicer.util import arrayFromVolume

from spinefrac.io.images import ct_from_image, to_canonical
from spinefrac.levels import LEVEL_BY_NAME, TOTALSEGMENTATOR_V2_IDS
from spinefrac.segmentation.base import LabelConvention, VertebraSegmentation
from SpineFractureDetectionLib import mrml_logic, terminology

from slicer_scene_fixtures import phantom, scene, volume  # noqa: F401 - fixtures

LOGIC = slicer.vtkSlicerSegmentationsModuleLogic


def _truth(phantom, name):
    """The phantom's voxels of one level, [k, j, i] on the CT grid."""
    return sitk.GetArrayFromImage(phantom.labels) == LEVEL_BY_NAME[name.lower()].verse_id


def _names(node):
    segments = node.GetSegmentation()
    return [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]


def _mask(node, name, volume):
    """The voxels one segment holds, exported alone onto the CT's grid."""
    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert segment_id, f"no segment named {name}"
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    labelmap = volume.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        assert LOGIC.ExportSegmentsToLabelmapNode(node, ids, labelmap, volume)
        return arrayFromVolume(labelmap) > 0
    finally:
        volume.GetScene().RemoveNode(labelmap)


def _assert_scene(node, volume):
    """Each vertebra mask in exactly one segment, named after its level, coded from the loaded
    vertebra terminology; other segments (organs) are not checked here."""
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    context = terminology.load_terminology(terminologies)
    segments = node.GetSegmentation()
    masks = {}
    for name in _names(node):
        level = LEVEL_BY_NAME.get(name.lower())
        if level is None:
            continue
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(
            segments.GetSegment(segments.GetSegmentIdBySegmentName(name)).GetTerminology(), entry)
        assert entry.GetTerminologyContextName() == context and terminologies.IsTerminologyContextLoaded(context)
        assert entry.GetTypeObject().GetCodeValue() == level.snomed_code
        masks[name] = _mask(node, name, volume)
    assert len(masks) == len(set(masks))  # one segment per level
    overlap = np.sum([mask.astype(np.uint8) for mask in masks.values()], axis=0)
    assert overlap.max() == 1  # no voxel in two level segments
    return masks


def _written(scene, volume, phantom):
    """Segments as this module writes them after a segmentation run."""
    ct = ct_from_image(phantom.ct, "phantom", "phantom")
    labels = VertebraSegmentation(to_canonical(phantom.labels), "phantom", "phantom", LabelConvention.VERSE)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Vertebrae")
    mrml_logic.write_level_segments(node, volume, labels, ct)
    return node, labels, ct


def _hand_drawn(scene, volume, phantom, names):
    """Segments added and painted in Segment Editor: one shared layer, label values 1, 2, 3..."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Drawn")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for name in names:
        segment_id = node.GetSegmentation().AddEmptySegment(name, name)
        mrml_logic.set_segment_mask(node, segment_id, _truth(phantom, name), volume)
    return node


def _imported_from_totalsegmentator(scene, volume, phantom, tmp_path):
    """A TotalSegmentator 'total' result read as SlicerTotalSegmentator reads it: its label file
    with a colour table that names each label value after its class (liver 5, sacrum 25,
    vertebrae_L5 27 ... vertebrae_L1 31)."""
    ts_names = {5: "liver", 25: "sacrum", 27: "vertebrae_L5", 28: "vertebrae_L4", 29: "vertebrae_L3",
                30: "vertebrae_L2", 31: "vertebrae_L1", 32: "vertebrae_T12"}
    verse = sitk.GetArrayFromImage(phantom.labels)
    labels = np.zeros(verse.shape, np.uint8)
    for ts_id, name in ts_names.items():
        if name != "liver":
            labels[verse == TOTALSEGMENTATOR_V2_IDS[ts_id]] = ts_id
    liver = np.zeros_like(labels, dtype=bool)
    liver[:, :8, :8] = True  # a corner of soft tissue, away from the spine
    assert not (liver & (verse > 0)).any()
    labels[liver] = 5
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "total")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max(ts_names) + 1)
    for ts_id, name in ts_names.items():
        colors.SetColor(ts_id, name, 0.5, 0.5, 0.5, 1.0)
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(phantom.ct)
    path = tmp_path / "total.nii.gz"
    sitk.WriteImage(image, str(path))
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    mrml_logic.update_volume_from_sitk(labelmap, sitk.ReadImage(str(path)))
    display = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
    display.SetAndObserveColorNodeID(colors.GetID())
    labelmap.SetAndObserveDisplayNodeID(display.GetID())
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    assert LOGIC.ImportLabelmapToSegmentationNode(labelmap, node)
    return node, liver


# -- defect 1: Classify decides a level by the segment's name, never by its label value --------


def test_classify_keeps_hand_drawn_segments_named_and_filled_as_drawn(scene, volume, phantom):
    node = _hand_drawn(scene, volume, phantom, ["L2", "L3", "L4"])
    segments = node.GetSegmentation()
    assert [segments.GetNthSegment(i).GetLabelValue() for i in range(3)] == [1, 2, 3]  # as Segment Editor numbers
    report = mrml_logic.SpineMrmlLogic().classify(volume, node, None)
    assert _names(node) == ["L2", "L3", "L4"]
    _assert_scene(node, volume)
    assert [row["level"] for row in report.rows] == ["L2", "L3", "L4"]
    for name in ("L2", "L3", "L4"):
        assert np.array_equal(_mask(node, name, volume), _truth(phantom, name))
        row = next(row for row in report.rows if row["level"] == name)
        assert row["voxel_count"] == int(np.count_nonzero(_truth(phantom, name)))
        assert f"^{LEVEL_BY_NAME[name.lower()].snomed_code}^" in segments.GetSegment(
            segments.GetSegmentIdBySegmentName(name)).GetTerminology()


def test_classify_of_a_totalsegmentator_import_leaves_organs_and_maps_vertebrae_by_name(scene, volume, phantom,
                                                                                         tmp_path):
    node, liver = _imported_from_totalsegmentator(scene, volume, phantom, tmp_path)
    liver_id = node.GetSegmentation().GetSegmentIdBySegmentName("liver")
    liver_before = (node.GetSegmentation().GetSegment(liver_id).GetColor(),
                    node.GetSegmentation().GetSegment(liver_id).GetTerminology())
    report = mrml_logic.SpineMrmlLogic().classify(volume, node, None)
    assert _names(node) == ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum", "liver"]
    _assert_scene(node, volume)
    assert [row["level"] for row in report.rows] == ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]
    for name in ("T12", "L1", "L2", "L3", "L4", "L5", "sacrum"):
        assert np.array_equal(_mask(node, name, volume), _truth(phantom, name)), name
    assert node.GetSegmentation().GetSegmentIdBySegmentName("liver") == liver_id
    liver_segment = node.GetSegmentation().GetSegment(liver_id)
    assert (liver_segment.GetColor(), liver_segment.GetTerminology()) == liver_before
    assert np.array_equal(_mask(node, "liver", volume), liver)
    assert any("liver" in note for note in report.notes)


def test_resegmenting_over_edits_puts_every_level_back_in_its_own_segment(scene, volume, phantom):
    node, labels, ct = _written(scene, volume, phantom)
    edited = _truth(phantom, "L3").copy()
    edited[: int(np.median(np.nonzero(edited)[0]))] = False
    mrml_logic.set_segment_mask(node, node.GetSegmentation().GetSegmentIdBySegmentName("L3"), edited, volume)
    assert np.array_equal(_mask(node, "L3", volume), edited)
    mrml_logic.shift_levels(node, +1)  # and a rename on top of the edit
    mrml_logic.write_level_segments(node, volume, labels, ct, overwrite_edits=True)
    assert _names(node) == ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]
    for name, mask in _assert_scene(node, volume).items():
        assert np.array_equal(mask, _truth(phantom, name)), name
    report = mrml_logic.SpineMrmlLogic().classify(volume, node, None)
    assert {row["level"]: row["voxel_count"] for row in report.rows} == {
        name: int(np.count_nonzero(_truth(phantom, name))) for name in _names(node)}


# -- defect 2: a level shift renames segments and nothing else --------------------------------


@pytest.mark.parametrize("offset", [+1, -1])
def test_a_level_shift_moves_names_codes_and_colours_but_no_voxel(scene, volume, phantom, offset):
    node, _, _ = _written(scene, volume, phantom)
    segments = node.GetSegmentation()
    assert segments.GetNumberOfLayers() == 1  # every level shares one labelmap layer
    before = {name: _mask(node, name, volume) for name in _names(node)}
    renamed = mrml_logic.shift_levels(node, offset)
    assert len(renamed) == 6 and "sacrum" not in renamed
    for old, new in renamed.items():
        assert np.array_equal(_mask(node, new, volume), before[old]), f"{old} -> {new}"
        segment = segments.GetSegment(segments.GetSegmentIdBySegmentName(new))
        level = LEVEL_BY_NAME[new.lower()]
        assert f"^{level.snomed_code}^{level.snomed_meaning}" in segment.GetTerminology()
        assert np.allclose(segment.GetColor(), np.array(level.color_rgb) / 255.0)
    assert np.array_equal(_mask(node, "sacrum", volume), before["sacrum"])
    _assert_scene(node, volume)
    mrml_logic.shift_levels(node, -offset)
    for name, mask in before.items():
        assert np.array_equal(_mask(node, name, volume), mask), name
    report = mrml_logic.SpineMrmlLogic().classify(volume, node, None)
    assert {row["level"]: row["voxel_count"] for row in report.rows} == {
        name: int(np.count_nonzero(mask)) for name, mask in before.items()}


# -- defect 3: a table row is the level it names -----------------------------------------------


def _centroid_ras(mask, volume):
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    matrix = np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    k, j, i = np.nonzero(mask)
    return (matrix @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]


def test_view_rows_are_table_rows_and_each_row_centres_on_its_own_vertebra(scene, volume, phantom):
    node, _, _ = _written(scene, volume, phantom)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    report = mrml_logic.SpineMrmlLogic().classify(volume, node, table)
    assert table.GetUseColumnTitleAsColumnHeader()  # no extra row 0 holding the column names
    for view_row, report_row in enumerate(report.rows):
        row = mrml_logic.table_row_of_view_row(table, view_row)
        assert row == view_row
        level = mrml_logic.level_of_row(table, row)
        assert level == report_row["level"]
        centroid = mrml_logic.centroid_ras_of_row(table, row)
        assert np.allclose(centroid, _centroid_ras(_mask(node, level, volume), volume), atol=0.01)  # report rounds to 0.01 mm
    assert mrml_logic.table_row_of_view_row(table, len(report.rows)) is None
    assert table.GetColumnTitle("height_anterior_mm") == "height anterior (mm)"
    assert table.GetColumnTitle("volume_mm3") == "volume (mm3)"
    assert table.GetColumnTitle("decision") == "decision"


def test_without_a_column_header_the_first_view_row_is_the_header(scene):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    column = vtk.vtkStringArray()
    column.SetName("level")
    for name in ("L1", "L2"):
        column.InsertNextValue(name)
    table.AddColumn(column)
    table.SetUseColumnTitleAsColumnHeader(False)
    assert [mrml_logic.table_row_of_view_row(table, r) for r in range(4)] == [None, 0, 1, None]


def test_a_level_without_a_centroid_gives_no_location(scene, volume, phantom):
    node = _hand_drawn(scene, volume, phantom, ["L2", "L3"])
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    mrml_logic.SpineMrmlLogic().measure(volume, node, table)
    centroid = table.GetTable().GetColumnByName("centroid_r_mm")  # NaN is how fill_table writes 'none'
    centroid.SetValue(0, float("nan"))
    assert mrml_logic.centroid_ras_of_row(table, 0) is None
    assert mrml_logic.centroid_ras_of_row(table, 1) is not None


# -- codes from a loaded terminology, results under the CT's study -----------------------------


def test_every_level_code_is_in_the_loaded_terminology_context(scene, volume, phantom):
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    context = terminology.load_terminology(terminologies)
    assert terminologies.IsTerminologyContextLoaded(context)
    assert terminology.load_terminology(terminologies) == context  # loaded once
    category = slicer.vtkSlicerTerminologyCategory()
    assert terminologies.GetNthCategoryInTerminology(context, 0, category)
    codes = set()
    for index in range(terminologies.GetNumberOfTypesInTerminologyCategory(context, category)):
        segment_type = slicer.vtkSlicerTerminologyType()
        terminologies.GetNthTypeInTerminologyCategory(context, category, index, segment_type)
        codes.add((segment_type.GetCodingSchemeDesignator(), segment_type.GetCodeValue()))
    assert codes == {("SCT", level.snomed_code) for level in LEVEL_BY_NAME.values()}
    node, _, _ = _written(scene, volume, phantom)
    segments = node.GetSegmentation()
    for name in _names(node):
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(segments.GetSegment(
            segments.GetSegmentIdBySegmentName(name)).GetTerminology(), entry)
        assert entry.GetTerminologyContextName() == context
        assert (entry.GetTypeObject().GetCodingSchemeDesignator(), entry.GetTypeObject().GetCodeValue()) in codes
        assert entry.GetTypeObject().GetCodeValue() == LEVEL_BY_NAME[name.lower()].snomed_code


def test_segmentation_and_table_are_placed_under_the_cts_study(scene, volume, phantom):
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient")
    study = hierarchy.CreateStudyItem(patient, "CT study")
    hierarchy.CreateItem(study, volume)
    node, _, _ = _written(scene, volume, phantom)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    mrml_logic.SpineMrmlLogic().classify(volume, node, table)
    for result in (node, table):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(result)) == study


def test_the_mask_helper_reads_one_segment_not_its_whole_layer(scene, volume):
    """_mask, used above, reads what a segment holds, not what its shared layer holds."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    shape = arrayFromVolume(volume).shape
    first, second = np.zeros(shape, bool), np.zeros(shape, bool)
    first[2:4, 2:4, 2:4], second[5:7, 5:7, 5:7] = True, True
    for name, mask in (("a", first), ("b", second)):
        mrml_logic.set_segment_mask(node, node.GetSegmentation().AddEmptySegment(name, name), mask, volume)
    assert node.GetSegmentation().GetNumberOfLayers() == 1
    assert np.array_equal(_mask(node, "a", volume), first) and np.array_equal(_mask(node, "b", volume), second)


def test_two_segments_naming_one_vertebra_are_refused_and_left_as_they_are(scene, volume, phantom):
    node = _hand_drawn(scene, volume, phantom, ["L2", "L3"])
    duplicate = node.GetSegmentation().AddEmptySegment("vertebrae_L3", "vertebrae_L3")
    mrml_logic.set_segment_mask(node, duplicate, _truth(phantom, "L4"), volume)
    for action in (lambda: mrml_logic.SpineMrmlLogic().classify(volume, node, None),
                   lambda: mrml_logic.shift_levels(node, +1)):
        with pytest.raises(mrml_logic.InputError, match="'L3' and 'vertebrae_L3' .* both name L3"):
            action()
        assert _names(node) == ["L2", "L3", "vertebrae_L3"]
        assert np.array_equal(_mask(node, "vertebrae_L3", volume), _truth(phantom, "L4"))


def test_sacrum_and_s1_segments_are_graded_together_and_keep_their_names(scene, volume, phantom):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    sacrum = _truth(phantom, "sacrum")
    top = sacrum & (np.arange(sacrum.shape[0])[:, None, None] > np.median(np.nonzero(sacrum)[0]))
    for name, mask in (("L5", _truth(phantom, "L5")), ("vertebrae_S1", top), ("sacrum", sacrum & ~top)):
        mrml_logic.set_segment_mask(node, node.GetSegmentation().AddEmptySegment(name, name), mask, volume)
    report = mrml_logic.SpineMrmlLogic().classify(volume, node, None)
    assert _names(node) == ["L5", "vertebrae_S1", "sacrum"]
    counts = {row["level"]: row["voxel_count"] for row in report.rows}
    assert counts == {"L5": int(np.count_nonzero(_truth(phantom, "L5"))), "sacrum": int(np.count_nonzero(sacrum))}
    assert np.array_equal(_mask(node, "vertebrae_S1", volume), top)
