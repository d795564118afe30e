"""The module's MRML logic against the real MRML classes of the PyPI ``slicer-core`` package."""

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")
pytest.importorskip("slicer.util", reason="slicer-core is not installed")

from spinefrac.errors import InputError  # noqa: E402
from spinefrac.io.images import load_ct  # noqa: E402
from spinefrac.levels import LEVEL_BY_NAME  # noqa: E402
from spinefrac.segmentation.label_maps import ExistingLabelMap  # noqa: E402
from SpineFractureDetectionLib import mrml_logic  # noqa: E402

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


def test_measure_runs_quality_control_so_a_displaced_segment_is_flagged_before_classify(
        scene, segmentation, volume, sample_labels):
    """The user drags L3 30 mm to the side (onto the psoas): the measure-only table already says
    the mask fails QC, with the reason; the untouched levels pass."""
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels)))  # k, j, i
    spacing_i_mm = sitk.ReadImage(str(sample_labels)).GetSpacing()[0]
    moved = np.roll(labels == LEVEL_BY_NAME["l3"].verse_id, int(round(30.0 / spacing_i_mm)), axis=2)
    segments = segmentation.GetSegmentation()
    mrml_logic.set_segment_mask(segmentation, segments.GetSegmentIdBySegmentName("L3"), moved, volume)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    report = mrml_logic.SpineMrmlLogic().measure(volume, segmentation, table)
    rows = {row["level"]: row for row in report.rows}
    assert rows["L3"]["qc_verdict"] == "fail" and rows["L3"]["qc_reasons"]
    assert rows["L1"]["qc_verdict"] == "pass"
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    row = [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())].index("L3")
    assert table.GetCellText(row, columns.index("qc_verdict")) == "fail"
    assert report.quality_control["overall_verdict"] == "fail"


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


# -- classification, label shifts, edit protection -------------------------------------------


@pytest.fixture
def fractured_scene(scene):
    from spinefrac.io.images import ct_from_image, to_canonical
    from spinefrac.segmentation.base import LabelConvention, VertebraSegmentation
    from spinefrac.synthetic.phantom import Fracture, PhantomSpec, make_phantom

    phantom = make_phantom(PhantomSpec(spacing_mm=(2.0, 2.0, 2.0), fractures={"L2": Fracture("wedge", 0.45)},
                                       ribs=False, seed=4))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Phantom CT")
    mrml_logic.update_volume_from_sitk(volume, phantom.ct)
    ct = ct_from_image(phantom.ct, "phantom", "phantom")
    labels = VertebraSegmentation(to_canonical(phantom.labels), "phantom", "phantom", LabelConvention.VERSE)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Vertebrae")
    mrml_logic.write_level_segments(segmentation, volume, labels, ct)
    return volume, segmentation, phantom, labels, ct


def _segment(node, name):
    segments = node.GetSegmentation()
    return segments.GetSegment(segments.GetSegmentIdBySegmentName(name))


def test_classify_colours_segments_by_decision_and_tabulates_the_evidence(scene, fractured_scene):
    from spinefrac.assessment.fracture import DECISION_COLORS_RGB, Decision

    volume, segmentation, _, _, _ = fractured_scene
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    report = mrml_logic.SpineMrmlLogic().classify(volume, segmentation, table)
    decisions = {row["level"]: row["decision"] for row in report.rows}
    assert decisions["L2"] == "fractured" and decisions["L4"] == "normal" and decisions["sacrum"] == "not_assessable"
    red, green, grey = (np.array(DECISION_COLORS_RGB[d]) / 255.0
                        for d in (Decision.FRACTURED, Decision.NORMAL, Decision.NOT_ASSESSABLE))
    assert np.allclose(_segment(segmentation, "L2").GetColor(), red)
    assert np.allclose(_segment(segmentation, "L4").GetColor(), green)
    assert np.allclose(_segment(segmentation, "sacrum").GetColor(), grey)
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    for name in ("decision", "genant_grade", "genant_type", "height_anterior_mm", "trabecular_hu", "decision_reason",
                 "qc_verdict", "qc_reasons"):
        assert name in columns
    row = [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())].index("L2")
    assert table.GetCellText(row, columns.index("decision")) == "fractured"
    assert table.GetCellText(row, columns.index("qc_verdict")) == "pass"  # Slicer segments pass through QC
    assert report.quality_control["overall_verdict"] in ("pass", "warn")
    assert table.GetCellText(row, columns.index("genant_type")) == "wedge"
    assert table.GetColumnUnitLabel("height_anterior_mm") == "mm"


def test_reclassify_after_an_edit_updates_the_decision_and_keeps_the_edit(scene, fractured_scene):
    volume, segmentation, phantom, _, _ = fractured_scene
    logic = mrml_logic.SpineMrmlLogic()
    before = {row["level"]: row for row in logic.classify(volume, segmentation, None).rows}
    labels = sitk.GetArrayFromImage(phantom.labels)
    bodies = sitk.GetArrayFromImage(phantom.body_labels)
    l4 = (labels == 23) & ~((bodies == 23) & (np.arange(labels.shape[0])[:, None, None] >
                                              np.percentile(np.nonzero(bodies == 23)[0], 50)))
    mrml_logic.set_segment_mask(segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName("L4"), l4,
                                volume)  # the user erases the upper half of the L4 body: a crush
    after = {row["level"]: row for row in logic.classify(volume, segmentation, None).rows}
    assert before["L4"]["decision"] == "normal" and after["L4"]["decision"] == "fractured"
    assert after["L4"]["voxel_count"] == int(np.count_nonzero(l4))
    assert after["L2"]["decision"] == "fractured"


def test_resegmenting_over_edited_segments_needs_consent(scene, fractured_scene):
    volume, segmentation, phantom, labels, ct = fractured_scene
    mrml_logic.write_level_segments(segmentation, volume, labels, ct)  # unedited: replaced silently
    edited = sitk.GetArrayFromImage(phantom.labels) == 22
    edited[: int(np.median(np.nonzero(edited)[0]))] = False  # the user erases the lower half of L3
    mrml_logic.set_segment_mask(segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName("L3"),
                                edited, volume)
    assert mrml_logic.has_unsaved_edits(segmentation, volume)
    with pytest.raises(mrml_logic.EditedSegmentsError, match="edited since they were written"):
        mrml_logic.write_level_segments(segmentation, volume, labels, ct)
    kept = mrml_logic.segmentation_from_node(segmentation, volume, ct)
    assert np.count_nonzero(kept.array() == 22) == np.count_nonzero(edited)  # the edit survived the refusal
    mrml_logic.write_level_segments(segmentation, volume, labels, ct, overwrite_edits=True)
    assert not mrml_logic.has_unsaved_edits(segmentation, volume)
    replaced = mrml_logic.segmentation_from_node(segmentation, volume, ct)
    assert np.count_nonzero(replaced.array() == 22) > np.count_nonzero(edited)


def test_shifting_all_labels_by_one_level_is_one_action(fractured_scene):
    volume, segmentation, _, _, _ = fractured_scene
    renamed = mrml_logic.shift_levels(segmentation, +1)
    assert renamed == {"T12": "L1", "L1": "L2", "L2": "L3", "L3": "L4", "L4": "L5", "L5": "L6"}
    assert _segment_names(segmentation) == ["L1", "L2", "L3", "L4", "L5", "L6", "sacrum"]
    assert "SCT^122496007^Lumbar vertebra" in _segment(segmentation, "L6").GetTerminology()
    mrml_logic.shift_levels(segmentation, -1)
    assert _segment_names(segmentation) == ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]
    with pytest.raises(InputError, match="leaves the spine"):
        mrml_logic.shift_levels(segmentation, +2)


def test_a_table_row_gives_the_level_centroid_to_centre_the_views(scene, fractured_scene):
    volume, segmentation, phantom, _, _ = fractured_scene
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    report = mrml_logic.SpineMrmlLogic().classify(volume, segmentation, table)
    row = [r["level"] for r in report.rows].index("L3")
    r, a, s = mrml_logic.centroid_ras_of_row(table, row)
    assert (r, a, s) == (report.rows[row]["centroid_r_mm"], report.rows[row]["centroid_a_mm"],
                         report.rows[row]["centroid_s_mm"])
    assert mrml_logic.centroid_ras_of_row(table, 99) is None


def test_generic_segment_names_are_never_taken_for_levels(scene, fractured_scene):
    """Segment Editor names new segments Segment_1, Segment_2...: they must not become C1, C2."""
    volume, segmentation, _, _, _ = fractured_scene
    segmentation.GetSegmentation().AddEmptySegment("Segment_1", "Segment_1", [1, 0, 0])
    report = mrml_logic.SpineMrmlLogic().classify(volume, segmentation, None)
    assert "C1" not in [row["level"] for row in report.rows]
    assert any("Segment_1" in note for note in report.notes)


def test_totalsegmentator_segment_names_are_renamed_to_levels(scene, fractured_scene):
    volume, segmentation, _, _, _ = fractured_scene
    _segment(segmentation, "L3").SetName("vertebrae_L3")
    mrml_logic.SpineMrmlLogic().classify(volume, segmentation, None)
    assert _segment_names(segmentation) == ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]


def test_a_child_process_segmentation_is_imported_as_level_segments(tmp_path, scene, volume, sample_ct,
                                                                     sample_labels):
    import subprocess
    import sys

    ct_file = mrml_logic.export_volume(volume, tmp_path / "ct.nrrd")
    command = mrml_logic.segmentation_command(sys.executable, ct_file, tmp_path / "out", "offline", "cpu")
    env = dict(__import__("os").environ, PYTHONPATH=str(mrml_logic.Path(mrml_logic.__file__).parents[1]))
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr
    stages = [mrml_logic.parse_progress(line) for line in completed.stderr.splitlines()]
    stages = [stage for stage in stages if stage]
    assert stages[0] == (0.0, "Loading CT") and [s[0] for s in stages] == sorted(s[0] for s in stages)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    names = mrml_logic.import_segmentation_result(node, volume, tmp_path / "out" / "vertebrae.nii.gz")
    assert [node.GetSegmentation().GetSegment(i).GetName() for i in names][-6:] == ["L1", "L2", "L3", "L4", "L5",
                                                                                       "sacrum"]
    assert node.GetAttribute(mrml_logic.CHECKSUM_ATTRIBUTE)  # later edits will be detected
    # The offline engine's borders are estimated: unedited, Classify keeps that policy; edited, the
    # masks count as a clinician's and are graded as drawn
    assert node.GetAttribute(mrml_logic.ESTIMATED_BORDERS_ATTRIBUTE) == "1"
    logic = mrml_logic.SpineMrmlLogic()
    unedited = logic.classify(volume, node, None)
    assert unedited.segmentation["grading_needs_clean_qc"] is True
    # bone-threshold masks: no trabecular density, no L1 screen, as on the command line
    assert unedited.segmentation["masks_fit_for_density"] is False and unedited.osteoporosis_screen is None
    assert all(row["trabecular_hu"] is None for row in unedited.rows)
    ct = load_ct(sample_ct)
    written = mrml_logic.segmentation_from_node(node, volume, ct).label_map
    l3 = sitk.GetArrayFromImage(ct.to_source_grid(written)) == LEVEL_BY_NAME["l3"].verse_id
    l3[np.nonzero(l3)[0].max()] = False  # the clinician trims one slice off L3
    mrml_logic.set_segment_mask(node, node.GetSegmentation().GetSegmentIdBySegmentName("L3"), l3, volume)
    assert mrml_logic.has_unsaved_edits(node, volume)
    edited = logic.classify(volume, node, None)
    assert edited.segmentation["grading_needs_clean_qc"] is False
    assert edited.segmentation["masks_fit_for_density"] is False  # an edit does not fill the marrow in
