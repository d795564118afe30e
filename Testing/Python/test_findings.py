"""The findings text (findings.txt, report.json findings_text): what a radiologist reads."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from spinefrac.assessment.fracture import L1_OSTEOPENIA_HU, L1_OSTEOPOROSIS_HU
from spinefrac.pipeline import run_pipeline
from spinefrac.reporting.findings import GRADE_WORDS, MASKS_CORRECTED_KEY, findings_lines, height_loss_phrase
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom


def _run(tmp_path, phantom) -> dict:
    sitk.WriteImage(phantom.ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(phantom.labels, str(tmp_path / "labels.nii.gz"))
    run_pipeline(tmp_path / "ct.nii.gz", tmp_path / "out", segmentation_path=tmp_path / "labels.nii.gz")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["findings_text"] == (tmp_path / "out" / "findings.txt").read_text()
    return report


@pytest.fixture(scope="module")
def fractured_report(tmp_path_factory, lumbar_phantom) -> dict:
    return _run(tmp_path_factory.mktemp("fractured"), lumbar_phantom)


@pytest.fixture(scope="module")
def normal_report(tmp_path_factory) -> dict:
    phantom = make_phantom(PhantomSpec(levels=("T12", "L1", "L2", "L3"), spacing_mm=(2.0, 2.0, 2.0), ribs=False, seed=2))
    return _run(tmp_path_factory.mktemp("normal"), phantom)


def test_a_fractured_level_gets_its_sentence_with_grade_in_words_and_number(fractured_report):
    text = fractured_report["findings_text"]
    fractured = [row for row in fractured_report["levels"] if row["decision"] == "fractured"]
    assert [row["level"] for row in fractured] == ["L2"]  # the phantom's wedge fracture
    row = fractured[0]
    sentence = next(line for line in text.splitlines() if line.startswith(f"- {row['level']}:"))
    grade = row["genant_grade"]
    assert f"{GRADE_WORDS[grade]} (Genant grade {grade}) {row['genant_type']} fracture" in sentence
    # a wedge's anterior height against its expected value from the neighbours, else against its own posterior height
    reference_mm = row.get("height_anterior_expected_mm") or row["height_posterior_mm"]
    assert f"{row['height_anterior_mm']:.1f} mm against {reference_mm:.1f} mm" in sentence
    assert f"{row['height_loss_percent']:.0f} % height loss" in sentence
    impression = text.splitlines()[-1]
    assert impression.startswith("Impression: 1 vertebral fracture: L2") and f"(Genant {grade})" in impression


def test_a_study_without_fracture_says_so_in_plain_words(normal_report):
    lines = normal_report["findings_text"].splitlines()
    assessed = [row for row in normal_report["levels"] if row["decision"] == "normal"]
    assert assessed and not any(row["decision"] == "fractured" for row in normal_report["levels"])
    assert any(line.startswith("Vertebral fractures: none. No vertebral fracture was found") for line in lines)
    assert lines[-1].startswith(f"Impression: No vertebral fracture in the {len(assessed)} assessable levels")


def test_density_screen_cites_the_thresholds(normal_report):
    line = next(line for line in findings_lines(normal_report) if line.startswith("Osteoporosis screen:"))
    screen = normal_report["osteoporosis_screen"]
    assert f"L1 trabecular attenuation {screen['trabecular_hu']:.0f} HU: {screen['category']}" in line
    assert f"<= {L1_OSTEOPOROSIS_HU:.0f} HU" in line and f"<= {L1_OSTEOPENIA_HU:.0f} HU" in line and "Pickhardt" in line


def test_without_l1_the_screen_says_why(normal_report):
    report = {**normal_report, "osteoporosis_screen": None,
              "levels": [row for row in normal_report["levels"] if row["level"] != "L1"]}
    assert "Osteoporosis screen: not done: L1 is not in view." in findings_lines(report)


def test_not_assessable_levels_are_listed_with_their_reason(fractured_report):
    line = next(line for line in findings_lines(fractured_report) if line.startswith("Not assessable:"))
    grey = [row for row in fractured_report["levels"] if row["decision"] == "not_assessable"]
    assert grey and all(row["level"] in line for row in grey)
    assert "sacrum (not graded)" in line


@pytest.mark.parametrize(("corrected", "engine", "expected"), [
    (True, "segments of the scene", "corrected by a clinician before grading"),
    (False, "offline classical", "not corrected by a clinician"),
    (None, "offline classical", "offline classical; as the engine made them, not corrected"),
    (None, "existing segmentation", "whether a clinician corrected them is not recorded"),
])
def test_the_masks_line_says_who_made_them_and_whether_they_were_corrected(normal_report, corrected, engine,
                                                                           expected):
    segmentation = {**normal_report["segmentation"], "engine": engine}
    if corrected is not None:
        segmentation[MASKS_CORRECTED_KEY] = corrected
    line = next(line for line in findings_lines({**normal_report, "segmentation": segmentation})
                if line.startswith("Masks:"))
    assert expected in line and engine in line


def test_a_newer_expected_height_field_is_used_when_a_report_has_it():
    row = {"genant_type": "wedge", "height_anterior_mm": 18.0, "height_posterior_mm": 26.0,
           "height_loss_percent": 31.0}
    assert "18.0 mm against 26.0 mm (the posterior height of the same body)" in height_loss_phrase(row)
    row["height_anterior_expected_mm"] = 27.5
    assert "18.0 mm against 27.5 mm (expected from the neighbouring levels)" in height_loss_phrase(row)
    crush = {"genant_type": "crush", "height_posterior_mm": 15.0, "height_posterior_expected_mm": 25.0,
             "height_loss_percent": 40.0}
    assert height_loss_phrase(crush).startswith("posterior height 15.0 mm against 25.0 mm (expected")


def test_a_study_with_no_gradable_level_is_not_called_normal(normal_report):
    grey = [{**row, "decision": "not_assessable", "genant_grade": None, "decision_reason": "too coarse"}
            for row in normal_report["levels"]]
    lines = findings_lines({**normal_report, "levels": grey, "osteoporosis_screen": None})
    assert "Vertebral fractures: not assessed: no level could be graded (the reasons are listed below)." in lines
    assert lines[-1] == "Impression: No level could be graded for fracture (reasons above): not a normal result."
    assert not any("none." in line or "No vertebral fracture" in line for line in lines)
