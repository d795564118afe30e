"""Outputs never cost the user data: no output over an input, compare-and-swap commit, a lock
per output folder, only this run's files replaced, leftovers of killed runs cleaned up."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spinefrac.errors import OutputError
from spinefrac.io.outputs import AtomicOutputFolder

from spine_test_utils import run_cli


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def data(tmp_path, sample_ct, sample_labels):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(sample_ct, folder / "ct.nii.gz")
    shutil.copy(sample_labels, folder / "vertebrae.nii.gz")
    return folder


@pytest.mark.parametrize("where", ["same", "parent"])
def test_an_output_that_holds_the_inputs_is_refused_and_nothing_changes(tmp_path, data, where):
    before = _digests(tmp_path)
    output = data if where == "same" else tmp_path
    result = run_cli("run", data / "ct.nii.gz", "--segmentation", data / "vertebrae.nii.gz", "-o", output,
                     "--overwrite", "-q")
    assert result.returncode == 2 and "holds the input" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _digests(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_an_output_inside_a_dicom_input_folder_is_refused(tmp_path):
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "slice001.dcm").write_bytes(b"not really a slice")
    with pytest.raises(OutputError, match="lies inside the input folder"):
        AtomicOutputFolder(dicom / "results", inputs=[dicom])
    assert [p.name for p in dicom.iterdir()] == ["slice001.dcm"]


def test_overwrite_replaces_only_this_runs_files(tmp_path, data):
    out = tmp_path / "out"
    args = ("run", data / "ct.nii.gz", "--segmentation", data / "vertebrae.nii.gz", "-o", out, "-q")
    assert run_cli(*args).returncode == 0
    (out / "corrected.nii.gz").write_bytes(b"the clinician's corrected masks")
    (out / "report.json").write_text("{}", encoding="utf-8")  # a stale result of ours
    assert run_cli(*args).returncode == 2  # not without --overwrite
    assert run_cli(*args, "--overwrite").returncode == 0
    assert (out / "corrected.nii.gz").read_bytes() == b"the clinician's corrected masks"
    assert (out / "report.json").read_text(encoding="utf-8") != "{}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_folder_that_changes_during_the_run_gets_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="changed while this run was writing"), AtomicOutputFolder(out) as work:
        (work / "report.json").write_text("ours", encoding="utf-8")
        out.mkdir()
        (out / "report.json").write_text("another run's", encoding="utf-8")
    assert (out / "report.json").read_text(encoding="utf-8") == "another run's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder, no lock


def test_a_second_run_into_a_locked_output_is_refused(tmp_path):
    out = tmp_path / "out"
    with AtomicOutputFolder(out) as work:
        (work / "report.json").write_text("first", encoding="utf-8")
        with pytest.raises(OutputError, match="being written by another run"), AtomicOutputFolder(out):
            pass
    assert (out / "report.json").read_text(encoding="utf-8") == "first"
    assert not (tmp_path / ".out.lock").exists()


def test_leftovers_of_a_killed_run_are_cleaned_up_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=False, capture_output=True,
                          text=True)
    pid = int(dead.stdout)  # a process that has exited
    (tmp_path / ".out.lock").write_text(f"{pid}\n", encoding="utf-8")
    leftover = tmp_path / f".out.partial-{pid}-abc123"
    leftover.mkdir()
    (leftover / "report.json").write_text("half", encoding="utf-8")
    with AtomicOutputFolder(tmp_path / "out") as work:
        (work / "report.json").write_text("whole", encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "report.json").read_text(encoding="utf-8") == "whole"


def test_sigterm_mid_run_leaves_no_partial_folder_and_a_rerun_succeeds(tmp_path, data):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "SpineFractureDetection"))
    process = subprocess.Popen([sys.executable, "-m", "spinefrac", "run", str(data / "ct.nii.gz"), "-o", str(out),
                                "--engine", "offline"], stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stderr:  # wait until it is segmenting, then stop it
        if "Segmentation" in line:
            break
    process.terminate()
    process.wait(timeout=60)
    assert process.returncode == 143 and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # its partial folder and lock are gone
    result = run_cli("run", data / "ct.nii.gz", "--segmentation", data / "vertebrae.nii.gz", "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


@pytest.mark.parametrize("role", ["ct", "segmentation"])
def test_a_named_pipe_as_input_is_refused_at_once(tmp_path, data, role):
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    ct, labels = (fifo, data / "vertebrae.nii.gz") if role == "ct" else (data / "ct.nii.gz", fifo)
    result = run_cli("run", ct, "--segmentation", labels, "-o", tmp_path / "out", "-q")
    assert result.returncode == 2 and "is a named pipe (FIFO), not a file or folder" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_dicom_series_without_pixel_spacing_is_refused_not_read_at_1_mm(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from spine_test_utils import write_dicom_series

    image = sitk.GetImageFromArray(np.full((6, 40, 40), -1000, np.int16))
    image.SetSpacing((0.7, 0.7, 2.0))
    for path in write_dicom_series(image, tmp_path / "series"):
        raw = path.read_bytes()
        assert raw.count(b"\x28\x00\x30\x00") == 1  # the (0028,0030) PixelSpacing tag, little endian
        path.write_bytes(raw.replace(b"\x28\x00\x30\x00", b"\x28\x00\x31\x00"))  # renamed to (0028,0031)
    result = run_cli("run", tmp_path / "series", "-o", tmp_path / "out", "-q")
    assert result.returncode == 2 and "has no PixelSpacing (0028,0030)" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("output, message", [("", "the output folder name is empty"),
                                             (".", "is not empty; pass --overwrite")])
def test_odd_output_names_are_one_clear_error(tmp_path, data, output, message):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's", encoding="utf-8")
    result = run_cli("run", data / "ct.nii.gz", "--segmentation", data / "vertebrae.nii.gz", "-o", output, "-q",
                     cwd=work)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]
    assert result.returncode == 2 and message in result.stderr and "internal error" not in result.stderr


def test_a_symlinked_or_dangling_output_is_refused(tmp_path, data):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    for name in ("link", "dangling"):
        result = run_cli("run", data / "ct.nii.gz", "--segmentation", data / "vertebrae.nii.gz",
                         "-o", tmp_path / name, "-q")
        assert result.returncode == 2 and "is a symbolic link" in result.stderr
    assert not any((tmp_path / "elsewhere").iterdir()) and not (tmp_path / "missing").exists()


@pytest.mark.parametrize("value", ["4GB", "-5"])
def test_a_malformed_memory_limit_is_one_clear_error(tmp_path, data, monkeypatch, value):
    monkeypatch.setenv("SPINEFRAC_MEMORY_LIMIT_MB", value)
    result = run_cli("run", data / "ct.nii.gz", "--segmentation", data / "vertebrae.nii.gz", "-o", tmp_path / "out")
    assert result.returncode == 2 and "SPINEFRAC_MEMORY_LIMIT_MB" in result.stderr
    assert "internal error" not in result.stderr and not (tmp_path / "out").exists()


def test_an_uncompressed_nifti_cut_short_is_refused_not_read_as_zeros(tmp_path, sample_ct):
    import SimpleITK as sitk

    whole = tmp_path / "ct.nii"
    sitk.WriteImage(sitk.ReadImage(str(sample_ct)), str(whole))
    raw = whole.read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[: int(len(raw) * 0.7)])
    result = run_cli("run", cut, "-o", tmp_path / "out", "-q")
    announced = f"is truncated: {int(len(raw) * 0.7):,} bytes of the {len(raw):,}"
    assert result.returncode == 2 and announced in result.stderr
    assert not (tmp_path / "out").exists()


# -- a full disk while writing the results ----------------------------------------------------------------

_REPO_CORE = str(Path(__file__).resolve().parents[2] / "SpineFractureDetection")


def _run_on_small_tmpfs(size: str, data: Path, mount_point: Path) -> tuple[int, str, list[str]]:
    """The CLI writing into a tmpfs of ``size`` (a mount namespace of its own: no root needed where user
    namespaces are allowed); returns its exit code, stderr and what the tmpfs held afterwards."""
    if shutil.which("unshare") is None:
        pytest.skip("no 'unshare' to mount a private tmpfs")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {mount_point}"],
                           check=False, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine allows no private tmpfs mount ({probe.stderr.strip()})")
    script = (f"mount -t tmpfs -o size={size} tmpfs {mount_point} && "
              f"{sys.executable} -m spinefrac run {data / 'ct.nii.gz'} --segmentation {data / 'vertebrae.nii.gz'} "
              f"-o {mount_point / 'out'} -q 2>{mount_point.parent / 'stderr.txt'}; "
              f"echo rc=$?; ls -A {mount_point}")
    completed = subprocess.run(["unshare", "-rm", "sh", "-c", script], check=False, capture_output=True, text=True,
                               timeout=300,
                               env=dict(os.environ, PYTHONPATH=_REPO_CORE))
    lines = completed.stdout.splitlines()
    code = int(next(line for line in lines if line.startswith("rc="))[3:])
    left = [line for line in lines if not line.startswith("rc=")]
    return code, (mount_point.parent / "stderr.txt").read_text(encoding="utf-8"), left


@pytest.mark.parametrize("size", ["8k", "48k", "200k"])  # full at: the label map, the overview, the gallery
def test_a_full_disk_is_one_line_exit_2_nothing_left_inputs_untouched(tmp_path, data, size):
    """A real small tmpfs: was 'internal error (OSError: [Errno 28] ...)' with exit 1, and ITK's NIfTI writer
    left a label map cut short without a word."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    before = _digests(data)
    code, stderr, left = _run_on_small_tmpfs(size, data, mount_point)
    assert code == 2, stderr
    assert stderr.startswith("spinefrac: error: no space left for the results") and len(stderr.splitlines()) == 1
    assert "No space left on device" in stderr
    assert left == []  # no output folder, no partial folder, no lock
    assert _digests(data) == before


_SIMULATED = """
import errno, sys
import matplotlib.figure
def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
matplotlib.figure.Figure.savefig = full  # the disk fills at the pictures, after the label maps and report
from spinefrac.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_during_overwrite_keeps_the_previous_results(tmp_path, data):
    """ENOSPC simulated at the write call (matplotlib's savefig) in a child process: the earlier results in
    the folder stay byte for byte."""
    out = tmp_path / "out"
    args = ["run", str(data / "ct.nii.gz"), "--segmentation", str(data / "vertebrae.nii.gz"), "-o", str(out), "-q"]
    assert run_cli(*args).returncode == 0
    before, inputs = _digests(out), _digests(data)
    child = subprocess.run([sys.executable, "-c", _SIMULATED, *args, "--overwrite"], check=False, capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, PYTHONPATH=_REPO_CORE))
    assert child.returncode == 2, child.stderr
    assert child.stderr.startswith("spinefrac: error: no space left") and len(child.stderr.splitlines()) == 1
    assert _digests(out) == before and _digests(data) == inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


def test_a_drawing_child_that_never_answers_is_ended_and_the_drawing_done_here(tmp_path):
    """The gallery's forked child hangs (here: every child): after the watchdog the child is ended and
    the picture drawn in this process; an error in a child that answers is raised here."""
    import multiprocessing
    import os
    import time

    from spinefrac.pipeline import BackgroundDrawing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork: drawings are made in this process")
    parent = os.getpid()

    def draw(path):
        while os.getpid() != parent:
            time.sleep(0.05)
        path.write_text("drawn here", encoding="utf-8")

    target = tmp_path / "gallery.png"
    with BackgroundDrawing(timeout_s=1.0) as drawing:
        drawing.start(draw, target)
        drawing.result()
    assert target.read_text(encoding="utf-8") == "drawn here"

    def fail(_):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"), BackgroundDrawing(timeout_s=30.0) as drawing:
        drawing.start(fail, target)
        drawing.result()
