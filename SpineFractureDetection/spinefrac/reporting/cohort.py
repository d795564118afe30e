"""A batch's cohort outputs, from its cases' report.json: ``cohort.csv`` (a row per case and level, the
report's columns with the case first) and ``cohort_summary.json`` (cases, levels assessed, fractures by level
and grade, bone-density categories, quality-control failures, failed cases with their reasons).

Qt-free and free of the batch machinery: it takes the reports as dicts (as report.json holds them) and the
failed cases' messages, so the same numbers come from a finished, an interrupted or a resumed batch.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from spinefrac import __version__
from spinefrac.io.filenames import COHORT_CSV_FILE, COHORT_SUMMARY_JSON_FILE
from spinefrac.io.outputs import write_text_atomically
from spinefrac.levels import level_for_name
from spinefrac.reporting.report import COLUMN_DEFINITIONS, csv_value

COHORT_SCHEMA = "spinefrac-cohort"
COHORT_SCHEMA_VERSION = "1.0.0"
ASSESSED = ("fractured", "normal")  # decisions that count as an assessed level (not_assessable does not)
DENSITY_CATEGORIES = ("likely osteoporosis", "low bone density", "normal density")
NOT_SCREENED = "not screened"  # no L1 trabecular value (L1 missing, cut or not assessable)


def cohort_csv(reports: dict[str, dict]) -> str:
    """CSV text: a row per case (in the order given) and level, ``case`` then the report's columns."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case", *COLUMN_DEFINITIONS], lineterminator="\n")
    writer.writeheader()
    for case, report in reports.items():
        for row in report.get("levels", []):
            writer.writerow({"case": case, **{key: csv_value(row.get(key)) for key in COLUMN_DEFINITIONS}})
    return buffer.getvalue()


def cohort_summary(reports: dict[str, dict], failed: dict[str, str], not_finished: list[str] = ()) -> dict:
    """The cohort's counts. ``failed``: case -> why it has no report; ``not_finished``: cases of an
    interrupted batch that were never run."""
    rows = [(case, row) for case, report in reports.items() for row in report.get("levels", [])]
    return {
        "schema": COHORT_SCHEMA, "schema_version": COHORT_SCHEMA_VERSION, "software_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cases": {"reported": len(reports), "failed": len(failed), "not_finished": len(not_finished),
                  "with_a_fracture": sum(any(r.get("decision") == "fractured" for r in report.get("levels", []))
                                         for report in reports.values())},
        "levels": {"reported": len(rows), "assessed": sum(row.get("decision") in ASSESSED for _, row in rows),
                   "fractured": sum(row.get("decision") == "fractured" for _, row in rows)},
        "fractures_by_grade": _grade_counts(row for _, row in rows),
        "by_level": _by_level(row for _, row in rows),
        "bone_density": _density_counts(reports),
        "quality_control": _qc_counts(reports),
        "failed_cases": [{"case": case, "reason": reason} for case, reason in failed.items()],
        "not_finished_cases": list(not_finished),
    }


def _grade(row: dict) -> str:
    """Genant grade as a key; a level called fractured by a classifier without a grade: 'ungraded'."""
    return "ungraded" if row.get("genant_grade") in (None, 0) else str(row["genant_grade"])


def _grade_counts(rows) -> dict[str, int]:
    counts = {"1": 0, "2": 0, "3": 0, "ungraded": 0}
    for row in rows:
        if row.get("decision") == "fractured":
            counts[_grade(row)] += 1
    return counts


def _by_level(rows) -> dict[str, dict]:
    """Level -> cases reported, assessed, fractured (by grade) and fracture prevalence among those assessed,
    levels in cranio-caudal order."""
    levels: dict[str, dict] = {}
    for row in rows:
        entry = levels.setdefault(row.get("level", ""), {"reported": 0, "assessed": 0, "fractured": 0,
                                                         "by_grade": {"1": 0, "2": 0, "3": 0, "ungraded": 0}})
        entry["reported"] += 1
        entry["assessed"] += row.get("decision") in ASSESSED
        if row.get("decision") == "fractured":
            entry["fractured"] += 1
            entry["by_grade"][_grade(row)] += 1
    for entry in levels.values():
        entry["prevalence"] = round(entry["fractured"] / entry["assessed"], 4) if entry["assessed"] else None
    return dict(sorted(levels.items(), key=lambda item: _rank(item[0])))


def _rank(name: str) -> tuple[int, str]:
    level = level_for_name(name)
    return (level.craniocaudal_rank if level is not None else 10_000, name)


def _density_counts(reports: dict[str, dict]) -> dict[str, int]:
    """Cases per opportunistic bone-density category (L1 trabecular HU, the report's osteoporosis_screen)."""
    counts = {category: 0 for category in (*DENSITY_CATEGORIES, NOT_SCREENED)}
    for report in reports.values():
        category = (report.get("osteoporosis_screen") or {}).get("category")
        counts[category if category in counts else NOT_SCREENED] += 1
    return counts


def _qc_counts(reports: dict[str, dict]) -> dict:
    """Quality control over the cohort: cases by overall verdict, levels failed and warned, the failing cases."""
    verdicts = {"pass": 0, "warn": 0, "fail": 0, "none": 0}
    failing = []
    for case, report in reports.items():
        verdict = (report.get("quality_control") or {}).get("overall_verdict")
        verdicts[verdict if verdict in verdicts else "none"] += 1
        if verdict == "fail":
            failing.append(case)
    rows = [row for report in reports.values() for row in report.get("levels", [])]
    return {"cases_by_verdict": verdicts, "levels_failed": sum(r.get("qc_verdict") == "fail" for r in rows),
            "levels_warned": sum(r.get("qc_verdict") == "warn" for r in rows), "cases_failing": failing}


def write_cohort(folder: Path, reports: dict[str, dict], failed: dict[str, str],
                 not_finished: list[str] = ()) -> tuple[Path, Path]:
    """Write cohort.csv and cohort_summary.json into ``folder`` (each atomically); their paths."""
    csv_path, json_path = folder / COHORT_CSV_FILE, folder / COHORT_SUMMARY_JSON_FILE
    write_text_atomically(csv_path, cohort_csv(reports))
    summary = cohort_summary(reports, failed, not_finished)
    write_text_atomically(json_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path
