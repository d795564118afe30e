"""Known segmentation models and their download into a user cache.

The registry (``models.json`` beside this file) lists each model with its download URL, the
checksum its publisher gives for the archive (and the hash type: the MONAI Model Zoo publishes
sha1 in ``models/model_info.json``), its licence and kind ("package": a spinefrac model package;
"monai-bundle": a MONAI Model Zoo bundle, run through its own config by ``bundle.py``;
"auto3dseg": an Auto3DSeg SegResNet model as SlicerMONAIAuto3DSeg distributes it, ``auto3dseg.py``).
Downloads go to ``$SPINEFRAC_CACHE`` (default ``~/.cache/spinefrac``) as ``NAME.partial`` and resume with an
HTTP Range request; the archive is checked before it is unpacked and renamed into place, so the
cache never holds a half model. Without a network, the caller gets an EngineUnavailableError that
says so (and the pipeline falls back to the offline engine).

Each installed model keeps a download record (``download.json``): the archive's size, sha256 and
published checksum, and the sha256 of every unpacked file, which ``verify_model`` checks again.
An entry without a published checksum is trusted on first use, and the record says so.
After unpacking, the model labels the bundled sample CT (``self_check.py``); the record keeps the
per-level Dice, and a model that failed is a problem for ``verify_model`` (so --engine auto passes it by).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spinefrac.errors import EngineUnavailableError, InputError, SpineFracError
from spinefrac.io.model_packages import sha256_of
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.learned.self_check import SelfCheck, run_self_check

REGISTRY_FILE = Path(__file__).with_name("models.json")
CACHE_ENV = "SPINEFRAC_CACHE"
DOWNLOAD_RECORD_FILE = "download.json"
CHUNK_BYTES = 1 << 20
HASH_TYPES = ("sha256", "sha1", "md5", "sha512")  # what model publishers use


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    version: str
    kind: str  # "package" | "monai-bundle" | "auto3dseg"
    url: str
    checksum: str | None  # of the archive, as published; None: trusted on first use
    licence: str
    description: str
    checksum_type: str = "sha256"
    default_for: tuple[str, ...] = ("cpu", "cuda")  # devices it is the automatic choice for

    def __post_init__(self):
        if self.checksum_type not in HASH_TYPES:
            raise ValueError(f"{self.name}: checksum type {self.checksum_type} is not one of {', '.join(HASH_TYPES)}")
        object.__setattr__(self, "default_for", tuple(self.default_for))


def read_registry(path: Path | None = None) -> dict[str, RegistryEntry]:
    path = path or REGISTRY_FILE  # read at call time: tests and the Slicer module may point elsewhere
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["models"]
        return {entry["name"]: RegistryEntry(**entry) for entry in entries}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"model registry {path} is not valid ({error})") from None


def registry_entry(name: str) -> RegistryEntry:
    registry = read_registry()
    if name not in registry:
        raise InputError(f"no model named {name} in the registry (known: {', '.join(registry)})")
    return registry[name]


def cache_folder() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spinefrac") / "models"


def model_folder(entry: RegistryEntry) -> Path:
    return cache_folder() / f"{entry.name}-{entry.version}"


def file_digest(path: Path, hash_type: str) -> str:
    digest = hashlib.new(hash_type)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def download_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / DOWNLOAD_RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def installed_model(entry: RegistryEntry) -> Path | None:
    """The unpacked model folder when it is in the cache and was downloaded as the registry says."""
    folder = model_folder(entry)
    record = download_record(folder) if folder.is_dir() else None
    if record is None:
        return None
    if entry.checksum and (record.get("checksum_type"), record.get("checksum")) != (entry.checksum_type,
                                                                                     entry.checksum):
        return None
    return folder


def verify_model(entry: RegistryEntry) -> list[str]:
    """Problems with an installed model (empty when it is intact): files changed or missing since download."""
    folder = model_folder(entry)
    record = download_record(folder) if folder.is_dir() else None
    if record is None:
        return [f"{entry.name} v{entry.version} is not installed (spinefrac models download {entry.name})"]
    if installed_model(entry) is None:
        return [f"{entry.name}: downloaded with {record.get('checksum_type')} {record.get('checksum')}, "
                f"the registry now says {entry.checksum_type} {entry.checksum}"]
    problems = []
    for name, expected in sorted(record.get("files", {}).items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{entry.name}: {name} is missing")
        elif sha256_of(path) != expected:
            problems.append(f"{entry.name}: {name} changed since download (sha256 differs)")
    check = recorded_self_check(entry)
    if check is not None and check.passed is False:
        problems.append(f"{entry.name} {check.summary()}")
    return problems


def recorded_self_check(entry: RegistryEntry) -> SelfCheck | None:
    """The self-check kept in the model's download record (None: not installed, or never checked)."""
    record = download_record(model_folder(entry))
    check = record.get("self_check") if record else None
    return SelfCheck.from_dict(check) if isinstance(check, dict) else None


def self_check_model(entry: RegistryEntry, device: str | None = None, progress: Progress = silent) -> SelfCheck:
    """Run the installed model on the bundled sample CT, keep the result in its download record and
    return it. A model that does not load fails with the error as its note."""
    folder = model_folder(entry)
    record = download_record(folder)
    if record is None:
        raise InputError(f"{entry.name} v{entry.version} is not installed (spinefrac models download {entry.name})")
    try:
        engine = open_model(entry, folder, device or self_check_device(entry))
    except (SpineFracError, RuntimeError, ValueError, OSError, ImportError) as error:
        reason = str(error).splitlines()[0] if str(error) else repr(error)
        result = SelfCheck(False, note=f"the model did not load ({reason})")
    else:
        result = run_self_check(engine, progress=progress)
    record["self_check"] = result.to_dict()  # download.json is not among the hashed files: rewriting it is safe
    (folder / DOWNLOAD_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return result


def self_check_device(entry: RegistryEntry) -> str:
    """The GPU for a model that is the default only there (when one is present), else the CPU."""
    if "cpu" in entry.default_for or not entry.default_for:
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def remove_model(entry: RegistryEntry) -> bool:
    folder = model_folder(entry)
    partial = cache_folder() / f"{entry.name}-{entry.version}.partial"
    partial.unlink(missing_ok=True)
    if not folder.is_dir():
        return False
    shutil.rmtree(folder)
    return True


def download_model(entry: RegistryEntry, progress: Progress = silent, timeout_s: float = 30.0) -> Path:
    """Download (resuming a partial file), verify and unpack a registry model into the cache, then
    self-check it on the sample CT (the result goes into its download record)."""
    installed = installed_model(entry)
    if installed is not None:
        return installed
    cache = cache_folder()
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{entry.name}-{entry.version}.partial"
    _fetch(entry.url, partial, progress, timeout_s)
    record = {"name": entry.name, "version": entry.version, "url": entry.url, "size_bytes": partial.stat().st_size,
              "sha256": sha256_of(partial), "checksum_type": entry.checksum_type, "published": bool(entry.checksum)}
    record["checksum"] = record["sha256"] if entry.checksum_type == "sha256" else file_digest(partial,
                                                                                           entry.checksum_type)
    if entry.checksum and record["checksum"] != entry.checksum:
        partial.unlink()
        raise InputError(f"download of {entry.name} does not match its published {entry.checksum_type} "
                         f"({record['checksum'][:12]}... vs {entry.checksum[:12]}...): deleted, try again")
    if not entry.checksum:
        record["note"] = ("no checksum is published for this archive: its size and sha256 at first download "
                          "are recorded, and it is trusted on first use")
    folder = _unpack(partial, model_folder(entry), record)
    self_check_model(entry, progress=progress)
    return folder


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


def _unpack(archive: Path, target: Path, record: dict) -> Path:
    staging = target.with_name(f".{target.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():  # refuse paths that would escape the folder
                if member.startswith("/") or ".." in Path(member).parts:
                    raise InputError(f"model archive {archive.name} holds an unsafe path: {member}")
            bundle.extractall(staging)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink()
        raise InputError(f"downloaded model {archive.name} is not a complete zip archive ({error}): deleted, "
                         "try again") from None
    except InputError:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink()
        raise
    roots = [p for p in staging.iterdir()]
    content = roots[0] if len(roots) == 1 and roots[0].is_dir() else staging
    record["files"] = {p.relative_to(content).as_posix(): sha256_of(p) for p in sorted(content.rglob("*"))
                       if p.is_file()}
    (content / DOWNLOAD_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    content.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    return target


def engine_from_registry(entry: RegistryEntry, device: str = "cpu", progress: Progress = silent):
    """Download (or find in the cache) a registry model and open it: a MONAI bundle through its own
    inference config, a spinefrac package through its manifest."""
    return open_model(entry, download_model(entry, progress), device)


def open_model(entry: RegistryEntry, folder: Path, device: str = "cpu"):
    """The engine for an unpacked registry model, by its kind."""
    from spinefrac.segmentation.learned.auto3dseg import Auto3DSegEngine
    from spinefrac.segmentation.learned.bundle import MonaiBundleEngine
    from spinefrac.segmentation.learned.engine import LearnedEngine

    engine_class = {"monai-bundle": MonaiBundleEngine, "auto3dseg": Auto3DSegEngine}.get(entry.kind, LearnedEngine)
    return engine_class(folder, device)


def installed_engines(device: str = "cpu") -> list[RegistryEntry]:
    """Registry models already in the cache (no download) that are an automatic choice for
    ``device``, in registry order: what --engine auto may use once ``verify_model`` passes."""
    return [entry for entry in read_registry().values()
            if device in entry.default_for and installed_model(entry) is not None]
