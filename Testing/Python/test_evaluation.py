"""Evaluation metrics against analytic values and independent computations, and folder evaluation."""

import csv
import io
import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.evaluation.cases import case_name, evaluate_folders
from spinefrac.evaluation.grading import LevelGrade, fracture_agreement
from spinefrac.evaluation.metrics import auc_mann_whitney, weighted_kappa
from spinefrac.evaluation.segmentation import IDENTIFICATION_RADIUS_MM, evaluate_segmentation
from spinefrac.evaluation.writers import format_table, to_csv, write_evaluation
from spinefrac.io.grades import read_gradings
from spinefrac.levels import LEVEL_BY_NAME
from spinefrac.pipeline import run_pipeline
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom

LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(levels=LEVELS, spacing_mm=(3.0, 3.0, 3.0), ribs=False, seed=3))


def _with_array(like: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(like)
    return image


def _relabelled(labels: sitk.Image, mapping: dict[int, int]) -> sitk.Image:
    lookup = np.arange(256, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return _with_array(labels, lookup[sitk.GetArrayFromImage(labels)])


def _ids(names) -> list[int]:
    return [LEVEL_BY_NAME[name.lower()].verse_id for name in names]


def _box_image(shape_kji, spacing_ijk, boxes: dict[int, tuple[slice, slice, slice]]) -> sitk.Image:
    array = np.zeros(shape_kji, dtype=np.uint8)
    for label, box in boxes.items():
        array[box] = label
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_ijk)
    return image


# -- segmentation and identification --------------------------------------------------------


def test_identical_maps_score_perfectly(phantom):
    case = evaluate_segmentation(phantom.labels, phantom.labels, "same")
    assert [score.level.name for score in case.levels] == list(LEVELS)
    assert all(score.dice == 1.0 and score.hd95_mm == 0.0 and score.localisation_mm == 0.0 for score in case.levels)
    assert case.identification_rate == 1.0
    assert case.mean_dice == 1.0
    assert case.missed_levels == [] and case.extra_levels == []


def test_labels_shifted_by_one_level_identify_nothing(phantom):
    ids = _ids(LEVELS)
    next_level = dict(zip(ids, ids[1:] + [LEVEL_BY_NAME["l6"].verse_id]))  # T12 carries L1's label, ...
    case = evaluate_segmentation(_relabelled(phantom.labels, next_level), phantom.labels, "shifted")
    assert case.identification_rate == 0.0
    assert case.missed_levels == ["T12"] and case.extra_levels == ["L6"]
    matched = case.matched_levels
    assert matched and all(score.dice == 0.0 for score in matched)
    # Each wrongly named level sits one vertebra away: more than the identification radius.
    assert all(score.localisation_mm > IDENTIFICATION_RADIUS_MM for score in matched)


def test_removed_level_is_missed_and_added_level_is_extra(phantom):
    array = sitk.GetArrayFromImage(phantom.labels)
    l3, l5 = LEVEL_BY_NAME["l3"].verse_id, LEVEL_BY_NAME["l5"].verse_id
    edited = array.copy()
    edited[edited == l3] = 0
    k, j, i = np.nonzero(array == l5)
    below = k.min() - 4  # a small blob under L5, labelled as a sixth lumbar vertebra
    edited[below - 2:below, j.min():j.min() + 3, i.min():i.min() + 3] = LEVEL_BY_NAME["l6"].verse_id
    case = evaluate_segmentation(_with_array(phantom.labels, edited), phantom.labels, "edited")
    assert case.missed_levels == ["L3"]
    assert case.extra_levels == ["L6"]
    assert case.identification_rate == pytest.approx((len(LEVELS) - 1) / len(LEVELS))
    by_name = {score.level.name: score for score in case.levels}
    assert by_name["L3"].dice == 0.0 and by_name["L3"].hd95_mm is None and not by_name["L3"].identified
    assert by_name["L6"].dice == 0.0 and not by_name["L6"].identified
    # Mean Dice counts both the missed and the extra level as 0.
    assert case.mean_dice == pytest.approx((len(LEVELS) - 1) / (len(LEVELS) + 1))


def test_dice_of_two_overlapping_boxes_is_analytic():
    side, shift = 10, 3
    reference = _box_image((30, 30, 30), (1.0, 1.0, 1.0), {20: (slice(5, 5 + side),) * 3})
    predicted = _box_image((30, 30, 30), (1.0, 1.0, 1.0),
                           {20: (slice(5, 5 + side), slice(5, 5 + side), slice(5 + shift, 5 + shift + side))})
    score = evaluate_segmentation(predicted, reference).levels[0]
    overlap = (side - shift) * side * side
    assert score.dice == pytest.approx(2 * overlap / (2 * side**3))
    assert score.localisation_mm == pytest.approx(shift * 1.0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_of_a_shifted_box_is_the_shift_in_mm(axis):
    spacing_ijk = (0.8, 1.0, 2.5)
    spacing_kji = spacing_ijk[::-1]
    shift = 2
    # A plate thin along the shift axis: its faces, which move by exactly the shift, hold far
    # more than 5 % of the surface, so the 95th percentile is the shift itself.
    extent = [slice(4, 24)] * 3
    extent[axis] = slice(10, 14)
    shifted = list(extent)
    shifted[axis] = slice(10 + shift, 14 + shift)
    reference = _box_image((28, 28, 28), spacing_ijk, {21: tuple(extent)})
    predicted = _box_image((28, 28, 28), spacing_ijk, {21: tuple(shifted)})
    score = evaluate_segmentation(predicted, reference).levels[0]
    assert score.hd95_mm == pytest.approx(shift * spacing_kji[axis])


def test_maps_in_different_axis_orders_on_one_grid_are_compared_voxel_for_voxel(phantom):
    case = evaluate_segmentation(sitk.DICOMOrient(phantom.labels, "PIR"), sitk.DICOMOrient(phantom.labels, "RAS"))
    assert case.mean_dice == 1.0 and case.identification_rate == 1.0


def test_different_grids_are_refused_in_one_line(phantom):
    moved = sitk.Image(phantom.labels)
    moved.SetOrigin([o + 5.0 for o in phantom.labels.GetOrigin()])
    with pytest.raises(InputError, match="not on the same voxel grid") as error:
        evaluate_segmentation(moved, phantom.labels, "moved")
    assert "\n" not in str(error.value) and "origin" in str(error.value)


def test_non_verse_ids_and_fractional_values_are_refused(phantom):
    array = sitk.GetArrayFromImage(phantom.labels)
    array[0, 0, 0] = 27
    with pytest.raises(InputError, match="not VerSe vertebra ids: 27"):
        evaluate_segmentation(_with_array(phantom.labels, array), phantom.labels)
    fractional = sitk.GetArrayFromImage(phantom.labels).astype(np.float64)
    fractional[0, 0, 0] = 20.5
    image = sitk.GetImageFromArray(fractional)
    image.CopyInformation(phantom.labels)
    with pytest.raises(InputError, match="non-integer"):
        evaluate_segmentation(phantom.labels, image)


# -- fracture metrics -----------------------------------------------------------------------


def test_kappa_is_one_for_identical_grades_and_none_when_undefined():
    grades = [0, 1, 2, 3, 0, 2]
    assert weighted_kappa(grades, grades, "linear") == pytest.approx(1.0)
    assert weighted_kappa(grades, grades, "quadratic") == pytest.approx(1.0)
    assert weighted_kappa([0, 0, 0], [0, 0, 0]) is None  # one category: chance agreement is total
    assert weighted_kappa([], []) is None


def test_kappa_matches_a_hand_computed_example():
    # Reference 0 1 2 3, prediction 0 2 2 3: one disagreement of one grade out of four.
    # Disagreement weights w = |i-j|/3 (linear) or ((i-j)/3)^2 (quadratic).
    # Observed weighted disagreement: 1/4 * 1/3 = 1/12 (linear), 1/4 * 1/9 = 1/36 (quadratic).
    # Expected: marginals 1/4 each (reference) and 1/4, 0, 2/4, 1/4 (prediction):
    #   linear    sum_ij r_i c_j |i-j|/3 = (6 + 0 + 2*4 + 6) / (16 * 3) = 5/12    -> kappa 1 - 1/5 = 0.8
    #   quadratic sum_ij r_i c_j (i-j)^2/9 = (14 + 0 + 2*6 + 14) / (16 * 9) = 5/18 -> kappa 1 - 1/10 = 0.9
    assert weighted_kappa([0, 1, 2, 3], [0, 2, 2, 3], "linear") == pytest.approx(4 / 5)
    assert weighted_kappa([0, 1, 2, 3], [0, 2, 2, 3], "quadratic") == pytest.approx(9 / 10)


def test_auc_separating_constant_reversed_and_tied_scores():
    truth = [False, False, True, True]
    assert auc_mann_whitney([0.1, 0.2, 0.8, 0.9], truth) == 1.0
    assert auc_mann_whitney([0.9, 0.8, 0.2, 0.1], truth) == 0.0
    assert auc_mann_whitney([0.5] * 4, truth) == 0.5
    assert auc_mann_whitney([0.1, 0.9], [False, False]) is None  # no positives: undefined


def test_auc_with_ties_equals_the_pairwise_definition():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=40) / 4.0  # few distinct values: many ties
    truth = rng.random(40) < 0.4
    pairs = list(itertools.product(scores[truth], scores[~truth]))
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auc_mann_whitney(scores, truth) == pytest.approx(expected)


def _grade(name, reference, predicted=None, probability=None):
    return LevelGrade(LEVEL_BY_NAME[name.lower()], reference, predicted, probability)


def test_fracture_agreement_per_level_and_per_patient():
    grades = {
        "a": [_grade("L1", 2, 2, 0.9), _grade("L2", 0, 1, 0.6), _grade("L3", 0, 0, 0.1)],
        "b": [_grade("L1", 0, 0, 0.2), _grade("L2", 0, 0, 0.3)],
        "c": [_grade("L1", 1, 0, 0.4), _grade("L4", 0)],  # L4: graded by the reference only
    }
    result = fracture_agreement(grades)
    level = result.per_level
    assert (level.true_positives, level.false_negatives, level.true_negatives, level.false_positives) == (1, 1, 3, 1)
    assert level.sensitivity == pytest.approx(1 / 2) and level.specificity == pytest.approx(3 / 4)
    # Fractured levels score 0.9 and 0.4; non-fractured 0.6, 0.1, 0.2, 0.3: 7 of 8 pairs ordered.
    assert level.auc == pytest.approx(7 / 8)
    patient = result.per_patient
    assert (patient.true_positives, patient.false_negatives) == (1, 1)  # a found, c missed
    assert (patient.true_negatives, patient.false_positives) == (1, 0)  # b
    assert result.reference_levels_without_prediction == 1
    assert result.graded_level_count == 6
    reference = [2, 0, 0, 0, 0, 1]
    predicted = [2, 1, 0, 0, 0, 0]
    assert result.kappa_linear == pytest.approx(weighted_kappa(reference, predicted, "linear"))
    assert result.exact_grade_agreement == pytest.approx(4 / 6)


def test_no_fractured_level_gives_no_sensitivity_rather_than_a_crash():
    result = fracture_agreement({"a": [_grade("L1", 0, 0, 0.2), _grade("L2", 0, 1, 0.7)]})
    assert result.per_level.sensitivity is None
    assert result.per_level.specificity == pytest.approx(1 / 2)
    assert result.per_level.auc is None
    assert fracture_agreement({"a": [_grade("L1", 2)]}) is None  # nothing predicted


def test_grade_files_csv_and_json(tmp_path):
    csv_path = tmp_path / "a_genant.csv"
    csv_path.write_text("level,genant_grade,fracture_probability,note\nL1,2,0.8,wedge\nvertebrae_T12,0,,\n")
    json_path = tmp_path / "b_genant.json"
    rows = [{"level": "L2", "genant_grade": 3}, {"verse_id": 22, "genant_grade": 0}]
    json_path.write_text(json.dumps({"levels": rows}))
    from_csv, from_json = read_gradings(csv_path), read_gradings(json_path)
    assert {k: (g.genant_grade, g.fracture_probability) for k, g in from_csv.items()} == {20: (2, 0.8), 19: (0, None)}
    assert {k: g.genant_grade for k, g in from_json.items()} == {21: 3, 22: 0}
    ungraded_report = tmp_path / "report.json"
    ungraded_report.write_text(json.dumps({"levels": [{"level": "L1", "verse_id": 20, "volume_mm3": 51000.0}]}))
    assert read_gradings(ungraded_report) == {}
    bad = tmp_path / "c_genant.csv"
    bad.write_text("level,genant_grade\nL1,4\n")
    with pytest.raises(InputError, match="row 1.*not 0, 1, 2 or 3"):
        read_gradings(bad)


def test_case_names_drop_extensions_and_label_suffixes(tmp_path):
    assert case_name(tmp_path / "sub-verse004_seg-vert_msk.nii.gz") == "sub-verse004"
    assert case_name(tmp_path / "patient7_vertebrae.nrrd") == "patient7"
    assert case_name(tmp_path / "patient7.nii") == "patient7"


# -- folders --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation_folders(tmp_path_factory, phantom):
    root = tmp_path_factory.mktemp("evaluation")
    prediction, reference = root / "pred", root / "ref"
    prediction.mkdir()
    reference.mkdir()
    ct_path, labels_path = root / "ct.nii.gz", root / "labels.nii.gz"
    sitk.WriteImage(phantom.ct, str(ct_path))
    sitk.WriteImage(phantom.labels, str(labels_path))

    # case_a: a real `spinefrac run` output folder, its report extended with grades.
    run_pipeline(ct_path, prediction / "case_a", segmentation_path=labels_path)
    report_path = prediction / "case_a" / "report.json"
    report = json.loads(report_path.read_text())
    predicted = {"L1": (2, 0.9), "L2": (1, 0.6)}
    for row in report["levels"]:
        row["genant_grade"], row["fracture_probability"] = predicted.get(row["level"], (0, 0.1))
    report_path.write_text(json.dumps(report))
    sitk.WriteImage(phantom.labels, str(reference / "case_a_seg-vert_msk.nii.gz"))
    (reference / "case_a_genant.csv").write_text("level,genant_grade\n" + "\n".join(
        f"{name},{2 if name == 'L1' else 0}" for name in LEVELS))

    # case_b: a label file with L3 removed, no predicted grades; reference grades as JSON.
    array = sitk.GetArrayFromImage(phantom.labels)
    sitk.WriteImage(_with_array(phantom.labels, np.where(array == LEVEL_BY_NAME["l3"].verse_id, 0, array)),
                    str(prediction / "case_b_vertebrae.nii.gz"))
    sitk.WriteImage(phantom.labels, str(reference / "case_b.nii.gz"))
    (reference / "case_b_genant.json").write_text(json.dumps([{"level": "L4", "genant_grade": 1}]))
    sitk.WriteImage(phantom.ct, str(reference / "case_b_ct.nii.gz"))  # a CT beside the labels is no case

    # Unmatched on both sides.
    sitk.WriteImage(phantom.labels, str(prediction / "case_c.nii.gz"))
    sitk.WriteImage(phantom.labels, str(reference / "case_d.nrrd"))
    return prediction, reference


def test_evaluate_folders_matches_run_folders_and_label_files(evaluation_folders):
    prediction, reference = evaluation_folders
    summary = evaluate_folders(prediction, reference)
    cases = {case.name: case for case in summary.cases}
    assert sorted(cases) == ["case_a", "case_b"]
    assert summary.unmatched_predictions == ["case_c"]
    assert summary.unmatched_references == ["case_d"]
    assert cases["case_a"].mean_dice == 1.0 and cases["case_a"].identification_rate == 1.0
    assert cases["case_b"].missed_levels == ["L3"]
    assert summary.identification_rate == pytest.approx((2 * len(LEVELS) - 1) / (2 * len(LEVELS)))

    fracture = summary.fracture
    assert fracture.per_level.count == len(LEVELS)  # case_a only: case_b has no predicted grades
    assert (fracture.per_level.true_positives, fracture.per_level.false_positives) == (1, 1)
    assert fracture.per_level.auc == 1.0  # the fractured L1 has the highest probability
    assert fracture.per_patient.count == 1 and fracture.per_patient.sensitivity == 1.0
    assert fracture.reference_levels_without_prediction == 1  # case_b L4


def test_evaluation_outputs_are_written_whole(evaluation_folders, tmp_path):
    summary = evaluate_folders(*evaluation_folders)
    paths = write_evaluation(summary, tmp_path / "eval")
    saved = json.loads(paths["json"].read_text())
    assert saved["schema"] == "spinefrac-evaluation"
    assert [case["case"] for case in saved["cases"]] == ["case_a", "case_b"]
    assert saved["unmatched_references"] == ["case_d"]
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert paths["csv"].read_text() == to_csv(summary)
    assert len(rows) == sum(len(case.levels) for case in summary.cases)
    missed = [row for row in rows if row["status"] == "missed"]
    assert [(row["case"], row["level"], row["dice"], row["hd95_mm"]) for row in missed] == [("case_b", "L3", "0.0", "")]
    assert sorted(p.name for p in paths["json"].parent.iterdir()) == ["evaluation.csv", "evaluation.json"]
    table = format_table(summary)
    assert "case_a" in table and "case_b" in table and "case_d" in table and "kappa" in table


def test_no_common_case_is_an_error(evaluation_folders, tmp_path):
    prediction, _ = evaluation_folders
    other = tmp_path / "other"
    other.mkdir()
    (other / "unrelated.nii.gz").write_bytes((prediction / "case_c.nii.gz").read_bytes())
    with pytest.raises(InputError, match="no case names in common"):
        evaluate_folders(prediction, other)


def test_reference_folder_in_verse_layout(evaluation_folders, tmp_path, phantom):
    prediction, _ = evaluation_folders
    subject = tmp_path / "derivatives" / "case_a"
    subject.mkdir(parents=True)
    sitk.WriteImage(phantom.labels, str(subject / "case_a_seg-vert_msk.nii.gz"))
    (subject / "case_a_genant.json").write_text(json.dumps([{"level": "L1", "genant_grade": 2}]))
    summary = evaluate_folders(prediction, tmp_path)
    assert [case.name for case in summary.cases] == ["case_a"]
    assert summary.unmatched_predictions == ["case_b", "case_c"]
    assert summary.fracture.per_level.count == 1 and summary.fracture.per_level.sensitivity == 1.0
