"""The segmentation child process and its whole process tree, without Qt (tested on plain Python).

``PythonSlicer`` is a launcher: it starts the real Python, which may start workers of its own.
Killing the launcher's pid alone leaves the real Python running and writing into a folder that
Cancel already deleted (SlicerMONAIAuto3DSeg kills the tree for the same reason). So the child
starts in its own process group (POSIX session, Windows process group) and Cancel ends the group
(``killpg``; ``taskkill /T`` on Windows), plus any descendant psutil can still see, and waits
until none is left before the work folder is removed.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

from spinefrac.errors import SpineFracError
from SpineFractureDetectionLib.mrml_logic import parse_progress

CANCELLED = "cancelled"
ERROR_PREFIX = "spinefrac: error:"


class ChildStartError(RuntimeError):
    """The child process could not be started (missing executable, no permission...)."""


def _descendant_pids(pid: int) -> list[int]:
    """Every descendant psutil sees (it finds those that left the process group); [] without psutil."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL if os.name != "nt" else signal.SIGTERM)
    except OSError:
        pass  # already gone


def _group_alive(group_id: int) -> bool:
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tree_alive(pid: int) -> bool:
    """Whether anything of the child's tree is left: its process group (POSIX), or the child itself
    (Windows, asked through the Win32 API: psutil ships with neither Slicer 5.10 nor 5.12)."""
    if os.name != "nt":
        return _group_alive(pid)
    import ctypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# A stand-in for the segmentation child that reports its first stage, starts a worker (a grandchild,
# as PythonSlicer starts the real Python) and waits for it for ten minutes: a run that is still
# running for certain when a test cancels it, however fast or slow the machine.
STAND_IN_CHILD = textwrap.dedent("""
    import subprocess, sys
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("[1/6] Loading CT ...", file=sys.stderr, flush=True)
    sys.exit(worker.wait())
""")


def stand_in_child_command(python_executable: str) -> list[str]:
    """The command of the stand-in child (STAND_IN_CHILD) for ``python_executable``."""
    return [python_executable, "-c", STAND_IN_CHILD]


def end_process_tree(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Kill a child started by ChildProcess with everything it started, and wait for them."""
    descendants = _descendant_pids(process.pid)
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False,
                       creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the child leads its own group (start_new_session)
        except ProcessLookupError:
            pass
    for pid in [process.pid, *descendants]:
        _kill(pid)
    process.wait(timeout=timeout_s)
    if os.name != "nt":
        deadline = time.monotonic() + timeout_s
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)  # reparented grandchildren are reaped by init, a moment later


class ChildProcess:
    """A command in its own process group; a reader thread queues its stderr line by line (a line
    written in pieces arrives whole), stdout is discarded."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None):
        options = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "env": env}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            options["start_new_session"] = True
        try:
            self.process = subprocess.Popen(command, **options)
        except OSError as error:
            raise ChildStartError(f"'{command[0]}' could not be started: {error.strerror or error}") from error
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="spinefrac-child-stderr", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        with self.process.stderr:
            for raw in iter(self.process.stderr.readline, b""):
                self._lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def new_lines(self) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def exit_code(self) -> int | None:
        """The exit code once the child ended and all its output was read; None before."""
        if self.process.poll() is None or self._reader.is_alive():
            return None
        return self.process.returncode

    def end_tree(self) -> None:
        end_process_tree(self.process)
        self._reader.join(timeout=5)


def error_message(lines: list[str], exit_code: int) -> str:
    """The line to show for a failed child: its 'spinefrac: error:' line, else its last line that
    is neither blank nor a progress line (a traceback ends with the exception), else the exit code
    (a child may write nothing, or only whitespace)."""
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    if errors:
        return errors[-1]
    written = [line.strip() for line in lines if line.strip() and parse_progress(line) is None]
    return written[-1] if written else f"the segmentation process ended with code {exit_code}"


class SegmentationJob:
    """One child-process segmentation in a temporary work folder. ``poll()`` (from a timer, or
    ``wait()``) forwards '[k/n] stage ...' progress and, when the child succeeded, calls
    ``import_result(work_folder)``: the scene changes only then, and what it returns is kept in
    ``imported``. ``cancel()`` ends the child's
    whole tree before the folder is removed. ``on_finished(error)`` is called exactly once:
    None, CANCELLED or the message."""

    def __init__(self, command: list[str], env: dict[str, str] | None, work: tempfile.TemporaryDirectory,
                 import_result: Callable[[Path], object], on_progress: Callable[[float, str], None],
                 on_finished: Callable[[str | None], None]):
        self._work, self._import_result = work, import_result
        self._on_progress, self._on_finished = on_progress, on_finished
        self._lines: list[str] = []
        self.finished = False
        self.imported: object = None
        try:
            self.child = ChildProcess(command, env)
        except ChildStartError:
            work.cleanup()
            self.finished = True
            raise

    @property
    def work_folder(self) -> Path:
        return Path(self._work.name)

    def poll(self) -> bool:
        """Handle what the child wrote; True while it runs."""
        if self.finished:
            return False
        for line in self.child.new_lines():
            self._lines.append(line)
            progress = parse_progress(line)
            if progress:
                self._on_progress(*progress)
        code = self.child.exit_code()
        if code is None:
            return True
        self._complete(self._result(code))
        return False

    def _result(self, exit_code: int) -> str | None:
        if exit_code != 0:
            return error_message(self._lines, exit_code)
        try:
            self.imported = self._import_result(self.work_folder)
        except (SpineFracError, RuntimeError, ValueError, OSError) as error:  # sitk raises RuntimeError
            return str(error)
        except Exception as error:  # noqa: BLE001 - any other failure (EOFError on a truncated file) must
            # still end the job: raised out of poll() it would leave the timer importing again and again
            return f"the result could not be imported: {type(error).__name__}: {error}"
        return None

    def cancel(self) -> None:
        if self.finished:
            return
        self.child.end_tree()
        self._complete(CANCELLED)

    def wait(self, interval_s: float = 0.05) -> None:
        while self.poll():
            time.sleep(interval_s)

    def _complete(self, error: str | None) -> None:
        self.finished = True
        self._work.cleanup()
        self._on_finished(error)
