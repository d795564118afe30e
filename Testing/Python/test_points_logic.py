"""Vertebra points in the Slicer module, on the real MRML classes of ``slicer-core``: a markups point list
in, a segmentation node out (named, coded segments; voxels as ``spinefrac run --points`` labels them),
the point list refilled by every run, and "This segment is ..." renaming without a voxel change."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")
pytest.importorskip("slicer.util", reason="slicer-core is not installed")

import vtk  # noqa: E402
from slicer.util import arrayFromVolume  # noqa: E402

from spinefrac.errors import InputError  # noqa: E402
from spinefrac.io.images import load_ct  # noqa: E402
from spinefrac.io.points import VertebraPoint, read_points, write_points_markups  # noqa: E402
from spinefrac.levels import LEVEL_BY_ID, LEVEL_BY_NAME  # noqa: E402
from spinefrac.segmentation.guided.rename import segment_at_point  # noqa: E402
from spinefrac.segmentation.label_maps import ExistingLabelMap  # noqa: E402
from SpineFractureDetectionLib import mrml_logic, points_logic, terminology  # noqa: E402
from SpineFractureDetectionLib.child_process import SegmentationJob  # noqa: E402

from spine_test_utils import run_cli  # noqa: E402

SAMPLE_LEVELS = ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]


@pytest.fixture
def scene():
    mrml_logic.ensure_segmentation_converters()
    return slicer.vtkMRMLScene()


def _volume_in_a_study(scene, ct_path):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    mrml_logic.update_volume_from_sitk(volume, sitk.ReadImage(str(ct_path)))
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient"), "CT study")
    hierarchy.CreateItem(study, volume)
    return volume, hierarchy, study


def _label_centroids_lps(labels_path):
    """Each labelled level's centroid (LPS mm), cranial first: where a clinician clicks each vertebra."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(sitk.ReadImage(str(labels_path)))
    centroids = {LEVEL_BY_ID[int(v)]: shape.GetCentroid(v) for v in shape.GetLabels()}
    return sorted(centroids.items(), key=lambda item: item[0].craniocaudal_rank)


def _clinicians_points(scene, centroids, named="L1"):
    """A point list as placed in the slice views: RAS positions, Slicer's default labels F-1, F-2, ...,
    one point renamed to its level."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    for number, (level, (x, y, z)) in enumerate(centroids, start=1):
        node.AddControlPointWorld(-x, -y, z, level.name if level.name == named else f"F-{number}")
    return node


def _labels(node):
    return [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]


def _names(segmentation):
    segments = segmentation.GetSegmentation()
    return [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]


def _run_like_the_module(segmentation, volume, points, from_points, engine="auto", keep=None):
    """What SpineFractureDetectionLogic.segmentationJob does: the child process (spinefrac run, as
    PythonSlicer runs it), then its labels and points imported. ``keep``: a folder that receives a copy
    of the child's output before the work folder is removed."""
    work = tempfile.TemporaryDirectory(prefix="spinefrac-")
    command = points_logic.child_command(sys.executable, volume, Path(work.name), engine, "cpu",
                                         points if from_points else None)
    env = dict(os.environ, PYTHONPATH=str(Path(points_logic.__file__).parents[1]))
    outcome = {}

    def import_result(folder):
        if keep is not None:
            shutil.copytree(Path(folder) / "out", keep)
        return points_logic.import_run_result(segmentation, volume, points, Path(folder) / "out")

    job = SegmentationJob(command, env, work, import_result, lambda *progress: None,
                          lambda error: outcome.setdefault("error", error))
    job.wait()
    assert outcome["error"] is None, outcome["error"]
    return job.imported


def _assert_named_and_coded(segmentation):
    """Every segment coded from the module's loaded vertebra terminology with its level's SNOMED CT code."""
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    context = terminology.load_terminology(terminologies)
    segments = segmentation.GetSegmentation()
    for name in _names(segmentation):
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(
            segments.GetSegment(segments.GetSegmentIdBySegmentName(name)).GetTerminology(), entry)
        assert entry.GetTerminologyContextName() == context
        assert entry.GetTypeObject().GetCodingSchemeDesignator() == "SCT"
        assert entry.GetTypeObject().GetCodeValue() == LEVEL_BY_NAME[name.lower()].snomed_code, name


def _label_array(segmentation, volume):
    """The level segments as VerSe ids on the CT's own grid ([k, j, i])."""
    ct = mrml_logic.ct_from_volume(volume)
    labelled = mrml_logic.segmentation_from_node(segmentation, volume, ct)
    return sitk.GetArrayFromImage(ct.to_source_grid(labelled.label_map)), labelled.label_map


def _assert_points_name_their_segments(points, segmentation, volume):
    """One point per segment, labelled with its name, each vertebra's in that segment or within 5 mm of it (bone-
    threshold masks leave the marrow at a body's centre out)."""
    assert _labels(points) == _names(segmentation)
    _, label_map = _label_array(segmentation, volume)
    for point in points_logic.points_from_node(points):
        if point.level.is_vertebra:  # the sacrum's point is its centroid, which the curved bone need not hold
            assert LEVEL_BY_ID[segment_at_point(point, label_map)].name == point.label


def _assert_same_positions(points, expected):
    assert [p.level for p in points] == [p.level for p in expected]
    np.testing.assert_allclose([p.position_lps_mm for p in points], [p.position_lps_mm for p in expected], atol=1e-6)


def _segment_masks(segmentation, volume):
    """Segment id -> its own voxels on the CT's grid, and its layer and label value."""
    masks = {}
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        segment_id = segments.GetNthSegmentID(index)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        labelmap = volume.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap,
                                                                                     volume)
        masks[segment_id] = (arrayFromVolume(labelmap) > 0, segments.GetLayerIndex(segment_id),
                             segments.GetSegment(segment_id).GetLabelValue())
        volume.GetScene().RemoveNode(labelmap)
    return masks


# -- point list <-> points ------------------------------------------------------------------------------


def test_points_from_a_point_list_are_lps_with_levels_and_skip_points_not_placed(scene):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Clicked")
    node.AddControlPointWorld(10.0, -20.0, 300.0, "L1")
    node.AddControlPointWorld(11.0, -22.0, 330.0, "F-2")  # Slicer's default label: unnamed
    node.AddControlPointWorld(0.0, 0.0, 0.0, "L2")
    node.SetNthControlPointPositionMissing(2)  # skipped while placing: not a point
    node.AddControlPointWorld(12.0, -24.0, 270.0, "L3")
    node.SetNthControlPointLabel(3, " ")  # its label cleared in the table
    points = points_logic.points_from_node(node)
    assert [p.position_lps_mm for p in points] == [(-10.0, 20.0, 300.0), (-11.0, 22.0, 330.0), (-12.0, 24.0, 270.0)]
    assert [p.level for p in points] == [LEVEL_BY_NAME["l1"], None, None]
    assert [p.label for p in points] == ["L1", "F-2", "point 4"]


def test_points_are_read_in_world_coordinates_under_a_transform(scene):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    node.AddControlPointWorld(1.0, 2.0, 3.0, "T12")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(2, 3, 15.0)  # 15 mm superior
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert points_logic.points_from_node(node)[0].position_lps_mm == (-1.0, -2.0, 18.0)


def test_a_label_that_is_no_level_is_refused_naming_list_and_point(scene):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Clicked")
    node.AddControlPointWorld(0.0, 0.0, 0.0, "L9")
    with pytest.raises(InputError, match="point list 'Clicked', point 'L9': 'L9' is not a vertebral level"):
        points_logic.points_from_node(node)


def test_filled_points_read_back_as_written(scene, tmp_path):
    points = [VertebraPoint((4.5, -110.0, 382.0), LEVEL_BY_NAME["l1"], "L1"),
              VertebraPoint((5.0, -120.5, 350.25), None, "F-2")]
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Vertebra points")
    node.AddControlPointWorld(0.0, 0.0, 0.0, "old point")
    points_logic.fill_points_node(node, points, "from a run")
    back = points_logic.points_from_node(node)
    assert [p.position_lps_mm for p in back] == [p.position_lps_mm for p in points]
    assert back[0].level == LEVEL_BY_NAME["l1"] and back[1].level is None  # unnamed: the list's own label
    assert node.GetNthControlPointDescription(1) == "from a run"
    written = points_logic.write_points_file(node, tmp_path / "points.mrk.json")
    assert [(p.position_lps_mm, p.level) for p in read_points(written)] == [(p.position_lps_mm, p.level)
                                                                             for p in points]


@pytest.mark.parametrize("labels, message", [
    ([], "holds no placed point"),
    (["L1", "L1"], "both named L1"),
    (["L2", "L1"], "L2 is not above L1: the names contradict their order"),  # the first point is the higher
])
def test_points_that_cannot_be_segmented_are_refused_before_a_child_starts(scene, tmp_path, labels, message):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Clicked")
    for number, label in enumerate(labels):
        node.AddControlPointWorld(0.0, -100.0, 400.0 - 35.0 * number, label)
    with pytest.raises(InputError, match=message):
        points_logic.write_points_file(node, tmp_path / "points.mrk.json")
    assert not (tmp_path / "points.mrk.json").exists()


def test_segmentation_command_passes_the_points_file():
    command = mrml_logic.segmentation_command("python", Path("ct.nrrd"), Path("out"), "auto", "cpu",
                                              Path("points.mrk.json"))
    assert command[command.index("--points") + 1] == "points.mrk.json"
    assert "--points" not in mrml_logic.segmentation_command("python", Path("ct.nrrd"), Path("out"), "auto", "cpu")


# -- the flow: points in, segments out, points back -------------------------------------------------------


@pytest.fixture(scope="module")
def cli_from_points(tmp_path_factory, sample_ct, sample_labels):
    """``spinefrac run --points`` on the sample CT, from a file holding the same points (LPS, one named L1)."""
    folder = tmp_path_factory.mktemp("cli")
    points = [VertebraPoint(tuple(c), level if level.name == "L1" else None, level.name)
              for level, c in _label_centroids_lps(sample_labels)]
    points_file = write_points_markups(folder / "placed.mrk.json", points)
    result = run_cli("run", sample_ct, "--points", points_file, "-o", folder / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return folder / "out"


def test_segment_from_points_gives_named_coded_segments_as_the_command_line_labels_them(
        scene, sample_ct, sample_labels, cli_from_points, tmp_path):
    volume, hierarchy, study = _volume_in_a_study(scene, sample_ct)
    points = _clinicians_points(scene, _label_centroids_lps(sample_labels))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "From points")
    ordered = _run_like_the_module(segmentation, volume, points, from_points=True)

    assert _names(segmentation) == SAMPLE_LEVELS
    assert ordered == [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(len(SAMPLE_LEVELS))]
    _assert_named_and_coded(segmentation)
    module_labels, _ = _label_array(segmentation, volume)
    cli_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(cli_from_points / "vertebrae.nii.gz")))
    assert module_labels.shape == cli_labels.shape
    assert np.array_equal(module_labels, cli_labels)  # every voxel, every level
    # the point list now holds the run's points: one per level, named, each in its segment
    _assert_points_name_their_segments(points, segmentation, volume)
    cli_points = read_points(cli_from_points / "points.mrk.json")
    _assert_same_positions(points_logic.points_from_node(points), cli_points)
    for node in (segmentation, points):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study


def test_an_automatic_run_fills_the_point_list_with_one_named_point_per_level(scene, sample_ct, tmp_path):
    volume, hierarchy, study = _volume_in_a_study(scene, sample_ct)
    points = points_logic.new_points_node(scene, volume)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(points)) == study
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Automatic")
    _run_like_the_module(segmentation, volume, points, from_points=False, engine="offline", keep=tmp_path / "out")
    assert _labels(points)[-6:] == ["L1", "L2", "L3", "L4", "L5", "sacrum"]
    _assert_points_name_their_segments(points, segmentation, volume)
    written = read_points(tmp_path / "out" / "points.mrk.json")
    _assert_same_positions(points_logic.points_from_node(points), written)

    # the clinician keeps one name and segments again from the same points
    for index, label in enumerate(_labels(points)):
        if label != "L3":
            points.SetNthControlPointLabel(index, f"F-{index + 1}")
    again = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "From points")
    _run_like_the_module(again, volume, points, from_points=True)
    assert _names(again) == _names(segmentation)
    _assert_named_and_coded(again)
    _assert_points_name_their_segments(points, again, volume)


def test_rerunning_over_edited_segments_keeps_them_and_the_points(scene, sample_ct, sample_labels, tmp_path):
    volume, _, _ = _volume_in_a_study(scene, sample_ct)
    points = _clinicians_points(scene, _label_centroids_lps(sample_labels))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "From points")
    _run_like_the_module(segmentation, volume, points, from_points=True, keep=tmp_path / "out")
    l3_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("L3")
    labels, _ = _label_array(segmentation, volume)
    edited = labels == LEVEL_BY_NAME["l3"].verse_id
    edited[np.nonzero(edited)[0].max()] = False  # the clinician trims a slice off L3
    mrml_logic.set_segment_mask(segmentation, l3_id, edited, volume)
    points.SetNthControlPointLabel(0, "T11 checked")  # and edits a point
    placed = [points.GetNthControlPointLabel(i) for i in range(points.GetNumberOfControlPoints())]
    assert mrml_logic.has_unsaved_edits(segmentation, volume)

    with pytest.raises(mrml_logic.EditedSegmentsError, match="edited since they were written"):
        points_logic.import_run_result(segmentation, volume, points, tmp_path / "out")
    kept, _ = _label_array(segmentation, volume)
    assert np.array_equal(kept == LEVEL_BY_NAME["l3"].verse_id, edited)
    assert _labels(points) == placed  # the point list is left as it was too
    points_logic.import_run_result(segmentation, volume, points, tmp_path / "out", overwrite_edits=True)
    assert not mrml_logic.has_unsaved_edits(segmentation, volume)
    assert _labels(points) == SAMPLE_LEVELS


# -- "This segment is ..." ---------------------------------------------------------------------------------


@pytest.fixture
def written(scene, sample_ct, sample_labels):
    """The sample's level segments (T11..sacrum) as the module writes them."""
    volume, _, _ = _volume_in_a_study(scene, sample_ct)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Vertebrae")
    ct = load_ct(sample_ct)
    mrml_logic.write_level_segments(segmentation, volume, ExistingLabelMap(sample_labels).segment(ct), ct)
    return volume, segmentation


def test_this_segment_is_renames_by_counting_and_moves_no_voxel(written):
    volume, segmentation = written
    segments = segmentation.GetSegmentation()
    before = _segment_masks(segmentation, volume)
    names_before = {segment_id: segments.GetSegment(segment_id).GetName() for segment_id in before}
    l1 = segments.GetSegmentIdBySegmentName("L1")
    renamed = points_logic.rename_segment_as(segmentation, l1, "T12", volume)

    assert renamed == {"T11": "T10", "T12": "T11", "L1": "T12", "L2": "L1", "L3": "L2", "L4": "L3", "L5": "L4",
                       "sacrum": "L5"}  # the sacrum segment counts as the next vertebra
    assert _names(segmentation) == ["T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    _assert_named_and_coded(segmentation)
    assert segments.GetSegment(l1).GetName() == "T12"
    after = _segment_masks(segmentation, volume)
    for segment_id, (mask, layer, value) in before.items():
        assert np.array_equal(after[segment_id][0], mask), names_before[segment_id]
        assert after[segment_id][1:] == (layer, value)
    colour = np.array(segments.GetSegment(l1).GetColor()) * 255
    assert np.allclose(colour, LEVEL_BY_NAME["t12"].color_rgb)
    # a clinician's naming is an edit: a new run replaces it only with consent
    assert mrml_logic.has_unsaved_edits(segmentation, volume)


def test_this_segment_is_its_own_name_changes_nothing(written):
    volume, segmentation = written
    names = _names(segmentation)
    l2 = segmentation.GetSegmentation().GetSegmentIdBySegmentName("L2")
    assert points_logic.rename_segment_as(segmentation, l2, "L2", volume) == {}
    assert _names(segmentation) == names


@pytest.mark.parametrize("segment, level, message", [
    ("L1", "L9", "'L9' is not a vertebral level"),
    ("L1", "L2", "runs past the sacrum"),  # counted from L1 named L2, the sacrum segment has no level left
    ("", "L1", "select the segment to rename"),
])
def test_this_segment_is_refuses_what_it_cannot_name_and_changes_nothing(written, segment, level, message):
    volume, segmentation = written
    names = _names(segmentation)
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName(segment) if segment else ""
    with pytest.raises(InputError, match=message):
        points_logic.rename_segment_as(segmentation, segment_id, level, volume)
    assert _names(segmentation) == names


def test_this_segment_is_refuses_a_segment_without_a_level_name(written):
    volume, segmentation = written
    liver = segmentation.GetSegmentation().AddEmptySegment("liver", "liver")
    with pytest.raises(InputError, match="'liver' is not named after a level"):
        points_logic.rename_segment_as(segmentation, liver, "L1", volume)


def test_the_level_choices_run_cranial_to_caudal_with_the_transitional_levels_in_place():
    choices = points_logic.LEVEL_CHOICES
    assert choices[0] == "C1" and choices[-1] == "sacrum"
    assert choices.index("T12") < choices.index("T13") < choices.index("L1")
    assert choices.index("L5") < choices.index("L6") < choices.index("sacrum")


def test_this_segment_is_refuses_to_rename_a_sacrum_held_by_two_segments(written):
    """TotalSegmentator's 'sacrum' and 'vertebrae_S1' both name the sacrum: one new name cannot go to both."""
    volume, segmentation = written
    segmentation.GetSegmentation().AddEmptySegment("vertebrae_S1", "vertebrae_S1")
    names = _names(segmentation)
    l1 = segmentation.GetSegmentation().GetSegmentIdBySegmentName("L1")
    with pytest.raises(InputError, match="several segments name sacrum"):
        points_logic.rename_segment_as(segmentation, l1, "T12", volume)
    assert _names(segmentation) == names
