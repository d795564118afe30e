"""Auto3DSeg SegResNet models in the SlicerMONAIAuto3DSeg format (labels.csv + model.pt with its config)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("torch", reason="learned engines need PyTorch (pip install '.[learned]')")
pytest.importorskip("monai", reason="learned engines need MONAI (pip install '.[learned]')")
pytest.importorskip("nibabel", reason="MONAI loads NIfTI through nibabel (pip install '.[learned]')")

import torch  # noqa: E402

from spinefrac.errors import InputError  # noqa: E402
from spinefrac.segmentation.learned.auto3dseg import Auto3DSegEngine, read_label_map  # noqa: E402
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom  # noqa: E402

from auto3dseg_fixture import VERTEBRAE_TS2, config, write_labels, write_model  # noqa: E402
from spine_test_utils import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory):
    phantom = make_phantom(PhantomSpec(levels=("L4", "L5", "sacrum"), spacing_mm=(3.0, 3.0, 3.0), seed=3))
    path = tmp_path_factory.mktemp("ct") / "phantom.nii.gz"
    sitk.WriteImage(phantom.ct, str(path))
    return path


def test_labels_map_by_snomed_code_and_s1_joins_the_sacrum(tmp_path):
    mapping = read_label_map(write_labels(tmp_path / "labels.csv", VERTEBRAE_TS2))
    assert mapping[1] == 26 and mapping[2] == 26  # Sacrum (code), S1 vertebra (by name: its code is not ours)
    assert mapping[3] == 24 and mapping[7] == 20 and mapping[8] == 19 and mapping[26] == 1  # L5, L1, T12, C1
    assert len(mapping) == 26


def test_a_label_that_is_no_vertebra_is_refused_by_name(tmp_path):
    rows = VERTEBRAE_TS2 + [(27, "Liver", "10200004")]
    with pytest.raises(InputError, match="label 'Liver' \\(code SCT:10200004\\) is not a vertebral level"):
        read_label_map(write_labels(tmp_path / "labels.csv", rows))


def test_a_constant_network_gives_exactly_its_level_on_the_input_grid(tmp_path, phantom_path):
    model = write_model(tmp_path / "unpacked", label_value=3)  # label 3 = L5
    out = tmp_path / "out"
    completed = run_cli("run", phantom_path, "-o", out, "--engine", model, "--device", "cpu")
    assert completed.returncode == 0, completed.stderr
    labels = sitk.ReadImage(str(out / "vertebrae.nii.gz"))
    assert labels.GetSize() == sitk.ReadImage(str(phantom_path)).GetSize()
    values = set(np.unique(sitk.GetArrayFromImage(labels)))
    assert values <= {0, 24} and 24 in values  # only L5 (outside the cropped foreground: background)


def test_s1_output_is_labelled_sacrum(tmp_path, phantom_path):
    from spinefrac.io.images import load_ct

    engine = Auto3DSegEngine(write_model(tmp_path / "s1", label_value=2), "cpu")
    labels = sitk.GetArrayFromImage(engine.segment(load_ct(phantom_path)).label_map)
    assert set(np.unique(labels)) <= {0, 26} and (labels == 26).any()


def test_a_checkpoint_without_its_config_is_one_clear_error(tmp_path, phantom_path):
    from auto3dseg_fixture import constant_label_state

    state = constant_label_state(config(), 3)
    model = write_model(tmp_path / "noconfig", checkpoint={"state_dict": state})
    with pytest.raises(InputError, match="has no config: not an Auto3DSeg SegResNet checkpoint"):
        Auto3DSegEngine(model)
    completed = run_cli("run", phantom_path, "-o", tmp_path / "out", "--engine", model)
    assert completed.returncode == 2 and len(completed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    truncated = write_model(tmp_path / "truncated")
    weights = truncated / "vertebrae-3mm" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match="not a readable torch checkpoint"):
        Auto3DSegEngine(truncated)
    assert torch.load  # torch stays importable after the refusals


MODEL_AFFINE_RAS = np.array([[3.0, 0, 0, -16.5], [0, 3.0, 0, -13.5], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])  # 3 mm


def _input_grid() -> sitk.Image:
    """A finer LPS grid over the model grid's extent and a little past it, offset so that no voxel
    centre lies halfway between two model voxel centres (nearest neighbour is then unambiguous)."""
    grid = sitk.Image([49, 40, 40], sitk.sitkUInt8)  # z: 3.45 mm past the last model voxel centre
    grid.SetSpacing([0.7, 0.7, 1.1])
    grid.SetOrigin([-17.05, -14.05, -20.45])
    return grid


def _nearest_on(grid: sitk.Image, values_xyz: np.ndarray) -> np.ndarray:
    """Model-grid values carried to every voxel of ``grid`` ([z, y, x]) by nearest neighbour, worked
    out from the geometry (RAS = LPS with x and y negated; beyond the model grid its edge voxel)."""
    k, j, i = np.indices(grid.GetSize()[::-1], dtype=float)
    origin, spacing = np.asarray(grid.GetOrigin()), np.asarray(grid.GetSpacing())
    ras = np.stack([-(origin[0] + i * spacing[0]), -(origin[1] + j * spacing[1]), origin[2] + k * spacing[2]])
    model_index = (ras - MODEL_AFFINE_RAS[:3, 3, None, None, None]) / 3.0
    assert np.abs(model_index % 1 - 0.5).min() > 1e-3  # no ties
    nearest = [np.clip(np.rint(model_index[a]), 0, values_xyz.shape[a] - 1).astype(int) for a in range(3)]
    return values_xyz[nearest[0], nearest[1], nearest[2]]


def test_a_stray_piece_is_dropped_and_the_main_piece_kept_voxel_for_voxel_on_the_input_grid():
    from spinefrac.segmentation.learned.engine import box_on_grid, largest_pieces_on_grid

    model = np.zeros((12, 10, 14), dtype=np.uint8)  # [x, y, z] as MONAI holds it
    model[3:7, 3:6, 4:9] = 24  # L5: the main piece, 60 voxels
    model[10:12, 8:10, 12:14] = 24  # L5: a stray piece of 8 voxels in the far corner
    model[3:7, 3:6, 1:3] = 26  # the sacrum below, one piece
    grid = _input_grid()
    # Input voxels i 5..39, j 3..29, k 2..32 as MONAI's Orientation("RAS") and crop leave them (x, y flipped)
    crop_ras = np.array([[0.7, 0, 0, -10.25], [0, 0.7, 0, -6.25], [0, 0, 1.1, -18.25], [0, 0, 0, 1]])
    box = box_on_grid(grid, crop_ras, (35, 27, 31))
    assert box == (slice(2, 33), slice(3, 30), slice(5, 40))
    labels, notes = largest_pieces_on_grid(model, MODEL_AFFINE_RAS, grid, box)
    expected = np.zeros(grid.GetSize()[::-1], dtype=np.uint8)
    main = np.where(model == 26, 26, 0).astype(np.uint8)
    main[3:7, 3:6, 4:9] = 24
    expected[box] = _nearest_on(grid, main)[box]
    result = sitk.GetArrayFromImage(labels)
    assert labels.GetSize() == grid.GetSize() and labels.GetOrigin() == grid.GetOrigin()
    assert np.array_equal(result, expected)
    stray = _nearest_on(grid, np.where(model == 24, 1, 0)) * (_nearest_on(grid, main) == 0)
    assert stray[box].sum() > 0 and not (result[stray > 0] == 24).any()  # the stray piece lay inside: dropped
    assert notes == [f"{int(stray[box].sum())} voxels in islands apart from their level's main piece were dropped"]


def test_pieces_found_on_the_model_grid_give_the_input_grid_clean_up():
    """Random labels of three levels, many pieces each (size ties included): the clean-up on the model
    grid equals resampling the labels first and keeping each level's largest piece on the input grid."""
    from spinefrac.segmentation.learned.engine import keep_largest_components, largest_pieces_on_grid

    rng = np.random.default_rng(7)
    grid = _input_grid()
    everything = tuple(slice(0, size) for size in grid.GetSize()[::-1])
    for _ in range(3):
        model = np.where(rng.random((12, 10, 14)) < 0.35, rng.choice([18, 22, 24], (12, 10, 14)), 0).astype(np.uint8)
        labels, notes = largest_pieces_on_grid(model, MODEL_AFFINE_RAS, grid, everything)
        expected, expected_notes = keep_largest_components(_nearest_on(grid, model))
        assert np.array_equal(sitk.GetArrayFromImage(labels), expected) and notes == expected_notes
