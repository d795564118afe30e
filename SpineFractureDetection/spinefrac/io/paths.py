"""Paths checked before anything reads or writes them, and fingerprints of inputs.

ITK and GDCM take file names as UTF-8 text: a name holding other bytes (``Patient M\\xfcller`` written
in Latin-1) reaches Python as a string with surrogate escapes, and ITK aborts the whole process on it
(a C++ exception, exit 134, no message, a lock and a partial folder left). Such paths are refused up
front with the name shown, as are empty paths (``Path('')`` is the current folder) and paths that run
into a loop of symbolic links. A fingerprint (sha256 and size of an input file, or of every file
directly in an input folder) is recorded in report.json, so that a batch can tell a finished case of
the same input from one of another.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from spinefrac.errors import InputError, SpineFracError

_CHUNK_BYTES = 1 << 20


def shown_path(path: Path | str) -> str:
    """A path as text that prints everywhere: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    """False for a name holding bytes of another encoding (surrogate escapes from os.fsdecode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: bytes of another encoding
        return False
    return True


def require_usable_path(path: Path | str | None, what: str, error: type[SpineFracError] = InputError,
                        whole: bool = False, entries: bool = True) -> Path | None:
    """``path`` as a Path, refused with a one-line ``error`` when it is empty, is not UTF-8 text (ITK cannot
    open it) or runs into a symbolic link loop. ``entries``: for a folder, the names directly inside it must
    be UTF-8 too (a DICOM reader opens every file). ``whole``: check the absolute path (an output: files are
    written under it by absolute name). None stays None."""
    if path is None:
        return None
    text = os.fsdecode(path)
    if not text.strip():
        raise error(f"the {what} path is empty")
    checked = os.path.abspath(text) if whole else text
    if not is_utf8(checked):
        raise error(f"{what} path {shown_path(checked)} is not UTF-8 text (a name from another encoding); "
                    "ITK cannot open such a path: rename it with UTF-8 characters only")
    _refuse_link_loop(Path(text), what, error)
    if entries and os.path.isdir(text):
        _require_utf8_entries(Path(text), what, error)
    return Path(text)


def _refuse_link_loop(path: Path, what: str, error: type[SpineFracError]) -> None:
    try:
        os.stat(path)
    except OSError as problem:
        if problem.errno == errno.ELOOP:
            raise error(f"{what} path {shown_path(path)} runs into a loop of symbolic links") from None


def _require_utf8_entries(folder: Path, what: str, error: type[SpineFracError]) -> None:
    try:
        names = os.listdir(folder)
    except OSError:
        return  # the reader says why it cannot list the folder
    for name in sorted(names):
        if not is_utf8(name):
            raise error(f"{what} folder {shown_path(folder)} holds {shown_path(name)}, a name that is not UTF-8 "
                        "text (from another encoding); ITK cannot open it: rename it with UTF-8 characters only")


def input_fingerprint(path: Path | str) -> dict | None:
    """sha256 and size of an input file, or of every regular file directly in an input folder (names and
    contents, in name order; hidden files left out), for report.json."""
    path = Path(path)
    if not (path.is_dir() or path.is_file()):
        return None  # a pipe or device: refused by the readers, never read here
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        for file in files:
            digest.update(os.fsencode(file.name) + b"\0")
            _hash_file(file, digest)
        return {"files": len(files), "size_bytes": sum(f.stat().st_size for f in files),
                "sha256": digest.hexdigest()}
    _hash_file(path, digest)
    return {"files": 1, "size_bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)  # hashlib lets go of the GIL for large chunks: a reading thread runs beside
