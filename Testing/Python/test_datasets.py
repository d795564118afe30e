"""Data set readers: VerSe layout with centroid files, CT + label pairs, images/ + labels/ folders."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.datasets import (
    SpineCase,
    case_centroids_lps_mm,
    image_grid,
    read_dataset,
    read_image_label_folders,
    read_paired_folder,
    read_verse_centroids,
    read_verse_layout,
)
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom

from spine_test_utils import label_centroids_lps

VERSE004_LEVELS = list(range(16, 25))  # T9-L5


def _tiny(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.Image([3, 3, 3], sitk.sitkUInt8)
    image += value
    sitk.WriteImage(image, str(path))
    return path


def test_verse_tree_pairs_ct_masks_and_centroids_by_name(tmp_path):
    ct_a = _tiny(tmp_path / "rawdata/sub-a/sub-a_ct.nii.gz")
    mask_a = _tiny(tmp_path / "derivatives/sub-a/sub-a_seg-vert_msk.nii.gz")
    centroids_a = tmp_path / "derivatives/sub-a/sub-a_seg-subreg_ctd.json"
    centroids_a.write_text(json.dumps([{"direction": ["L", "P", "S"]}, {"label": 20, "X": 1, "Y": 1, "Z": 1}]))
    ct_b = _tiny(tmp_path / "rawdata/sub-b/ses-1/sub-b_ses-1_dir-ax_ct.nii.gz")
    mask_b = _tiny(tmp_path / "derivatives/sub-b/ses-1/sub-b_ses-1_dir-ax_seg-vert_msk.nii.gz")
    _tiny(tmp_path / "derivatives/sub-b/ses-1/sub-b_ses-1_dir-ax_seg-subreg_msk.nii.gz")  # subregions: not vertebrae
    _tiny(tmp_path / ".cache/sub-z_seg-vert_msk.nii.gz")  # hidden folders are not data
    expected = [SpineCase("sub-a", ct_a, mask_a, centroids_a),
                SpineCase("sub-b_ses-1_dir-ax", ct_b, mask_b, None)]
    assert read_verse_layout(tmp_path) == expected
    assert read_dataset(tmp_path) == expected


def test_unpaired_files_are_reported_not_dropped(tmp_path):
    _tiny(tmp_path / "rawdata/sub-a/sub-a_ct.nii.gz")
    _tiny(tmp_path / "derivatives/sub-a/sub-a_seg-vert_msk.nii.gz")
    mask_only = _tiny(tmp_path / "derivatives/sub-b/sub-b_seg-vert_msk.nii.gz")
    with pytest.raises(InputError, match=r"1 label map \(sub-b\) without a CT"):
        read_verse_layout(tmp_path)
    cases = read_verse_layout(tmp_path, require_ct=False)
    assert [(case.name, case.ct_path) for case in cases][1] == ("sub-b", None)
    assert cases[1].label_path == mask_only
    _tiny(tmp_path / "rawdata/sub-c/sub-c_ct.nii.gz")
    with pytest.raises(InputError, match=r"1 CT \(sub-c\) without a label map"):
        read_verse_layout(tmp_path, require_ct=False)


def test_paired_folder_and_image_label_folders(tmp_path):
    pairs = tmp_path / "pairs"
    ct = _tiny(pairs / "p1_ct.nii.gz")
    labels = _tiny(pairs / "p1_seg.nii.gz")
    _tiny(pairs / "p2_ct.nrrd")
    _tiny(pairs / "p2_seg.nrrd")
    assert read_paired_folder(pairs)[0] == SpineCase("p1", ct, labels, None)
    assert [case.name for case in read_dataset(pairs)] == ["p1", "p2"]

    nnunet = tmp_path / "nnunet"
    image = _tiny(nnunet / "imagesTr/spine_001_0000.nii.gz")
    label = _tiny(nnunet / "labelsTr/spine_001.nii.gz")
    (nnunet / "labelsTr/spine_001_genant.csv").write_text("level,genant_grade\nL1,0\n")  # not an image
    assert read_image_label_folders(nnunet) == [SpineCase("spine_001", image, label, None)]
    assert read_dataset(nnunet) == read_image_label_folders(nnunet)


def test_unknown_layout_and_missing_folder_are_errors(tmp_path):
    _tiny(tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match="no data set layout recognised"):
        read_dataset(tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_dataset(tmp_path / "absent")


@pytest.mark.parametrize("stored_orientation", ["LPS", "RAS", "PIR"])
def test_centroid_voxel_coordinates_become_physical_points(tmp_path, stored_orientation):
    """Centroids written in PIR voxel units land on the label centroids, whatever the file's axes."""
    phantom = make_phantom(PhantomSpec(levels=("L1", "L2", "L3"), spacing_mm=(3.0, 2.5, 2.0), ribs=False))
    truth_lps = label_centroids_lps(phantom.labels)
    pir = sitk.DICOMOrient(phantom.labels, "PIR")
    entries = [{"direction": ["P", "I", "R"]}]
    for label, point in truth_lps.items():
        x, y, z = pir.TransformPhysicalPointToContinuousIndex(point.tolist())
        entries.append({"label": label, "X": x, "Y": y, "Z": z})
    centroids_path = tmp_path / "case_seg-subreg_ctd.json"
    centroids_path.write_text(json.dumps(entries))
    label_path = tmp_path / "case_seg-vert_msk.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(phantom.labels, stored_orientation), str(label_path))

    points = case_centroids_lps_mm(SpineCase("case", None, label_path, centroids_path))
    assert sorted(points) == sorted(truth_lps)
    for label, point in points.items():
        assert np.allclose(point, truth_lps[label], atol=1e-6)


def test_malformed_centroid_files_are_refused(tmp_path):
    path = tmp_path / "x_ctd.json"
    path.write_text(json.dumps([{"label": 99, "X": 0, "Y": 0, "Z": 0}]))
    with pytest.raises(InputError, match="99 is not a VerSe"):
        read_verse_centroids(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_verse_centroids(path)


def test_real_verse_centroids_name_the_vertebrae_they_lie_in(tmp_path, shared_data):
    masks = shared_data / "verse-masks"
    mask_path = masks / "sub-verse004_seg-vert_msk.nii.gz"
    centroids = read_verse_centroids(masks / "sub-verse004_seg-subreg_ctd.json")
    assert centroids.axis_codes == "PIR"
    assert sorted(centroids.voxel_xyz) == VERSE004_LEVELS

    mask = sitk.ReadImage(str(mask_path))
    points = centroids.physical_lps_mm(image_grid(mask_path))
    for label, point in points.items():
        assert mask[mask.TransformPhysicalPointToIndex(point)] == label  # inside its own vertebra

    # The same file read through the data set reader, from a VerSe-style tree of the real files.
    derivatives = tmp_path / "derivatives" / "sub-verse004"
    derivatives.mkdir(parents=True)
    for path in (mask_path, masks / "sub-verse004_seg-subreg_ctd.json"):
        (derivatives / path.name).symlink_to(path)
    (case,) = read_dataset(tmp_path, require_ct=False)
    assert case.name == "sub-verse004" and case.ct_path is None
    assert case_centroids_lps_mm(case) == points
