"""The module's MRML logic against the real MRML classes of the PyPI ``slicer-core`` package."""

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")
pytest.importorskip("slicer.util", reason="slicer-core is not installed")

from SpineFractureDetectionLib import mrml_logic  # noqa: E402

from spinefrac.errors import InputError  # noqa: E402
from spinefrac.image_io import load_ct  # noqa: E402
from spinefrac.levels import LEVEL_BY_NAME  # noqa: E402
from spinefrac.segmentation import ExistingLabelMap  # noqa: E402

LEVEL_NAMES = ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def volume(scene, sample_ct):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    mrml_logic.update_volume_from_sitk(node, sitk.ReadImage(str(sample_ct)))
    return node


@pytest.fixture
def segmentation(scene, volume, sample_ct, sample_labels):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Vertebrae")
    ct = load_ct(sample_ct)
    mrml_logic.write_level_segments(node, volume, ExistingLabelMap(sample_labels).segment(ct), ct)
    return node


def _segment_names(node):
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_volume_geometry_survives_the_trip_through_mrml(scene, sample_ct, orientation):
    image = sitk.DICOMOrient(sitk.ReadImage(str(sample_ct)), orientation)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    mrml_logic.update_volume_from_sitk(node, image)
    back = mrml_logic.sitk_from_volume(node)
    assert np.allclose(back.GetOrigin(), image.GetOrigin()) and np.allclose(back.GetDirection(), image.GetDirection())
    assert np.allclose(back.GetSpacing(), image.GetSpacing())
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_segments_are_named_ordered_coloured_and_coded(segmentation, volume, sample_labels):
    assert _segment_names(segmentation) == LEVEL_NAMES
    segments = segmentation.GetSegmentation()
    l1 = segments.GetSegment(segments.GetSegmentIdBySegmentName("L1"))
    assert np.allclose(l1.GetColor(), np.array(LEVEL_BY_NAME["l1"].color_rgb) / 255.0)
    entry = l1.GetTerminology()
    assert "SCT^66794005^L1 vertebra" in entry and "SCT^123037004^Anatomical Structure" in entry
    # The segments hold exactly the input labels, on the volume's grid.
    ct = mrml_logic.ct_from_volume(volume)
    exported = mrml_logic.segmentation_from_node(segmentation, volume, ct)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels)))
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(exported.label_map)), labels)


def test_measure_fills_one_table_row_per_segment(scene, segmentation, volume, sample_labels):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    report = mrml_logic.SpineMrmlLogic().measure(volume, segmentation, table)
    assert [row["level"] for row in report.rows] == LEVEL_NAMES
    assert table.GetNumberOfRows() == len(LEVEL_NAMES)
    assert [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())] == _segment_names(segmentation)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels)))
    column = table.GetTable().GetColumnByName("voxel_count")
    assert [int(column.GetValue(r)) for r in range(len(LEVEL_NAMES))] == [
        int(np.count_nonzero(labels == LEVEL_BY_NAME[name.lower()].verse_id)) for name in LEVEL_NAMES]
    assert table.GetColumnUnitLabel("volume_mm3") == "mm3"
    assert "HU" in table.GetColumnDescription("mean_hu")


def test_an_edited_segment_changes_its_measurements(scene, segmentation, volume, sample_labels):
    logic = mrml_logic.SpineMrmlLogic()
    before = {row["level"]: row for row in logic.measure(volume, segmentation, None).rows}
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels)))
    l3 = labels == 22
    edited = l3.copy()
    k_top = np.nonzero(l3)[0].max()
    edited[k_top - 2:] = False  # the user erases the top three slices of L3
    segments = segmentation.GetSegmentation()
    mrml_logic.set_segment_mask(segmentation, segments.GetSegmentIdBySegmentName("L3"), edited, volume)
    after = {row["level"]: row for row in logic.measure(volume, segmentation, None).rows}
    assert after["L3"]["voxel_count"] == np.count_nonzero(edited) < before["L3"]["voxel_count"]
    assert after["L4"] == before["L4"]
    assert _segment_names(segmentation) == LEVEL_NAMES  # the edit kept every segment


def test_segments_with_other_names_are_ignored_and_reported(scene, segmentation, volume):
    segmentation.GetSegmentation().AddEmptySegment("liver", "liver", [0.5, 0.2, 0.2])
    report = mrml_logic.SpineMrmlLogic().measure(volume, segmentation, None)
    assert [row["level"] for row in report.rows] == LEVEL_NAMES
    assert any("liver" in note for note in report.notes)


def test_a_segmentation_without_level_names_is_refused(scene, volume):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    mrml_logic.ensure_segmentation_converters()
    node.GetSegmentation().AddEmptySegment("Segment_1", "Segment_1", [1, 0, 0])
    with pytest.raises(InputError, match="no segment named after a vertebral level.*Segment_1"):
        mrml_logic.SpineMrmlLogic().measure(volume, node, None)


def test_bad_volume_selections_are_refused(scene, segmentation):
    with pytest.raises(InputError, match="no input CT volume"):
        mrml_logic.SpineMrmlLogic().measure(None, segmentation, None)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(InputError, match="not a scalar"):
        mrml_logic.SpineMrmlLogic().measure(labelmap, segmentation, None)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        mrml_logic.SpineMrmlLogic().measure(empty, segmentation, None)
