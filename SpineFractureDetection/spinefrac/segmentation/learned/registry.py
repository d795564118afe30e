"""Known segmentation models, their download into a user cache, and MONAI bundle loading.

The registry (``models.json`` beside this file) lists each model with its download URL, the
sha256 of the archive when it is published, its licence and kind ("package": a spinefrac model
package; "monai-bundle": a MONAI Model Zoo bundle read through the adapter below). Downloads go
to ``$SPINEFRAC_CACHE`` (default ``~/.cache/spinefrac``) as ``NAME.partial`` and resume with an
HTTP Range request; the archive is checked against its sha256 before it is unpacked and renamed
into place, so the cache never holds a half model. Without a network, the caller gets an
EngineUnavailableError that says so (and the pipeline falls back to the offline engine).

An entry without a published sha256 is verified on first use ("trust on first use"): the hash
of what was downloaded is recorded beside the model and every later load must match it.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spinefrac.io.model_packages import sha256_of
from spinefrac.errors import EngineUnavailableError, InputError
from spinefrac.io.filenames import MODEL_MANIFEST_FILE
from spinefrac.segmentation.learned.engine import SegmentationManifest
from spinefrac.levels import TOTALSEGMENTATOR_V1_IDS
from spinefrac.progress import Progress, silent

REGISTRY_FILE = Path(__file__).with_name("models.json")
CACHE_ENV = "SPINEFRAC_CACHE"
RECORDED_HASH_FILE = "downloaded.sha256"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    version: str
    kind: str  # "package" | "monai-bundle"
    url: str
    sha256: str | None
    licence: str
    description: str


def read_registry(path: Path = REGISTRY_FILE) -> dict[str, RegistryEntry]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["models"]
        return {entry["name"]: RegistryEntry(**entry) for entry in entries}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"model registry {path} is not valid ({error})") from None


def cache_folder() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spinefrac") / "models"


def installed_model(entry: RegistryEntry) -> Path | None:
    """The unpacked model folder when it is in the cache and still matches its recorded hash."""
    folder = cache_folder() / f"{entry.name}-{entry.version}"
    if not folder.is_dir():
        return None
    recorded = (folder / RECORDED_HASH_FILE).read_text(encoding="utf-8").strip() \
        if (folder / RECORDED_HASH_FILE).is_file() else None
    if entry.sha256 and recorded != entry.sha256:
        return None
    return folder


def download_model(entry: RegistryEntry, progress: Progress = silent, timeout_s: float = 30.0) -> Path:
    """Download (resuming a partial file), verify and unpack a registry model into the cache."""
    installed = installed_model(entry)
    if installed is not None:
        return installed
    cache = cache_folder()
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{entry.name}-{entry.version}.partial"
    _fetch(entry.url, partial, progress, timeout_s)
    digest = sha256_of(partial)
    if entry.sha256 and digest != entry.sha256:
        partial.unlink()
        raise InputError(f"download of {entry.name} does not match its sha256 "
                         f"({digest[:12]}... vs {entry.sha256[:12]}...): deleted, try again")
    return _unpack(partial, cache / f"{entry.name}-{entry.version}", digest)


def _fetch(url: str, partial: Path, progress: Progress, timeout_s: float) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            resumed = have and response.status == 206
            total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
            with open(partial, "ab" if resumed else "wb") as sink:
                done = have if resumed else 0
                while block := response.read(CHUNK_BYTES):
                    sink.write(block)
                    done += len(block)
                    progress(done / total if total else 0.0, f"{done / 2**20:.1f} MiB downloaded")
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is already complete
            return
        raise EngineUnavailableError(f"cannot download {url}: HTTP {error.code}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise EngineUnavailableError(f"cannot download {url} (offline? {reason}); "
                                     "the partial download is kept and resumes next time") from None


def _unpack(archive: Path, target: Path, digest: str) -> Path:
    staging = target.with_name(f".{target.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():  # refuse paths that would escape the folder
                if member.startswith("/") or ".." in Path(member).parts:
                    raise InputError(f"model archive {archive} holds an unsafe path: {member}")
            bundle.extractall(staging)
    except zipfile.BadZipFile:
        archive.unlink()
        raise InputError(f"downloaded model {archive.name} is not a zip archive: deleted, try again") from None
    roots = [p for p in staging.iterdir()]
    content = roots[0] if len(roots) == 1 and roots[0].is_dir() else staging
    (content / RECORDED_HASH_FILE).write_text(digest + "\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    content.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    return target


# -- MONAI bundles ----------------------------------------------------------------------------


def is_monai_bundle(folder: Path) -> bool:
    return (folder / "configs").is_dir() and (folder / "models" / "model.pt").is_file()


def manifest_from_monai_bundle(folder: Path) -> SegmentationManifest:
    """A segmentation manifest for a MONAI bundle whose output channels are TotalSegmentator v1
    classes (wholeBody_ct_segmentation): the network and its arguments from the bundle's
    inference config, spacing and intensity window from its pre-processing, vertebra channels
    mapped to VerSe ids (other organs are dropped), weights pinned by their sha256."""
    config_path = folder / "configs" / "inference.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"MONAI bundle {folder}: {config_path.name} unreadable ({error})") from None
    network = dict(config.get("network_def", {}))
    target = str(network.pop("_target_", ""))
    if not target:
        raise InputError(f"MONAI bundle {folder}: no network_def in {config_path.name}")
    transforms = _preprocessing(config)
    spacing = next((t.get("pixdim") for t in transforms if str(t.get("_target_", "")).endswith("Spacingd")), None)
    window = next((t for t in transforms if str(t.get("_target_", "")).endswith("ScaleIntensityRanged")), None)
    if spacing is None or window is None:
        raise InputError(f"MONAI bundle {folder}: Spacingd / ScaleIntensityRanged not found in its pre-processing")
    channels = int(network.get("out_channels", 0))
    label_map = {str(ts_id): verse_id for ts_id, verse_id in TOTALSEGMENTATOR_V1_IDS.items() if ts_id < channels}
    manifest = SegmentationManifest(
        name=folder.name, version=str(config.get("version", "bundle")), network=target.split(".")[-1],
        network_parameters=network, spacing_mm=tuple(float(s) for s in spacing),
        patch_size=tuple(int(s) for s in config.get("inferer", {}).get("roi_size", (96, 96, 96))),
        label_map=label_map, intensity={"hu_min": float(window["a_min"]), "hu_max": float(window["a_max"])},
        weights_file="models/model.pt", weights_sha256=sha256_of(folder / "models" / "model.pt"),
        licence=str(config.get("license", "see the bundle's LICENSE")),
        array_layout="xyz-ras",  # MONAI bundles load NIfTI as [x, y, z] and orient to RAS
    )
    manifest.validate_labels(folder)
    return manifest


def _preprocessing(config: dict) -> list[dict]:
    preprocessing = config.get("preprocessing", {})
    transforms = preprocessing.get("transforms", []) if isinstance(preprocessing, dict) else []
    return [t for t in transforms if isinstance(t, dict)]


def write_bundle_manifest(folder: Path) -> Path:
    """Adapt a MONAI bundle in place: write our manifest beside it (the bundle is not changed)."""
    manifest = manifest_from_monai_bundle(folder)
    (folder / MODEL_MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return folder


def engine_from_registry(entry: RegistryEntry, device: str = "cpu", progress: Progress = silent):
    """Download (or find in the cache) a registry model and open it as a LearnedEngine."""
    from spinefrac.segmentation.learned.engine import LearnedEngine

    folder = download_model(entry, progress)
    if entry.kind == "monai-bundle" and not (folder / MODEL_MANIFEST_FILE).is_file():
        write_bundle_manifest(folder)
    return LearnedEngine(folder, device)


def installed_engines() -> list[RegistryEntry]:
    """Registry models already in the cache (no download): what --engine auto may use."""
    return [entry for entry in read_registry().values() if installed_model(entry) is not None]
