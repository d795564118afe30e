"""The model registry and cache: publisher checksums (sha1 as the MONAI Model Zoo publishes them,
sha256), trust on first use, resumed downloads, verify and remove, the `spinefrac models` command,
and `--engine auto` with a cached bundle. Downloads come from a loopback server."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest

pytest.importorskip("torch", reason="learned engines need PyTorch (pip install '.[learned]')")
pytest.importorskip("monai", reason="learned engines need MONAI (pip install '.[learned]')")
pytest.importorskip("nibabel", reason="MONAI bundles load NIfTI through nibabel (pip install '.[learned]')")

import spinefrac.segmentation.learned.registry as registry  # noqa: E402
from spinefrac.errors import EngineUnavailableError, InputError  # noqa: E402
from spinefrac.pipeline import choose_engine  # noqa: E402
from spinefrac.segmentation.learned.bundle import MonaiBundleEngine  # noqa: E402
from spinefrac.segmentation.learned.registry import (  # noqa: E402
    DOWNLOAD_RECORD_FILE,
    RegistryEntry,
    download_model,
    installed_model,
    read_registry,
    remove_model,
    verify_model,
)
from spinefrac.segmentation.offline.engine import OfflineEngine  # noqa: E402

from loopback_server import RangeHandler, serving  # noqa: E402
from monai_bundle_fixture import L5_CHANNEL, constant_channel_state, write_bundle  # noqa: E402
from self_check_fixture import check_with_reference_engine  # noqa: E402
from spine_test_utils import run_cli  # noqa: E402


def _zip(folder, root_name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{root_name}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory) -> bytes:
    """A wholeBody-structured bundle, zipped as the model zoo ships it (one root folder)."""
    state = constant_channel_state(L5_CHANNEL)
    folder = write_bundle(tmp_path_factory.mktemp("bundle") / "wholeBody_ct_segmentation", state, state)
    return _zip(folder, "wholeBody_ct_segmentation")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPINEFRAC_CACHE", str(tmp_path / "cache"))
    check_with_reference_engine(monkeypatch)  # the bundle's own run on the sample: test_model_self_check.py
    return tmp_path / "cache" / "models"


@pytest.fixture
def served(tmp_path, bundle_zip):
    root = tmp_path / "served"
    root.mkdir()
    (root / "bundle.zip").write_bytes(bundle_zip)
    with serving(root) as url:
        yield root, url


def _entry(url: str, checksum: str | None, checksum_type: str = "sha1") -> RegistryEntry:
    return RegistryEntry("wholebody-test", "0.2.5", "monai-bundle", f"{url}/bundle.zip", checksum, "test licence",
                         "a test bundle", checksum_type)


def test_the_shipped_registry_pins_the_bundle_by_its_published_sha1_and_has_a_default_per_device():
    models = read_registry()
    entry = models["wholebody-ct-segmentation"]
    assert entry.kind == "monai-bundle" and entry.checksum_type == "sha1" and len(entry.checksum) == 40
    assert entry.url.endswith(f"wholeBody_ct_segmentation_v{entry.version}.zip")
    assert [e.name for e in models.values() if "cpu" in e.default_for] == ["vertebrae-ts2-3mm"]
    assert [e.name for e in models.values() if "cuda" in e.default_for] == ["vertebrae-ts2"]
    assert all(e.kind == "auto3dseg" and e.checksum is None for e in (models["vertebrae-ts2"],
                                                                       models["vertebrae-ts2-3mm"]))


def test_sha1_download_resumes_verifies_records_and_installs(cache, served, bundle_zip):
    root, url = served
    entry = _entry(url, hashlib.sha1(bundle_zip).hexdigest())
    cache.mkdir(parents=True)
    (cache / "wholebody-test-0.2.5.partial").write_bytes(bundle_zip[: len(bundle_zip) // 2])  # interrupted
    RangeHandler.ranges = []
    folder = download_model(entry)
    assert RangeHandler.ranges == [len(bundle_zip) // 2]  # it resumed where it stopped
    record = json.loads((folder / DOWNLOAD_RECORD_FILE).read_text(encoding="utf-8"))
    assert record["checksum"] == entry.checksum and record["published"] is True
    assert record["sha256"] == hashlib.sha256(bundle_zip).hexdigest() and record["size_bytes"] == len(bundle_zip)
    assert "models/model_lowres.pt" in record["files"] and (folder / "configs" / "inference.json").is_file()
    assert not (cache / "wholebody-test-0.2.5.partial").exists()
    assert verify_model(entry) == []
    assert isinstance(registry.engine_from_registry(entry), MonaiBundleEngine)


def test_a_checksum_mismatch_caches_nothing(cache, served):
    _, url = served
    with pytest.raises(InputError, match="does not match its published sha1") as error:
        download_model(_entry(url, "0" * 40))
    assert "\n" not in str(error.value)
    assert not any(cache.iterdir())  # no folder, no partial file


def test_a_truncated_archive_caches_nothing(cache, served, bundle_zip):
    root, url = served
    (root / "bundle.zip").write_bytes(bundle_zip[: len(bundle_zip) // 2])
    with pytest.raises(InputError, match="not a complete zip archive"):
        download_model(_entry(url, None))
    assert not any(cache.iterdir())


def test_without_a_published_checksum_size_and_sha256_are_recorded_and_said(cache, served, bundle_zip):
    _, url = served
    folder = download_model(_entry(url, None))
    record = json.loads((folder / DOWNLOAD_RECORD_FILE).read_text(encoding="utf-8"))
    assert record["published"] is False and "trusted on first use" in record["note"]
    assert record["size_bytes"] == len(bundle_zip) and record["sha256"] == hashlib.sha256(bundle_zip).hexdigest()


def test_verify_finds_a_changed_weights_file_and_remove_empties_the_cache(cache, served, bundle_zip):
    _, url = served
    entry = _entry(url, hashlib.sha1(bundle_zip).hexdigest())
    folder = download_model(entry)
    (folder / "models" / "model_lowres.pt").write_bytes(b"tampered")
    assert verify_model(entry) == ["wholebody-test: models/model_lowres.pt changed since download (sha256 differs)"]
    assert remove_model(entry) and installed_model(entry) is None and not folder.exists()


def test_auto_uses_an_intact_cached_bundle_and_falls_back_with_the_reason(cache, served, bundle_zip, monkeypatch):
    _, url = served
    entry = _entry(url, hashlib.sha1(bundle_zip).hexdigest())
    monkeypatch.setattr(registry, "read_registry", lambda path=None: {entry.name: entry})
    fallback = choose_engine(None, engine="auto")
    assert isinstance(fallback, OfflineEngine) and "spinefrac models download wholebody-test" in fallback.fallback_reason
    folder = download_model(entry)
    assert isinstance(choose_engine(None, engine="auto"), MonaiBundleEngine)
    (folder / "configs" / "metadata.json").write_text("{", encoding="utf-8")  # a cached bundle that breaks
    broken = choose_engine(None, engine="auto")
    assert isinstance(broken, OfflineEngine)
    assert "metadata.json" in broken.fallback_reason  # verify or load: the reason is named, nothing raised


def test_models_command_lists_verifies_and_refuses_unknown_names(cache):
    listed = run_cli("models", "list")
    assert listed.returncode == 0 and "wholebody-ct-segmentation v0.2.5" in listed.stdout
    assert "vertebrae-ts2-3mm v2.0.1" in listed.stdout and "not published" in listed.stdout
    assert "not installed" in listed.stdout and "sha1" in listed.stdout
    verified = run_cli("models", "verify")
    assert verified.returncode == 2 and "not installed" in verified.stderr
    assert len(verified.stderr.strip().splitlines()) == 1
    unknown = run_cli("models", "remove", "no-such-model")
    assert unknown.returncode == 2 and "no model named no-such-model" in unknown.stderr


def test_offline_download_says_so_and_keeps_nothing_half_done(cache):
    entry = RegistryEntry("tiny", "1", "package", "http://127.0.0.1:9/model.zip", None, "test", "")
    with pytest.raises(EngineUnavailableError, match="offline"):
        download_model(entry, timeout_s=2)
    assert installed_model(entry) is None


def test_monai_engine_offline_falls_back_to_the_offline_engine_and_says_why(cache, monkeypatch):
    unreachable = RegistryEntry("tiny", "1", "package", "http://127.0.0.1:9/model.zip", None, "test", "")
    monkeypatch.setattr(registry, "read_registry", lambda path=None: {"tiny": unreachable})
    engine = choose_engine(None, engine="monai")
    assert isinstance(engine, OfflineEngine) and "offline" in engine.fallback_reason
