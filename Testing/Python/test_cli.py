"""The ``spinefrac run`` command end to end, as a user runs it (child process)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from spine_test_utils import run_cli, write_dicom_series

EXPECTED_LEVELS = ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, sample_ct, sample_labels):
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_cli("run", sample_ct, "--segmentation", sample_labels, "-o", out)
    assert result.returncode == 0, result.stderr
    return out, result


def _report(out):
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _comparable_rows(report):
    return [{k: v for k, v in row.items()} for row in report["levels"]]


def test_sample_run_writes_every_output(sample_run):
    out, result = sample_run
    assert sorted(p.name for p in out.iterdir()) == ["findings.txt", "gallery.png", "heights.mrk.json", "overview.png", "points.mrk.json",
                                                       "report.csv", "report.json", "vertebrae.nii.gz",
                                                       "vertebral_bodies.nii.gz"]
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[7/7] Writing outputs" in result.stderr  # progress on the terminal


def test_sample_run_writes_one_named_point_per_level_in_its_body(sample_run):
    """points.mrk.json: the start of guided segmentation; each level's point lies in that level's body."""
    from spinefrac.io.points import read_points

    out, _ = sample_run
    points = read_points(out / "points.mrk.json")
    levels = [row["level"] for row in _report(out)["levels"]]
    assert [p.level.name for p in points] == levels
    bodies = sitk.ReadImage(str(out / "vertebral_bodies.nii.gz"))
    labels = sitk.ReadImage(str(out / "vertebrae.nii.gz"))
    for point in points:
        index = labels.TransformPhysicalPointToIndex(point.position_lps_mm)
        assert labels[index] == point.level.verse_id, point
        if point.level.is_vertebra and point.level.name != "T11":  # T11: a sliver cut by the field of view
            assert bodies[index] == point.level.verse_id, point


def test_sample_report_levels_fov_and_sacrum(sample_run, sample_labels):
    out, _ = sample_run
    report = _report(out)
    rows = {row["level"]: row for row in report["levels"]}
    assert [row["level"] for row in report["levels"]] == EXPECTED_LEVELS
    assert rows["T11"]["fov_status"] == "cut" and "superior" in rows["T11"]["fov_border_faces"]
    assert all(rows[name]["fov_status"] == "inside" for name in ["L1", "L2", "L3", "L4", "L5", "sacrum"])
    assert rows["sacrum"]["kind"] == "sacrum" and "not graded" in rows["sacrum"]["note"]
    assert all(rows[name]["kind"] == "vertebra" for name in EXPECTED_LEVELS[:-1])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels)))
    for row in report["levels"]:
        counted_mm3 = np.count_nonzero(labels == row["verse_id"]) * 27.0  # 3 mm isotropic voxels
        assert abs(row["volume_mm3"] - counted_mm3) <= 0.01 * counted_mm3
    assert report["schema_version"] == "1.6.0"
    assert report["segmentation"]["level_identification"]["confidence"] is None  # levels as the file has them
    assert "volume_mm3" in report["definitions"] and "mean_hu" in report["definitions"]


def test_sample_csv_has_one_row_per_level(sample_run):
    out, _ = sample_run
    lines = (out / "report.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("level,verse_id,region,kind,snomed_ct_code,voxel_count,volume_mm3")
    assert [line.split(",")[0] for line in lines[1:]] == EXPECTED_LEVELS


def test_label_map_is_voxel_identical_after_the_round_trip(sample_run, sample_labels):
    out, _ = sample_run
    written, original = sitk.ReadImage(str(out / "vertebrae.nii.gz")), sitk.ReadImage(str(sample_labels))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original))
    assert written.GetOrigin() == original.GetOrigin()
    assert written.GetSpacing() == original.GetSpacing()
    assert written.GetDirection() == original.GetDirection()


def test_the_documented_command_on_shared_data(tmp_path, shared_data):
    example = shared_data / "ts-example"
    result = run_cli("run", example / "ct.nii.gz", "--segmentation", example / "vertebrae.nii.gz",
                     "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    assert [row["level"] for row in _report(tmp_path / "out")["levels"]] == EXPECTED_LEVELS


def _permuted_flipped(image):
    return sitk.Flip(sitk.PermuteAxes(image, [2, 0, 1]), [True, False, True])


@pytest.mark.parametrize("transform", ["LPS", "permuted+flipped"])
def test_reoriented_input_gives_the_same_report_and_physical_labels(tmp_path, sample_run, sample_ct, sample_labels,
                                                                    transform):
    reference_out, _ = sample_run
    change = (lambda image: sitk.DICOMOrient(image, "LPS")) if transform == "LPS" else _permuted_flipped
    ct_path, labels_path = tmp_path / "ct.nrrd", tmp_path / "labels.nrrd"
    sitk.WriteImage(change(sitk.ReadImage(str(sample_ct))), str(ct_path))
    sitk.WriteImage(change(sitk.ReadImage(str(sample_labels))), str(labels_path))
    result = run_cli("run", ct_path, "--segmentation", labels_path, "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr

    rows, reference_rows = _report(tmp_path / "out")["levels"], _report(reference_out)["levels"]
    assert len(rows) == len(reference_rows)
    for row, reference in zip(rows, reference_rows):
        for key, value in reference.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, abs=0.011), key
            elif key == "fov_border_faces":
                assert sorted(row[key]) == sorted(value)
            else:
                assert row[key] == value, key

    written = sitk.ReadImage(str(tmp_path / "out" / "vertebrae.nii.gz"))
    stored_as = sitk.ReadImage(str(labels_path))
    assert written.GetDirection() == pytest.approx(stored_as.GetDirection())
    assert written.GetOrigin() == pytest.approx(stored_as.GetOrigin())
    # Every label lands on the same physical point as in the original file.
    back = sitk.Resample(written, sitk.ReadImage(str(sample_labels)), sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels))))


def test_dicom_series_input_gets_its_labels_on_the_dicom_grid(tmp_path, lumbar_phantom):
    ras_ct = sitk.DICOMOrient(lumbar_phantom.ct, "RAI")  # a head-first supine-like slice order
    ras_labels = sitk.DICOMOrient(lumbar_phantom.labels, "RAI")
    write_dicom_series(ras_ct, tmp_path / "dicom", "CT", "1.2.3.9")
    sitk.WriteImage(ras_labels, str(tmp_path / "labels.nii.gz"))
    result = run_cli("run", tmp_path / "dicom", "--segmentation", tmp_path / "labels.nii.gz", "-o", tmp_path / "out",
                     "-q")
    assert result.returncode == 0, result.stderr
    written = sitk.ReadImage(str(tmp_path / "out" / "vertebrae.nii.gz"))
    reader = sitk.ImageSeriesReader()
    dicom = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom")))
    assert written.GetSize() == dicom.GetSize()
    assert np.allclose(written.GetOrigin(), dicom.GetOrigin()) and np.allclose(written.GetDirection(), dicom.GetDirection())
    # GDCM orders slices along the slice normal; each label must still sit on its physical point.
    expected = sitk.Resample(ras_labels, dicom, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected))
    assert np.count_nonzero(sitk.GetArrayFromImage(written)) == np.count_nonzero(sitk.GetArrayFromImage(ras_labels))
    assert _report(tmp_path / "out")["input"]["format"] == "DICOM series"


# -- bad input: one line, exit code 2, nothing left behind ------------------------------------


def _bad_inputs(tmp_path, sample_ct, sample_labels):
    two_d = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image([16, 16], sitk.sitkInt16), str(two_d))
    four_d = tmp_path / "4d.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8, 2], sitk.sitkInt16), str(four_d))
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n", encoding="utf-8")
    other_grid = tmp_path / "other_grid.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(sample_labels))[:, :, 5:], str(other_grid))
    empty = tmp_path / "empty.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(sample_labels)) * 0, str(empty))
    return {
        "missing CT": ([tmp_path / "missing.nii.gz", "--segmentation", sample_labels], "CT not found"),
        "2-D CT": ([two_d, "--segmentation", sample_labels], "2-D"),
        "4-D CT": ([four_d, "--segmentation", sample_labels], "4-D"),
        "non-image CT": ([text, "--segmentation", sample_labels], "not a readable image"),
        "missing label map": ([sample_ct, "--segmentation", tmp_path / "nope.nii.gz"], "segmentation not found"),
        "label map on another grid": ([sample_ct, "--segmentation", other_grid], "not on the CT's voxel grid"),
        "empty label map": ([sample_ct, "--segmentation", empty], "no vertebra labels"),
        "non-image label map": ([sample_ct, "--segmentation", text], "not a readable image"),
    }


@pytest.mark.parametrize("case", ["missing CT", "2-D CT", "4-D CT", "non-image CT", "missing label map",
                                  "label map on another grid", "empty label map", "non-image label map"])
def test_bad_input_ends_with_one_line_and_exit_code_2(tmp_path, sample_ct, sample_labels, case):
    arguments, message = _bad_inputs(tmp_path, sample_ct, sample_labels)[case]
    out_parent = tmp_path / "results"
    out_parent.mkdir()
    result = run_cli("run", *arguments, "-o", out_parent / "out")
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if not line.startswith(("[", "      "))]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("spinefrac: error: ") and message in error_lines[0]
    assert "Traceback" not in result.stderr
    assert list(out_parent.iterdir()) == []  # no output folder, no hidden partial folder


def test_existing_results_are_not_overwritten_without_consent(tmp_path, sample_ct, sample_labels):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me", encoding="utf-8")
    result = run_cli("run", sample_ct, "--segmentation", sample_labels, "-o", out, "-q")
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    result = run_cli("run", sample_ct, "--segmentation", sample_labels, "-o", out, "-q", "--overwrite")
    assert result.returncode == 0
    # --overwrite replaces this run's files only: a file the user saved there is never deleted
    assert (out / "mine.txt").read_text(encoding="utf-8") == "keep me" and (out / "report.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cuda_request_without_a_gpu_is_a_clear_error(tmp_path, sample_ct, sample_labels):
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    except ImportError:
        pass
    result = run_cli("run", sample_ct, "--segmentation", sample_labels, "-o", tmp_path / "out", "--device", "cuda")
    assert result.returncode == 2 and "--device cuda was requested" in result.stderr
    assert not (tmp_path / "out").exists()


def test_run_without_segmentation_uses_the_offline_engine_grades_clean_levels_and_withholds_density(
        tmp_path, sample_ct, monkeypatch):
    monkeypatch.setenv("SPINEFRAC_CACHE", str(tmp_path / "empty-cache"))  # no learned model installed
    result = run_cli("run", sample_ct, "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    report = _report(tmp_path / "out")
    assert report["segmentation"]["engine"] == "offline classical"
    assert report["segmentation"]["grading_needs_clean_qc"] is True
    assert report["segmentation"]["masks_fit_for_density"] is False
    assert "sacrum" in " ".join(report["segmentation"]["notes"])
    identification = report["segmentation"]["level_identification"]
    assert identification["anchors"][0] == "the sacrum upwards" and identification["confidence"] == "high"
    assert identification["summary"] in report["segmentation"]["notes"]
    rows = {row["level"]: row for row in report["levels"]}
    assert {"L1", "L2", "L3", "L4", "L5", "sacrum"} <= set(rows)
    # Levels QC passes without a warning are graded; a warned one would show its heights, grade withheld
    for name in ("L1", "L2", "L3", "L4", "L5"):
        row = rows[name]
        if row["qc_verdict"] == "pass":
            assert row["genant_grade"] is not None and row["decision"] in ("normal", "fractured")
        else:
            assert row["genant_grade"] is None and "estimated-border mask" in row["decision_reason"]
        assert row["height_anterior_mm"] > 15
    assert all(rows[name]["trabecular_hu"] is None for name in ("L1", "L2", "L3", "L4", "L5"))
    assert report["osteoporosis_screen"] is None  # threshold masks bias the density: withheld
    findings = (tmp_path / "out" / "findings.txt").read_text(encoding="utf-8")
    assert "not measured on bone-threshold masks" in findings
    graded = [name for name in ("L1", "L2", "L3", "L4", "L5") if rows[name]["genant_grade"] is not None]
    assert ("assessable level" in findings) if graded else ("not a normal result" in findings)


def test_help_explains_the_command():
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for word in ("--segmentation", "--device", "vertebrae.nii.gz", "report.json", "overview.png", "VerSe"):
        assert word in result.stdout


def test_evaluate_command_scores_a_run_folder_against_its_reference(tmp_path, sample_run, sample_labels):
    import shutil

    out, _ = sample_run
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    shutil.copytree(out, tmp_path / "pred" / "case1")
    shutil.copy(sample_labels, tmp_path / "ref" / "case1.nii.gz")
    shifted = sitk.ReadImage(str(sample_labels))
    array = sitk.GetArrayFromImage(shifted)
    array[array == 24] = 0  # the prediction misses L5
    missing = sitk.GetImageFromArray(array)
    missing.CopyInformation(shifted)
    sitk.WriteImage(missing, str(tmp_path / "pred" / "case2.nii.gz"))
    shutil.copy(sample_labels, tmp_path / "ref" / "case2.nii.gz")

    result = run_cli("evaluate", tmp_path / "pred", tmp_path / "ref", "-o", tmp_path / "scores")
    assert result.returncode == 0, result.stderr
    assert "case1" in result.stdout and "case2" in result.stdout
    scores = json.loads((tmp_path / "scores" / "evaluation.json").read_text(encoding="utf-8"))
    cases = {case["case"]: case for case in scores["cases"]}
    assert cases["case1"]["identification_rate"] == 1.0 and cases["case1"]["mean_dice"] == 1.0
    assert cases["case2"]["missed_levels"] == ["L5"]
    assert scores["summary"]["missed_level_count"] == 1


# -- exit codes: 2 for what the user or the machine can fix, 1 only for a bug (with what to report) ---------

_PATCHED_CHILD = """
import builtins, errno, sys
{patch}
from spinefrac.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_patched(patch: str, *args):
    """The command in a child process with one call made to fail as the system (or a bug) would."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    core = str(Path(__file__).resolve().parents[2] / "SpineFractureDetection")
    return subprocess.run([sys.executable, "-c", _PATCHED_CHILD.format(patch=patch), *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=core))


def test_an_unreadable_ct_is_one_line_exit_2(tmp_path, sample_ct, sample_labels):
    """No read permission (simulated at open(): root reads everything here): was 'internal error', exit 1."""
    patch = f"""
real_open = builtins.open
def refusing_open(file, *args, **kwargs):
    if str(file) == {str(sample_ct)!r}:
        raise PermissionError(errno.EACCES, "Permission denied", str(file))
    return real_open(file, *args, **kwargs)
builtins.open = refusing_open
"""
    result = _run_patched(patch, "run", sample_ct, "--segmentation", sample_labels, "-o", tmp_path / "out", "-q")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"spinefrac: error: CT {sample_ct} cannot be read (Permission denied)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("raised, expected", [
    ("MemoryError()", "spinefrac: error: out of memory; no output was written: crop the CT"),
    ("PermissionError(errno.EACCES, 'Permission denied', '/home/user/.cache/spinefrac')",
     "spinefrac: error: the system refused /home/user/.cache/spinefrac (Permission denied)"),
])
def test_what_the_machine_refuses_is_exit_2_not_a_bug(tmp_path, sample_ct, sample_labels, raised, expected):
    patch = f"""
import spinefrac.pipeline
def failing(*args, **kwargs):
    raise {raised}
spinefrac.pipeline.assess = failing
"""
    result = _run_patched(patch, "run", sample_ct, "--segmentation", sample_labels, "-o", tmp_path / "out", "-q")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(expected) and len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_bug_is_exit_1_with_what_to_report(tmp_path, sample_ct, sample_labels):
    patch = """
import spinefrac.pipeline
def buggy(*args, **kwargs):
    return None.level
spinefrac.pipeline.assess = buggy
"""
    result = _run_patched(patch, "run", sample_ct, "--segmentation", sample_labels, "-o", tmp_path / "out", "-q")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("spinefrac: internal error (AttributeError:")
    assert "This is a bug in spinefrac" in result.stderr and "--debug and report the command" in result.stderr
    assert not (tmp_path / "out").exists()
