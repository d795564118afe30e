"""The module's segmentation child process, with real processes: Cancel ends the whole tree (a
launcher-like child and the grandchild doing the work), nothing is written afterwards, progress
lines written in pieces arrive whole, a child that cannot start leaves nothing running."""

import os
import sys
import tempfile
import textwrap
import time

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")

from SpineFractureDetectionLib.child_process import (
    CANCELLED,
    ChildStartError,
    SegmentationJob,
    error_message,
)

# A launcher like PythonSlicer: starts the real Python (the grandchild) and waits for it. The
# grandchild reports progress and writes into the output folder until it is killed.
LAUNCHER = textwrap.dedent("""
    import subprocess, sys
    worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
    sys.exit(worker.wait())
""")
WORKER = textwrap.dedent("""
    import os, sys, time
    pids, output = sys.argv[1], sys.argv[2]
    with open(pids + ".tmp", "w") as f:
        f.write(f"{os.getppid()} {os.getpid()}")
    os.replace(pids + ".tmp", pids)
    print("[1/3] Loading CT ...", file=sys.stderr, flush=True)
    n = 0
    while True:
        n += 1
        with open(os.path.join(output, f"beat-{n}"), "w") as f:
            f.write("x")
        time.sleep(0.02)
""")


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie (killed, awaiting its parent's reaping)."""
    status = f"/proc/{pid}/status"
    if os.path.exists("/proc"):
        try:
            with open(status) as handle:
                state = next(line for line in handle if line.startswith("State:"))
        except (FileNotFoundError, ProcessLookupError):
            return False
        return "Z" not in state.split()[1]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Recorder:
    def __init__(self):
        self.progress, self.finished, self.imported = [], [], []

    def on_progress(self, fraction, message):
        self.progress.append((round(fraction, 3), message))

    def on_finished(self, error):
        self.finished.append(error)

    def import_result(self, folder):
        self.imported.append(folder)


def _job(command, recorder):
    work = tempfile.TemporaryDirectory(prefix="spinefrac-test-")
    return SegmentationJob(command, None, work, recorder.import_result, recorder.on_progress, recorder.on_finished)


def _wait_for(path, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.skipif(os.name == "nt", reason="process states are read from /proc or signals (POSIX)")
def test_cancel_ends_the_launcher_and_the_worker_and_nothing_writes_afterwards(tmp_path):
    pids_file, output = tmp_path / "pids", tmp_path / "out"
    output.mkdir()
    recorder = Recorder()
    job = _job([sys.executable, "-c", LAUNCHER, WORKER, str(pids_file), str(output)], recorder)
    _wait_for(pids_file)
    launcher, worker = (int(pid) for pid in pids_file.read_text().split())
    assert launcher == job.child.pid and _running(launcher) and _running(worker)
    while not recorder.progress:
        assert job.poll()
    assert recorder.progress == [(0.0, "Loading CT")]
    work = job.work_folder
    job.cancel()
    assert not _running(launcher) and not _running(worker)
    written = sorted(os.listdir(output))
    time.sleep(0.3)
    assert sorted(os.listdir(output)) == written  # nothing wrote after Cancel returned
    assert recorder.finished == [CANCELLED] and recorder.imported == []
    assert not work.exists()
    assert not job.poll()
    job.cancel()  # a second Cancel changes nothing
    assert recorder.finished == [CANCELLED]


def test_a_progress_line_written_in_pieces_arrives_whole_and_success_imports_once(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        sys.stderr.write("[1/3] Load"); sys.stderr.flush(); time.sleep(0.3)
        sys.stderr.write("ing CT ...\\n[2/3] Segmenting vert"); sys.stderr.flush(); time.sleep(0.3)
        sys.stderr.write("ebrae ...\\n"); sys.stderr.flush()
    """)
    recorder = Recorder()
    job = _job([sys.executable, "-c", script], recorder)
    work = job.work_folder
    polls = 0
    while job.poll():
        polls += 1
        time.sleep(0.05)
    assert polls > 3  # the pieces were seen across several polls
    assert recorder.progress == [(0.0, "Loading CT"), (0.333, "Segmenting vertebrae")]
    assert recorder.imported == [work] and recorder.finished == [None]
    assert not work.exists()


def test_a_child_that_cannot_start_raises_and_leaves_no_run(tmp_path):
    recorder = Recorder()
    work = tempfile.TemporaryDirectory(prefix="spinefrac-test-")
    missing = str(tmp_path / "no-such-PythonSlicer")
    with pytest.raises(ChildStartError, match="no-such-PythonSlicer"):
        SegmentationJob([missing, "-m", "spinefrac"], None, work, recorder.import_result, recorder.on_progress,
                        recorder.on_finished)
    assert not os.path.exists(work.name)
    assert recorder.finished == [] and recorder.imported == []


@pytest.mark.parametrize(("stderr", "code", "message"), [
    ("   \\n\\t\\n", 3, "the segmentation process ended with code 3"),
    ("", 4, "the segmentation process ended with code 4"),
    ("[1/6] Loading CT ...\\nspinefrac: error: CT.nii: no such file\\ntraceback tail\\n", 2,
     "spinefrac: error: CT.nii: no such file"),
    ("something broke\\n  \\n", 1, "something broke"),
    ("[1/6] Loading CT ...\\n", 5, "the segmentation process ended with code 5"),
    ("[1/6] Loading CT ...\\nTraceback (most recent call last):\\nMemoryError: out\\n", 1, "MemoryError: out"),
])
def test_a_failed_child_reports_one_line_whatever_it_wrote(stderr, code, message):
    recorder = Recorder()
    script = f"import sys; sys.stderr.write('{stderr}'); sys.exit({code})"
    job = _job([sys.executable, "-c", script], recorder)
    job.wait()
    assert recorder.finished == [message] and recorder.imported == []


def test_error_message_prefers_the_spinefrac_error_line():
    assert error_message(["spinefrac: error: a", "spinefrac: error: b", "x"], 2) == "spinefrac: error: b"
    assert error_message([" ", "\t"], 9) == "the segmentation process ended with code 9"
