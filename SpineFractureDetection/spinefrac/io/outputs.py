"""Atomic output folders: results appear under their final name only when complete.

Files are written into a hidden sibling folder (``.OUT.partial-<random>``) and the folder is
renamed into place at the end. A failure, Ctrl-C or kill therefore never leaves a folder that
looks like a finished result, and an existing result is replaced only with ``overwrite``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from spinefrac.errors import OutputError


def rounded_or_none(value: float | None, digits: int) -> float | None:
    """A number as written to JSON/CSV: rounded, and None (null, an empty cell) when missing or not finite."""
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


class AtomicOutputFolder:
    """``with AtomicOutputFolder(out) as work: ...write into work...`` then it becomes ``out``."""

    def __init__(self, final: Path | str, overwrite: bool = False):
        self.final = Path(final)
        self.overwrite = overwrite
        self.work: Path | None = None
        self._created_parents: list[Path] = []
        self.check()

    def check(self) -> None:
        """Refuse before any work starts, so nothing is computed for nothing."""
        if self.final.exists() and not self.final.is_dir():
            raise OutputError(f"output {self.final} exists and is not a folder")
        if self.final.is_dir() and any(self.final.iterdir()) and not self.overwrite:
            raise OutputError(f"output folder {self.final} is not empty; pass --overwrite to replace it")

    def __enter__(self) -> Path:
        parent = self.final.absolute().parent
        for missing in reversed([p for p in (parent, *parent.parents) if not p.exists()]):
            try:
                missing.mkdir()
            except OSError as error:
                self._remove_created_parents()
                raise OutputError(f"cannot create output folder {self.final} ({error.strerror})") from None
            self._created_parents.append(missing)
        try:
            self.work = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.partial-", dir=parent))
        except OSError as error:
            self._remove_created_parents()
            raise OutputError(f"cannot write in {parent} ({error.strerror})") from None
        return self.work

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._commit()
        else:
            shutil.rmtree(self.work, ignore_errors=True)
            self._remove_created_parents()

    def _commit(self) -> None:
        previous = None
        if self.final.exists():
            if any(self.final.iterdir()):
                previous = self.final.with_name(f".{self.final.name}.replaced-{os.getpid()}")
                self.final.rename(previous)
            else:
                self.final.rmdir()
        self.work.rename(self.final)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)

    def _remove_created_parents(self) -> None:
        for created in reversed(self._created_parents):
            try:
                created.rmdir()
            except OSError:
                break
        self._created_parents.clear()


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
        os.replace(handle.name, path)
    except OSError as error:
        Path(handle.name).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({error.strerror})") from None
