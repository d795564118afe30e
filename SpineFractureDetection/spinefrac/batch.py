"""Batch runs over a folder of CTs: every case is attempted, a bad one never stops the rest.

Input folder layout: one case per CT file ``NAME_ct.nii.gz`` (or .nii, .nrrd, .mha) or per
DICOM sub-folder ``NAME/``; its segmentation, when there is one, is ``NAME_seg.nii.gz`` (same
extensions) beside it. Each case is written to ``OUTDIR/NAME/`` exactly as ``spinefrac run``
would; ``OUTDIR/batch_summary.json`` and ``.csv`` list every case with its status and message.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from spinefrac import __version__
from spinefrac.errors import InputError, OutputError, SpineFracError
from spinefrac.io.filenames import BATCH_SUMMARY_CSV_FILE, BATCH_SUMMARY_JSON_FILE
from spinefrac.io.images import IMAGE_SUFFIX_PATTERN
from spinefrac.io.outputs import refuse_overlap, write_text_atomically
from spinefrac.pipeline import run_pipeline

_CT_FILE = re.compile(rf"^(?P<name>.+)_ct{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)
_SEG_FILE = re.compile(rf"^(?P<name>.+)_seg{IMAGE_SUFFIX_PATTERN}$", re.IGNORECASE)


@dataclass(frozen=True)
class BatchCase:
    name: str
    ct_path: Path
    segmentation_path: Path | None


@dataclass
class CaseOutcome:
    name: str
    status: str  # ok | failed | skipped
    message: str
    seconds: float
    levels: int = 0
    fractured_levels: str = ""
    output: str = ""


def find_cases(folder: Path) -> tuple[list[BatchCase], list[CaseOutcome]]:
    """The cases of a batch folder, and the entries that are not cases (reported, not dropped)."""
    if not folder.is_dir():
        raise InputError(f"batch input folder not found: {folder}")
    segmentations = {}
    for path in folder.iterdir():
        match = _SEG_FILE.match(path.name)
        if match and path.is_file():
            segmentations[match.group("name")] = path
    cases, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or _SEG_FILE.match(path.name):
            continue
        ct_match = _CT_FILE.match(path.name)
        if path.is_dir():
            cases.append(BatchCase(path.name, path, segmentations.get(path.name)))
        elif ct_match:
            name = ct_match.group("name")
            cases.append(BatchCase(name, path, segmentations.get(name)))
        else:
            skipped.append(CaseOutcome(path.name, "skipped", "not a CT (expected NAME_ct.nii.gz or a DICOM folder)", 0.0))
    if not cases:
        raise InputError(f"batch input folder {folder} holds no NAME_ct.nii.gz files and no DICOM folders")
    return cases, skipped


def run_batch(folder: Path | str, output: Path | str, overwrite: bool = False, log=print, **run_options) -> list[CaseOutcome]:
    folder, output = Path(folder), Path(output)
    refuse_overlap(output, [folder])
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise OutputError(f"batch output folder {output} is not empty; pass --overwrite to replace its cases")
    cases, outcomes = find_cases(folder)
    output.mkdir(parents=True, exist_ok=True)
    for index, case in enumerate(cases, start=1):
        outcome = _run_case(case, output, overwrite, run_options)
        outcomes.append(outcome)
        log(f"[{index}/{len(cases)}] {case.name}: {outcome.status}" + (f" ({outcome.message})" if outcome.message else ""))
    write_summary(outcomes, output)
    return outcomes


def _run_case(case: BatchCase, output: Path, overwrite: bool, run_options: dict) -> CaseOutcome:
    started = time.perf_counter()
    try:
        result = run_pipeline(case.ct_path, output / case.name, segmentation_path=case.segmentation_path,
                              overwrite=overwrite, **run_options)
    except SpineFracError as error:
        return CaseOutcome(case.name, "failed", str(error), time.perf_counter() - started)
    except MemoryError:
        return CaseOutcome(case.name, "failed", "out of memory", time.perf_counter() - started)
    except Exception as error:  # a bug in one case must not stop the batch; its type is kept
        where = traceback.extract_tb(error.__traceback__)[-1]
        return CaseOutcome(case.name, "failed", f"internal error {type(error).__name__}: {error} "
                           f"({Path(where.filename).name}:{where.lineno})", time.perf_counter() - started)
    fractured = [row["level"] for row in result.report.rows if row.get("decision") == "fractured"]
    return CaseOutcome(case.name, "ok", "", time.perf_counter() - started, len(result.report.rows),
                       ";".join(fractured), str(result.output_folder))


def write_summary(outcomes: list[CaseOutcome], output: Path) -> None:
    counts = {status: sum(o.status == status for o in outcomes) for status in ("ok", "failed", "skipped")}
    summary = {"schema": "spinefrac-batch", "schema_version": "1.0.0", "software_version": __version__,
               "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "counts": counts,
               "cases": [asdict(o) for o in outcomes]}
    write_text_atomically(output / BATCH_SUMMARY_JSON_FILE, json.dumps(summary, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(outcomes[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(o) for o in outcomes)
    write_text_atomically(output / BATCH_SUMMARY_CSV_FILE, buffer.getvalue())
