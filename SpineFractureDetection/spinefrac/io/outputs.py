"""Output folders that never cost the user data.

Files are written into a hidden sibling folder (``.OUT.partial-<random>``) and moved into place
only when the run is complete, so a failure, Ctrl-C or kill never leaves a folder that looks like
a finished result. Before any work the output is refused when it is, holds or lies inside an
input, or when its path is one ITK cannot write (spinefrac.io.paths). A lock file beside the output
(``.OUT.lock``, the owner's pid) keeps a second run out while one is writing; a lock whose process is
gone, and partial folders it left, are cleaned up. At the end the folder must still be as it was
at the start (compare and swap): a new output folder appears by one rename, and an existing one
(``--overwrite``) gets this run's files, each replaced by rename; files the run did not write, such
as corrected masks saved beside the results, stay.
Folders and files made here follow the user's umask (tempfile makes them private to the user), so
results on a shared workstation are readable as any other file the user writes.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from spinefrac.errors import InputError, OutputError
from spinefrac.io.paths import require_usable_path, shown_path

# A full disk or quota (or a file too large for it) while writing results: the user's to fix, not a bug.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def rounded_or_none(value: float | None, digits: int) -> float | None:
    """A number as written to JSON/CSV: rounded, and None (null, an empty cell) when missing or not finite."""
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]] | None:
    """What a folder holds (name -> size, mtime in ns), None when it does not exist."""
    if not folder.is_dir():
        return None
    return {entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns) for entry in os.scandir(folder)}


def _resolved(path: Path | str, what: str, error: type) -> Path:
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as problem:  # a loop of symbolic links (RuntimeError before Python 3.13)
        if isinstance(problem, OSError) and problem.errno != errno.ELOOP:
            raise
        raise error(f"{what} path {shown_path(path)} runs into a loop of symbolic links") from None


def refuse_overlap(output: Path, inputs) -> None:
    """An output that is, holds or lies inside an input would overwrite or delete it."""
    out = _resolved(output, "output", OutputError)
    for given in inputs:
        if given is None:
            continue
        source = _resolved(given, "input", InputError)
        if out == source or out in source.parents:
            raise OutputError(f"output {output} holds the input {given}; choose another output folder")
        if source.is_dir() and source in out.parents:
            raise OutputError(f"output {output} lies inside the input folder {given}; choose another output folder")


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path | str, mode: int = 0o666) -> None:
    """Give a folder (0o777) or file (0o666) made private by tempfile the permissions the umask gives any
    other: mkdtemp and mkstemp make them 0o700 and 0o600, unreadable to colleagues on a shared machine."""
    os.chmod(path, mode & ~_umask())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AtomicOutputFolder:
    """``with AtomicOutputFolder(out, inputs=[ct, labels]) as work: ...write into work...``; the
    files then appear in ``out``."""

    def __init__(self, final: Path | str, overwrite: bool = False, inputs=()):
        if not os.fsdecode(final).strip():
            raise OutputError("the output folder name is empty")
        require_usable_path(final, "output", OutputError, whole=True, entries=False)
        self.final = Path(os.path.abspath(final))  # '.' and '..' become real names; links are not followed
        self.overwrite = overwrite
        self.work: Path | None = None
        self._lock: Path | None = None
        self._created_parents: list[Path] = []
        refuse_overlap(self.final, inputs)
        self.check()
        self._before = _snapshot(self.final)

    def check(self) -> None:
        """Refuse before any work starts, so nothing is computed for nothing."""
        if self.final.is_symlink():
            raise OutputError(f"output {self.final} is a symbolic link; give the folder itself")
        if self.final.exists() and not self.final.is_dir():
            raise OutputError(f"output {self.final} exists and is not a folder")
        if self.final.is_dir() and any(self.final.iterdir()) and not self.overwrite:
            raise OutputError(f"output folder {self.final} is not empty; pass --overwrite to replace its results")

    def __enter__(self) -> Path:
        parent = self.final.absolute().parent
        for missing in reversed([p for p in (parent, *parent.parents) if not p.exists()]):
            try:
                missing.mkdir()
            except OSError as error:
                self._remove_created_parents()
                raise OutputError(f"cannot create output folder {self.final} ({error.strerror})") from None
            self._created_parents.append(missing)
        self._take_lock(parent)
        self._remove_leftovers(parent)
        try:
            self.work = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.partial-{os.getpid()}-", dir=parent))
            follow_umask(self.work, 0o777)  # the folder that becomes the output by rename
        except OSError as error:
            self._release()
            raise OutputError(f"cannot write in {parent} ({error.strerror})") from None
        return self.work

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
        except OSError as error:  # a rename or mkdir of the commit itself
            raise self._write_error(error) from None
        finally:
            self._release()
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:  # any writer in the run (PNG, JSON, ...)
            raise self._write_error(exc) from None

    def _write_error(self, error: OSError) -> OutputError:
        what = "no space left" if error.errno in DISK_FULL_ERRNOS else "cannot write"
        return OutputError(f"{what} for the results in {self.final.parent} ({error.strerror}); nothing of this run was "
                           "kept and the inputs are untouched: free some space or choose another output folder")

    def _take_lock(self, parent: Path) -> None:
        lock = parent / f".{self.final.name}.lock"
        try:
            take_lock(lock, f"output {self.final} is being written by another run")
        except OutputError:
            self._remove_created_parents()
            raise
        self._lock = lock

    def _remove_leftovers(self, parent: Path) -> None:
        """Partial folders of killed runs into the same output (their pid is in the name)."""
        for leftover in parent.glob(f".{self.final.name}.partial-*"):
            pid = leftover.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)

    def _commit(self) -> None:
        if _snapshot(self.final) != self._before:
            raise OutputError(f"output folder {self.final} changed while this run was writing; nothing of this "
                              "run was put there (rerun, or choose another folder)")
        if self._before is None or not self._before:
            try:
                os.rename(self.work, self.final)  # one step; fails if the folder appeared and filled meanwhile
                return
            except OSError:
                if _snapshot(self.final) not in (None, {}):
                    raise OutputError(f"output folder {self.final} was filled by another program during this "
                                      "run; nothing of this run was put there") from None
                self.final.mkdir(exist_ok=True)
        for produced in sorted(self.work.iterdir()):
            os.replace(produced, self.final / produced.name)  # only this run's files are replaced

    def _release(self) -> None:
        if self.work is not None and self.work.exists():
            shutil.rmtree(self.work, ignore_errors=True)
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None
        if not self.final.exists():
            self._remove_created_parents()

    def _remove_created_parents(self) -> None:
        for created in reversed(self._created_parents):
            try:
                created.rmdir()
            except OSError:
                break
        self._created_parents.clear()


LOCK_GRACE_S = 5.0  # a lock file this young without a pid yet: its owner is still writing the pid


def take_lock(lock: Path, busy: str) -> int | None:
    """Create ``lock`` holding this process's pid (O_EXCL: one winner). A live owner: OutputError ``busy``
    with its pid. A lock whose process is gone is taken over; its pid is returned (None: there was none)."""
    stale = None
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner == "starting" or (owner is not None and _pid_alive(owner)):
                where = f" (pid {owner})" if isinstance(owner, int) else ""
                raise OutputError(f"{busy}{where}") from None
            stale = owner
            lock.unlink(missing_ok=True)  # its run is gone
            continue
        except OSError as error:
            raise OutputError(f"cannot write in {lock.parent} ({error.strerror})") from None
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        return stale
    raise OutputError(busy)  # another run took the lock between our two attempts


def _lock_owner(lock: Path) -> int | str | None:
    """The pid in a lock file; "starting" for a lock just made whose pid is not written yet; None: unreadable."""
    try:
        text = lock.read_text(encoding="utf-8").strip()
        young = time.time() - lock.stat().st_mtime < LOCK_GRACE_S
    except (OSError, UnicodeDecodeError):
        return None
    if text.isdigit():
        return int(text)
    return "starting" if not text and young else None


def write_text_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp", delete=False)
    except OSError as error:
        raise OutputError(f"cannot write in {path.parent} ({error.strerror})") from None
    try:
        with handle:
            handle.write(text)
        follow_umask(handle.name)  # mkstemp made it 0o600
        os.replace(handle.name, path)
    except OSError as error:
        Path(handle.name).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({error.strerror})") from None
