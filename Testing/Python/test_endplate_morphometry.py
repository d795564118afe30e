"""Heights a radiologist would measure, on real data: the endplate frame, heights from the CT's
endplate edges (robust to a mask a voxel off), grades against undeformed neighbours with
physiological wedging allowed, and simulated fractures on a real CT.

The larger runs of the same code are benchmarks/morphometry_real_data.py and
benchmarks/simulated_fractures_real_ct.py."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.assessment.chain import assess
from spinefrac.assessment.expected_heights import LevelHeights, expected_heights, physiological_wedge_deg
from spinefrac.assessment.fracture import Decision
from spinefrac.io.images import load_ct
from spinefrac.levels import level_for_name
from spinefrac.segmentation.label_maps import ExistingLabelMap
from spinefrac.synthetic.fracture_simulation import SimulatedFracture, simulate_fracture
from spinefrac.synthetic.mask_ct import each_label_morphed
from spinefrac.synthetic.real_data_cases import (
    case_row,
    fractured_copy,
    segmentation_of,
    verse_mask_case,
)

LUMBAR = ("L1", "L2", "L3", "L4", "L5")


@pytest.fixture(scope="module")
def sample(sample_ct, sample_labels):
    ct = load_ct(sample_ct)
    segmentation = ExistingLabelMap(sample_labels).segment(ct)
    return ct, segmentation, assess(ct, segmentation)


def _heights(assessment) -> dict[str, np.ndarray]:
    return {f.level.name: np.array([f.height_anterior_mm, f.height_middle_mm, f.height_posterior_mm])
            for f in assessment.findings.findings if f.genant_grade is not None}


def test_sample_reference_masks_no_level_fractured_l5_included(sample):
    _, _, assessment = sample
    findings = assessment.findings.by_name()
    for name in LUMBAR:
        f = findings[name]
        assert f.decision is Decision.NORMAL and f.genant_grade == 0, (name, f.reason)
        assert 20 < min(f.height_anterior_mm, f.height_middle_mm, f.height_posterior_mm) < 40, name
    # L5 over the sacrum: anterior taller than posterior (the lumbosacral reverse wedge), not a wedge
    assert findings["L5"].height_anterior_mm > findings["L5"].height_posterior_mm
    assert findings["L5"].wedge_reduction == 0.0


def test_frame_comes_from_the_endplates_not_from_the_neighbours(sample):
    """L5 sits tilted over the sacrum: its axis is its endplates' mean normal, which stands well
    off the line joining L4 and the sacrum; the heights are measured along it."""
    _, _, assessment = sample
    morphometry = assessment.morphometry.by_name()
    l4, l5 = morphometry["L4"], morphometry["L5"]
    for m in (l4, l5):
        assert m.heights.ct_edge_fraction >= 0.8, m.level.name  # endplates found on the CT
        assert not m.problems, m.problems
    joining = l4.frame.centre_lps_mm - l5.frame.centre_lps_mm
    joining /= np.linalg.norm(joining)
    assert np.degrees(np.arccos(l5.frame.superior @ joining)) > 5.0


def test_heights_follow_the_ct_when_the_mask_is_a_voxel_too_large_or_small(shared_data):
    """sub-verse010 (1 mm voxels): each label dilated or eroded by one voxel (the mask's height
    changes by 2 mm) changes the middle heights of the normal levels by under 1 mm and their
    anterior/posterior heights by under 2.5 mm: those points sit at 85 % of the semi-depth of the
    mask, so they move with it (0.85 mm) onto the rounded rim, where the endplate curves towards
    the disc. The fractured L1's corners are broken and move more (up to 5 mm at its posterior
    corner, benchmarks/morphometry_real_data.py); what must not change there is its grade."""
    ct, segmentation = verse_mask_case(shared_data / "verse-masks" / "sub-verse010_seg-vert_msk.nii.gz")
    reference = assess(ct, segmentation)
    ref_heights = _heights(reference)
    ref_grades = {f.level.name: f.genant_grade for f in reference.findings.findings}
    for operation in (sitk.BinaryDilate, sitk.BinaryErode):
        edited = each_label_morphed(segmentation.label_map, operation)
        assessment = assess(ct, segmentation_of(edited, operation.__name__))
        for name, heights in _heights(assessment).items():
            if ref_grades[name] != 0:
                continue
            difference = np.abs(heights - ref_heights[name])
            assert difference[1] < 1.0, (operation.__name__, name, difference)
            assert max(difference[0], difference[2]) < 2.5, (operation.__name__, name, difference)
        grades = {f.level.name: f.genant_grade for f in assessment.findings.findings}
        graded_in_both = [n for n in ref_grades if ref_grades[n] is not None and grades[n] is not None]
        assert len(graded_in_both) >= 4  # (dilated, L5 reaches the image's lower border: not assessable)
        assert all(grades[n] == ref_grades[n] for n in graded_in_both), (grades, ref_grades)


@pytest.fixture(scope="module")
def verse_graded(shared_data):
    """(truth rows, {(subject, level): finding}) for the VerSe masks with published grades."""
    folder = shared_data / "verse-masks"
    with open(folder / "fracture_grades.csv", newline="", encoding="utf-8") as handle:
        truth = [(row["subject"], row["level"], int(row["genant_grade"])) for row in csv.DictReader(handle)]
    found = {}
    for subject in sorted({s for s, _, _ in truth}):
        ct, segmentation = verse_mask_case(folder / f"{subject}_seg-vert_msk.nii.gz")
        for f in assess(ct, segmentation).findings.findings:
            found[subject, f.level.name] = f
    return truth, found


def test_verse_expert_masks_against_their_published_genant_grades(verse_graded):
    truth, found = verse_graded
    exact = 0
    for subject, level, grade in truth:
        f = found[subject, level]
        if grade == 0:
            assert f.decision is Decision.NORMAL, (subject, level, f.reason)
        else:
            assert f.decision is Decision.FRACTURED and f.genant_grade >= min(grade, 2), (subject, level, f.reason)
        exact += f.genant_grade == grade
    assert exact >= 9, f"grade exact on {exact} of {len(truth)}"


def test_expected_heights_never_come_from_a_fractured_neighbour(verse_graded):
    """sub-verse004: T9, T10 and L1 are fractured; T10's expectation comes from T11 and T12, the
    next undeformed levels, not from T9 above it."""
    _, found = verse_graded
    for (subject, name), f in found.items():
        for reference in f.expected_from:
            assert found[subject, reference].decision is Decision.NORMAL, (subject, name, reference)
    assert found["sub-verse004", "T10"].expected_from == ("T11", "T12")


@pytest.mark.parametrize("level, kind, loss", [("L2", "wedge", 0.4), ("L3", "biconcave", 0.3), ("L4", "crush", 0.35)])
def test_simulated_fracture_on_the_real_ct_is_found_typed_and_graded(sample, level, kind, loss):
    ct, segmentation, baseline = sample
    fracture = SimulatedFracture(level, kind, loss)
    row = case_row(fracture, assess(*fractured_copy(ct, segmentation, baseline, fracture)).findings.by_name())
    assert row["decision_right"] and row["type_right"] and row["grade_within_one"], row
    assert not row["other_levels_fractured"], row


def test_simulator_compresses_the_body_and_moves_the_spine_above(sample):
    ct, segmentation, baseline = sample
    m = baseline.morphometry.by_name()["L3"]
    image, labels = simulate_fracture(ct.image, segmentation.label_map, m, SimulatedFracture("L3", "crush", 0.4))
    before, after = sitk.GetArrayFromImage(segmentation.label_map), sitk.GetArrayFromImage(labels)
    ratio = np.count_nonzero(after == 22) / np.count_nonzero(before == 22)
    assert 0.5 < ratio < 0.8  # the body lost about 40 % of its height; the arch only partly
    assert np.count_nonzero(after == 24) == np.count_nonzero(before == 24)  # L5, below, untouched
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(segmentation.label_map)
    l2_before = np.array(shape.GetCentroid(21))
    shape.Execute(labels)
    drop_mm = (l2_before - np.array(shape.GetCentroid(21))) @ m.frame.superior
    height = m.heights.middle_mm
    assert drop_mm == pytest.approx(0.4 * height, abs=3.0)  # L2 above followed by the loss (3 mm voxels)
    assert sitk.GetArrayFromImage(image).shape == before.shape


def test_physiological_wedging_and_expected_heights():
    assert physiological_wedge_deg(level_for_name("T11")) > 0 > physiological_wedge_deg(level_for_name("L5"))
    def heights(name, a, m, p):
        return LevelHeights(level_for_name(name), a, m, p, 30.0)
    neighbours = [heights("L3", 30, 27, 30), heights("L4", 30, 27, 30)]
    expected = expected_heights(heights("L5", 20, 20, 20), neighbours)
    assert expected.references == ("L4", "L3")
    assert expected.anterior_mm > expected.posterior_mm  # L5's reverse wedge beyond L3/L4's
    assert expected.middle_mm == pytest.approx(27.0 / 30.0 * 0.5 * (expected.anterior_mm + expected.posterior_mm))
    assert expected_heights(heights("L5", 20, 20, 20), []) is None
    # T1, transitional and smaller than T2-T4, neither takes nor sets a neighbour's expectation
    upper = [heights("T1", 15, 15, 15), heights("T3", 22, 21, 23)]
    assert expected_heights(heights("T1", 15, 15, 15), [heights("T2", 22, 21, 23)]) is None
    assert expected_heights(heights("T2", 22, 21, 23), upper).references == ("T3",)


def test_offline_engine_masks_that_pass_qc_are_graded_within_a_voxel_no_false_fracture(sample):
    """Offline masks' level borders are estimated; where QC passes a level cleanly it is graded:
    on the normal sample CT every lumbar level is graded, its heights within one voxel (3 mm) of
    the reference-mask heights, none fractured; density stays withheld (bone-threshold masks)."""
    from spinefrac.segmentation.offline.engine import OfflineEngine

    ct, _, reference = sample
    offline = OfflineEngine().segment(ct)
    assert offline.grading_needs_clean_qc
    assessment = assess(ct, offline)
    findings = assessment.findings.by_name()
    ref_heights = _heights(reference)
    for name in LUMBAR:
        f = findings[name]
        assert assessment.quality.by_name()[name].verdict.value == "pass", name
        assert f.decision is Decision.NORMAL and f.genant_grade == 0, (name, f.reason)
        assert np.isnan(f.trabecular_hu)  # bone-threshold masks: density withheld
        heights = np.array([f.height_anterior_mm, f.height_middle_mm, f.height_posterior_mm])
        assert np.max(np.abs(heights - ref_heights[name])) <= 3.0, (name, heights, ref_heights[name])


def test_estimated_borders_with_a_qc_warning_keep_heights_but_not_the_grade(sample):
    """A level QC passes with a warning (here a stray piece of L3 on the sacrum) is graded when a
    model or a clinician drew the masks, but not when the borders are estimated (the offline
    engine): heights shown, grade withheld with the warning, and it is no neighbour's reference."""
    from dataclasses import replace

    from spinefrac.assessment.fracture import UNCHECKED_MASK_PREFIX
    from spinefrac.levels import level_for_name as level

    ct, segmentation, _ = sample
    labels = sitk.GetArrayFromImage(segmentation.label_map)
    sacrum = np.argwhere(labels == level("sacrum").verse_id)
    k, j, i = sacrum[len(sacrum) // 2]
    stray = (slice(k - 1, k + 2), slice(j - 1, j + 2), slice(i - 1, i + 2))
    labels[stray] = np.where(labels[stray] > 0, level("L3").verse_id, 0)
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(segmentation.label_map)
    drawn = segmentation_of(image, "reference labels with a stray L3 piece")
    estimated = replace(drawn, grading_needs_clean_qc=True)

    graded = assess(ct, drawn)
    assert graded.quality.by_name()["L3"].verdict.value == "warn"
    assert graded.findings.by_name()["L3"].genant_grade == 0
    withheld = assess(ct, estimated)
    l3 = withheld.findings.by_name()["L3"]
    assert l3.decision is Decision.NOT_ASSESSABLE and l3.genant_grade is None
    assert l3.reason.startswith(UNCHECKED_MASK_PREFIX) and "stray piece" in l3.reason
    assert 20 < l3.height_anterior_mm < 40  # heights still shown
    for name in ("L2", "L4"):
        neighbour = withheld.findings.by_name()[name]
        assert neighbour.genant_grade == 0 and "L3" not in neighbour.expected_from, (name, neighbour.expected_from)
    assert "L3" in graded.findings.by_name()["L2"].expected_from

def test_train_cls_augmentation_makes_fractured_crops_from_normal_levels(sample):
    from spinefrac.assessment.classifier import CropGeometry
    from spinefrac.training.classifier import simulated_examples

    ct, segmentation, baseline = sample
    normal = [baseline.morphometry.by_name()[name] for name in ("L2", "L3", "L4")]
    examples = simulated_examples("sample", ct, segmentation, normal, 2, np.random.default_rng(0), CropGeometry())
    assert len(examples) == 2 and all(e.fractured and e.case == "sample" for e in examples)
    assert len({e.level for e in examples}) == 2 and all(e.level in ("L2", "L3", "L4") for e in examples)
    assert examples[0].crop.shape == examples[1].crop.shape and np.isfinite(examples[0].crop).all()


def test_middle_heights_are_compared_point_by_point_with_the_neighbours():
    """Normal endplates may be deepest off mid-depth: a level shaped like its neighbours loses
    nothing, wherever their deepest point is; a depression at another point is measured there."""
    def heights(name, profile):
        return LevelHeights(level_for_name(name), 30.0, min(profile), 30.0, 30.0, tuple(profile))
    neighbours = [heights("L2", (26.0, 27.0, 28.0)), heights("L4", (26.0, 27.0, 28.0))]
    same_shape = expected_heights(heights("L3", (26.0, 27.0, 28.0)), neighbours)
    assert same_shape.middle_profile_mm == pytest.approx((26.0, 27.0, 28.0))
    depressed = heights("L3", (26.0, 20.0, 28.0))  # its deepest point (20 mm) is where theirs is 27 mm
    expected = expected_heights(depressed, neighbours)
    losses = [1 - h / e for h, e in zip(depressed.middle_profile_mm, expected.middle_profile_mm)]
    assert max(losses) == pytest.approx(1 - 20.0 / 27.0)
    assert 1 - depressed.middle_mm / expected.middle_mm < max(losses)  # the deepest alone would say less


def test_levels_are_measured_in_forked_workers_only_outside_slicer(monkeypatch):
    """The CLI shares the levels over forked workers (2 cores); inside the Slicer application (its
    module imported) the GUI process is never forked: the work runs in this process."""
    import os

    from spinefrac.assessment import morphometry

    monkeypatch.setitem(sys.modules, "slicer", object())
    assert set(morphometry.map_levels(lambda _: os.getpid(), [0, 1, 2])) == {os.getpid()}
    monkeypatch.delitem(sys.modules, "slicer")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    pids = morphometry.map_levels(lambda _: os.getpid(), [0, 1, 2, 3])
    assert len(pids) == 4
    if cores >= 2 and "fork" in __import__("multiprocessing").get_all_start_methods():
        assert os.getpid() not in pids


def test_a_forked_level_worker_that_never_answers_does_not_hang_the_run(monkeypatch):
    """Watchdog: workers that hang (here: every forked one) are given up after the timeout and the
    levels are measured in this process, with the same results."""
    import os
    import time

    from spinefrac.assessment import morphometry

    if (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1) < 2:
        pytest.skip("one usable core: the levels are never forked")
    monkeypatch.delitem(sys.modules, "slicer", raising=False)
    monkeypatch.setattr(morphometry, "LEVEL_WORKERS_TIMEOUT_S", 1.0)
    monkeypatch.setattr(morphometry, "LEVEL_WORKER_TIMEOUT_S_PER_LEVEL", 0.0)
    parent = os.getpid()

    def work(item):
        while os.getpid() != parent:  # a forked worker that never answers
            time.sleep(0.05)
        return item * 10

    assert morphometry.map_levels(work, [1, 2, 3]) == [10, 20, 30]


def test_lines_searched_together_give_each_line_s_own_edges(sample):
    """The endplate search runs on all lines of a body at once (one interpolation of the mask and of the
    CT, the edge search on all profiles together): to the last bit the edges of each line searched
    alone, and those of the one-line search (bone_edge) on the same profiles."""
    from spinefrac.assessment.endplates import LINE_STEP_MM, BodyProbe, bone_edge, bone_edges
    from spinefrac.assessment.geometry import VoxelGrid, sample_lines

    ct, _, assessment = sample
    grid, hu, rng = VoxelGrid(ct.image), ct.array(), np.random.default_rng(7)
    reach = 25.0
    t = np.arange(-reach, reach + LINE_STEP_MM, LINE_STEP_MM)
    searched = found_on_ct = 0
    for m in assessment.morphometry.vertebrae:
        if m.heights is None:
            continue
        box, body = m.body_mask_box
        probe = BodyProbe(hu, body, np.array([s.start for s in box]), grid)
        us = np.linspace(-0.7, 0.7, 6) * m.body_width_mm / 2  # the outer lines miss the body
        lines = [(u, (v, v - 2.0), None) for u in us for v in np.linspace(-1.2, 1.2, 6) * m.body_depth_mm / 2]
        together = probe.endplates_of_lines(m.frame, lines, reach)
        assert together == [probe.endplates(m.frame, u, v, reach) for u, v, _ in lines], m.level.name
        assert any(edges is None for edges in together) and any(edges is not None for edges in together)
        local = np.stack([np.column_stack([np.full_like(t, u), np.full_like(t, v[0]), t]) for u, v, _ in lines])
        profiles = sample_lines(hu, grid.kji(m.frame.to_lps(local)), cval=-1000.0)
        borders = rng.uniform(-0.6 * reach, 0.6 * reach, len(lines))
        voxel_mm = grid.voxel_along_mm(m.frame.superior)
        for outward in (-1, +1):
            edges = bone_edges(t, profiles, borders, outward, voxel_mm, (None,) * len(lines))
            assert edges == [bone_edge(t, p, float(b), outward, voxel_mm) for p, b in zip(profiles, borders)]
            searched += len(edges)
            found_on_ct += sum(edge.from_ct for edge in edges)
    assert searched > 0 and 0 < found_on_ct < searched  # edges found on the CT, and mask borders kept


def test_estimated_borders_beside_a_failing_level_or_in_a_doubtful_partition_are_not_graded(sample):
    """Estimated borders (the offline engine): a level next to one QC fails shares a border in
    doubt (L1 beside a failing L2, L4 beside a failing L3), and when QC lowers the identification
    to low (levels out of order) every border is in doubt; their grades are withheld with that
    reason, heights shown. Drawn masks with the same faults keep those grades."""
    from dataclasses import replace

    from quality_cases import border_moved_into, segmentation_from, swapped

    from spinefrac.assessment.fracture import UNCHECKED_MASK_PREFIX

    ct, segmentation, _ = sample
    labels = sitk.GetArrayFromImage(segmentation.label_map)
    moved = segmentation_from(ct, border_moved_into(labels, "L2", "L3", 1 / 3), "L2/L3 border in L3")
    drawn, estimated = assess(ct, moved), assess(ct, replace(moved, grading_needs_clean_qc=True))
    assert set(drawn.quality.failing()) == {"L2", "L3"}
    for name, failing_neighbour in (("L1", "L2"), ("L4", "L3")):
        assert drawn.findings.by_name()[name].genant_grade is not None, name
        f = estimated.findings.by_name()[name]
        assert f.genant_grade is None and f.reason.startswith(UNCHECKED_MASK_PREFIX), (name, f.reason)
        assert f"neighbour {failing_neighbour} fails" in f.reason and f.height_posterior_mm > 20, f.reason
    assert estimated.findings.by_name()["L5"].genant_grade == 0  # its neighbours pass

    disordered = segmentation_from(ct, swapped(labels, "L2", "L4"), "L2 and L4 swapped")
    estimated = assess(ct, replace(disordered, grading_needs_clean_qc=True))
    assert estimated.quality.identification_confidence == "low"
    for f in estimated.findings.findings:
        assert f.genant_grade is None, (f.level.name, f.reason)
    l5 = estimated.findings.by_name()["L5"]
    assert "level identification confidence low" in l5.reason
    assert assess(ct, disordered).findings.by_name()["L5"].genant_grade is not None
