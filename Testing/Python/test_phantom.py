"""The synthetic phantom: its label map and truth must agree, whatever the grid."""

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.synthetic.phantom import HEIGHT_SAMPLE_FRACTION, Fracture, PhantomSpec, make_phantom, thick_slices

from spine_test_utils import label_centroids_lps


def measured_height_mm(phantom, level_name: str, q: float, step_mm: float = 0.05) -> float:
    """Length of the body label along the level's true cranio-caudal axis at AP position q."""
    truth = phantom.truth[level_name]
    labels = phantom.body_labels
    axis_w, axis_v = np.array(truth.axis_superior), np.array(truth.axis_anterior)
    start = np.array(truth.centre_lps_mm) + q * truth.dimensions.body_depth / 2 * axis_v
    inside = []
    for t in np.arange(-30.0, 30.0, step_mm):
        index = labels.TransformPhysicalPointToIndex((start + t * axis_w).tolist())
        inside.append(all(0 <= i < n for i, n in zip(index, labels.GetSize()))
                      and labels[index] == truth.level.verse_id)
    return float(np.count_nonzero(inside) * step_mm)


CASES = {
    "straight 2 mm": PhantomSpec(spacing_mm=(2.0, 2.0, 2.0), fractures={"L2": Fracture("wedge", 0.3)}),
    "curved, tilted, 1.5 mm": PhantomSpec(
        spacing_mm=(1.5, 1.5, 1.5), sagittal_curvature_mm=20, coronal_curvature_mm=10, forward_tilt_deg=10,
        fractures={"L1": Fracture("biconcave", 0.25), "L3": Fracture("crush", 0.4)}),
    "anisotropic, RAS grid": PhantomSpec(
        spacing_mm=(0.8, 0.8, 3.0), orientation="RAS", fractures={"L4": Fracture("wedge", 0.45)}),
}


@pytest.fixture(scope="module", params=list(CASES))
def phantom(request):
    return make_phantom(CASES[request.param])


def test_labels_hold_exactly_the_requested_levels(phantom):
    present = set(np.unique(sitk.GetArrayFromImage(phantom.labels))) - {0}
    assert present == {19, 20, 21, 22, 23, 24, 26}
    bodies = sitk.GetArrayFromImage(phantom.body_labels)
    whole = sitk.GetArrayFromImage(phantom.labels)
    assert np.all(whole[bodies > 0] == bodies[bodies > 0])  # a body is part of its vertebra


def test_label_heights_match_truth_within_one_voxel(phantom):
    voxel_mm = max(phantom.labels.GetSpacing())
    for name, truth in phantom.truth.items():
        for q, expected in ((HEIGHT_SAMPLE_FRACTION, truth.height_anterior_mm), (0.0, truth.height_middle_mm),
                            (-HEIGHT_SAMPLE_FRACTION, truth.height_posterior_mm)):
            assert abs(measured_height_mm(phantom, name, q) - expected) <= voxel_mm, (name, q)


def test_truth_heights_follow_the_fracture_pattern():
    spec = PhantomSpec(spacing_mm=(3.0, 3.0, 3.0), fractures={
        "L1": Fracture("wedge", 0.3), "L2": Fracture("biconcave", 0.3), "L3": Fracture("crush", 0.3)})
    truth = make_phantom(spec).truth
    for name in ("L1", "L2", "L3"):
        assert truth[name].genant_height_loss == pytest.approx(0.3)
    wedge, biconcave, crush, normal = truth["L1"], truth["L2"], truth["L3"], truth["L4"]
    assert wedge.height_anterior_mm == pytest.approx(0.7 * wedge.height_posterior_mm)
    assert biconcave.height_middle_mm == pytest.approx(0.7 * biconcave.height_anterior_mm)
    assert crush.height_anterior_mm == crush.height_middle_mm == crush.height_posterior_mm
    assert normal.genant_height_loss == 0.0


def test_same_anatomy_on_any_grid_orientation():
    base = dict(spacing_mm=(1.5, 1.5, 1.5), sagittal_curvature_mm=10, ribs=False, noise_hu=0.0)
    lps = label_centroids_lps(make_phantom(PhantomSpec(orientation="LPS", **base)).labels)
    pir = label_centroids_lps(make_phantom(PhantomSpec(orientation="PIR", **base)).labels)
    oblique = np.array([[np.cos(0.4), -np.sin(0.4), 0], [np.sin(0.4), np.cos(0.4), 0], [0, 0, 1]])
    rotated = label_centroids_lps(make_phantom(PhantomSpec(orientation=oblique.ravel(), **base)).labels)
    for label in lps:
        assert np.linalg.norm(lps[label] - pir[label]) < 0.75
        assert np.linalg.norm(lps[label] - rotated[label]) < 0.75


def test_tissue_intensities_are_ct_like():
    phantom = make_phantom(PhantomSpec(spacing_mm=(1.5, 1.5, 1.5), noise_hu=0.0))
    hu = sitk.GetArrayFromImage(phantom.ct)
    bodies = sitk.GetArrayFromImage(phantom.body_labels)
    assert hu.dtype == np.int16
    assert 150 < np.median(hu[bodies == 22]) < 450  # trabecular with a cortical rim
    assert hu.min() == -1000  # air outside the trunk
    assert 20 < np.median(hu[(bodies == 0) & (hu > -50) & (hu < 150)]) < 100  # soft tissue


def test_crop_cuts_the_top_level():
    phantom = make_phantom(PhantomSpec(spacing_mm=(2.0, 2.0, 2.0), crop_superior_mm=25.0, ribs=False))
    labels = sitk.GetArrayFromImage(phantom.labels)
    top = labels[-1]  # canonical LPS grid: the last slice is the most superior
    assert np.any(top == 19)
    assert not np.any(labels[0] > 0)


def test_invalid_requests_are_refused():
    with pytest.raises(ValueError, match="unknown level"):
        make_phantom(PhantomSpec(levels=("L1", "L9")))
    with pytest.raises(ValueError, match="height_loss"):
        Fracture("wedge", 0.95)
    with pytest.raises(ValueError):
        Fracture("spiral", 0.2)


def test_contrast_filled_aorta_and_heart_lie_beside_the_spine_as_bright_as_bone():
    levels = tuple(f"T{n}" for n in range(4, 13)) + ("L1",)
    phantom = make_phantom(PhantomSpec(levels=levels, spacing_mm=(2.0, 2.0, 2.0), contrast_vessels=True, noise_hu=0.0))
    hu = sitk.GetArrayFromImage(phantom.ct)
    blood = sitk.GetArrayFromImage(phantom.vessels) > 0
    labels = sitk.GetArrayFromImage(phantom.labels)
    assert 300 <= np.median(hu[blood]) <= 500
    assert not np.any(blood & (labels > 0))  # the vessels never overlap a vertebra
    # Heart and aorta: blood in front of the bodies, at every slice that holds a thoracic body.
    blood_centroid = label_centroids_lps(phantom.vessels)[1]
    spine_centroid = np.mean([np.array(t.centre_lps_mm) for t in phantom.truth.values()], axis=0)
    assert blood_centroid[1] < spine_centroid[1] - 30.0  # anterior (LPS: P increases)
    assert np.count_nonzero(blood) * 8.0 / 1000 > 200  # ml: a heart's chambers, not just a vessel
    assert make_phantom(PhantomSpec(spacing_mm=(3.0,) * 3)).vessels is None


def test_sagittally_stored_grid_has_its_thick_axis_first_and_the_same_anatomy():
    base = {"sagittal_curvature_mm": 10, "ribs": False, "noise_hu": 0.0}
    sagittal = make_phantom(PhantomSpec(spacing_mm=(1.0, 1.0, 3.0), orientation="PIL", **base))
    array = sitk.GetArrayFromImage(sagittal.ct)
    assert sagittal.ct.GetSpacing()[2] == 3.0 and array.shape[0] < min(array.shape[1:])  # left-right slices first
    direction = np.array(sagittal.ct.GetDirection()).reshape(3, 3)
    assert np.allclose(np.abs(direction[:, 2]), [1, 0, 0])  # the 3 mm axis runs left-right
    axial = label_centroids_lps(make_phantom(PhantomSpec(spacing_mm=(1.0, 1.0, 1.0), **base)).labels)
    for label, centre in label_centroids_lps(sagittal.labels).items():
        assert np.linalg.norm(centre - axial[label]) < 1.5


def test_crops_through_vertebrae_at_both_ends_cut_the_end_levels():
    phantom = make_phantom(PhantomSpec(levels=("T12", "L1", "L2", "L3", "L4", "L5", "sacrum"), spacing_mm=(1.5,) * 3,
                                       crop_superior_mm=45.0, crop_inferior_mm=110.0, ribs=False))
    labels = sitk.GetArrayFromImage(phantom.labels)
    assert set(np.unique(labels)) - {0} == {20, 21, 22, 23, 24}
    whole = make_phantom(PhantomSpec(levels=("T12", "L1", "L2", "L3", "L4", "L5", "sacrum"), spacing_mm=(1.5,) * 3,
                                     ribs=False))
    whole_labels = sitk.GetArrayFromImage(whole.labels)
    for end, verse_id in ((labels[-1], 20), (labels[0], 24)):  # the top slice cuts L1, the bottom one L5
        assert np.any(end == verse_id)
    for verse_id in (20, 24):  # both end levels lose part of their volume
        assert np.count_nonzero(labels == verse_id) < 0.95 * np.count_nonzero(whole_labels == verse_id)


def test_five_mm_slices_keep_every_level():
    phantom = make_phantom(PhantomSpec(spacing_mm=(0.7, 0.7, 5.0)))
    labels = sitk.GetArrayFromImage(phantom.labels)  # [k, j, i], k along the 5 mm axis (superior)
    assert phantom.ct.GetSpacing()[2] == 5.0
    assert set(np.unique(labels)) - {0} == {19, 20, 21, 22, 23, 24, 26}
    for verse_id in (19, 20, 21, 22, 23, 24):  # bodies of 24-28 mm: at least 4 slices each
        assert np.count_nonzero(np.any(labels == verse_id, axis=(1, 2))) >= 4


def test_fatty_marrow_and_thin_cortex_of_an_elderly_spine():
    spec = PhantomSpec(levels=("L1", "L2", "L3"), spacing_mm=(1.0, 1.0, 1.0), noise_hu=0.0, blur_mm=0.0, ribs=False)
    normal = make_phantom(spec)
    elderly = make_phantom(replace(spec, trabecular_hu=120.0, cortical_hu=600.0))
    bodies = sitk.GetArrayFromImage(normal.body_labels)
    hu_normal, hu_elderly = sitk.GetArrayFromImage(normal.ct), sitk.GetArrayFromImage(elderly.ct)
    for verse_id in (20, 21, 22):
        body = bodies == verse_id
        assert np.median(hu_elderly[body]) == 120 and np.median(hu_normal[body]) == 200  # marrow: most voxels
        assert hu_elderly[body].max() == 600 and hu_normal[body].max() == 900  # cortex and endplates
    assert np.array_equal(hu_normal[bodies == 0], hu_elderly[bodies == 0])  # discs, arches, soft tissue alike


def test_thick_slices_average_their_sub_slices_and_keep_the_middle_labels():
    thin = make_phantom(PhantomSpec(levels=("L1", "L2"), spacing_mm=(1.5, 1.5, 0.5), ribs=False))
    thick = thick_slices(thin, 3)
    hu_thin, hu_thick = sitk.GetArrayFromImage(thin.ct).astype(float), sitk.GetArrayFromImage(thick.ct)
    k = hu_thick.shape[0]
    assert thick.ct.GetSpacing() == (1.5, 1.5, 1.5) and thick.spec.spacing_mm == (1.5, 1.5, 1.5)
    # Rounded to whole HU: a mean of three differs from it by at most a third.
    assert np.abs(hu_thin[:3 * k].reshape(k, 3, *hu_thin.shape[1:]).mean(axis=1) - hu_thick).max() <= 1 / 3 + 1e-9
    assert np.array_equal(sitk.GetArrayFromImage(thick.labels), sitk.GetArrayFromImage(thin.labels)[1:3 * k:3])
    centre = thick.truth["L1"].centre_lps_mm  # the same patient point on both grids
    assert thick.labels[thick.labels.TransformPhysicalPointToIndex(centre)] == 20
    assert np.allclose(thick.ct.GetOrigin(), thin.ct.TransformIndexToPhysicalPoint((0, 0, 1)))
    with pytest.raises(ValueError, match="odd"):
        thick_slices(thin, 2)
