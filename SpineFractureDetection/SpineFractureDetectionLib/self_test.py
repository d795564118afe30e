"""Steps of the module's self-test that drive the widget inside 3D Slicer (they need the
application: its widgets, layout and the Terminologies module). ``SpineFractureDetectionTest``
calls them with itself as ``test``, so every check is a unittest assertion."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import slicer

from spinefrac.levels import LEVEL_BY_NAME
from SpineFractureDetectionLib import mrml_logic, points_logic
from SpineFractureDetectionLib.child_process import process_tree_alive, stand_in_child_command
from SpineFractureDetectionLib.terminology import TERMINOLOGY_CONTEXT

LEVELS_IN_PHANTOM = ["L1", "L2", "L3", "L4", "L5", "sacrum"]


def phantom_in_a_study(name="Phantom CT"):
    """A lumbar phantom CT in the scene, under a patient and a study in Subject Hierarchy."""
    from spinefrac.synthetic.phantom import PhantomSpec, make_phantom

    phantom = make_phantom(PhantomSpec(spacing_mm=(2.0, 2.0, 2.0), ribs=False, seed=4))
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    mrml_logic.update_volume_from_sitk(volume, phantom.ct)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Phantom"), "CT study")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(volume), study)
    return volume, hierarchy, study


def masks_by_name(segmentation, volume):
    segments = segmentation.GetSegmentation()
    return {segments.GetNthSegment(i).GetName():
            slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segments.GetNthSegmentID(i), volume) > 0
            for i in range(segments.GetNumberOfSegments())}


def check_scene(test, segmentation, volume, hierarchy, study):
    """Each level mask in exactly one segment, named and coded from a loaded terminology, under the study."""
    masks = masks_by_name(segmentation, volume)
    test.assertEqual(list(masks)[-len(LEVELS_IN_PHANTOM):], LEVELS_IN_PHANTOM)
    test.assertTrue(all(mask.any() for mask in masks.values()))
    test.assertEqual(int(np.sum([mask.astype(np.uint8) for mask in masks.values()], axis=0).max()), 1)
    test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation)), study)
    terminologies = slicer.modules.terminologies.logic()
    test.assertTrue(terminologies.IsTerminologyContextLoaded(TERMINOLOGY_CONTEXT))
    segments = segmentation.GetSegmentation()
    for name in masks:
        entry = slicer.vtkSlicerTerminologyEntry()
        segment = segments.GetSegment(segments.GetSegmentIdBySegmentName(name))
        test.assertTrue(terminologies.DeserializeTerminologyEntry(segment.GetTerminology(), entry))
        test.assertEqual(entry.GetTerminologyContextName(), TERMINOLOGY_CONTEXT)
        test.assertEqual(entry.GetTypeObject().GetCodeValue(), LEVEL_BY_NAME[name.lower()].snomed_code)
    return masks


def check_shift(test, widget, button, offset, masks, volume):
    """A shift button renames every vertebra by ``offset`` levels; every mask stays where it was."""
    button.click()
    shifted = masks_by_name(widget._parameterNode.segmentation, volume)
    for old, mask in masks.items():
        new = old if old == "sacrum" else mrml_logic.SHIFT_SEQUENCE[mrml_logic.SHIFT_SEQUENCE.index(old) + offset]
        test.assertTrue(np.array_equal(shifted[new], mask), f"{old} -> {new}")


def widget_flow(test, widget):
    """Parameter node, Segment (blocking), shift down and up, Classify, table click, export."""
    volume, hierarchy, study = phantom_in_a_study()
    logic = widget.logic
    logic.ensureDependencies(askUser=False)
    parameters = widget._parameterNode
    parameters.inputVolume = volume
    parameters.segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Phantom vertebrae")
    parameters.engine, parameters.device = "offline", "cpu"
    test.assertTrue(widget.ui.segmentButton.enabled and widget.ui.classifyButton.enabled)
    test.assertFalse(widget.ui.cancelButton.enabled)

    logic.segment(volume, parameters.segmentation, parameters.engine, parameters.device)
    masks = check_scene(test, parameters.segmentation, volume, hierarchy, study)
    check_shift(test, widget, widget.ui.shiftDownButton, +1, masks, volume)
    check_shift(test, widget, widget.ui.shiftUpButton, -1, {
        mrml_logic.SHIFT_SEQUENCE[mrml_logic.SHIFT_SEQUENCE.index(name) + 1] if name != "sacrum" else name: mask
        for name, mask in masks.items()}, volume)
    check_scene(test, parameters.segmentation, volume, hierarchy, study)

    widget.ui.classifyButton.click()
    table, report = parameters.measurementTable, widget._lastReport
    test.assertIsNotNone(report)
    levels = [row["level"] for row in report.rows]
    test.assertEqual(levels, list(masks))
    test.assertEqual([mrml_logic.level_of_row(table, row) for row in range(table.GetNumberOfRows())], levels)
    test.assertTrue(mrml_logic.uses_column_titles_as_header(table))
    test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(table)), study)
    test.assertTrue(widget.ui.exportButton.enabled)
    check_table_click(test, widget, table, levels.index("L3"), volume)

    with tempfile.TemporaryDirectory() as folder:
        json_path, csv_path = logic.exportReport(report, folder)
        written = json.loads(Path(json_path).read_text(encoding="utf-8"))
        test.assertEqual([row["level"] for row in written["levels"]], levels)
        test.assertTrue(Path(csv_path).is_file())


def point_labels(points):
    return [points.GetNthControlPointLabel(i) for i in range(points.GetNumberOfControlPoints())]


def check_points_name_their_segments(test, points, segmentation, volume):
    """One named point per level segment, in the segment of its name (or within 5 mm of it: bone-threshold
    masks leave the marrow at a body's centre out)."""
    from spinefrac.levels import LEVEL_BY_ID
    from spinefrac.segmentation.guided.rename import segment_at_point

    labels = mrml_logic.segmentation_from_node(segmentation, volume, mrml_logic.ct_from_volume(volume)).label_map
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    test.assertEqual(point_labels(points), names)
    for point in points_logic.points_from_node(points):
        if point.level.is_vertebra:  # the sacrum's point is its centroid, which the curved bone need not hold
            test.assertEqual(LEVEL_BY_ID[segment_at_point(point, labels)].name, point.label)


def sample_ct_in_a_study(name="Sample CT"):
    """The module's sample CT (T11-sacrum) in the scene, under a patient and a study."""
    import SimpleITK as sitk

    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    sample = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "ts-example-ct.nii.gz"
    mrml_logic.update_volume_from_sitk(volume, sitk.ReadImage(str(sample)))
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Sample"), "CT study")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(volume), study)
    return volume, hierarchy, study


def points_flow(test, widget):
    """An automatic run fills the point list; all names but one cleared; Segment from points gives the
    same named, coded segments under the study; 'This segment is L1' on L2 renames by counting, no voxel
    moves."""
    # The sample CT, not the phantom: the phantom's whole sacrum lies lower than an S1 body would, and
    # the sacrum point an automatic run writes (its centroid) then reads as a skipped vertebra.
    volume, hierarchy, study = sample_ct_in_a_study()
    logic, parameters = widget.logic, widget._parameterNode
    logic.ensureDependencies(askUser=False)
    parameters.inputVolume = volume
    parameters.segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Automatic")
    parameters.vertebraPoints = points_logic.new_points_node(slicer.mrmlScene, volume)
    parameters.engine, parameters.device = "offline", "cpu"
    points = parameters.vertebraPoints
    logic.segment(volume, parameters.segmentation, "offline", "cpu", pointsNode=points)
    check_points_name_their_segments(test, points, parameters.segmentation, volume)
    test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(points)), study)

    for index, label in enumerate(point_labels(points)):
        if label != "L3":
            points.SetNthControlPointLabel(index, f"F-{index + 1}")  # as Slicer labels a placed point
    parameters.segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "From points")
    logic.segment(volume, parameters.segmentation, "auto", "cpu", pointsNode=points, fromPoints=True)
    masks = check_scene(test, parameters.segmentation, volume, hierarchy, study)
    check_points_name_their_segments(test, points, parameters.segmentation, volume)

    segments = parameters.segmentation.GetSegmentation()
    before = list(masks)
    widget.ui.segmentsTable.setSelectedSegmentIDs([segments.GetSegmentIdBySegmentName("L2")])
    widget.ui.levelSelector.setCurrentIndex(points_logic.LEVEL_CHOICES.index("L1"))
    widget.ui.renameSegmentButton.click()
    after = masks_by_name(parameters.segmentation, volume)
    sequence = mrml_logic.SHIFT_SEQUENCE
    test.assertEqual(list(after), [sequence[sequence.index(before[0]) - 1], *before[:-1]])
    for old, new in zip(before, after):
        test.assertTrue(np.array_equal(masks[old], after[new]), f"{old} -> {new}")


def check_table_click(test, widget, table, row, volume):
    """A click on a view row centres the slice views on that row's vertebra (view row = table row), read from
    the table the view shows, even after the selector was moved to another (empty) table."""
    widget.ui.tableView.setMRMLTableNode(table)
    widget._parameterNode.measurementTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "Other table")
    index = widget.ui.tableView.model().index(row, 0)
    test.assertEqual(widget.tableRowOfIndex(table, index), row)
    widget.onTableClicked(index)
    layout = slicer.app.layoutManager()
    if layout is None:  # no main window (--no-main-window): no slice views to centre
        return
    centroid = mrml_logic.centroid_ras_of_row(table, row)
    red = layout.sliceWidget("Red").mrmlSliceNode()
    test.assertAlmostEqual(red.GetSliceOffset(), centroid[2], delta=max(volume.GetSpacing()))


def cancel_flow(test, widget):
    """A running segmentation cancelled: the whole process tree is gone, nothing is imported. The child is
    the stand-in that waits ten minutes after its first stage line (a real engine may finish before the
    click on a fast machine), started with the module's own Python and environment."""
    volume, _, _ = phantom_in_a_study("Phantom CT to cancel")
    parameters = widget._parameterNode
    parameters.inputVolume = volume
    parameters.segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Cancelled")
    parameters.engine, parameters.device = "offline", "cpu"
    widget.ui.statusLabel.text = ""
    real_command = type(widget.logic).childCommand

    def stand_in(*arguments, **options):
        command, env = real_command(*arguments, **options)
        return stand_in_child_command(command[0]), env

    widget.logic.childCommand = stand_in
    try:
        widget.startSegmentation(fromPoints=False)
    finally:
        del widget.logic.childCommand  # back to the class's own
    run = widget._segmentationRun
    test.assertIsNotNone(run)
    test.assertTrue(widget.ui.cancelButton.enabled)
    test.assertFalse(widget.ui.segmentButton.enabled)
    pid, work = run.childPid, run.workFolder
    started = time.monotonic()
    while not widget.ui.statusLabel.text and time.monotonic() - started < 60:
        slicer.app.processEvents()  # until the real Python (the launcher's child) reports a stage
        time.sleep(0.05)
    test.assertTrue(widget.ui.statusLabel.text, "the child reported no stage within a minute")
    test.assertTrue(run.running)  # the stand-in waits ten minutes: cancelled while it runs
    widget.ui.cancelButton.click()
    test.assertIsNone(widget._segmentationRun)
    test.assertFalse(process_tree_alive(pid))
    test.assertFalse(work.exists())
    for _ in range(10):  # no late import from a timer
        slicer.app.processEvents()
        time.sleep(0.05)
    test.assertEqual(parameters.segmentation.GetSegmentation().GetNumberOfSegments(), 0)
    test.assertIn("cancelled", widget.ui.statusLabel.text)
    test.assertTrue(widget.ui.segmentButton.enabled)
    test.assertFalse(widget.ui.cancelButton.enabled)


def start_failure_flow(test, widget):
    """A child that cannot start: the error is raised, no run is recorded, the buttons come back.
    ``startSegmentation`` is what the Segment button runs inside ``tryWithErrorDisplay``, called directly:
    the button would first show a modal error (unless testing is enabled), which stops "Reload and Test"."""
    from SpineFractureDetectionLib.child_process import ChildStartError

    volume, _, _ = phantom_in_a_study("Phantom CT, no Python")
    widget._parameterNode.inputVolume = volume
    widget._parameterNode.engine = "offline"
    missing = str(Path(tempfile.gettempdir()) / "no-such-PythonSlicer")
    widget.logic.childCommand = lambda *arguments: ([missing, "-m", "spinefrac"], None)
    try:
        with test.assertRaises(ChildStartError):
            widget.startSegmentation(fromPoints=False)
    finally:
        del widget.logic.childCommand  # back to the class's own
    test.assertIsNone(widget._segmentationRun)
    test.assertTrue(widget.ui.segmentButton.enabled)
    test.assertFalse(widget.ui.cancelButton.enabled)


def segment_offline_in_a_child(test, logic):
    """The blocking segment() runs the offline engine in a child process; levels are imported named."""
    from spinefrac.synthetic.phantom import PhantomSpec, make_phantom

    logic.ensureDependencies(askUser=False)
    phantom = make_phantom(PhantomSpec(spacing_mm=(2.0, 2.0, 2.0), ribs=False))
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Phantom CT")
    mrml_logic.update_volume_from_sitk(volume, phantom.ct)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Vertebrae")
    logic.segment(volume, segmentation, engine="offline", device="cpu")
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    test.assertEqual(names[-6:], ["L1", "L2", "L3", "L4", "L5", "sacrum"])
    test.assertTrue(segmentation.GetAttribute(mrml_logic.CHECKSUM_ATTRIBUTE))


def levels_named_ordered_and_measured(test, logic):
    """Written segments are named, coded and ordered; Classify colours and tabulates them."""
    import SimpleITK as sitk

    from spinefrac.assessment.fracture import DECISION_COLORS_RGB, Decision
    from spinefrac.io.images import ct_from_image, to_canonical
    from spinefrac.segmentation.base import LabelConvention, VertebraSegmentation
    from spinefrac.synthetic.phantom import Fracture, PhantomSpec, make_phantom

    logic.ensureDependencies(askUser=False)
    phantom = make_phantom(PhantomSpec(spacing_mm=(2.0, 2.0, 2.0), fractures={"L2": Fracture("wedge", 0.45)}))
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Phantom CT")
    mrml_logic.update_volume_from_sitk(volume, phantom.ct)
    ct = ct_from_image(phantom.ct, "phantom", "phantom")
    labels = VertebraSegmentation(to_canonical(phantom.labels), "phantom", "phantom",
                                  LabelConvention.VERSE)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Vertebrae")
    mrml_logic.write_level_segments(segmentation, volume, labels, ct)

    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    test.assertEqual(names, ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"])
    l2 = segmentation.GetSegmentation().GetSegment(segmentation.GetSegmentation().GetSegmentIdBySegmentName("L2"))
    test.assertTrue(np.allclose(l2.GetColor(), np.array(LEVEL_BY_NAME["l2"].color_rgb) / 255.0))
    test.assertIn("SCT^14293000^L2 vertebra", l2.GetTerminology())
    test.assertTrue(slicer.modules.terminologies.logic().IsTerminologyContextLoaded(
        l2.GetTerminology().split("~")[0]))

    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
    report = logic.classify(volume, segmentation, table)
    test.assertEqual(table.GetNumberOfRows(), len(names))
    test.assertEqual([table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())], names)
    decisions = {row["level"]: row["decision"] for row in report.rows}
    test.assertEqual(decisions["L2"], "fractured")
    test.assertEqual(decisions["L4"], "normal")
    red = np.array(DECISION_COLORS_RGB[Decision.FRACTURED]) / 255.0
    test.assertTrue(np.allclose(l2.GetColor(), red))
    counts = {row["level"]: row["voxel_count"] for row in report.rows}
    array = slicer.util.arrayFromVolume(volume)
    test.assertEqual(array.shape[::-1], phantom.ct.GetSize())
    test.assertEqual(counts["L3"], int(np.count_nonzero(
        sitk.GetArrayFromImage(phantom.labels) == LEVEL_BY_NAME["l3"].verse_id)))
