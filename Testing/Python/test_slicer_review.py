"""The defects of the Slicer module's review (issue 30) that the MRML layer and plain Python can show, on
the real MRML classes of ``slicer-core`` and with real processes: what is decided before a segmentation
child starts (transform, target segmentation, learned model), the child's process tree without psutil,
an import that fails with an unexpected exception, and the 3D surfaces of the written segments."""

import ast
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")
pytest.importorskip("slicer.util", reason="slicer-core is not installed")

from spinefrac.errors import InputError  # noqa: E402
from spinefrac.io.images import ct_from_image, to_canonical  # noqa: E402
from spinefrac.levels import LEVEL_BY_NAME  # noqa: E402
from spinefrac.segmentation.base import LabelConvention, VertebraSegmentation  # noqa: E402
from SpineFractureDetectionLib import mrml_logic, points_logic, run_start  # noqa: E402
from SpineFractureDetectionLib.child_process import (  # noqa: E402
    CANCELLED,
    SegmentationJob,
    process_tree_alive,
    stand_in_child_command,
)

from slicer_scene_fixtures import phantom, scene, volume  # noqa: E402,F401 - fixtures

LIB_DIR = Path(__file__).resolve().parents[2] / "SpineFractureDetection" / "SpineFractureDetectionLib"


def _mask(node, name, volume):
    """The voxels one segment holds, exported alone onto the CT's grid ([k, j, i])."""
    import vtk

    ids = vtk.vtkStringArray()
    ids.InsertNextValue(node.GetSegmentation().GetSegmentIdBySegmentName(name))
    labelmap = volume.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap, volume)
        return slicer.util.arrayFromVolume(labelmap) > 0
    finally:
        volume.GetScene().RemoveNode(labelmap)


def _written(scene, volume, phantom, name="Vertebrae"):
    ct = ct_from_image(phantom.ct, "phantom", "phantom")
    labels = VertebraSegmentation(to_canonical(phantom.labels), "phantom", "phantom", LabelConvention.VERSE)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    mrml_logic.write_level_segments(node, volume, labels, ct)
    return node


# -- 4: a CT under a transform is refused before the child starts --------------------------------


def test_a_ct_under_a_transform_is_refused_before_anything_is_exported(scene, volume):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Moved")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    with tempfile.TemporaryDirectory() as work:
        with pytest.raises(InputError, match="under a transform; harden"):
            run_start.check_ct_before_run(volume)
        with pytest.raises(InputError, match="under a transform; harden"):
            points_logic.child_command(sys.executable, volume, Path(work), "offline", "cpu")
        assert os.listdir(work) == []  # no CT was written for a child
    volume.SetAndObserveTransformNodeID(None)
    run_start.check_ct_before_run(volume)  # hardened (or removed): accepted


# -- 5: only this module's segmentations are replaced, never another tool's -----------------------


def test_another_tools_segmentation_is_left_whole_and_the_result_goes_into_a_new_one(scene, volume):
    organs = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    organs.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for name in ("liver", "spleen", "vertebrae_L1"):
        organs.GetSegmentation().AddEmptySegment(name, name)
    target = run_start.run_target(organs, volume)
    assert target.action == run_start.NEW
    assert "'TotalSegmentator' was not written by this module" in target.reason and "liver" in target.reason
    assert run_start.segment_names(organs) == ["liver", "spleen", "vertebrae_L1"]  # nothing was removed


def test_the_modules_own_segmentation_is_replaced_unedited_and_confirmed_with_its_segments_when_edited(
        scene, volume, phantom):
    assert run_start.run_target(None, volume).action == run_start.NEW
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Empty")
    assert run_start.run_target(empty, volume).action == run_start.WRITE
    written = _written(scene, volume, phantom)
    assert run_start.run_target(written, volume).action == run_start.WRITE
    segments = written.GetSegmentation()
    l3 = segments.GetSegmentIdBySegmentName("L3")
    mask = _mask(written, "L3", volume)
    mask[np.nonzero(mask)[0].max()] = False  # an edit: the top slice of L3 erased
    mrml_logic.set_segment_mask(written, l3, mask, volume)
    target = run_start.run_target(written, volume)
    assert target.action == run_start.CONFIRM
    names = run_start.segment_names(written)
    assert target.segment_names == names and all(name in target.question for name in names)


# -- 7: the Device setting decides which installed models count ------------------------------------


@pytest.mark.parametrize(("device", "installed_for", "expected"), [
    ("auto", {"cuda"}, True),  # only the GPU model downloaded: auto may take the GPU
    ("cuda", {"cuda"}, True),
    ("cpu", {"cuda"}, False),
    ("auto", set(), False),
    ("cpu", {"cpu"}, True),
])
def test_a_learned_model_may_run_for_any_device_the_setting_allows(device, installed_for, expected):
    asked = []

    def installed(name):
        asked.append(name)
        return ["model"] if name in installed_for else []

    assert run_start.learned_model_may_run("auto", device, False, installed) is expected
    assert set(asked) <= set(run_start.DEVICES_OF_SETTING[device])
    assert run_start.learned_model_may_run("auto", device, True, installed) is False  # points: guided engine
    assert run_start.learned_model_may_run("monai", device, False, installed) is True
    assert run_start.learned_model_may_run("offline", device, False, installed) is False


# -- 14: segments show in 3D -----------------------------------------------------------------------


def test_written_segments_have_closed_surfaces_for_the_3d_view(scene, volume, phantom):
    node = _written(scene, volume, phantom)
    surface_name = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    segments = node.GetSegmentation()
    assert segments.ContainsRepresentation(surface_name)
    l2 = segments.GetSegment(segments.GetSegmentIdBySegmentName("L2"))
    surface = l2.GetRepresentation(surface_name)
    assert surface is not None and surface.GetNumberOfPoints() > 100
    bounds = np.array(surface.GetBounds()).reshape(3, 2)  # RAS mm; L2 is a few cm wide, not the whole CT
    assert np.all(bounds[:, 1] - bounds[:, 0] > 10) and np.all(bounds[:, 1] - bounds[:, 0] < 150)
    truth = sitk.GetArrayFromImage(phantom.labels) == LEVEL_BY_NAME["l2"].verse_id
    assert np.array_equal(_mask(node, "L2", volume), truth)  # the labelmap stays the source of truth


# -- 6: an import that fails with any exception ends the job once ----------------------------------


class _Recorder:
    def __init__(self):
        self.finished, self.imports = [], 0

    def import_result(self, folder):
        self.imports += 1
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    def on_finished(self, error):
        self.finished.append(error)


def test_an_import_that_raises_an_unexpected_exception_ends_the_job_once():
    recorder = _Recorder()
    work = tempfile.TemporaryDirectory(prefix="spinefrac-test-")
    job = SegmentationJob([sys.executable, "-c", "pass"], None, work, recorder.import_result,
                          lambda fraction, message: None, recorder.on_finished)
    job.wait()
    for _ in range(3):
        assert not job.poll()  # the timer's next ticks: nothing imported again
    assert recorder.imports == 1
    assert recorder.finished == ["the result could not be imported: EOFError: Compressed file ended before "
                                 "the end-of-stream marker was reached"]
    assert not Path(work.name).exists()


# -- 2 and 13: the stand-in child and its tree, without psutil -------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="the process group is read with killpg (POSIX)")
def test_the_stand_in_child_runs_until_cancelled_and_its_whole_tree_is_gone_after():
    finished = []
    work = tempfile.TemporaryDirectory(prefix="spinefrac-test-")
    progress = []
    job = SegmentationJob(stand_in_child_command(sys.executable), None, work, lambda folder: None,
                          lambda fraction, message: progress.append(message), finished.append)
    deadline = time.monotonic() + 30
    while not progress:
        assert job.poll() and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(1.0)  # well past the margin the offline engine left: the stand-in is still running
    assert job.poll() and process_tree_alive(job.child.pid)
    job.cancel()
    assert finished == [CANCELLED] and not process_tree_alive(job.child.pid)


def test_psutil_is_imported_only_where_its_absence_is_handled():
    """Neither Slicer 5.10 nor 5.12 ships psutil: every import of it sits in a try that catches ImportError."""
    for path in sorted(LIB_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    handler.type is not None and "ImportError" in ast.unparse(handler.type)
                    for handler in node.handlers):
                guarded.update(id(inner) for statement in node.body for inner in ast.walk(statement))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(alias.name == "psutil" for alias in node.names):
                assert id(node) in guarded, f"{path.name}:{node.lineno} imports psutil unguarded"


# -- 1: highdicom never swaps the pydicom Slicer has loaded ----------------------------------------


def _versions(**installed):
    import importlib.metadata

    def version_of(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]
    return version_of


def _missing():
    raise ImportError("No module named 'highdicom'")


def test_on_slicer_5_10_highdicom_is_not_installed_over_its_pydicom_2():
    from SpineFractureDetectionLib.dependencies import highdicom_plan

    plan = highdicom_plan(_missing, _versions(pydicom="2.4.4", numpy="2.0.2"), {"pydicom": object()})
    assert not plan.ready and plan.install == []
    assert "pydicom 2.4.4" in plan.message and "5.12" in plan.message and "--dicom-series" in plan.message


def test_a_highdicom_that_no_longer_loads_asks_for_a_restart_and_installs_nothing():
    from SpineFractureDetectionLib.dependencies import highdicom_plan

    def broken():
        raise ImportError("cannot import name 'parse_basic_offsets' from 'pydicom.encaps'")

    plan = highdicom_plan(broken, _versions(pydicom="2.4.4", highdicom="0.28.2"), {"pydicom": object()})
    assert not plan.ready and plan.install == []
    assert "Restart Slicer" in plan.message and "parse_basic_offsets" in plan.message


def test_highdicom_is_installed_with_the_loaded_packages_pinned_where_pydicom_3_runs():
    from SpineFractureDetectionLib.dependencies import HIGHDICOM_REQUIREMENT, highdicom_plan

    loaded = {"pydicom": object(), "numpy": object()}
    plan = highdicom_plan(_missing, _versions(pydicom="3.0.1", numpy="2.2.6", scipy="1.15.0"), loaded)
    assert not plan.ready
    assert plan.install == [HIGHDICOM_REQUIREMENT, "numpy==2.2.6", "pydicom==3.0.1"]  # scipy is not loaded


def test_highdicom_that_imports_is_ready_here():
    pytest.importorskip("highdicom")
    from SpineFractureDetectionLib.dependencies import after_install, highdicom_plan

    plan = highdicom_plan()
    assert plan.ready
    after_install(plan)  # no restart asked for
