"""The learned segmentation engine: training on phantoms, packages and their checksums (MONAI bundles:
test_monai_bundle.py; the registry and downloads: test_model_registry.py)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[learned]')")
pytest.importorskip("monai", reason="MONAI is not installed (pip install '.[learned]')")

from spinefrac.errors import InputError  # noqa: E402
from spinefrac.io.filenames import MODEL_MANIFEST_FILE  # noqa: E402
from spinefrac.io.images import load_ct, to_canonical  # noqa: E402
from spinefrac.segmentation.learned.engine import LearnedEngine, order_violations  # noqa: E402
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom  # noqa: E402
from spinefrac.training.segmentation import SegmentationTrainingConfig, train_segmentation  # noqa: E402

from spine_test_utils import run_cli  # noqa: E402

LEVELS = ("L3", "L4", "L5", "sacrum")
TINY = SegmentationTrainingConfig(spacing_mm=(4.0, 4.0, 4.0), patch_size=(24, 24, 24), init_filters=8,
                                  blocks_down=(1, 1), blocks_up=(1,), epochs=8, steps_per_epoch=8, batch_size=2,
                                  learning_rate=1e-2, validation_fraction=0.34)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    for index in range(3):
        phantom = make_phantom(PhantomSpec(levels=LEVELS, spacing_mm=(3.0, 3.0, 3.0), ribs=False, seed=index,
                                           sagittal_curvature_mm=4.0 * index))
        sitk.WriteImage(phantom.ct, str(data / f"case{index}_ct.nii.gz"))
        sitk.WriteImage(phantom.labels, str(data / f"case{index}_seg.nii.gz"))
    package = tmp_path_factory.mktemp("model")
    history = train_segmentation(data, package, TINY, log=lambda line: None)
    return data, package, history


def test_training_lowers_the_loss_and_raises_validation_dice(trained):
    _, _, history = trained
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert np.mean(history["validation_dice"][-3:]) > history["validation_dice"][0]
    assert set(history["validation_dice_per_level"][-1]) <= {"L3", "L4", "L5", "sacrum"}


def test_package_manifest_maps_channels_to_levels_and_pins_the_weights(trained):
    _, package, _ = trained
    manifest = json.loads((package / MODEL_MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["label_map"] == {"1": 22, "2": 23, "3": 24, "4": 26}
    assert manifest["network"] == "SegResNet" and len(manifest["weights_sha256"]) == 64
    assert (package / "checkpoint.pt").is_file()


def test_reloaded_package_reproduces_its_labels_on_the_input_grid(tmp_path, trained):
    data, package, _ = trained
    ct = load_ct(data / "case0_ct.nii.gz")
    first = LearnedEngine(package).segment(ct)
    second = LearnedEngine(package).segment(ct)
    assert np.array_equal(first.array(), second.array())
    assert first.label_map.GetSize() == ct.image.GetSize()
    result = run_cli("run", sitk_reoriented(data / "case0_ct.nii.gz", tmp_path / "ras.nii.gz", "RAS"),
                     "--engine", package, "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    written = sitk.ReadImage(str(tmp_path / "out" / "vertebrae.nii.gz"))
    assert written.GetDirection() == sitk.ReadImage(str(tmp_path / "ras.nii.gz")).GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(to_canonical(written)), first.array())


def sitk_reoriented(source, target, orientation):
    sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(source)), orientation), str(target))
    return target


def _copy_package(source, target):
    target.mkdir()
    for name in ("manifest.json", "weights.pt"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_corrupted_weights_are_refused(tmp_path, trained):
    _, package, _ = trained
    broken = _copy_package(package, tmp_path / "broken")
    weights = bytearray((broken / "weights.pt").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (broken / "weights.pt").write_bytes(bytes(weights))
    with pytest.raises(InputError, match="do not match the manifest's checksum"):
        LearnedEngine(broken)


def test_a_manifest_whose_labels_do_not_map_is_refused(tmp_path, trained):
    _, package, _ = trained
    odd = _copy_package(package, tmp_path / "odd")
    manifest = json.loads((odd / "manifest.json").read_text(encoding="utf-8"))
    manifest["label_map"]["2"] = 99  # not a VerSe id
    (odd / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(InputError, match="does not map to VerSe levels"):
        LearnedEngine(odd)


def test_order_check_reports_swapped_and_missing_levels():
    labels = np.zeros((60, 10, 10), np.uint8)
    labels[40:50] = 20  # L1 on top
    labels[25:35] = 22  # L3 below, L2 missing
    labels[5:15] = 21  # L2 at the bottom: out of order
    image = sitk.GetImageFromArray(labels)
    notes = " ".join(order_violations(image))
    assert "level order violated" in notes


def test_training_resumes_from_its_checkpoint(tmp_path, trained):
    import dataclasses
    import shutil

    data, package, history = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(package, resumed)
    longer = dataclasses.replace(TINY, epochs=TINY.epochs + 1)
    lines = []
    new_history = train_segmentation(data, resumed, longer, resume=True, log=lines.append)
    assert lines[0] == f"resumed after epoch {TINY.epochs}"
    assert new_history["train_loss"][: TINY.epochs] == history["train_loss"]
    assert len(new_history["train_loss"]) == TINY.epochs + 1
