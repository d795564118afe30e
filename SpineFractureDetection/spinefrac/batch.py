"""Batch runs over a folder of CTs: every case is attempted, a bad one never stops the rest.

Input folder layout: one case per CT file ``NAME_ct.nii.gz`` (or .nii, .nrrd, .mha) or per
DICOM sub-folder ``NAME/``; its segmentation, when there is one, is ``NAME_seg.nii.gz`` (same
extensions) beside it. Each case is written to ``OUTDIR/NAME/`` exactly as ``spinefrac run``
would; ``OUTDIR/batch_summary.json`` and ``.csv`` list every case with its status and message.

Two inputs for one case name (``A_ct.nii.gz`` and ``A_ct.nrrd``, or ``A_ct.nii.gz`` and a folder
``A/``) would write one case folder: refused up front, naming both. A lock file in OUTDIR (its
owner's pid) keeps a second batch out. An interrupted batch (Ctrl-C, SIGTERM) writes its summary
with the cases that finished; run again without --overwrite, it keeps each finished case whose
report.json records the same input (sha256) and whose every output is there, and runs the rest.

Cases run one after another in this process, or on Dask with ``workers`` (a local cluster of that many
processes) or ``scheduler`` (an existing cluster's address): spinefrac.batch_dask. Either way the batch ends
(also when interrupted) with the cohort outputs, cohort.csv and cohort_summary.json (spinefrac.reporting.cohort),
from the report.json of every finished case.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import re
import signal
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from spinefrac import __version__
from spinefrac.errors import Interrupted, InputError, OutputError, SpineFracError
from spinefrac.io.filenames import (BATCH_LOCK_FILE, BATCH_SUMMARY_CSV_FILE, BATCH_SUMMARY_JSON_FILE, COHORT_CSV_FILE,
                                    COHORT_SUMMARY_JSON_FILE, REPORT_JSON_FILE)
from spinefrac.io.images import IMAGE_SUFFIX_PATTERN
from spinefrac.io.outputs import refuse_overlap, take_lock, write_text_atomically
from spinefrac.io.paths import input_fingerprint, is_utf8, require_usable_path, shown_path
from spinefrac.pipeline import expected_outputs, run_pipeline
from spinefrac.reporting.cohort import write_cohort

_CT_FILE = re.compile(rf"^(?P<name>.+)_ct{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)
_SEG_FILE = re.compile(rf"^(?P<name>.+)_seg{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)
STATUSES = ("ok", "failed", "skipped", "interrupted")
KEPT_MESSAGE = "kept: finished by an earlier run (same input sha256, every output present)"


@dataclass(frozen=True)
class BatchCase:
    name: str
    ct_path: Path
    segmentation_path: Path | None


@dataclass
class CaseOutcome:
    name: str
    status: str  # ok | failed | skipped | interrupted
    message: str
    seconds: float
    levels: int = 0
    fractured_levels: str = ""
    output: str = ""


def find_cases(folder: Path) -> tuple[list[BatchCase], list[CaseOutcome]]:
    """The cases of a batch folder, and the entries that are not cases (reported, not dropped). Two inputs
    or two segmentations for one case name (also names that differ only in case, one folder on macOS and
    Windows) are refused, naming the files."""
    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"batch input {folder} is a file, not a folder; give the folder holding the NAME_ct.nii.gz "
                         "files (one CT is run with 'spinefrac run')")
    if not folder.is_dir():
        raise InputError(f"batch input folder not found: {folder}")
    entries, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not is_utf8(path.name):  # ITK aborts the process on such a name: reported, not read
            skipped.append(CaseOutcome(shown_path(path.name), "skipped", "the name is not UTF-8 text (from another "
                                       "encoding), which ITK cannot open: rename it", 0.0))
        else:
            entries.append(path)
    segmentations = _by_case_name(folder, [(m.group("name"), p) for p in entries
                                           if (m := _SEG_FILE.match(p.name)) and p.is_file()], "segmentations")
    inputs = []
    for path in entries:
        ct_match = _CT_FILE.match(path.name)
        if path.is_dir():
            inputs.append((path.name, path))
        elif ct_match:
            inputs.append((ct_match.group("name"), path))
        elif not _SEG_FILE.match(path.name):
            skipped.append(CaseOutcome(path.name, "skipped", "not a CT (expected NAME_ct.nii.gz or a DICOM folder)",
                                       0.0))
    by_name = _by_case_name(folder, inputs, "inputs")
    cases = [BatchCase(name, path, segmentations.pop(name, None)) for name, path in by_name.items()]
    skipped += [CaseOutcome(path.name, "skipped", f"a segmentation without a CT (no {name}_ct.nii.gz and no folder "
                            f"{name}/)", 0.0) for name, path in segmentations.items()]
    if not cases:
        raise InputError(f"batch input folder {folder} holds no NAME_ct.nii.gz files and no DICOM folders")
    return sorted(cases, key=lambda case: case.name), skipped


def _by_case_name(folder: Path, named: list[tuple[str, Path]], what: str) -> dict[str, Path]:
    """Case name -> path; two paths for one name (compared case-blind) are refused, all such pairs named."""
    by_key: dict[str, list[tuple[str, Path]]] = {}
    for name, path in named:
        by_key.setdefault(name.casefold(), []).append((name, path))
    clashes = [group for group in by_key.values() if len(group) > 1]
    if clashes:
        described = "; ".join(f"'{group[0][0]}': " + " and ".join(p.name + ("/" if p.is_dir() else "")
                                                                   for _, p in group) for group in clashes)
        raise InputError(f"batch input folder {folder} has {what} that share a case name ({described}); their "
                         "results would go to one case folder: rename or move all but one of each")
    return {group[0][0]: group[0][1] for group in by_key.values()}


def run_batch(folder: Path | str, output: Path | str, overwrite: bool = False, log=print,
              workers: int | None = None, scheduler: str | None = None, **run_options) -> list[CaseOutcome]:
    """Run every case of ``folder`` into ``output``; the outcomes, also written as the batch summary and the
    cohort outputs. Without ``overwrite`` an output folder of an earlier run of this batch is resumed: finished
    cases are kept. ``workers`` or ``scheduler``: the cases run on Dask (spinefrac.batch_dask.DaskCases)."""
    folder, output = Path(folder), Path(output)
    require_usable_path(folder, "batch input", entries=False)
    require_usable_path(output, "batch output", OutputError, whole=True, entries=False)
    refuse_overlap(output, [folder])
    cases, outcomes = find_cases(folder)
    dask = None
    if workers is not None or scheduler is not None:  # connected before anything is written
        from spinefrac.batch_dask import DaskCases
        dask = DaskCases(workers, scheduler)
    try:
        outcomes += _run_in_output(cases, output, overwrite, log, run_options, outcomes, dask)
    finally:
        if dask is not None:
            dask.close()
    write_summary(outcomes, output)
    write_cohort_of(outcomes, output)
    return outcomes


def _run_in_output(cases: list[BatchCase], output: Path, overwrite: bool, log, run_options: dict,
                   earlier: list[CaseOutcome], dask) -> list[CaseOutcome]:
    """Create and lock the output folder, run the cases into it; their outcomes."""
    existed = output.is_dir()
    if not existed:
        try:
            output.mkdir(parents=True)
        except OSError as error:
            raise OutputError(f"cannot create batch output folder {output} ({error.strerror})") from None
    lock = output / BATCH_LOCK_FILE
    try:
        stale = take_lock(lock, f"batch output folder {output} is being written by another batch")
    except OutputError:
        if not existed:
            output.rmdir()
        raise
    try:
        if stale is not None:
            log(f"note: took over the lock of batch process {stale}, which is no longer running")
        if existed and not overwrite:
            _refuse_foreign_entries(output, cases)
        return _run_cases(cases, output, overwrite, log, run_options, earlier, dask)
    finally:
        lock.unlink(missing_ok=True)


def _refuse_foreign_entries(output: Path, cases: list[BatchCase]) -> None:
    """Without --overwrite an existing output folder may hold this batch's case folders and summary only."""
    ours = {case.name for case in cases} | {BATCH_SUMMARY_JSON_FILE, BATCH_SUMMARY_CSV_FILE, COHORT_CSV_FILE,
                                            COHORT_SUMMARY_JSON_FILE}
    foreign = sorted(p.name for p in output.iterdir() if not p.name.startswith(".") and p.name not in ours)
    if foreign:
        shown = ", ".join(shown_path(name) for name in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise OutputError(f"batch output folder {output} is not empty and holds more than this batch's cases "
                          f"({shown}); choose another folder, or pass --overwrite to replace its cases")


def _run_cases(cases: list[BatchCase], output: Path, overwrite: bool, log, run_options: dict,
               earlier: list[CaseOutcome], dask=None) -> list[CaseOutcome]:
    """Every case, in turn or on Dask; on Ctrl-C or SIGTERM the summaries record what finished, then
    Interrupted."""
    done: list[CaseOutcome] = []
    counter = itertools.count(1)
    interrupt = StickyInterrupt()

    def record(outcome: CaseOutcome) -> None:
        done.append(outcome)
        log(f"[{next(counter)}/{len(cases)}] {outcome.name}: {outcome.status}"
            + (f" ({outcome.message})" if outcome.message else ""))
        interrupt.check()

    kept = (lambda case: _kept_case(case, output) if not overwrite and (output / case.name).exists() else None)
    try:
        interrupt.install()
        if dask is None:
            for case in cases:
                record(kept(case) or _run_case(case, output, overwrite, run_options))
        else:
            todo = []
            for case in cases:  # finished cases are checked here, the rest go to the workers
                outcome = kept(case)
                record(outcome) if outcome else todo.append(case)
            task = functools.partial(_run_case, output=output, overwrite=overwrite, run_options=run_options,
                                     raise_unexpected=True)
            for outcome in dask.run(todo, task, _failed_task):
                record(outcome)
        order = {case.name: index for index, case in enumerate(cases)}
        done.sort(key=lambda outcome: order[outcome.name])  # Dask finishes them in any order
    except BaseException as stop:  # KeyboardInterrupt, SIGTERM (errors.Terminated), SystemExit
        if isinstance(stop, Exception):
            raise
        if dask is not None:  # its workers stopped before the summary says which cases finished
            dask.close()
        raise _interrupted(stop, cases, done, earlier, output) from None
    finally:
        interrupt.uninstall()
    return done


class StickyInterrupt:
    """Ctrl-C raises KeyboardInterrupt and is remembered: one that lands where it is swallowed (a
    multiprocessing finalizer prints "Exception ignored" and goes on) still stops the batch after the case."""

    def __init__(self):
        self.seen = False
        self._previous = None

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: Python's own handler stays
            self._previous = None

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def _handler(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt


def _interrupted(stop: BaseException, cases: list[BatchCase], done: list[CaseOutcome], earlier: list[CaseOutcome],
                 output: Path) -> Interrupted:
    """Write the summary of an interrupted batch; the exception that says what finished."""
    signal_name = "interrupted (Ctrl-C)" if isinstance(stop, KeyboardInterrupt) else "terminated"
    by_name = {outcome.name: outcome for outcome in done}
    every = [by_name.get(case.name) or _finished_while_stopping(case, output) for case in cases]
    write_summary(earlier + every, output)
    write_cohort_of(earlier + every, output)
    finished = [o.name for o in every if o.status == "ok"]
    listed = ", ".join(finished[:5]) + (" ..." if len(finished) > 5 else "")
    code = 128 + signal.SIGINT if isinstance(stop, KeyboardInterrupt) else 128 + signal.SIGTERM
    return Interrupted(
        f"batch {signal_name} after {len(done)} of {len(cases)} cases; {len(finished)} finished and kept"
        + (f" ({listed})" if finished else "") + f"; summary in {output / BATCH_SUMMARY_JSON_FILE}; run the same "
        "command again (without --overwrite) to do the rest", code)


def _finished_while_stopping(case: BatchCase, output: Path) -> CaseOutcome:
    """A case not reported finished when the batch was stopped: a Dask worker may still have completed it
    (its folder appears whole, by one rename); listed as finished when it checks as this input's result."""
    if (output / case.name).is_dir() and finished_case_report(output / case.name, case.ct_path,
                                                              case.segmentation_path)[0] is not None:
        return CaseOutcome(case.name, "ok", "finished while the batch was stopping", 0.0,
                           output=str(output / case.name))
    return CaseOutcome(case.name, "interrupted", "not finished: the batch was stopped", 0.0)


def _kept_case(case: BatchCase, output: Path) -> CaseOutcome:
    """A case folder left by an earlier run: kept when it is this input's finished result, else failed."""
    folder = output / case.name
    report, reason = finished_case_report(folder, case.ct_path, case.segmentation_path)
    if report is None:
        return CaseOutcome(case.name, "failed", f"{folder} holds other results ({reason}); pass --overwrite to "
                           "replace them", 0.0)
    fractured = [row.get("level", "") for row in report.get("levels", []) if row.get("decision") == "fractured"]
    return CaseOutcome(case.name, "ok", KEPT_MESSAGE, 0.0, len(report.get("levels", [])), ";".join(fractured),
                       str(folder))


def finished_case_report(folder: Path, ct_path: Path, segmentation_path: Path | None) -> tuple[dict | None, str]:
    """(report.json, "") when ``folder`` holds a finished run of these inputs: report.json records their
    fingerprints (sha256, size) as they are now and every output it implies is there; else (None, why not)."""
    try:
        report = json.loads((folder / REPORT_JSON_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, f"no readable {REPORT_JSON_FILE}"
    if not isinstance(report, dict) or report.get("schema") != "spinefrac-report":
        return None, f"{REPORT_JSON_FILE} is not a spinefrac report"
    recorded = ((report.get("input") or {}).get("fingerprint"), (report.get("segmentation") or {}).get("fingerprint"))
    if recorded[0] is None:
        return None, f"its {REPORT_JSON_FILE} records no input fingerprint (an older spinefrac wrote it)"
    try:
        current = (input_fingerprint(ct_path), input_fingerprint(segmentation_path) if segmentation_path else None)
    except OSError as error:
        return None, f"the input cannot be read to compare ({error.strerror})"
    if recorded != current:
        return None, "made from another CT or segmentation than the one in the input folder now"
    missing = [p.name for p in expected_outputs(folder, report) if not p.is_file() or p.stat().st_size == 0]
    if missing:
        return None, f"{', '.join(missing)} missing or empty"
    return report, ""


def _run_case(case: BatchCase, output: Path, overwrite: bool, run_options: dict,
              raise_unexpected: bool = False) -> CaseOutcome:
    """One case, as ``spinefrac run`` would write it. ``raise_unexpected``: an error that is not the input's
    (out of memory, a bug) is raised, for Dask to retry the task, instead of reported."""
    started = time.perf_counter()
    try:
        result = run_pipeline(case.ct_path, output / case.name, segmentation_path=case.segmentation_path,
                              overwrite=overwrite, **run_options)
    except SpineFracError as error:
        return CaseOutcome(case.name, "failed", str(error), time.perf_counter() - started)
    except Exception as error:  # a bug in one case must not stop the batch; its type is kept
        if raise_unexpected:
            raise
        return _failed_task(case, error, time.perf_counter() - started)
    fractured = [row["level"] for row in result.report.rows if row.get("decision") == "fractured"]
    return CaseOutcome(case.name, "ok", "", time.perf_counter() - started, len(result.report.rows),
                       ";".join(fractured), str(result.output_folder))


def _failed_task(case: BatchCase, error: BaseException, seconds: float = 0.0) -> CaseOutcome:
    """The outcome of a case whose run raised (also on Dask, after its retry), with where it was raised."""
    if isinstance(error, MemoryError):
        return CaseOutcome(case.name, "failed", "out of memory", seconds)
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return CaseOutcome(case.name, "failed", f"internal error {type(error).__name__}: {error}{where}", seconds)


def write_cohort_of(outcomes: list[CaseOutcome], output: Path) -> None:
    """cohort.csv and cohort_summary.json from the report.json of every finished case."""
    reports = {}
    for outcome in outcomes:
        if outcome.status == "ok":
            reports[outcome.name] = json.loads((output / outcome.name / REPORT_JSON_FILE).read_text(encoding="utf-8"))
    failed = {o.name: o.message for o in outcomes if o.status == "failed"}
    write_cohort(output, reports, failed, [o.name for o in outcomes if o.status == "interrupted"])


def write_summary(outcomes: list[CaseOutcome], output: Path) -> None:
    counts = {status: sum(o.status == status for o in outcomes) for status in STATUSES}
    summary = {"schema": "spinefrac-batch", "schema_version": "1.1.0", "software_version": __version__,
               "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "counts": counts,
               "cases": [asdict(o) for o in outcomes]}
    write_text_atomically(output / BATCH_SUMMARY_JSON_FILE, json.dumps(summary, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(outcomes[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(o) for o in outcomes)
    write_text_atomically(output / BATCH_SUMMARY_CSV_FILE, buffer.getvalue())
