"""Errors the user can act on. Each carries a one-line message and the CLI exit code."""

from __future__ import annotations


class SpineFracError(Exception):
    """Base class: a problem we can explain in one line, not a bug."""

    exit_code = 2


class InputError(SpineFracError):
    """An input file, folder or option is missing, unreadable or not what the pipeline needs."""


class OutputError(SpineFracError):
    """The output location cannot be written, or would overwrite something without consent."""


class EngineUnavailableError(SpineFracError):
    """A requested segmentation engine or device cannot be used on this machine."""


class Terminated(BaseException):
    """SIGTERM as an exception, so that every ``finally`` and ``with`` cleans up on the way out
    (a BaseException: a batch's per-case ``except Exception`` must not swallow it)."""


class Interrupted(BaseException):
    """A batch or training stopped by Ctrl-C or SIGTERM after it kept what was finished: the message says
    what and where. A BaseException, as the KeyboardInterrupt or Terminated it stands for."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
