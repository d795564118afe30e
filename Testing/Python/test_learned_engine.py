"""The learned segmentation engine: training on phantoms, packages, checksums, bundles, downloads."""

import http.server
import io
import json
import threading
import zipfile
from functools import partial

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[learned]')")
pytest.importorskip("monai", reason="MONAI is not installed (pip install '.[learned]')")

from spine_test_utils import run_cli  # noqa: E402

from spinefrac.errors import EngineUnavailableError, InputError  # noqa: E402
from spinefrac.io.images import load_ct, to_canonical  # noqa: E402
from spinefrac.io.filenames import MODEL_MANIFEST_FILE  # noqa: E402
from spinefrac.segmentation.learned.engine import LearnedEngine, order_violations  # noqa: E402
from spinefrac.segmentation.learned.registry import (RECORDED_HASH_FILE, RegistryEntry, download_model,  # noqa: E402
                                      manifest_from_monai_bundle)
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom  # noqa: E402
from spinefrac.training.segmentation import SegmentationTrainingConfig, train_segmentation  # noqa: E402

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


def test_monai_bundle_is_adapted_with_vertebra_channels_mapped(tmp_path):
    import torch
    from monai.networks.nets import SegResNet

    bundle = tmp_path / "wholeBody_ct_segmentation"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    network = dict(spatial_dims=3, in_channels=1, out_channels=105, init_filters=8, blocks_down=[1, 1], blocks_up=[1])
    torch.save(SegResNet(**network).state_dict(), bundle / "models" / "model.pt")
    config = {"network_def": {"_target_": "SegResNet", **network}, "inferer": {"roi_size": [32, 32, 32]},
              "preprocessing": {"_target_": "Compose", "transforms": [
                  {"_target_": "Spacingd", "pixdim": [1.5, 1.5, 1.5]},
                  {"_target_": "ScaleIntensityRanged", "a_min": -1024, "a_max": 1024}]}}
    (bundle / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
    manifest = manifest_from_monai_bundle(bundle)
    assert manifest.label_map["18"] == 24 and manifest.label_map["22"] == 20 and manifest.label_map["41"] == 1
    assert manifest.array_layout == "xyz-ras" and manifest.spacing_mm == (1.5, 1.5, 1.5)
    (bundle / MODEL_MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    engine = LearnedEngine(bundle)  # loads and verifies; random weights are never presented as a model
    assert engine.manifest.weights_file == "models/model.pt"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A loopback server that honours Range requests (resume) and counts them."""

    ranges: list = []

    def send_head(self):
        range_header = self.headers.get("Range")
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return None
        if range_header:
            start = int(range_header.split("=")[1].split("-")[0])
            _RangeHandler.ranges.append(start)
            self.send_response(206)
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _zip_of_package(package) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("manifest.json", "weights.pt"):
            archive.write(package / name, f"model/{name}")
    return buffer.getvalue()


def test_download_resumes_verifies_and_installs(tmp_path, monkeypatch, server, trained):
    import hashlib

    _, package, _ = trained
    root, url = server
    payload = _zip_of_package(package)
    (root / "model.zip").write_bytes(payload)
    monkeypatch.setenv("SPINEFRAC_CACHE", str(tmp_path / "cache"))
    entry = RegistryEntry("tiny", "1", "package", f"{url}/model.zip", hashlib.sha256(payload).hexdigest(), "test", "")
    cache = tmp_path / "cache" / "models"
    cache.mkdir(parents=True)
    (cache / "tiny-1.partial").write_bytes(payload[: len(payload) // 2])  # an interrupted download
    _RangeHandler.ranges = []
    folder = download_model(entry)
    assert _RangeHandler.ranges == [len(payload) // 2]  # it resumed where it stopped
    assert (folder / "weights.pt").read_bytes() == (package / "weights.pt").read_bytes()
    assert (folder / RECORDED_HASH_FILE).read_text(encoding="utf-8").strip() == entry.sha256
    assert not (cache / "tiny-1.partial").exists()
    LearnedEngine(folder)


def test_download_with_a_wrong_checksum_is_refused_and_nothing_installed(tmp_path, monkeypatch, server, trained):
    _, package, _ = trained
    root, url = server
    (root / "model.zip").write_bytes(_zip_of_package(package))
    monkeypatch.setenv("SPINEFRAC_CACHE", str(tmp_path / "cache"))
    entry = RegistryEntry("tiny", "1", "package", f"{url}/model.zip", "0" * 64, "test", "")
    with pytest.raises(InputError, match="does not match its sha256"):
        download_model(entry)
    assert not (tmp_path / "cache" / "models" / "tiny-1").exists()


def test_offline_download_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SPINEFRAC_CACHE", str(tmp_path / "cache"))
    entry = RegistryEntry("tiny", "1", "package", "http://127.0.0.1:9/model.zip", None, "test", "")
    with pytest.raises(EngineUnavailableError, match="offline"):
        download_model(entry, timeout_s=2)


def test_auto_prefers_an_installed_model_and_falls_back_to_offline(tmp_path, monkeypatch, trained):
    import shutil

    from spinefrac.segmentation.learned.registry import read_registry
    from spinefrac.segmentation.offline.engine import OfflineEngine
    from spinefrac.pipeline import choose_engine

    monkeypatch.setenv("SPINEFRAC_CACHE", str(tmp_path / "cache"))
    assert isinstance(choose_engine(None, engine="auto"), OfflineEngine)
    entry = next(iter(read_registry().values()))
    installed = tmp_path / "cache" / "models" / f"{entry.name}-{entry.version}"
    installed.mkdir(parents=True)
    _, package, _ = trained
    for name in ("manifest.json", "weights.pt"):
        shutil.copy(package / name, installed / name)
    (installed / RECORDED_HASH_FILE).write_text("recorded at download\n", encoding="utf-8")
    engine = choose_engine(None, engine="auto")
    assert isinstance(engine, LearnedEngine) and engine.package == installed



def test_monai_engine_offline_falls_back_to_the_offline_engine_and_says_why(tmp_path, monkeypatch):
    import spinefrac.segmentation.learned.registry as registry
    from spinefrac.segmentation.offline.engine import OfflineEngine
    from spinefrac.pipeline import choose_engine

    monkeypatch.setenv("SPINEFRAC_CACHE", str(tmp_path / "cache"))
    unreachable = RegistryEntry("tiny", "1", "package", "http://127.0.0.1:9/model.zip", None, "test", "")
    monkeypatch.setattr(registry, "read_registry", lambda path=None: {"tiny": unreachable})
    engine = choose_engine(None, engine="monai")
    assert isinstance(engine, OfflineEngine) and "offline" in engine.fallback_reason


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
