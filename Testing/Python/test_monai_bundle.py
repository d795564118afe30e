"""MONAI Model Zoo bundles through monai.bundle.ConfigParser, on a bundle folder with the real
wholeBody_ct_segmentation structure (see monai_bundle_fixture.py) and weights of its exact network."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("torch", reason="learned engines need PyTorch (pip install '.[learned]')")
pytest.importorskip("monai", reason="learned engines need MONAI (pip install '.[learned]')")
pytest.importorskip("nibabel", reason="MONAI bundles load NIfTI through nibabel (pip install '.[learned]')")

import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

from spinefrac.errors import InputError  # noqa: E402
from spinefrac.io.images import ct_from_image, load_ct  # noqa: E402
from spinefrac.segmentation.learned.bundle import MonaiBundleEngine, read_description  # noqa: E402
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom  # noqa: E402

from monai_bundle_fixture import (  # noqa: E402
    L5_CHANNEL,
    LIVER_CHANNEL,
    SACRUM_CHANNEL,
    constant_channel_state,
    network,
    write_bundle,
)
from spine_test_utils import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def small_ct():
    """A lumbar phantom at 3 mm that fits one 96^3 window of the low-resolution bundle."""
    phantom = make_phantom(PhantomSpec(levels=("L4", "L5", "sacrum"), spacing_mm=(3.0, 3.0, 3.0), seed=2))
    return ct_from_image(phantom.ct, "phantom.nii.gz", "phantom")


@pytest.fixture(scope="module")
def l5_bundle(tmp_path_factory):
    """Full-resolution weights say 'sacrum' everywhere, low-resolution ones 'L5': which file ran shows."""
    return write_bundle(tmp_path_factory.mktemp("bundle") / "wholeBody_ct_segmentation",
                        constant_channel_state(SACRUM_CHANNEL), constant_channel_state(L5_CHANNEL))


def _labels(segmentation) -> np.ndarray:
    return sitk.GetArrayFromImage(segmentation.label_map)


def test_every_channel_is_mapped_by_its_name_in_metadata(l5_bundle):
    description = read_description(l5_bundle)
    verse_ids = description.verse_ids()
    assert len(description.channel_names) == 105
    assert verse_ids[SACRUM_CHANNEL] == 26 and verse_ids[L5_CHANNEL] == 24 and verse_ids[41] == 1  # sacrum, L5, C1
    assert {LIVER_CHANNEL, 42, 104}.isdisjoint(verse_ids)  # liver, oesophagus, bladder: background
    assert len(verse_ids) == 25 and all(v > 0 for v in verse_ids.values())  # C1-L5 and the sacrum, nothing else


def test_low_resolution_weights_on_cpu_give_exactly_their_channel(l5_bundle, small_ct):
    engine = MonaiBundleEngine(l5_bundle, "cpu")
    assert engine.weights_path().name == "model_lowres.pt" and engine.highres is False
    segmentation = engine.segment(small_ct)
    labels = _labels(segmentation)
    assert labels.shape == small_ct.array().shape  # inverted back onto the input grid
    assert set(np.unique(labels)) == {24}  # every voxel channel 18 -> L5, nothing else
    assert "low-resolution" in segmentation.source and "v0.2.5" in segmentation.source


def test_sacrum_channel_maps_to_the_sacrum_and_organs_to_nothing(tmp_path, small_ct):
    sacrum = write_bundle(tmp_path / "sacrum", constant_channel_state(SACRUM_CHANNEL))
    assert set(np.unique(_labels(MonaiBundleEngine(sacrum, "cpu").segment(small_ct)))) == {26}
    liver = write_bundle(tmp_path / "liver", constant_channel_state(LIVER_CHANNEL))
    with pytest.raises(InputError, match="no spine found"):
        MonaiBundleEngine(liver, "cpu").segment(small_ct)


def test_network_input_is_the_bundles_own_preprocessing(l5_bundle, sample_ct, tmp_path):
    """Our route (load_ct -> canonical grid -> bundle preprocessing) against MONAI's bundle
    preprocessing of the original file, resolved by a separate ConfigParser."""
    engine = MonaiBundleEngine(l5_bundle, "cpu")
    ct = load_ct(sample_ct)
    written = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct.image, str(written))
    ours = engine.network_input(written)["image"].numpy()
    parser = ConfigParser()
    parser.read_config(str(l5_bundle / "configs" / "inference.json"))
    parser["displayable_configs#highres"] = False
    reference = parser.get_parsed_content("preprocessing")({"image": str(sample_ct)})["image"].numpy()
    assert ours.shape == reference.shape
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] >= 0.999


@pytest.mark.parametrize("wrap", ["plain", "model", "module_prefix"])
def test_checkpoints_load_as_monai_writes_them(tmp_path, small_ct, wrap):
    state = constant_channel_state(L5_CHANNEL)
    checkpoint = {"plain": state, "model": {"model": state, "epoch": 3},
                  "module_prefix": {f"module.{name}": value for name, value in state.items()}}[wrap]
    bundle = write_bundle(tmp_path / wrap, checkpoint)
    engine = MonaiBundleEngine(bundle, "cpu")
    for name, value in engine.network.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_broken_weights_are_one_clear_error(tmp_path):
    bundle = write_bundle(tmp_path / "truncated", constant_channel_state(L5_CHANNEL))
    weights = bundle / "models" / "model_lowres.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(InputError, match="not a readable torch checkpoint") as error:
        MonaiBundleEngine(bundle, "cpu")
    assert "\n" not in str(error.value)
    other = network().state_dict()
    other.pop("conv_final.2.conv.bias")
    wrong = write_bundle(tmp_path / "wrong", other)
    with pytest.raises(InputError, match="does not fit the bundle's network_def"):
        MonaiBundleEngine(wrong, "cpu")


def test_spinefrac_run_with_a_bundle_folder(l5_bundle, small_ct, tmp_path):
    ct_path = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(small_ct.image, str(ct_path))
    out = tmp_path / "out"
    completed = run_cli("run", ct_path, "-o", out, "--engine", l5_bundle, "--device", "cpu")
    assert completed.returncode == 0, completed.stderr
    labels = sitk.ReadImage(str(out / "vertebrae.nii.gz"))
    assert labels.GetSize() == small_ct.image.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(labels))) == {24}
    assert not (l5_bundle / "manifest.json").exists()  # the bundle folder is read, never written
