"""The existing-segmentation input: VerSe ids, TotalSegmentator ids and masks, Slicer segment names."""

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.images import load_ct
from spinefrac.levels import TOTALSEGMENTATOR_V2_IDS
from spinefrac.segmentation.base import LabelConvention
from spinefrac.segmentation.label_maps import ExistingLabelMap

from spine_test_utils import reoriented


@pytest.fixture(scope="module")
def ct_and_labels(tmp_path_factory, sample_ct, sample_labels):
    return load_ct(sample_ct), sitk.ReadImage(str(sample_labels))


def _write(image, path):
    sitk.WriteImage(image, str(path))
    return path


def _as(labels: sitk.Image, array: np.ndarray, pixel=sitk.sitkUInt8) -> sitk.Image:
    image = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    image.CopyInformation(labels)
    return image


def test_verse_ids_pass_through_unchanged(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    result = ExistingLabelMap(_write(labels, tmp_path / "v.nii.gz")).segment(ct)
    assert result.convention is LabelConvention.VERSE
    assert [level.name for level in result.levels] == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum"]
    restored = ct.to_source_grid(result.label_map)
    assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(labels))


def test_totalsegmentator_ids_are_mapped_and_organs_ignored(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels)
    to_ts = {verse_id: ts_id for ts_id, verse_id in TOTALSEGMENTATOR_V2_IDS.items() if ts_id != 26}
    ts = np.zeros_like(verse, dtype=np.uint16)
    for verse_id, ts_id in to_ts.items():
        ts[verse == verse_id] = ts_id
    ts[:3, :3, :3] = 5  # liver, in TotalSegmentator's ids
    result = ExistingLabelMap(_write(_as(labels, ts, sitk.sitkUInt16), tmp_path / "ts.nii.gz")).segment(ct)
    assert result.convention is LabelConvention.TOTALSEGMENTATOR
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(result.label_map)), sitk.GetArrayFromImage(labels))
    assert result.ignored_labels == {"5": 27}


def test_folder_of_totalsegmentator_masks(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels)
    names = {18: "vertebrae_T11", 19: "vertebrae_T12", 20: "vertebrae_L1", 21: "vertebrae_L2",
             22: "vertebrae_L3", 23: "vertebrae_L4", 24: "vertebrae_L5", 26: "sacrum"}
    for verse_id, name in names.items():
        _write(_as(labels, (verse == verse_id).astype(np.uint8)), tmp_path / f"{name}.nii.gz")
    _write(_as(labels, np.zeros_like(verse)), tmp_path / "liver.nii.gz")
    result = ExistingLabelMap(tmp_path).segment(ct)
    assert result.convention is LabelConvention.NAMES
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(result.label_map)), sitk.GetArrayFromImage(labels))
    assert "liver" in result.ignored_labels


def test_slicer_segment_names_decide_the_levels(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels)
    relabelled = np.zeros_like(verse)
    relabelled[verse == 20] = 1
    relabelled[verse == 21] = 2
    image = _as(labels, relabelled)
    for index, (value, name) in enumerate([(1, "L1 vertebra"), (2, "vertebrae_L2")]):
        image.SetMetaData(f"Segment{index}_Name", name)
        image.SetMetaData(f"Segment{index}_LabelValue", str(value))
    result = ExistingLabelMap(_write(image, tmp_path / "edited.seg.nrrd")).segment(ct)
    assert [level.name for level in result.levels] == ["L1", "L2"]
    assert np.count_nonzero(result.array() == 21) == np.count_nonzero(verse == 21)


def test_label_map_stored_in_another_orientation_is_accepted(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    result = ExistingLabelMap(_write(reoriented(labels, "PIL"), tmp_path / "pil.nii.gz")).segment(ct)
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(result.label_map)), sitk.GetArrayFromImage(labels))


def test_float_label_map_with_integer_values_is_accepted(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    result = ExistingLabelMap(_write(sitk.Cast(labels, sitk.sitkFloat64), tmp_path / "f.nii.gz")).segment(ct)
    assert len(result.levels) == 8


def test_grid_mismatch_is_refused_with_what_differs(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    shifted = sitk.Image(labels)
    shifted.SetOrigin(tuple(o + 1.5 for o in labels.GetOrigin()))
    with pytest.raises(InputError, match="not on the CT's voxel grid.*origin"):
        ExistingLabelMap(_write(shifted, tmp_path / "shifted.nii.gz")).segment(ct)
    cropped = labels[:, :, 10:]
    with pytest.raises(InputError, match="size"):
        ExistingLabelMap(_write(cropped, tmp_path / "cropped.nii.gz")).segment(ct)


def test_empty_label_map_is_refused(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    empty = _as(labels, np.zeros(labels.GetSize()[::-1], np.uint8))
    with pytest.raises(InputError, match="no vertebra labels"):
        ExistingLabelMap(_write(empty, tmp_path / "empty.nii.gz")).segment(ct)


def test_unknown_verse_ids_are_refused_not_dropped(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    array = sitk.GetArrayFromImage(labels)
    array[array == 22] = 27  # 27 is no VerSe level
    with pytest.raises(InputError, match="not VerSe vertebra ids: 27"):
        ExistingLabelMap(_write(_as(labels, array), tmp_path / "odd.nii.gz")).segment(ct)


def test_fractional_values_are_refused(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    probability = sitk.Cast(labels, sitk.sitkFloat32) * 0.5
    with pytest.raises(InputError, match="non-integer"):
        ExistingLabelMap(_write(probability, tmp_path / "p.nii.gz")).segment(ct)


@pytest.mark.parametrize("stray_id, voxels", [(30, 1), (255, 40)])
def test_a_stray_id_never_switches_the_convention(tmp_path, ct_and_labels, stray_id, voxels):
    """One voxel of 30 (or an 'ignore' blob of 255) once made the map read as TotalSegmentator's and
    every vertebra was dropped: now the whole id set decides, and a mixed set is refused."""
    ct, labels = ct_and_labels
    array = sitk.GetArrayFromImage(labels).astype(np.uint16)
    array.reshape(-1)[:voxels] = stray_id
    path = _write(_as(labels, array, sitk.sitkUInt16), tmp_path / "stray.nii.gz")
    with pytest.raises(InputError, match=rf"not VerSe vertebra ids: {stray_id} \({voxels} voxels\).*--labels verse"):
        ExistingLabelMap(path).segment(ct)
    chosen = ExistingLabelMap(path, LabelConvention.VERSE).segment(ct)  # the user picks: the stray id is ignored
    assert chosen.ignored_labels == {str(stray_id): voxels}
    expected = sitk.GetArrayFromImage(labels).copy()
    expected.reshape(-1)[:voxels] = 0
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(chosen.label_map)), expected)


def test_ignored_ids_are_said_on_the_terminal(tmp_path, ct_and_labels, sample_ct, sample_labels):
    from spine_test_utils import run_cli

    labels = sitk.ReadImage(str(sample_labels))
    array = sitk.GetArrayFromImage(labels).astype(np.uint16)
    array.reshape(-1)[:1] = 30
    path = _write(_as(labels, array, sitk.sitkUInt16), tmp_path / "stray.nii.gz")
    result = run_cli("run", sample_ct, "--segmentation", path, "--labels", "verse", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "labels ignored (not vertebrae, verse ids): 30 (1 voxels)" in result.stderr


def test_two_segments_named_after_one_level_are_refused_not_merged(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels)
    relabelled = np.zeros_like(verse)
    relabelled[verse == 20] = 1
    relabelled[verse == 22] = 2  # L3's voxels, but named L1 too
    image = _as(labels, relabelled)
    for index, (value, name) in enumerate([(1, "L1"), (2, "L1 vertebra")]):
        image.SetMetaData(f"Segment{index}_Name", name)
        image.SetMetaData(f"Segment{index}_LabelValue", str(value))
    with pytest.raises(InputError, match="segments 'L1' and 'L1 vertebra' both name L1"):
        ExistingLabelMap(_write(image, tmp_path / "twice.seg.nrrd")).segment(ct)


def test_a_damaged_seg_nrrd_label_value_is_one_clear_error(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    image = _as(labels, (sitk.GetArrayFromImage(labels) == 20).astype(np.uint8))
    image.SetMetaData("Segment0_Name", "L1")
    image.SetMetaData("Segment0_LabelValue", "one")
    with pytest.raises(InputError, match="label value 'one', not a whole number"):
        ExistingLabelMap(_write(image, tmp_path / "damaged.seg.nrrd")).segment(ct)


def test_a_slightly_tilted_label_grid_names_the_tilt(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    tilted = sitk.Image(labels)
    angle = np.radians(0.5)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    tilted.SetDirection((rotation @ np.array(labels.GetDirection()).reshape(3, 3)).ravel().tolist())
    with pytest.raises(InputError, match=r"axes tilted 0\.50 degrees apart"):
        ExistingLabelMap(_write(tilted, tmp_path / "tilted.nii.gz")).segment(ct)
