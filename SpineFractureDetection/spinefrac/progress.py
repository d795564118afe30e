"""Progress reporting shared by the CLI (terminal lines) and the Slicer module (progress bar)."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

# A stage calls progress(fraction_done, message); fraction is 0..1 within that stage.
Progress = Callable[[float, str], None]


def silent(fraction: float, message: str) -> None:
    """A Progress that reports nothing."""


class TerminalProgress:
    """Prints one line per stage with its duration: '[2/5] Segmentation ... 0.4 s'."""

    def __init__(self, stage_count: int, stream: TextIO = sys.stderr):
        self.stage_count = stage_count
        self.stream = stream
        self.stage_index = 0
        self._stage_started = 0.0
        self._stage_name = ""

    def stage(self, name: str) -> Progress:
        """Start the next stage; returns the Progress callback for its steps."""
        self._finish_stage()
        self.stage_index += 1
        self._stage_name = name
        self._stage_started = time.perf_counter()
        self._write(f"[{self.stage_index}/{self.stage_count}] {name} ...")
        return self._step

    def close(self) -> None:
        self._finish_stage()

    def _step(self, fraction: float, message: str) -> None:
        if message:
            self._write(f"      {message} ({fraction:.0%})")

    def _finish_stage(self) -> None:
        if self._stage_name:
            seconds = time.perf_counter() - self._stage_started
            self._write(f"      {self._stage_name} done in {seconds:.1f} s")
            self._stage_name = ""

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class SilentStages:
    """A stage reporter that reports nothing (library use, tests)."""

    def stage(self, name: str) -> Progress:
        return silent

    def close(self) -> None:
        pass
