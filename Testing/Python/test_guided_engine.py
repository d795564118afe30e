"""Guided segmentation: one point per vertebral body in, each vertebra's mask and name out.

Phantom truths (spinefrac.synthetic.phantom) give the body centres and the masks to compare with;
the real sample CT checks the same on real anatomy (its reference labels, TotalSegmentator's)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.assessment.measurement import measure_vertebrae
from spinefrac.assessment.quality import QcVerdict, check_quality
from spinefrac.errors import InputError
from spinefrac.io.images import ct_from_image, load_ct
from spinefrac.io.points import VertebraPoint
from spinefrac.levels import LEVEL_BY_NAME
from spinefrac.segmentation.guided.engine import GuidedEngine

from spine_test_utils import run_cli


def _dice(predicted: np.ndarray, reference: np.ndarray, verse_id: int) -> float:
    a, b = predicted == verse_id, reference == verse_id
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _phantom_points(phantom, named: dict[str, str] | None = None, shift_mm: float = 0.0, seed: int = 0,
                    leave_out: tuple[str, ...] = ()) -> list[VertebraPoint]:
    """One point per mobile vertebra at its body centre (moved shift_mm in a random direction); names as given."""
    rng = np.random.default_rng(seed)
    named = named or {}
    points = []
    for n, (name, truth) in enumerate(phantom.truth.items()):
        if name in leave_out:
            continue
        direction = rng.normal(size=3)
        position = np.array(truth.centre_lps_mm) + shift_mm * direction / np.linalg.norm(direction)
        label = named.get(name, f"F-{n + 1}")
        points.append(VertebraPoint(tuple(position), LEVEL_BY_NAME.get(label.lower()), label))
    return points


@pytest.fixture(scope="module")
def phantom_ct(lumbar_phantom):
    return ct_from_image(lumbar_phantom.ct, "phantom", "phantom", check_hu=False)


def test_one_named_point_names_every_level_and_masks_match_the_truth(lumbar_phantom, phantom_ct):
    points = _phantom_points(lumbar_phantom, named={"L3": "L3"}, shift_mm=3.0)
    segmentation = GuidedEngine(points).segment(phantom_ct)
    labels = segmentation.array()
    truth = sitk.GetArrayViewFromImage(lumbar_phantom.labels)
    for name in lumbar_phantom.truth:
        assert _dice(labels, truth, LEVEL_BY_NAME[name.lower()].verse_id) >= 0.85, name
    assert segmentation.identification.confidence == "high"
    assert "'L3'" in segmentation.identification.summary


def test_points_in_any_order_give_the_same_labels(lumbar_phantom, phantom_ct):
    points = _phantom_points(lumbar_phantom, named={"L1": "L1"})
    # The segmentations are held: array() is a view of their label map, not a copy.
    forward = GuidedEngine(points).segment(phantom_ct)
    backward = GuidedEngine(list(reversed(points))).segment(phantom_ct)
    assert np.array_equal(forward.array(), backward.array())


def test_a_named_point_one_level_off_shifts_every_name_with_it(lumbar_phantom, phantom_ct):
    """The points name the levels, not the engine: L3's point called L4 makes every level one lower."""
    segmentation = GuidedEngine(_phantom_points(lumbar_phantom, named={"L3": "L4"})).segment(phantom_ct)
    labels = segmentation.array()
    truth = sitk.GetArrayViewFromImage(lumbar_phantom.labels)
    assert _dice(labels, truth, LEVEL_BY_NAME["l4"].verse_id) < 0.2
    l3_voxels = truth == LEVEL_BY_NAME["l3"].verse_id
    assert np.bincount(labels[l3_voxels]).argmax() == LEVEL_BY_NAME["l4"].verse_id


def test_unnamed_points_are_named_from_the_landmarks_and_say_so(lumbar_phantom, phantom_ct):
    segmentation = GuidedEngine(_phantom_points(lumbar_phantom)).segment(phantom_ct)
    identification = segmentation.identification
    assert identification.summary.startswith("no point named")
    assert "name one point" in identification.summary
    truth = sitk.GetArrayViewFromImage(lumbar_phantom.labels)
    labels = segmentation.array()
    if identification.confidence in ("high", "medium"):  # a confident numbering must be the right one
        for name in lumbar_phantom.truth:
            assert _dice(labels, truth, LEVEL_BY_NAME[name.lower()].verse_id) >= 0.8, name


def test_two_contradicting_names_are_refused_naming_both_points(lumbar_phantom):
    points = _phantom_points(lumbar_phantom, named={"L1": "L1", "L3": "L4"})
    with pytest.raises(InputError) as error:
        GuidedEngine(points)
    message = str(error.value)
    assert "'L1'" in message and "'L4'" in message and "\n" not in message


def test_a_point_outside_the_body_is_refused_by_name(lumbar_phantom, phantom_ct):
    points = _phantom_points(lumbar_phantom, named={"L1": "L1"})
    centre = np.array(points[2].position_lps_mm)
    points[2] = VertebraPoint(tuple(centre + np.array([0.0, -70.0, 0.0])), None, "F-3")  # 7 cm in front: soft tissue
    with pytest.raises(InputError, match=r"point 'F-3' .* is not on bone"):
        GuidedEngine(points).segment(phantom_ct)


def test_a_point_outside_the_image_is_refused_by_name(lumbar_phantom, phantom_ct):
    points = _phantom_points(lumbar_phantom, named={"L1": "L1"})
    points[0] = VertebraPoint((5000.0, 0.0, 0.0), None, "F-1")
    with pytest.raises(InputError, match=r"point 'F-1' .* lies outside the CT"):
        GuidedEngine(points).segment(phantom_ct)


def test_two_points_in_one_vertebra_are_refused_by_name(lumbar_phantom, phantom_ct):
    points = _phantom_points(lumbar_phantom, named={"L1": "L1"})
    l3 = np.array(lumbar_phantom.truth["L3"].centre_lps_mm)
    points.append(VertebraPoint(tuple(l3 + np.array([0.0, 0.0, 6.0])), None, "F-9"))  # 6 mm above L3's own point
    with pytest.raises(InputError, match=r"two points in one vertebra") as error:
        GuidedEngine(points).segment(phantom_ct)
    assert "'F-9'" in str(error.value)


def test_a_vertebra_without_a_point_between_two_points_is_refused(lumbar_phantom, phantom_ct):
    points = _phantom_points(lumbar_phantom, named={"L1": "L1"}, leave_out=("L3",))
    with pytest.raises(InputError, match=r"a vertebra between them has no point"):
        GuidedEngine(points).segment(phantom_ct)


def test_no_points_is_refused():
    with pytest.raises(InputError, match="no points"):
        GuidedEngine([], source="empty.mrk.json")


def _sample_points(sample_ct_path, sample_labels_path, named: str, shift_mm: float, seed: int = 0):
    """The sample CT's reference body centroids (the sacrum: its top 30 mm) moved shift_mm, one named."""
    from spinefrac.io.images import to_canonical

    labels = to_canonical(sitk.ReadImage(str(sample_labels_path)))
    values = sitk.GetArrayViewFromImage(labels)
    rng = np.random.default_rng(seed)
    points = []
    for name in ("T12", "L1", "L2", "L3", "L4", "L5", "sacrum"):
        kji = np.argwhere(values == LEVEL_BY_NAME[name.lower()].verse_id).astype(float)
        lps = np.array([labels.TransformContinuousIndexToPhysicalPoint(p[::-1].tolist()) for p in kji])
        if name == "sacrum":
            lps = lps[lps[:, 2] >= lps[:, 2].max() - 30.0]
        direction = rng.normal(size=3)
        position = lps.mean(axis=0) + shift_mm * direction / np.linalg.norm(direction)
        label = name if name == named else f"F-{len(points) + 1}"
        points.append(VertebraPoint(tuple(position), LEVEL_BY_NAME.get(label.lower()), label))
    return points, labels


def test_sample_ct_points_3mm_off_give_named_masks_that_pass_quality_control(sample_ct, sample_labels):
    ct = load_ct(sample_ct)
    points, reference = _sample_points(sample_ct, sample_labels, named="L2", shift_mm=3.0)
    segmentation = GuidedEngine(points).segment(ct)
    labels, truth = segmentation.array(), sitk.GetArrayViewFromImage(reference)
    dice = {name: _dice(labels, truth, LEVEL_BY_NAME[name.lower()].verse_id) for name in ("L1", "L2", "L3", "L4")}
    assert min(dice.values()) >= 0.85, dice
    quality = check_quality(ct, segmentation, measure_vertebrae(ct, segmentation))
    verdicts = {q.level.name: q.verdict for q in quality.levels}
    assert all(verdicts[name] is QcVerdict.PASS for name in dice), verdicts


def test_cli_points_file_segments_and_writes_the_points_back(sample_ct, sample_labels, tmp_path):
    from spinefrac.io.points import read_points, write_points_markups

    points, _ = _sample_points(sample_ct, sample_labels, named="L1", shift_mm=0.0)
    points_file = write_points_markups(tmp_path / "clicked.mrk.json", points)
    before = points_file.read_bytes()
    result = run_cli("run", sample_ct, "--points", points_file, "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    assert points_file.read_bytes() == before  # an input is never written
    written = read_points(tmp_path / "out" / "points.mrk.json")
    assert [p.level.name for p in written] == ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]
    assert "guided" in (tmp_path / "out" / "findings.txt").read_text()
