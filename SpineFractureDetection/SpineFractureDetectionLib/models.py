"""The segmentation models the Slicer module offers: what the registry lists, what is in the cache,
and their download. No Qt here (tested with pytest); the panel (models_panel.py) only shows it.

Why a thread and not a child process: a download is network and disk I/O (urllib, hashlib and zip
release the GIL), so a worker thread keeps Slicer's GUI responsive while the panel polls
``DownloadTask.state()`` from a QTimer; it shares the registry code (resume, checksum, atomic
unpack) without a second interpreter, and Cancel stops it at the next 1 MiB block, keeping the
partial file so the next download resumes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from spinefrac.segmentation.learned.registry import (
    RegistryEntry,
    cache_folder,
    download_model,
    installed_model,
    read_registry,
    recorded_self_check,
    remove_model,
    verify_model,
)

NOT_DOWNLOADED = "not downloaded"
INSTALLED = "installed"
DAMAGED = "damaged"
FAILED_SELF_CHECK = "failed self-check"  # intact, but wrong on the bundled sample CT: not used by auto


class DownloadCancelled(Exception):
    """Raised inside the download loop when the user cancels (not an OSError: the registry keeps
    the partial file and does not turn it into an 'offline' error)."""


@dataclass(frozen=True)
class ModelRow:
    """One line of the model table."""

    name: str
    version: str
    kind: str
    status: str  # NOT_DOWNLOADED | INSTALLED | DAMAGED | FAILED_SELF_CHECK
    detail: str  # the default device, the partial download, or what is wrong
    description: str
    licence: str


def partial_download_mib(entry: RegistryEntry) -> float:
    partial = cache_folder() / f"{entry.name}-{entry.version}.partial"
    return partial.stat().st_size / 2**20 if partial.is_file() else 0.0


def model_row(entry: RegistryEntry) -> ModelRow:
    default = f"default on {', '.join('GPU' if d == 'cuda' else 'CPU' for d in entry.default_for)}"
    details = [default] if entry.default_for else []
    if installed_model(entry) is None:
        status = NOT_DOWNLOADED
        partial = partial_download_mib(entry)
        if partial:
            details.append(f"{partial:.1f} MiB downloaded, resumes")
    else:
        problems = verify_model(entry)
        check = recorded_self_check(entry)
        failed_check = check is not None and check.passed is False
        status = DAMAGED if len(problems) > failed_check else FAILED_SELF_CHECK if failed_check else INSTALLED
        details += problems if problems else [check.summary()] if check is not None else []
    return ModelRow(entry.name, entry.version, entry.kind, status, "; ".join(details), entry.description,
                    entry.licence)


def model_rows() -> list[ModelRow]:
    """Every registry model with its state in the cache (files re-hashed for installed ones)."""
    return [model_row(entry) for entry in read_registry().values()]


def consent_text(entry: RegistryEntry) -> str:
    """What the user agrees to before a download: source, licence, where it goes, how it is checked."""
    check = (f"its published {entry.checksum_type} is checked" if entry.checksum else
             "no checksum is published: its size and sha256 are recorded now and checked at every later use")
    return (f"Download {entry.name} v{entry.version}?\n\n{entry.description}\n\nFrom: {entry.url}\n"
            f"Licence: {entry.licence}\nInto: {cache_folder()}\n({check}).")


@dataclass
class DownloadState:
    fraction: float = 0.0
    message: str = "starting"
    done: bool = False
    error: str = ""  # one line, empty when it succeeded (or runs)
    cancelled: bool = False
    warning: str = ""  # the model installed but failed its self-check: what the figures were


class DownloadTask:
    """A registry download in a worker thread; ``state()`` is safe to poll from the GUI thread."""

    def __init__(self, name: str):
        self.entry = read_registry()[name]
        self._state = DownloadState()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"download-{name}", daemon=True)

    def start(self) -> DownloadTask:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout_s: float | None = None) -> DownloadState:
        self._thread.join(timeout_s)
        return self.state()

    def state(self) -> DownloadState:
        with self._lock:
            return DownloadState(**vars(self._state))

    def _progress(self, fraction: float, message: str) -> None:
        if self._cancel.is_set():
            raise DownloadCancelled
        with self._lock:
            self._state.fraction, self._state.message = fraction, message

    def _run(self) -> None:
        outcome = {"fraction": 1.0, "message": f"{self.entry.name} installed"}
        try:
            download_model(self.entry, self._progress)  # and its self-check on the sample CT
            check = recorded_self_check(self.entry)
            if check is not None:
                outcome["message"] = f"{self.entry.name} installed; {check.summary()}"
            if check is not None and check.passed is False:
                outcome["warning"] = (f"{self.entry.name} {check.summary()} on the bundled sample CT: "
                                      "Segment with engine auto uses the offline engine instead.")
        except DownloadCancelled:
            outcome = {"message": "cancelled: the partial download is kept and resumes next time", "cancelled": True}
        except Exception as error:  # noqa: BLE001  every failure ends as one line in the panel
            outcome = {"message": "failed", "error": str(error).splitlines()[0] if str(error) else repr(error)}
        with self._lock:
            for key, value in outcome.items():
                setattr(self._state, key, value)
            self._state.done = True


def remove(name: str) -> bool:
    return remove_model(read_registry()[name])
