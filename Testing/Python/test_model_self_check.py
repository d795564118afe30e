"""Models check themselves where they are downloaded: after a download (and in `spinefrac models
verify`) the model labels the bundled sample CT and L1-L5 are compared with the sample's reference
labels. A model whose output is wrong (an Auto3DSeg model of the real format whose weights give one
level everywhere) fails with Dice near 0, its download record keeps the figures, --engine auto falls
back to the offline engine with them, and the Slicer table shows it; a model that reproduces the
sample's labels passes and is used. Downloads come from a loopback server."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

pytest.importorskip("torch", reason="learned engines need PyTorch (pip install '.[learned]')")
pytest.importorskip("monai", reason="learned engines need MONAI (pip install '.[learned]')")

import SimpleITK as sitk  # noqa: E402

from spinefrac.cli import main as cli_main  # noqa: E402
from spinefrac.pipeline import choose_engine  # noqa: E402
from spinefrac.segmentation.learned import registry  # noqa: E402
from spinefrac.segmentation.learned.registry import DOWNLOAD_RECORD_FILE, download_model, verify_model  # noqa: E402
from spinefrac.segmentation.learned.self_check import MIN_LUMBAR_DICE, lumbar_dice  # noqa: E402
from spinefrac.segmentation.offline.engine import OfflineEngine  # noqa: E402
from SpineFractureDetectionLib import models  # noqa: E402

from auto3dseg_fixture import write_model  # noqa: E402
from loopback_server import serving  # noqa: E402
from self_check_fixture import ReferenceEngine  # noqa: E402

L5_LABEL = 3  # labels.csv of the TS2 vertebrae model: 3 = L5


@pytest.fixture(scope="module")
def wrong_model_zip(tmp_path_factory) -> bytes:
    """An Auto3DSeg vertebrae-3mm archive whose network outputs L5 everywhere (a wrong model)."""
    folder = write_model(tmp_path_factory.mktemp("model"), label_value=L5_LABEL)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


@pytest.fixture
def served(tmp_path, monkeypatch, wrong_model_zip):
    """The registry holds one CPU model, served from 127.0.0.1."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "model.zip").write_bytes(wrong_model_zip)
    monkeypatch.setenv("SPINEFRAC_CACHE", str(tmp_path / "cache"))
    with serving(root) as url:
        entry = {"name": "vertebrae-test", "version": "1", "kind": "auto3dseg", "url": f"{url}/model.zip",
                 "checksum": None, "licence": "test", "description": "a test model", "default_for": ["cpu"]}
        path = tmp_path / "models.json"
        path.write_text(json.dumps({"models": [entry]}), encoding="utf-8")
        monkeypatch.setattr(registry, "REGISTRY_FILE", path)
        yield registry.read_registry()["vertebrae-test"]


def test_lumbar_dice_is_one_on_the_reference_and_zero_for_swapped_levels(sample_labels):
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels)))
    assert lumbar_dice(reference, reference) == {name: 1.0 for name in ("L1", "L2", "L3", "L4", "L5")}
    swapped = reference.copy()
    swapped[reference == 20], swapped[reference == 21] = 21, 20  # L1 and L2 named the other way round
    dice = lumbar_dice(swapped, reference)
    assert dice["L1"] == 0.0 and dice["L2"] == 0.0 and dice["L3"] == 1.0


def test_a_wrong_model_fails_its_self_check_and_auto_falls_back_with_the_figures(served):
    folder = download_model(served)
    check = json.loads((folder / DOWNLOAD_RECORD_FILE).read_text(encoding="utf-8"))["self_check"]
    assert check["passed"] is False and set(check["dice_by_level"]) == {"L1", "L2", "L3", "L4", "L5"}
    assert max(check["dice_by_level"].values()) < 0.05  # L5 everywhere: near 0 even at L5
    problems = verify_model(served)
    assert len(problems) == 1 and "vertebrae-test failed self-check: L1 Dice 0.00" in problems[0]
    assert f"(< {MIN_LUMBAR_DICE:.2f})" in problems[0]
    engine = choose_engine(None, engine="auto")
    assert isinstance(engine, OfflineEngine)
    assert "vertebrae-test v1 not used" in engine.fallback_reason and "failed self-check" in engine.fallback_reason
    row = models.model_rows()[0]
    assert row.status == models.FAILED_SELF_CHECK and "L1 Dice 0.00" in row.detail


def test_models_verify_reruns_the_check_and_refuses_a_failed_model(served, monkeypatch, capsys):
    download_model(served)
    assert cli_main(["models", "verify", "vertebrae-test"]) == 2
    assert "failed self-check" in capsys.readouterr().err
    monkeypatch.setattr(registry, "open_model", lambda entry, folder, device="cpu": ReferenceEngine(folder))
    assert cli_main(["models", "verify", "vertebrae-test"]) == 0  # the new result replaces the record's
    assert "passed self-check: L1 Dice 1.00" in capsys.readouterr().out
    assert verify_model(served) == [] and models.model_rows()[0].status == models.INSTALLED


def test_a_model_that_reproduces_the_sample_passes_and_auto_uses_it(served, monkeypatch):
    monkeypatch.setattr(registry, "open_model", lambda entry, folder, device="cpu": ReferenceEngine(folder))
    task = models.DownloadTask("vertebrae-test").start()
    state = task.wait(120)
    assert state.error == "" and state.warning == "" and "passed self-check" in state.message
    record = json.loads((registry.model_folder(served) / DOWNLOAD_RECORD_FILE).read_text(encoding="utf-8"))
    assert record["self_check"]["passed"] is True
    assert all(dice == 1.0 for dice in record["self_check"]["dice_by_level"].values())
    assert isinstance(choose_engine(None, engine="auto"), ReferenceEngine)
