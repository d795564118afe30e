"""The optional learned classifier: training on phantom crops, packaging, checksums, fusion."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[learned]')")
pytest.importorskip("monai", reason="MONAI is not installed (pip install '.[learned]')")

from spinefrac.assessment.classifier import CropGeometry, FractureClassifier, NetworkConfig  # noqa: E402
from spinefrac.assessment.measurement import measure_vertebrae  # noqa: E402
from spinefrac.assessment.morphometry import measure_morphometry  # noqa: E402
from spinefrac.errors import InputError  # noqa: E402
from spinefrac.io.filenames import MODEL_MANIFEST_FILE, MODEL_WEIGHTS_FILE  # noqa: E402
from spinefrac.io.images import load_ct  # noqa: E402
from spinefrac.segmentation.label_maps import ExistingLabelMap  # noqa: E402
from spinefrac.synthetic.phantom import Fracture, PhantomSpec, make_phantom  # noqa: E402
from spinefrac.training.classifier import examples_from_dataset, fit_temperature, train_classifier  # noqa: E402

from spine_test_utils import run_cli  # noqa: E402

TINY_NETWORK = NetworkConfig(init_features=4, growth_rate=4, block_config=(1, 1), dropout_prob=0.0)
TINY_CROP = CropGeometry(size_voxels=16, spacing_mm=4.0)
LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5", "sacrum")


def _write_case(folder, name, fractures, seed):
    phantom = make_phantom(PhantomSpec(levels=LEVELS, spacing_mm=(2.5, 2.5, 2.5), fractures=fractures, ribs=False,
                                       seed=seed))
    sitk.WriteImage(phantom.ct, str(folder / f"{name}_ct.nii.gz"))
    sitk.WriteImage(phantom.labels, str(folder / f"{name}_seg.nii.gz"))
    lines = ["level,genant_grade"] + [f"{level},{3 if level in fractures else 0}" for level in LEVELS[:-1]]
    (folder / f"{name}_genant.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graded")
    plans = [{"L1": Fracture("crush", 0.45)}, {"L3": Fracture("wedge", 0.5)}, {},
             {"L2": Fracture("crush", 0.5), "L4": Fracture("wedge", 0.45)}, {"T12": Fracture("crush", 0.45)}, {}]
    for index, fractures in enumerate(plans):
        _write_case(folder, f"case{index}", fractures, seed=index)
    return folder


@pytest.fixture(scope="module")
def package(tmp_path_factory, dataset):
    examples = examples_from_dataset(dataset, crop=TINY_CROP, log=lambda line: None)
    output = tmp_path_factory.mktemp("model") / "package"
    history = train_classifier(examples, output, epochs=12, batch_size=6, learning_rate=3e-3,
                               network_config=TINY_NETWORK, crop=TINY_CROP, log=lambda line: None)
    return output, history, examples


def test_examples_carry_the_grade_files_labels(package):
    _, _, examples = package
    assert len(examples) == 6 * 6  # six graded vertebrae per case, the sacrum is not graded
    assert sum(e.fractured for e in examples) == 5
    assert all(e.crop.shape == (2, 16, 16, 16) for e in examples)
    fractured_l1 = next(e for e in examples if e.case == "case0" and e.level == "L1")
    normal_l1 = next(e for e in examples if e.case == "case2" and e.level == "L1")
    assert fractured_l1.crop[1].sum() < normal_l1.crop[1].sum()  # a 45 % crush has less mask


def test_training_lowers_the_loss_and_writes_a_verified_package(package):
    output, history, _ = package
    assert history["train_loss"][-1] < history["train_loss"][0]
    manifest = json.loads((output / MODEL_MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["temperature"] > 0 and len(manifest["weights_sha256"]) == 64
    assert manifest["crop"] == {"size_voxels": 16, "spacing_mm": 4.0}


def test_reloaded_package_gives_reproducible_probabilities(package, dataset):
    output, _, _ = package
    ct = load_ct(dataset / "case0_ct.nii.gz")
    segmentation = ExistingLabelMap(dataset / "case0_seg.nii.gz").segment(ct)
    morphometry = measure_morphometry(ct, segmentation, measure_vertebrae(ct, segmentation))
    first = FractureClassifier.load(output).probabilities(ct, segmentation, morphometry)
    second = FractureClassifier.load(output).probabilities(ct, segmentation, morphometry)
    assert set(first) == {"T12", "L1", "L2", "L3", "L4", "L5"}
    assert first == second
    assert all(0.0 <= p <= 1.0 for p in first.values())


def test_corrupted_weights_are_refused(tmp_path, package):
    output, _, _ = package
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / MODEL_MANIFEST_FILE).write_text((output / MODEL_MANIFEST_FILE).read_text(encoding="utf-8"), encoding="utf-8")
    weights = bytearray((output / MODEL_WEIGHTS_FILE).read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (broken / MODEL_WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(InputError, match="do not match the manifest's checksum"):
        FractureClassifier.load(broken)


def test_unloadable_weights_with_a_matching_checksum_are_refused(tmp_path, package):
    from spinefrac.io.model_packages import sha256_of

    output, _, _ = package
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / MODEL_WEIGHTS_FILE).write_bytes(b"not a state dict" * 10)
    manifest = json.loads((output / MODEL_MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["weights_sha256"] = sha256_of(foreign / MODEL_WEIGHTS_FILE)
    (foreign / MODEL_MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(InputError, match="cannot be loaded"):
        FractureClassifier.load(foreign)


def test_temperature_scaling_undoes_overconfidence():
    rng = np.random.default_rng(0)
    calibrated_logits = rng.normal(0, 2, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-calibrated_logits))).astype(float)
    assert fit_temperature(3.0 * calibrated_logits, labels) == pytest.approx(3.0, rel=0.15)


def test_cli_fuses_probability_and_grade_by_the_threshold(tmp_path, package, dataset):
    output, _, _ = package
    base = ["run", dataset / "case2_ct.nii.gz", "--segmentation", dataset / "case2_seg.nii.gz", "-q",
            "--classifier", output]
    always = run_cli(*base, "-o", tmp_path / "always", "--fracture-threshold", "0")
    never = run_cli(*base, "-o", tmp_path / "never", "--fracture-threshold", "1")
    assert always.returncode == 0 and never.returncode == 0, always.stderr + never.stderr
    rows_always = json.loads((tmp_path / "always" / "report.json").read_text(encoding="utf-8"))["levels"]
    rows_never = json.loads((tmp_path / "never" / "report.json").read_text(encoding="utf-8"))["levels"]
    graded = [r for r in rows_always if r["genant_grade"] is not None]
    assert graded and all(isinstance(r["fracture_probability"], float) for r in graded)
    assert all(r["decision"] == "fractured" for r in graded)  # p >= 0 always
    assert all(r["decision"] == "normal" for r in rows_never if r["genant_grade"] == 0)  # grade 0 and p < 1


def test_cli_refuses_a_missing_package(tmp_path, sample_ct, sample_labels):
    result = run_cli("run", sample_ct, "--segmentation", sample_labels, "-o", tmp_path / "out",
                     "--classifier", tmp_path / "nothing")
    assert result.returncode == 2 and "lacks manifest.json" in result.stderr
    assert not (tmp_path / "out").exists()
