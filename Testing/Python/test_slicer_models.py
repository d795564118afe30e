"""The Slicer module's model logic (SpineFractureDetectionLib/models.py, no Qt): the table rows from
the registry and the cache, the consent text, a download in a worker thread with progress that the
GUI polls, Cancel that keeps the partial file for a resume, and one-line errors. Downloads come
from a loopback server."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest

from spinefrac.segmentation.learned import registry
from spinefrac.segmentation.learned.registry import DOWNLOAD_RECORD_FILE
from SpineFractureDetectionLib import models

from loopback_server import serving
from self_check_fixture import check_with_reference_engine

MODEL_FILES = {"labels.csv": b"LabelValue,Name\n1,Sacrum\n", "model.pt": bytes(range(256)) * 12000}


def _archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in MODEL_FILES.items():
            archive.writestr(f"vertebrae-3mm/{name}", data)
    return buffer.getvalue()


@pytest.fixture
def served_registry(tmp_path, monkeypatch):
    """A registry of two models served from 127.0.0.1 (one with a published sha256, one without)."""
    archive = _archive()
    root = tmp_path / "served"
    root.mkdir()
    (root / "model.zip").write_bytes(archive)
    monkeypatch.setenv("SPINEFRAC_CACHE", str(tmp_path / "cache"))
    check_with_reference_engine(monkeypatch)
    # The archive's model.pt is not a network (the table logic is tested here, not the loader).
    monkeypatch.setattr(registry, "open_model", lambda entry, folder, device="cpu": None)
    with serving(root) as url:
        entries = [
            {"name": "pinned", "version": "1", "kind": "auto3dseg", "url": f"{url}/model.zip",
             "checksum": hashlib.sha256(archive).hexdigest(), "checksum_type": "sha256", "licence": "CC BY 4.0",
             "description": "a pinned test model", "default_for": ["cpu"]},
            {"name": "unpinned", "version": "1", "kind": "auto3dseg", "url": f"{url}/model.zip", "checksum": None,
             "licence": "CC BY 4.0", "description": "a test model without checksum", "default_for": []},
        ]
        path = tmp_path / "models.json"
        path.write_text(json.dumps({"models": entries}), encoding="utf-8")
        monkeypatch.setattr(registry, "REGISTRY_FILE", path)
        yield root, archive


def test_rows_list_every_registry_model_with_its_cache_state(served_registry):
    rows = {row.name: row for row in models.model_rows()}
    assert set(rows) == {"pinned", "unpinned"}
    assert rows["pinned"].status == models.NOT_DOWNLOADED and rows["pinned"].detail == "default on CPU"
    assert models.DownloadTask("pinned").start().wait(60).error == ""
    rows = {row.name: row for row in models.model_rows()}
    assert rows["pinned"].status == models.INSTALLED and rows["unpinned"].status == models.NOT_DOWNLOADED


def test_consent_names_source_licence_folder_and_the_check(served_registry):
    entries = registry.read_registry()
    pinned, unpinned = models.consent_text(entries["pinned"]), models.consent_text(entries["unpinned"])
    assert entries["pinned"].url in pinned and "CC BY 4.0" in pinned and str(registry.cache_folder()) in pinned
    assert "published sha256 is checked" in pinned
    assert "no checksum is published" in unpinned


def test_a_download_reports_progress_then_installs_the_files_byte_for_byte(served_registry):
    task = models.DownloadTask("pinned")
    seen = []
    original = task._progress

    def recording(fraction, message):
        original(fraction, message)
        seen.append(task.state().fraction)

    task._progress = recording
    state = task.start().wait(60)
    assert state.done and not state.error and state.fraction == 1.0
    assert len(seen) >= 2 and seen == sorted(seen) and 0 < seen[0] < 1  # several 1 MiB blocks, rising
    folder = registry.model_folder(registry.read_registry()["pinned"])
    assert {name: (folder / name).read_bytes() for name in MODEL_FILES} == MODEL_FILES
    assert json.loads((folder / DOWNLOAD_RECORD_FILE).read_text())["published"] is True


def test_cancel_keeps_the_partial_file_and_the_next_download_resumes(served_registry):
    task = models.DownloadTask("unpinned")
    task.cancel()  # cancelled before the first block is written past
    state = task.start().wait(60)
    assert state.done and state.cancelled and not state.error
    entry = registry.read_registry()["unpinned"]
    assert registry.installed_model(entry) is None
    partial = registry.cache_folder() / "unpinned-1.partial"
    assert partial.is_file() and 0 < partial.stat().st_size < len(served_registry[1])
    assert "MiB downloaded, resumes" in {row.name: row for row in models.model_rows()}["unpinned"].detail
    assert models.DownloadTask("unpinned").start().wait(60).error == ""
    assert registry.installed_model(entry) is not None and not partial.exists()


def test_a_checksum_mismatch_is_one_line_and_nothing_is_installed(served_registry):
    root, archive = served_registry
    (root / "model.zip").write_bytes(archive[:-10] + b"0123456789")
    state = models.DownloadTask("pinned").start().wait(60)
    assert state.done and "does not match its published sha256" in state.error and "\n" not in state.error
    assert registry.installed_model(registry.read_registry()["pinned"]) is None


def test_offline_is_one_line(served_registry, monkeypatch):
    root, _ = served_registry
    (root / "model.zip").unlink()  # the server answers 404
    state = models.DownloadTask("pinned").start().wait(60)
    assert state.done and state.error.startswith("cannot download") and "HTTP 404" in state.error


def test_a_changed_file_shows_as_damaged_and_remove_empties_the_cache(served_registry):
    assert models.DownloadTask("pinned").start().wait(60).error == ""
    folder = registry.model_folder(registry.read_registry()["pinned"])
    (folder / "model.pt").write_bytes(b"tampered")
    row = {row.name: row for row in models.model_rows()}["pinned"]
    assert row.status == models.DAMAGED and "model.pt changed since download" in row.detail
    assert models.remove("pinned") and not folder.exists()
    assert {row.name: row for row in models.model_rows()}["pinned"].status == models.NOT_DOWNLOADED
