"""Per-vertebra measurements against independent NumPy computations and phantom truth."""

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.assessment.measurement import FovStatus, measure_vertebrae
from spinefrac.io.images import load_ct
from spinefrac.segmentation.label_maps import ExistingLabelMap
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom


def _stages(tmp_path, phantom):
    ct_path, labels_path = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    sitk.WriteImage(phantom.ct, str(ct_path))
    sitk.WriteImage(phantom.labels, str(labels_path))
    ct = load_ct(ct_path)
    segmentation = ExistingLabelMap(labels_path).segment(ct)
    return ct, segmentation, measure_vertebrae(ct, segmentation)


def test_counts_volumes_centroids_and_hu_match_numpy(tmp_path, lumbar_phantom):
    ct, segmentation, measurements = _stages(tmp_path, lumbar_phantom)
    labels = sitk.GetArrayFromImage(lumbar_phantom.labels)
    hu = sitk.GetArrayFromImage(lumbar_phantom.ct)
    voxel_mm3 = float(np.prod(lumbar_phantom.labels.GetSpacing()))
    assert [m.level.name for m in measurements.vertebrae] == ["T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]
    for m in measurements.vertebrae:
        mask = labels == m.level.verse_id
        assert m.voxel_count == np.count_nonzero(mask)
        assert m.volume_mm3 == pytest.approx(np.count_nonzero(mask) * voxel_mm3, rel=1e-12)
        assert m.hu_mean == pytest.approx(hu[mask].mean())
        assert m.hu_median == pytest.approx(np.median(hu[mask]))
        k, j, i = np.nonzero(mask)
        centre_lps = lumbar_phantom.labels.TransformContinuousIndexToPhysicalPoint(
            [float(i.mean()), float(j.mean()), float(k.mean())])
        assert np.allclose(m.centroid_ras_mm, np.array(centre_lps) * [-1, -1, 1], atol=1e-6)
        assert np.all(np.array(m.bbox_min_ras_mm) <= m.centroid_ras_mm)
        assert np.all(np.array(m.centroid_ras_mm) <= m.bbox_max_ras_mm)


def test_body_centroid_is_where_the_phantom_put_the_body(tmp_path, lumbar_phantom):
    ct_path, bodies_path = tmp_path / "ct.nii.gz", tmp_path / "bodies.nii.gz"
    sitk.WriteImage(lumbar_phantom.ct, str(ct_path))
    sitk.WriteImage(lumbar_phantom.body_labels, str(bodies_path))
    ct = load_ct(ct_path)
    measurements = measure_vertebrae(ct, ExistingLabelMap(bodies_path).segment(ct))
    for m in measurements.vertebrae:
        truth = lumbar_phantom.truth.get(m.level.name)
        if truth is None or truth.fracture is not None:
            continue
        truth_ras = np.array(truth.centre_lps_mm) * [-1, -1, 1]
        assert np.linalg.norm(np.array(m.centroid_ras_mm) - truth_ras) < 1.0  # half a 2 mm voxel


def test_levels_inside_the_field_of_view_are_inside(tmp_path, lumbar_phantom):
    _, _, measurements = _stages(tmp_path, lumbar_phantom)
    assert all(m.fov_status is FovStatus.INSIDE for m in measurements.vertebrae)


@pytest.mark.parametrize("crop_mm, expected", [(22.0, FovStatus.CUT), (8.0, FovStatus.TOUCHES_BORDER)])
def test_top_level_cut_by_the_field_of_view(tmp_path, crop_mm, expected):
    phantom = make_phantom(PhantomSpec(spacing_mm=(2.0, 2.0, 2.0), crop_superior_mm=crop_mm, ribs=False))
    _, _, measurements = _stages(tmp_path, phantom)
    top = measurements.vertebrae[0]
    assert top.level.name == "T12"
    assert "superior" in top.fov_border_faces
    assert top.fov_status is expected
    assert all(m.fov_status is FovStatus.INSIDE for m in measurements.vertebrae[1:])
