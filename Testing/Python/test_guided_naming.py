"""Guided naming: one named point names the others by counting along the spine; a segmentation's levels
renamed by the points without changing a voxel. Synthetic label maps (boxes stacked on an oblique,
anisotropic grid whose k runs caudally) and the real verse012 masks one level off."""

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.points import VertebraPoint, read_points
from spinefrac.levels import LEVEL_BY_NAME, LEVELS
from spinefrac.segmentation.base import LabelConvention, VertebraSegmentation
from spinefrac.segmentation.guided.naming import level_sequence, name_points, order_craniocaudal
from spinefrac.segmentation.guided.rename import rename_by_points


def _level(name):
    return LEVEL_BY_NAME[name.lower()] if name else None


def _column(names, top_z=400.0, pitch_mm=30.0):
    """Points 30 mm apart from the top down, named as given (None: unnamed), labelled A, B, C..."""
    return [VertebraPoint((0.5 * n, -10.0 - n, top_z - pitch_mm * n), _level(name), chr(ord("A") + n))
            for n, name in enumerate(names)]


def _names(levels):
    return [level.name for level in levels]


# -- naming points -----------------------------------------------------------------------------------


def test_order_is_cranial_first_by_z():
    points = _column([None] * 4)
    assert order_craniocaudal(points[::-1]) == points
    assert order_craniocaudal([points[2], points[0], points[3], points[1]]) == points


def test_no_named_point_gives_none():
    assert name_points(_column([None, None, None])) is None


def test_one_named_point_names_the_others_in_the_given_order():
    points = _column([None, None, "L1", None, None, None, None, None])
    assert _names(name_points(points)) == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]
    shuffled = [points[i] for i in (5, 0, 7, 2, 1, 6, 4, 3)]
    assert _names(name_points(shuffled)) == ["L4", "T11", "sacrum", "L1", "T12", "L5", "L3", "L2"]


def test_every_run_of_the_sequence_is_recovered_from_any_named_subset():
    """Hidden truth: a run of consecutive levels; one to three of its points named; the rest counted."""
    rng = np.random.default_rng(7)
    standard = level_sequence([])
    for _ in range(200):
        start = int(rng.integers(0, len(standard) - 3))
        run = standard[start : start + int(rng.integers(3, min(10, len(standard) - start) + 1))]
        named = set(rng.choice(len(run), size=int(rng.integers(1, min(3, len(run)) + 1)), replace=False).tolist())
        points = _column([level.name if i in named else None for i, level in enumerate(run)])
        order = rng.permutation(len(points))
        assert name_points([points[i] for i in order]) == [run[i] for i in order]


def test_transitional_levels_only_when_named():
    assert "T13" not in _names(level_sequence([])) and "L6" not in _names(level_sequence([]))
    assert _names(name_points(_column(["T12", "T13", None]))) == ["T12", "T13", "L1"]
    assert _names(name_points(_column([None, "L6", None]))) == ["L5", "L6", "sacrum"]
    assert _names(name_points(_column([None, "L5", None]))) == ["L4", "L5", "sacrum"]


def test_too_many_points_between_two_names_suggests_a_transitional_vertebra():
    with pytest.raises(InputError) as caught:
        name_points(_column(["T12", None, None, "L2"]))
    message = str(caught.value)
    assert message.startswith("points 'A' (T12) at (0, -10, 400) mm LPS and 'D' (L2) at (2, -13, 310) mm LPS have "
                              "2 points between them; T12 to L2 leaves room for 1 (L1): a point is missing or one "
                              "too many, or name a transitional T13")
    with pytest.raises(InputError, match="L5 to sacrum leaves room for none: .*, or name a transitional L6"):
        name_points(_column(["L5", None, "sacrum"]))


def test_too_few_points_between_two_names():
    with pytest.raises(InputError, match=r"have 0 points between them; T10 to T12 leaves room for 1 \(T11\)") as caught:
        name_points(_column(["T10", "T12"]))
    assert "transitional" not in str(caught.value)


def test_names_against_their_order_are_refused():
    with pytest.raises(InputError, match="point 'A' \\(L2\\) .* lies above point 'C' \\(T12\\) .* L2 is not above T12"):
        name_points(_column(["L2", None, "T12"]))


def test_the_same_name_twice_is_refused():
    with pytest.raises(InputError, match="points 'A' \\(L1\\) .* and 'C' \\(L1\\) .* are both named L1"):
        name_points(_column(["L1", None, "L1"]))


def test_counting_past_c1_or_the_sacrum_is_refused():
    with pytest.raises(InputError, match="counting from point 'C' \\(C2\\) .* runs past C1: 2 points lie above it "
                                         "and only 1 level does"):
        name_points(_column([None, None, "C2"]))
    with pytest.raises(InputError, match="runs past the sacrum: 2 points lie below it and only 1 level does"):
        name_points(_column(["L5", None, None]))


# -- renaming a segmentation ----------------------------------------------------------------------------


def _stacked_label_map(names, body_voxels=(12, 10, 6), gap_voxels=2):
    """Boxes stacked cranio-caudally on a grid whose k axis runs caudally (direction z flipped, tilted 10
    degrees about x), 1 x 1.2 x 2.5 mm; box n gets the label of names[n] (cranial first)."""
    nx, ny, nz = 30, 26, len(names) * (body_voxels[2] + gap_voxels) + 6
    values = np.zeros((nz, ny, nx), np.uint8)
    for n, name in enumerate(names):
        k0 = 3 + n * (body_voxels[2] + gap_voxels)
        values[k0 : k0 + body_voxels[2], 8 : 8 + body_voxels[1], 9 : 9 + body_voxels[0]] = _level(name).verse_id
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 1.2, 2.5))
    angle = np.radians(10.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    image.SetDirection((tilt @ np.diag([1.0, 1.0, -1.0])).ravel().tolist())
    image.SetOrigin((-15.0, 20.0, 500.0))
    return image


def _body_centres(image, names):
    """The physical centre of each named box: the truth of where a clinician puts the points."""
    values = sitk.GetArrayViewFromImage(image)
    centres = []
    for name in names:
        k, j, i = np.nonzero(values == _level(name).verse_id)
        centres.append(image.TransformContinuousIndexToPhysicalPoint((i.mean(), j.mean(), k.mean())))
    return centres


def _segmentation(image):
    return VertebraSegmentation(image, "test engine", "test.nii.gz", LabelConvention.VERSE, notes=["from a model"])


TRUTH = ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]


def _one_off():
    """A label map that names every level one too high (the model took T12 for L1...), and its truth."""
    wrong = ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]
    labelled = _stacked_label_map(wrong)
    truth = _stacked_label_map(TRUTH[:-1])
    return labelled, truth


def test_one_named_point_renames_every_segment_voxels_unchanged():
    labelled, truth = _one_off()
    centres = _body_centres(labelled, ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"])
    points = [VertebraPoint(tuple(c), None, f"F-{n}") for n, c in enumerate(centres, start=1)]
    points[2] = VertebraPoint(points[2].position_lps_mm, _level("L1"), "L1")  # the clinician names one body
    result = rename_by_points(_segmentation(labelled), points)
    before, after = sitk.GetArrayFromImage(labelled), sitk.GetArrayFromImage(result.label_map)
    assert np.array_equal(after, sitk.GetArrayFromImage(truth))
    for old in np.unique(before[before > 0]):  # each segment keeps exactly its voxels under its new id
        new = np.unique(after[before == old])
        assert new.size == 1 and np.array_equal(after == new[0], before == old)
    assert result.label_map.GetDirection() == labelled.GetDirection()
    assert result.notes == ["from a model", "renamed by points: T12 -> T11, L1 -> T12, L2 -> L1, L3 -> L2, "
                            "L4 -> L3, L5 -> L4, sacrum -> L5"]
    assert result.identification.confidence == "high"
    assert result.identification.anchors == ("clinician's named point (L1)",)
    assert _names(result.levels) == TRUTH[:-1]


def test_segments_without_points_are_counted_from_the_nearest_point():
    """Points in two bodies only (one named, one counted from it); the other segments counted from those."""
    labelled, truth = _one_off()
    centres = _body_centres(labelled, ["L1", "L2"])
    points = [VertebraPoint(tuple(centres[0]), _level("T12"), "T12"), VertebraPoint(tuple(centres[1]), None, "F-2")]
    result = rename_by_points(_segmentation(labelled), points)
    assert np.array_equal(sitk.GetArrayFromImage(result.label_map), sitk.GetArrayFromImage(truth))


def test_names_that_already_fit_change_nothing():
    image = _stacked_label_map(TRUTH)
    points = [VertebraPoint(tuple(_body_centres(image, ["L3"])[0]), _level("L3"), "L3")]
    result = rename_by_points(_segmentation(image), points)
    assert np.array_equal(sitk.GetArrayFromImage(result.label_map), sitk.GetArrayFromImage(image))
    assert result.notes[-1] == "levels confirmed by points: every segment keeps its name"


def test_a_point_just_outside_a_segment_names_the_nearest_within_5_mm():
    image = _stacked_label_map(TRUTH)
    values = sitk.GetArrayViewFromImage(image)
    k, j, i = np.nonzero(values == _level("L2").verse_id)
    # 1.2 voxels (3 mm) beyond the box's last k: in the disc between L2 and L3 (4.5 mm from L3), nearer L2
    outside = image.TransformContinuousIndexToPhysicalPoint((i.mean(), j.mean(), k.max() + 1.2))
    result = rename_by_points(_segmentation(image), [VertebraPoint(tuple(outside), _level("L1"), "L1")])
    assert _names(result.levels) == ["T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]


def test_a_point_in_no_segment_is_refused():
    image = _stacked_label_map(TRUTH)
    far = image.TransformContinuousIndexToPhysicalPoint((1.0, 1.0, 20.0))
    with pytest.raises(InputError, match="point 'L1' at .* lies in no vertebra segment \\(none within 5 mm\\)"):
        rename_by_points(_segmentation(image), [VertebraPoint(tuple(far), _level("L1"), "L1")])


def test_two_points_in_one_segment_are_refused():
    image = _stacked_label_map(TRUTH)
    centre = np.array(_body_centres(image, ["L2"])[0])
    points = [VertebraPoint(tuple(centre + [0, 0, 3.0]), _level("L1"), "L1"), VertebraPoint(tuple(centre), None, "F-2")]
    with pytest.raises(InputError, match="points 'L1' .* and 'F-2' .* both lie in the segment labelled L2"):
        rename_by_points(_segmentation(image), points)


def test_names_that_contradict_the_segments_are_refused():
    """Two points named T12 and L2 in adjacent bodies: the segments leave no room for L1."""
    image = _stacked_label_map(TRUTH)
    centres = _body_centres(image, ["L1", "L2"])
    points = [VertebraPoint(tuple(centres[0]), _level("T12"), "T12"),
              VertebraPoint(tuple(centres[1]), _level("L2"), "L2")]
    with pytest.raises(InputError, match="points 'T12' .* and 'L2' .* have 0 points between them"):
        rename_by_points(_segmentation(image), points)
    # points one body apart, a segment between them counted twice: T12 and L1 leave it no name
    centres = _body_centres(image, ["L1", "L3"])
    points = [VertebraPoint(tuple(centres[0]), _level("T12"), "T12"),
              VertebraPoint(tuple(centres[1]), _level("L1"), "L1")]
    with pytest.raises(InputError, match="segments 'L1, with point T12' \\(T12\\) .* and "
                                         "'L3, with point L1' \\(L1\\) .* have 1 segment between them; "
                                         "T12 to L1 leaves room for none: the segmentation split or merged"):
        rename_by_points(_segmentation(image), points)


def test_unnamed_points_are_refused():
    image = _stacked_label_map(TRUTH)
    points = [VertebraPoint(tuple(_body_centres(image, ["L1"])[0]), None, "F-1")]
    with pytest.raises(InputError, match="name at least one point"):
        rename_by_points(_segmentation(image), points)


def test_verse012_masks_one_level_off_are_renamed_back_by_one_named_centroid(shared_data):
    """The real expert masks T10-L3 relabelled one too high (T11-L4), as the offline engine named this CT;
    the VerSe centroids as points, only L1's named (the fractured one a clinician would name)."""
    folder = shared_data / "verse012"
    mask = sitk.Cast(sitk.ReadImage(str(folder / "sub-verse012_seg-vert_msk.nii.gz")), sitk.sitkUInt8)
    truth = sitk.GetArrayFromImage(mask)
    shifted = sitk.GetImageFromArray(np.where(truth > 0, truth + 1, 0).astype(np.uint8))
    shifted.CopyInformation(mask)
    centroids = read_points(folder / "sub-verse012_seg-subreg_ctd.json",
                            reference_image=sitk.ReadImage(str(folder / "sub-verse012_ct.nii.gz")))
    points = [p if p.level.name == "L1" else VertebraPoint(p.position_lps_mm, None, f"F-{n}")
              for n, p in enumerate(centroids, start=1)]
    result = rename_by_points(_segmentation(shifted), points)
    assert np.array_equal(sitk.GetArrayFromImage(result.label_map), truth)
    assert result.notes[-1] == "renamed by points: T11 -> T10, T12 -> T11, L1 -> T12, L2 -> L1, L3 -> L2, L4 -> L3"


def test_level_sequence_is_in_craniocaudal_order():
    sequence = level_sequence([_level("T13"), _level("L6")])
    assert sequence == sorted(LEVELS, key=lambda level: level.craniocaudal_rank)
