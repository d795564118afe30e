"""DICOM SEG and SR of a run: read back with highdicom/pydicom against the label map and report.json,
and checked with dciodvfy (Debian dicom3tools) when it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_ct_writer import write_ct_series

from spinefrac.errors import InputError
from spinefrac.io.dicom_series import on_series_grid, read_source_series
from spinefrac.io.images import load_ct
from spinefrac.levels import LEVEL_BY_NAME
from spinefrac.pipeline import run_pipeline
from spinefrac.reporting.dicom_export import plan_dicom_export
from spinefrac.reporting.dicom_seg import build_segmentation
from spinefrac.reporting.dicom_sr import PRIVATE_MEASUREMENTS, PRIVATE_SCHEME, TRABECULAR_KEY

from spine_test_utils import run_cli

hd = pytest.importorskip("highdicom", reason="highdicom is not installed (pip install 'spinefrac[dicom]')")


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory, lumbar_phantom):
    """The fractured lumbar phantom written as a DICOM CT series (slices stored head to feet, x to the
    patient's right: not the pipeline's own axis order), run with its exact labels."""
    folder = tmp_path_factory.mktemp("dicom-run")
    write_ct_series(sitk.DICOMOrient(lumbar_phantom.ct, "RAI"), folder / "dicom")
    sitk.WriteImage(lumbar_phantom.labels, str(folder / "labels.nii.gz"))
    result = run_pipeline(folder / "dicom", folder / "out", segmentation_path=folder / "labels.nii.gz")
    return folder, result


def _report(folder):
    return json.loads((folder / "out" / "report.json").read_text())


def test_a_dicom_run_writes_seg_sr_and_findings(dicom_run):
    folder, result = dicom_run
    for key in ("dicom_seg", "dicom_sr", "findings_txt"):
        assert result.files[key].is_file(), key
    export = _report(folder)["dicom_export"]
    assert export["written"] is True
    assert export["source_series_instance_uid"] == read_source_series(folder / "dicom").series_uid


def test_seg_segments_equal_the_label_map_voxel_for_voxel_on_the_source_slices(dicom_run):
    folder, result = dicom_run
    seg = hd.seg.segread(result.files["dicom_seg"])
    series = read_source_series(folder / "dicom")
    source_uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    numbers = seg.get_segment_numbers()
    stacked = seg.get_pixels_by_source_instance(source_uids, segment_numbers=numbers, combine_segments=True)
    verse_of_segment = np.zeros(max(numbers) + 1, dtype=np.uint8)
    for number in numbers:
        description = seg.get_segment_description(number)
        level = LEVEL_BY_NAME[description.segment_label.lower()]
        assert description.segmented_property_type.value == level.snomed_code
        assert description.segmented_property_type.scheme_designator == "SCT"
        verse_of_segment[number] = level.verse_id
    written = sitk.ReadImage(str(result.files["label_map"]))  # on the series' grid, as GDCM reads it
    assert np.array_equal(verse_of_segment[stacked], sitk.GetArrayFromImage(written))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == series.datasets[0].StudyInstanceUID


def test_sr_values_equal_report_json_and_point_at_the_seg_segments(dicom_run):
    folder, result = dicom_run
    rows = {row["level"]: row for row in _report(folder)["levels"]}
    seg = hd.seg.segread(result.files["dicom_seg"])
    segment_of_level = {seg.get_segment_description(n).segment_label: n for n in seg.get_segment_numbers()}
    sr = hd.sr.srread(result.files["dicom_sr"])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(rows)
    private_key = {code: key for key, (code, *_rest) in PRIVATE_MEASUREMENTS.items()}
    for group in groups:
        level = group.tracking_identifier.removesuffix(" vertebra")
        row = rows[level]
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert list(reference.referenced_segment_numbers) == [segment_of_level[level]]
        assert reference.source_series_for_segmentation.value == seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        assert group.finding_sites[0].value.value == LEVEL_BY_NAME[level.lower()].snomed_code
        found = {}
        for measurement in group.get_measurements():
            key = private_key.get(measurement.name.value) if measurement.name.scheme_designator == PRIVATE_SCHEME \
                else TRABECULAR_KEY
            found[key] = measurement.value
        expected = {key: row[key] for key in (*PRIVATE_MEASUREMENTS, TRABECULAR_KEY) if row[key] is not None}
        assert found == pytest.approx(expected), level
        evaluations = {e.name.meaning: e.value.value for e in group.get_qualitative_evaluations()}
        assert evaluations["Vertebral fracture assessment"] == row["decision"]
        if row["genant_type"] is not None:
            assert evaluations["Genant fracture type"] == row["genant_type"]


def test_the_fractured_phantom_level_is_graded_in_the_sr(dicom_run):
    folder, _ = dicom_run
    fractured = [row for row in _report(folder)["levels"] if row["decision"] == "fractured"]
    assert [row["level"] for row in fractured] == ["L2"]  # the phantom's only fracture
    assert fractured[0]["genant_grade"] >= 1


def _dciodvfy(path) -> tuple[list[str], list[str]]:
    completed = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (completed.stdout + completed.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian package dicom3tools; .ci/run installs it where apt works)")
@pytest.mark.parametrize("key", ["dicom_seg", "dicom_sr"])
def test_dciodvfy_finds_no_error(dicom_run, key):
    _, result = dicom_run
    errors, warnings = _dciodvfy(result.files[key])
    assert errors == [], errors
    # The only warning allowed: dicom3tools does not know our private coding scheme (99SPINEFRAC).
    assert all(re.search(PRIVATE_SCHEME, line) for line in warnings), warnings


def test_a_nifti_input_without_its_series_gets_findings_and_a_one_line_note(tmp_path, lumbar_phantom):
    sitk.WriteImage(lumbar_phantom.ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(lumbar_phantom.labels, str(tmp_path / "labels.nii.gz"))
    result = run_cli("run", tmp_path / "ct.nii.gz", "--segmentation", tmp_path / "labels.nii.gz", "-o",
                     tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("spinefrac: note:")]
    assert len(notes) == 1 and "--dicom-series" in notes[0] and "source DICOM series" in notes[0]
    assert (tmp_path / "out" / "findings.txt").is_file()
    assert not list((tmp_path / "out").glob("*.dcm"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dicom_export"]["written"] is False
    assert report["findings_text"] == (tmp_path / "out" / "findings.txt").read_text()


def test_dicom_series_option_gives_a_nifti_input_its_dicom_objects(tmp_path, lumbar_phantom):
    write_ct_series(lumbar_phantom.ct, tmp_path / "dicom")
    sitk.WriteImage(sitk.DICOMOrient(lumbar_phantom.ct, "RAS"), str(tmp_path / "ct.nii.gz"))  # same voxels, RAS
    sitk.WriteImage(lumbar_phantom.labels, str(tmp_path / "labels.nii.gz"))
    result = run_pipeline(tmp_path / "ct.nii.gz", tmp_path / "out", segmentation_path=tmp_path / "labels.nii.gz",
                          dicom_series=tmp_path / "dicom")
    seg = hd.seg.segread(result.files["dicom_seg"])
    series = read_source_series(tmp_path / "dicom")
    stacked = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in series.datasets],
                                                combine_segments=True)
    assert np.count_nonzero(stacked) == np.count_nonzero(sitk.GetArrayViewFromImage(lumbar_phantom.labels))


def test_a_named_series_on_another_grid_is_refused_in_one_line(tmp_path, lumbar_phantom):
    write_ct_series(lumbar_phantom.ct[:, :, 2:], tmp_path / "dicom")  # two slices fewer
    sitk.WriteImage(lumbar_phantom.ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(lumbar_phantom.labels, str(tmp_path / "labels.nii.gz"))
    result = run_cli("run", tmp_path / "ct.nii.gz", "--segmentation", tmp_path / "labels.nii.gz", "-o",
                     tmp_path / "out", "--dicom-series", tmp_path / "dicom", "-q")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("spinefrac: error: --dicom-series")
    assert "not on the CT's grid" in result.stderr and not (tmp_path / "out").exists()


def test_a_negative_spacing_between_slices_in_the_source_is_not_copied_into_the_seg(tmp_path, lumbar_phantom):
    """The popi chest series (Philips) carries SpacingBetweenSlices -2.0, which dciodvfy calls an error."""
    write_ct_series(lumbar_phantom.ct, tmp_path / "dicom", spacing_between_slices="-2.0")
    series = read_source_series(tmp_path / "dicom")
    labels = on_series_grid(lumbar_phantom.labels, series, "test series")
    seg, _ = build_segmentation(series, labels, {"engine": "existing segmentation"})
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(series.grid.spacing_mm[2])
    assert float(series.datasets[0].SpacingBetweenSlices) == -2.0  # the source headers are left as read


def test_a_series_without_uids_is_read_but_gets_no_dicom_objects(shared_data):
    """The ts-example slab was anonymised down to empty UIDs: nothing could point back to it."""
    folder = shared_data / "ts-example" / "dicom"
    ct = load_ct(folder)
    plan = plan_dicom_export(ct)
    assert plan.series is None and "SOPInstanceUID" in plan.reason and "SeriesInstanceUID" in plan.reason
    with pytest.raises(InputError, match="lacks"):
        plan_dicom_export(ct, folder)
