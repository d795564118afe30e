"""spinefrac batch on Dask: a local cluster of two worker processes gives every case exactly as a run of it
alone (report values, label maps voxel for voxel), a bad case is reported while the others finish, the
cohort summary counts what the cases' reports say, Ctrl-C lists the cases finished (and only those are on
disk, whole), and a scheduler that does not answer is one line, exit 2, with nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spine_test_utils import run_cli

pytest.importorskip("distributed", reason="Dask is not installed (pip install '.[cohort]')")

from spinefrac.batch import finished_case_report, run_batch  # noqa: E402
from spinefrac.pipeline import run_pipeline  # noqa: E402
from spinefrac.synthetic.phantom import Fracture, PhantomSpec, make_phantom  # noqa: E402

LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5", "sacrum")
CORE = str(Path(__file__).resolve().parents[2] / "SpineFractureDetection")
CASES = {"p1": {"L2": Fracture("wedge", 0.35)}, "p2": {}, "p3": {"L1": Fracture("biconcave", 0.3)},
         "p4": {"L3": Fracture("crush", 0.3), "L1": Fracture("wedge", 0.45)}}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four phantom cases and one unreadable CT, run as a batch on two Dask workers and each alone."""
    root = tmp_path_factory.mktemp("cohort")
    folder = root / "cases"
    folder.mkdir()
    for seed, (name, fractures) in enumerate(CASES.items()):
        phantom = make_phantom(PhantomSpec(levels=LEVELS, spacing_mm=(2.5, 2.5, 2.5), fractures=fractures,
                                           ribs=False, seed=seed))
        sitk.WriteImage(phantom.ct, str(folder / f"{name}_ct.nii.gz"))
        sitk.WriteImage(phantom.labels, str(folder / f"{name}_seg.nii.gz"))
    (folder / "broken_ct.nii.gz").write_bytes(b"not a CT")
    outcomes = run_batch(folder, root / "dask", workers=2, log=lambda line: None)
    for name in CASES:
        run_pipeline(folder / f"{name}_ct.nii.gz", root / "alone" / name,
                     segmentation_path=folder / f"{name}_seg.nii.gz")
    return root, {o.name: o for o in outcomes}


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def test_every_case_on_two_workers_is_as_its_run_alone(cohort):
    root, outcomes = cohort
    assert {name: outcomes[name].status for name in CASES} == {name: "ok" for name in CASES}
    for name in CASES:
        on_dask, alone = root / "dask" / name, root / "alone" / name
        assert _report(on_dask)["levels"] == _report(alone)["levels"]
        assert (on_dask / "report.csv").read_bytes() == (alone / "report.csv").read_bytes()
        for label_map in ("vertebrae.nii.gz", "vertebral_bodies.nii.gz"):
            dask_image, alone_image = (sitk.ReadImage(str(folder / label_map)) for folder in (on_dask, alone))
            assert np.array_equal(sitk.GetArrayViewFromImage(dask_image), sitk.GetArrayViewFromImage(alone_image))
            assert dask_image.GetOrigin() == alone_image.GetOrigin()
        assert sorted(p.name for p in on_dask.iterdir()) == sorted(p.name for p in alone.iterdir())


def test_a_bad_case_is_reported_and_the_others_finish(cohort):
    root, outcomes = cohort
    assert outcomes["broken"].status == "failed" and "broken_ct.nii.gz" in outcomes["broken"].message
    summary = json.loads((root / "dask" / "batch_summary.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in summary["cases"]] == sorted([*CASES, "broken"])  # case order, not finish order
    assert not [p for p in (root / "dask").iterdir() if p.name.startswith(".")]  # no lock, no partial folder


def test_the_cohort_summary_counts_what_the_reports_say(cohort):
    root, _ = cohort
    summary = json.loads((root / "dask" / "cohort_summary.json").read_text(encoding="utf-8"))
    rows = [row for name in CASES for row in _report(root / "alone" / name)["levels"]]
    fractured = [row for row in rows if row["decision"] == "fractured"]
    assert len(fractured) >= 3  # the phantoms' fractures are found, so the counts below are not all zero
    assert summary["cases"] == {"reported": 4, "failed": 1, "not_finished": 0,
                                "with_a_fracture": sum(any(r["decision"] == "fractured"
                                                           for r in _report(root / "alone" / n)["levels"])
                                                       for n in CASES)}
    assert summary["levels"]["reported"] == len(rows)
    assert summary["levels"]["fractured"] == len(fractured)
    for level, entry in summary["by_level"].items():
        of_level = [row for row in fractured if row["level"] == level]
        assert entry["fractured"] == len(of_level)
        assert sum(entry["by_grade"].values()) == len(of_level)
        for grade in (1, 2, 3):
            assert entry["by_grade"][str(grade)] == sum(row["genant_grade"] == grade for row in of_level)
    assert summary["failed_cases"] == [{"case": "broken", "reason": next(
        c["message"] for c in json.loads((root / "dask" / "batch_summary.json").read_text())["cases"]
        if c["name"] == "broken")}]
    table = (root / "dask" / "cohort.csv").read_text(encoding="utf-8").splitlines()
    assert table[0].startswith("case,level,") and len(table) == 1 + len(rows)
    expected_rows = [f"{name}," + line for name in CASES
                     for line in (root / "alone" / name / "report.csv").read_text().splitlines()[1:]]
    assert table[1:] == expected_rows


def test_a_scheduler_that_does_not_answer_is_one_line_exit_2_and_nothing_written(tmp_path, sample_ct, sample_labels):
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "a_ct.nii.gz").write_bytes(Path(sample_ct).read_bytes())
    result = run_cli("batch", folder, "-o", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "tcp://127.0.0.1:9" in lines[0] and "does not answer" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_ctrl_c_on_dask_lists_what_finished_and_it_is_whole_on_disk(cohort):
    root, _ = cohort
    out = root / "interrupted"
    env = dict(os.environ, PYTHONPATH=CORE)
    command = [sys.executable, "-m", "spinefrac", "batch", root / "cases", "-o", out, "--workers", "2"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = process.stderr.readline()
    assert first.startswith("[1/5]"), first + process.stderr.read()
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the workers get it too
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert "Traceback" not in rest and "batch interrupted (Ctrl-C)" in rest.splitlines()[-1]
    summary = json.loads((out / "batch_summary.json").read_text(encoding="utf-8"))
    finished = [c["name"] for c in summary["cases"] if c["status"] == "ok"]
    assert finished and sorted(p.name for p in out.iterdir() if p.is_dir()) == finished  # listed = on disk
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no lock; workers ended before the summary
    assert json.loads((out / "cohort_summary.json").read_text(encoding="utf-8"))["cases"]["reported"] == len(finished)
    for name in finished:  # whole results a rerun keeps (resuming itself is tested on the batch without Dask)
        assert finished_case_report(out / name, root / "cases" / f"{name}_ct.nii.gz",
                                    root / "cases" / f"{name}_seg.nii.gz")[0] is not None
