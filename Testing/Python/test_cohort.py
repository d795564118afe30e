"""The cohort outputs (spinefrac.reporting.cohort) from report dicts as report.json holds them: every level
of every case in cohort.csv, and the summary's counts by level, grade, bone density and quality control."""

from __future__ import annotations

import csv
import io
import json

from spinefrac.reporting.cohort import cohort_csv, cohort_summary, write_cohort
from spinefrac.reporting.report import COLUMN_DEFINITIONS


def _row(level: str, decision: str, grade: int | None = None, qc: str = "pass") -> dict:
    return {**{key: None for key in COLUMN_DEFINITIONS}, "level": level, "decision": decision,
            "genant_grade": grade, "qc_verdict": qc, "qc_reasons": ["mask in two pieces"] if qc != "pass" else [],
            "fov_border_faces": []}


def _report(rows: list[dict], density: str | None, qc: str = "pass") -> dict:
    return {"schema": "spinefrac-report", "levels": rows, "quality_control": {"overall_verdict": qc},
            "osteoporosis_screen": {"level": "L1", "category": density} if density else None}


REPORTS = {
    "anna": _report([_row("T12", "normal", 0), _row("L1", "fractured", 2), _row("L2", "fractured", 1)],
                    "low bone density"),
    "ben": _report([_row("L1", "fractured", 3), _row("L2", "not_assessable", qc="fail"),
                    _row("sacrum", "not_assessable")], "likely osteoporosis", qc="fail"),
    "cleo": _report([_row("L2", "normal", 0, qc="warn"), _row("L1", "fractured", None)], None, qc="warn"),
}


def test_cohort_csv_has_a_row_per_case_and_level_with_the_report_columns():
    rows = list(csv.DictReader(io.StringIO(cohort_csv(REPORTS))))
    assert list(rows[0]) == ["case", *COLUMN_DEFINITIONS]
    assert [(r["case"], r["level"]) for r in rows] == [(case, row["level"]) for case, report in REPORTS.items()
                                                       for row in report["levels"]]
    ben_l2 = next(r for r in rows if r["case"] == "ben" and r["level"] == "L2")
    assert ben_l2["qc_reasons"] == "mask in two pieces" and ben_l2["genant_grade"] == ""  # lists joined, None empty


def test_summary_counts_fractures_by_level_and_grade_with_prevalence_among_assessed():
    summary = cohort_summary(REPORTS, {"dora": "CT unreadable"}, ["emil"])
    assert summary["cases"] == {"reported": 3, "failed": 1, "not_finished": 1, "with_a_fracture": 3}
    assert summary["levels"] == {"reported": 8, "assessed": 6, "fractured": 4}
    assert summary["fractures_by_grade"] == {"1": 1, "2": 1, "3": 1, "ungraded": 1}  # cleo's L1: a classifier's call
    assert list(summary["by_level"]) == ["T12", "L1", "L2", "sacrum"]  # cranio-caudal, not first seen
    l1, l2 = summary["by_level"]["L1"], summary["by_level"]["L2"]
    assert (l1["reported"], l1["assessed"], l1["fractured"], l1["prevalence"]) == (3, 3, 3, 1.0)
    assert (l2["reported"], l2["assessed"], l2["fractured"], l2["prevalence"]) == (3, 2, 1, 0.5)
    assert summary["by_level"]["sacrum"]["prevalence"] is None  # nothing assessed: no rate, not 0
    assert summary["failed_cases"] == [{"case": "dora", "reason": "CT unreadable"}]
    assert summary["not_finished_cases"] == ["emil"]


def test_summary_counts_bone_density_and_quality_control():
    summary = cohort_summary(REPORTS, {})
    assert summary["bone_density"] == {"likely osteoporosis": 1, "low bone density": 1, "normal density": 0,
                                       "not screened": 1}
    qc = summary["quality_control"]
    assert qc["cases_by_verdict"] == {"pass": 1, "warn": 1, "fail": 1, "none": 0}
    assert (qc["levels_failed"], qc["levels_warned"], qc["cases_failing"]) == (1, 1, ["ben"])


def test_an_empty_cohort_writes_a_header_and_zero_counts(tmp_path):
    csv_path, json_path = write_cohort(tmp_path, {}, {"a": "no CT"})
    assert csv_path.read_text(encoding="utf-8").splitlines() == [",".join(["case", *COLUMN_DEFINITIONS])]
    summary = json.loads(json_path.read_text(encoding="utf-8"))
    assert summary["schema"] == "spinefrac-cohort" and summary["levels"]["reported"] == 0
    assert summary["by_level"] == {} and summary["failed_cases"] == [{"case": "a", "reason": "no CT"}]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically, no temporaries
