"""The existing-segmentation input: VerSe ids, TotalSegmentator ids and masks, Slicer segment names."""

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.images import load_ct
from spinefrac.levels import TOTALSEGMENTATOR_V1_IDS, TOTALSEGMENTATOR_V2_IDS
from spinefrac.segmentation.base import LabelConvention, labelled_box
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


# -- TotalSegmentator v1 and v2 ids (class maps "total_v1" and "total" of its map_to_binary.py) ----------

V1_IDS = {24: 18, 23: 19, 22: 20, 21: 21, 20: 22, 19: 23, 18: 24, 26: 92}  # VerSe id -> v1 id (L5 18 ... T11 24)
V2_IDS = {19: 32, 20: 31, 21: 30, 22: 29, 23: 28, 24: 27, 18: 33, 26: 25}  # VerSe id -> v2 id (sacrum 25)


def _totalsegmentator_file(path, sample_ct, verse, ids_by_verse_id, organs=()):
    """A multilabel file as TotalSegmentator writes it: nibabel, the CT's affine and header, uint8."""
    nib = pytest.importorskip("nibabel")
    ct_nifti = nib.load(str(sample_ct))
    ids = np.zeros_like(verse, dtype=np.uint8)
    for verse_id, ts_id in ids_by_verse_id.items():
        ids[verse == verse_id] = ts_id
    for organ_id, region in organs:
        ids[region] = organ_id
    image = nib.Nifti1Image(np.ascontiguousarray(ids.transpose(2, 1, 0)), ct_nifti.affine, ct_nifti.header)
    image.set_data_dtype(np.uint8)
    nib.save(image, str(path))
    return path


def _expected(verse, ids_by_verse_id):
    return np.where(np.isin(verse, list(ids_by_verse_id)), verse, 0)


@pytest.mark.parametrize("with_sacrum", [True, False])
def test_totalsegmentator_v1_ids_are_read_as_v1(tmp_path, ct_and_labels, sample_ct, with_sacrum):
    """v1 numbers L5 18 ... T11 24 (sacrum 92): as VerSe ids the same numbers run the other way
    (18 T11 ... 24 L5), so without the sacrum they once read as VerSe with the order inverted."""
    ct, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels)
    ids = V1_IDS if with_sacrum else {k: v for k, v in V1_IDS.items() if k != 26}
    path = _totalsegmentator_file(tmp_path / "v1.nii.gz", sample_ct, verse, ids, organs=[(5, np.s_[:3, :3, :3])])
    result = ExistingLabelMap(path).segment(ct)
    assert result.convention is LabelConvention.TOTALSEGMENTATOR_V1
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(result.label_map)), _expected(verse, ids))
    assert result.ignored_labels == {"5": 27}


def test_v2_ids_of_the_lumbar_spine_are_read_as_v2_not_v1(tmp_path, ct_and_labels, sample_ct):
    """v2's sacrum (25), L5..T11 (27..33) also read as v1's T10, T8..T2 in cranio-caudal order: v1 would
    leave T9 (26) missing inside the spine, v2 has no gap."""
    ct, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels)
    path = _totalsegmentator_file(tmp_path / "v2.nii.gz", sample_ct, verse, V2_IDS)
    result = ExistingLabelMap(path).segment(ct)
    assert result.convention is LabelConvention.TOTALSEGMENTATOR
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(result.label_map)), verse)
    assert any("also fit TotalSegmentator v1" in note for note in result.notes)


def test_v1_ids_that_also_fit_v2_are_read_as_v1_when_v2_would_call_vertebrae_organs(tmp_path, ct_and_labels,
                                                                                       sample_ct):
    """The sample's eight real vertebrae renumbered as v1's T6..L1 (29..22): as v2 ids, 25..29 are the
    sacrum, S1, L5..L3 in order, but then 22..24 (v2's prostate and kidney cysts) continue the column
    right below that 'sacrum': v2 is refused, v1 taken, and the note says why."""
    ct, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels)
    renumbered = {18: 29, 19: 28, 20: 27, 21: 26, 22: 25, 23: 24, 24: 23, 26: 22}  # VerSe id -> v1 T6..L1
    path = _totalsegmentator_file(tmp_path / "v1.nii.gz", sample_ct, verse, renumbered)
    result = ExistingLabelMap(path).segment(ct)
    assert result.convention is LabelConvention.TOTALSEGMENTATOR_V1
    expected = np.zeros_like(verse)
    for verse_id, v1_id in renumbered.items():
        expected[verse == verse_id] = TOTALSEGMENTATOR_V1_IDS[v1_id]
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(result.label_map)), expected)
    assert any("read as TotalSegmentator v1 (T6-L1)" in note for note in result.notes)


def test_ids_that_fit_v1_and_v2_alike_are_refused_with_both_and_the_option(tmp_path, ct_and_labels, sample_ct):
    """27..33 alone are v2's L5..T11 or v1's T8..T2, both complete and in order: nothing on the image tells."""
    ct, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels)
    ids = {k: v for k, v in V2_IDS.items() if k != 26}
    path = _totalsegmentator_file(tmp_path / "either.nii.gz", sample_ct, verse, ids)
    with pytest.raises(InputError, match=r"fit more than one convention \(TotalSegmentator v2: T11-L5; "
                                         r"TotalSegmentator v1: T2-T8\).*--labels totalseg-v2, --labels totalseg-v1"):
        ExistingLabelMap(path).segment(ct)
    as_v2 = ExistingLabelMap(path, LabelConvention.TOTALSEGMENTATOR).segment(ct)
    assert [level.name for level in as_v2.levels] == ["T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    as_v1 = ExistingLabelMap(path, LabelConvention.TOTALSEGMENTATOR_V1).segment(ct)
    assert [level.name for level in as_v1.levels] == ["T2", "T3", "T4", "T5", "T6", "T7", "T8"]


def test_labels_option_takes_the_new_choices(tmp_path, sample_ct, ct_and_labels):
    from spine_test_utils import run_cli

    _, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels)
    path = _totalsegmentator_file(tmp_path / "either.nii.gz", sample_ct, verse,
                                  {k: v for k, v in V2_IDS.items() if k != 26})
    refused = run_cli("run", sample_ct, "--segmentation", path, "-o", tmp_path / "refused", "-q")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--labels totalseg-v1" in refused.stderr and not (tmp_path / "refused").exists()
    chosen = run_cli("run", sample_ct, "--segmentation", path, "--labels", "totalseg-v2", "-o", tmp_path / "out")
    assert chosen.returncode == 0, chosen.stderr
    assert "T11" in chosen.stderr and "L5" in chosen.stderr


# -- .seg.nrrd with overlapping segments: 3D Slicer writes them into separate layers (a 4-D file) -----------


def _slicer_seg_nrrd(tmp_path, sample_ct, sample_labels, edit):
    """Our level segments in a real MRML segmentation node (slicer-core), edited, then written by Slicer's
    own vtkMRMLSegmentationStorageNode."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")
    from SpineFractureDetectionLib import mrml_logic

    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    mrml_logic.update_volume_from_sitk(volume, sitk.ReadImage(str(sample_ct)))
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Vertebrae")
    ct = load_ct(sample_ct)
    mrml_logic.write_level_segments(node, volume, ExistingLabelMap(sample_labels).segment(ct), ct)
    edit(node, volume, mrml_logic)
    assert node.GetSegmentation().GetNumberOfLayers() == 2  # the edit made Slicer store two layers
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(str(tmp_path / "edited.seg.nrrd"))
    assert storage.WriteData(node)
    return tmp_path / "edited.seg.nrrd"


def test_overlapping_vertebra_segments_in_two_layers_are_named_with_the_fix(tmp_path, ct_and_labels, sample_ct,
                                                                             sample_labels):
    """L2 painted 3 voxels into L1 and L3: was 'a colour or vector image'."""
    from scipy import ndimage

    verse = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels)))

    def grow_l2(node, volume, mrml_logic):
        l2 = node.GetSegmentation().GetSegmentIdBySegmentName("L2")
        mrml_logic.set_segment_mask(node, l2, ndimage.binary_dilation(verse == 21, iterations=3), volume)

    path = _slicer_seg_nrrd(tmp_path, sample_ct, sample_labels, grow_l2)
    assert sitk.ReadImage(str(path)).GetNumberOfComponentsPerPixel() == 2
    with pytest.raises(InputError, match=r"segments 'L1' and 'L2' overlap in \d+ voxels \(3D Slicer stored them in "
                                         r"separate layers\).*Segment Editor") as refused:
        ExistingLabelMap(path).segment(ct_and_labels[0])
    assert "colour" not in str(refused.value)


def test_a_second_layer_holding_another_structure_is_read_level_by_level(tmp_path, ct_and_labels, sample_ct,
                                                                         sample_labels):
    """A 'spinal canal' segment drawn over the vertebrae goes into its own layer; every vertebra is still
    recoverable from its layer and label value, so the file is read, voxel for voxel."""
    verse = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels)))

    def add_canal(node, volume, mrml_logic):
        canal = node.GetSegmentation().AddEmptySegment("", "spinal canal")
        column = np.zeros_like(verse, dtype=bool)
        column[:, 40:50, 55:65] = True  # through the vertebrae
        assert np.count_nonzero(column & (verse > 0)) > 0
        mrml_logic.set_segment_mask(node, canal, column, volume)

    path = _slicer_seg_nrrd(tmp_path, sample_ct, sample_labels, add_canal)
    ct = ct_and_labels[0]
    result = ExistingLabelMap(path).segment(ct)
    assert result.convention is LabelConvention.NAMES and "spinal canal" in result.ignored_labels
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(result.label_map)), verse)


def test_verse_ids_on_an_image_flipped_head_to_foot_are_refused_not_read_as_v1(tmp_path, ct_and_labels):
    """Flipped, the sample's VerSe ids (18 T11 ... 24 L5, 26 sacrum) run upwards like v1's L5 ... T11, T9:
    v1 would be the only reading that fits, with T10 missing inside the spine; refused, not relabelled."""
    ct, labels = ct_and_labels
    flipped = _as(labels, sitk.GetArrayFromImage(labels)[::-1].copy())
    with pytest.raises(InputError, match=r"read only as TotalSegmentator v1 \(T9-L5\), with T10 missing inside "
                                         r"the spine \(as VerSe: its levels are not in cranio-caudal order"):
        ExistingLabelMap(_write(flipped, tmp_path / "flipped.nii.gz")).segment(ct)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_the_labelled_box_is_the_bounding_box_of_every_non_zero_voxel(dtype):
    """Label files come as unsigned, signed (negative values are refused later, not lost) and float maps."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        values = np.zeros(tuple(rng.integers(1, 8, size=3)), dtype=dtype)
        for _ in range(rng.integers(0, 4)):
            values[tuple(rng.integers(0, n) for n in values.shape)] = rng.choice([1, 26, 255, -3 if dtype in (
                np.int16, np.float32) else 2])
        found = np.argwhere(values != 0)
        expected = [(0, 0)] * 3 if found.size == 0 else list(zip(found.min(axis=0), found.max(axis=0) + 1))
        assert [(part.start, part.stop) for part in labelled_box(values)] == expected


def test_labels_in_opposite_corners_keep_their_ids_and_counts(tmp_path, ct_and_labels):
    """Ids are counted and mapped inside the labels' box only: labels in two corners of the grid span it."""
    ct, labels = ct_and_labels
    verse = sitk.GetArrayFromImage(labels).astype(np.uint16)
    verse[0, 0, 0], verse[-1, -1, -1] = 99, 20  # an id VerSe does not know, and one voxel of L1
    path = _write(_as(labels, verse, sitk.sitkUInt16), tmp_path / "corners.nii.gz")
    result = ExistingLabelMap(path, LabelConvention.VERSE).segment(ct)
    assert result.ignored_labels == {"99": 1}
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(result.label_map)), np.where(verse == 99, 0, verse))
