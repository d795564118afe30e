"""The Slicer module's findings and DICOM export from the scene, on the real MRML classes of slicer-core."""

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")
pytest.importorskip("slicer.util", reason="slicer-core is not installed")
hd = pytest.importorskip("highdicom", reason="highdicom is not installed (pip install 'spinefrac[dicom]')")

from dicom_ct_writer import write_ct_series

from spinefrac.errors import InputError
from spinefrac.io.dicom_series import read_source_series
from spinefrac.io.images import load_ct
from spinefrac.levels import LEVEL_BY_NAME
from spinefrac.segmentation.label_maps import ExistingLabelMap
from SpineFractureDetectionLib import dicom_scene, mrml_logic


@pytest.fixture
def classified(tmp_path, lumbar_phantom):
    """The fractured phantom as a DICOM series loaded into a scene, its levels written as segments, classified."""
    write_ct_series(sitk.DICOMOrient(lumbar_phantom.ct, "RAI"), tmp_path / "dicom")
    ct = load_ct(tmp_path / "dicom")
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "dicom"))
    mrml_logic.update_volume_from_sitk(volume, sitk.ReadImage(files))  # as the DICOM module loads it
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Vertebrae")
    sitk.WriteImage(lumbar_phantom.labels, str(tmp_path / "labels.nii.gz"))
    mrml_logic.write_level_segments(segmentation, volume, ExistingLabelMap(tmp_path / "labels.nii.gz").segment(ct), ct)
    report = mrml_logic.SpineMrmlLogic().classify(volume, segmentation, None)
    yield tmp_path, volume, segmentation, report
    scene.Clear(True)  # the scene lives as long as the test uses its nodes


def _trim(volume, segmentation, level):
    """Erase the first slice of a level's segment, on the volume's grid, as an edit in Segment Editor would."""
    ct = mrml_logic.ct_from_volume(volume)
    labels = sitk.GetArrayFromImage(ct.to_source_grid(mrml_logic.segmentation_from_node(segmentation, volume, ct)
                                                       .label_map))
    mask = labels == LEVEL_BY_NAME[level.lower()].verse_id
    mask[np.nonzero(mask)[0].min()] = False
    mrml_logic.set_segment_mask(segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName(level), mask,
                                volume)


def test_findings_know_the_segments_were_not_edited_then_that_they_were(classified):
    _, volume, segmentation, report = classified
    dicom_scene.record_masks_corrected(report, segmentation, volume)
    assert "Masks: segments of the scene" in report.findings_text()
    assert "not corrected by a clinician" in report.findings_text()
    _trim(volume, segmentation, "L3")  # a clinician trims one slice of L3
    dicom_scene.record_masks_corrected(report, segmentation, volume)
    assert "corrected by a clinician before grading" in report.findings_text()


def test_the_scene_exports_the_same_seg_and_sr_as_a_run(classified):
    folder, volume, segmentation, report = classified
    (folder / "export").mkdir()
    sha = mrml_logic.labels_checksum(segmentation, volume)
    export = dicom_scene.export_from_scene(report, volume, segmentation, folder / "dicom", folder / "export", sha)
    seg = hd.seg.segread(folder / "export" / export["segmentation_file"])
    series = read_source_series(folder / "dicom")
    stacked = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in series.datasets],
                                                combine_segments=True)
    ct = mrml_logic.ct_from_volume(volume)
    labels = mrml_logic.segmentation_from_node(segmentation, volume, ct)
    assert np.count_nonzero(stacked) == np.count_nonzero(labels.array())
    sr = hd.sr.srread(folder / "export" / export["structured_report_file"])
    decisions = {g.tracking_identifier.removesuffix(" vertebra"): {e.name.meaning: e.value.value
                                                                   for e in g.get_qualitative_evaluations()}
                 for g in sr.content.get_volumetric_roi_measurement_groups()}
    assert {level: d["Vertebral fracture assessment"] for level, d in decisions.items()} == \
        {row["level"]: row["decision"] for row in report.rows}
    assert sorted(p.name for p in (folder / "export").iterdir()) == sorted(
        [export["segmentation_file"], export["structured_report_file"]])


def test_segments_edited_after_classify_are_not_exported_with_the_old_report(classified):
    folder, volume, segmentation, report = classified
    sha = mrml_logic.labels_checksum(segmentation, volume)
    _trim(volume, segmentation, "L2")
    (folder / "export").mkdir()
    with pytest.raises(InputError, match="classify again"):
        dicom_scene.export_from_scene(report, volume, segmentation, folder / "dicom", folder / "export", sha)
    assert list((folder / "export").iterdir()) == []
