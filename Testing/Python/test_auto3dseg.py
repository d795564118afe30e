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
