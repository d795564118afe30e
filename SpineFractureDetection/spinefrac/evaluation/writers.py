"""The written evaluation: evaluation.json, evaluation.csv (one row per case and level) and the
plain-text table for the terminal."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from spinefrac.evaluation.cases import EvaluationSummary
from spinefrac.evaluation.grading import FractureAgreement
from spinefrac.io.filenames import EVALUATION_CSV_FILE, EVALUATION_JSON_FILE
from spinefrac.io.outputs import write_text_atomically
from spinefrac.levels import LEVEL_BY_ID, sort_craniocaudal

CSV_COLUMNS = (
    "case", "level", "verse_id", "status", "reference_voxels", "predicted_voxels", "dice", "hd95_mm",
    "localisation_mm", "identified", "reference_grade", "predicted_grade", "fracture_probability",
)


def summary_rows(summary: EvaluationSummary) -> list[dict]:
    """One row per case and level (segmented or graded), as written to the CSV."""
    rows = []
    for case in summary.cases:
        scores = {score.level.verse_id: score for score in case.levels}
        grades = {grade.level.verse_id: grade for grade in case.grades}
        for level in sort_craniocaudal(LEVEL_BY_ID[label] for label in scores.keys() | grades.keys()):
            row = dict.fromkeys(CSV_COLUMNS, "")
            row.update(case=case.name, level=level.name, verse_id=level.verse_id)
            if level.verse_id in scores:
                row.update({key: value for key, value in scores[level.verse_id].to_dict().items() if key in row})
            if level.verse_id in grades:
                row.update({key: value for key, value in grades[level.verse_id].to_dict().items() if key in row})
            rows.append({key: "" if value is None else value for key, value in row.items()})
    return rows


def to_json(summary: EvaluationSummary) -> str:
    return json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n"


def to_csv(summary: EvaluationSummary) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_rows(summary))
    return buffer.getvalue()


def write_evaluation(summary: EvaluationSummary, folder: Path | str) -> dict[str, Path]:
    """evaluation.json and evaluation.csv in ``folder``, each replaced atomically."""
    folder = Path(folder)
    json_path, csv_path = folder / EVALUATION_JSON_FILE, folder / EVALUATION_CSV_FILE
    write_text_atomically(json_path, to_json(summary))
    write_text_atomically(csv_path, to_csv(summary))
    return {"json": json_path, "csv": csv_path}


def format_table(summary: EvaluationSummary) -> str:
    """A plain-text summary for the terminal: one line per case, totals, fracture agreement."""
    header = (f"{'case':<24} {'ref':>4} {'pred':>4} {'Dice':>6} {'HD95 mm':>8} {'id rate':>8} {'loc mm':>7}"
              "  missed / extra")
    lines = [header, "-" * len(header)]
    for case in summary.cases:
        predicted_count = sum(1 for score in case.levels if score.predicted_voxels)
        lines.append(
            f"{case.name[:24]:<24} {len(case.reference_levels):>4} {predicted_count:>4} "
            f"{_text(case.mean_dice, '.3f'):>6} {_text(case.mean_hd95_mm, '.1f'):>8} "
            f"{_text(case.identification_rate, '.1%'):>8} {_text(case.mean_localisation_mm, '.1f'):>7}  "
            f"{_level_list(case.missed_levels)} / {_level_list(case.extra_levels)}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'all (' + str(len(summary.cases)) + ' cases)':<24} {'':>4} {'':>4} {_text(summary.mean_dice, '.3f'):>6} "
        f"{_text(summary.mean_hd95_mm, '.1f'):>8} {_text(summary.identification_rate, '.1%'):>8} "
        f"{_text(summary.mean_localisation_mm, '.1f'):>7}"
    )
    if summary.fracture:
        lines.extend(_fracture_lines(summary.fracture))
    lines.extend(summary.notes)
    if summary.unmatched_predictions:
        lines.append("unmatched, prediction only: " + ", ".join(summary.unmatched_predictions))
    if summary.unmatched_references:
        lines.append("unmatched, reference only: " + ", ".join(summary.unmatched_references))
    return "\n".join(lines)


def _fracture_lines(fracture: FractureAgreement) -> list[str]:
    lines = ["fracture (Genant grade >= 1):"]
    for agreement in (fracture.per_level, fracture.per_patient):
        lines.append(
            f"  per {agreement.unit:<7} n={agreement.count:<4} ({agreement.positives} fractured)  "
            f"sensitivity {_text(agreement.sensitivity, '.1%')}  specificity {_text(agreement.specificity, '.1%')}  "
            f"AUC {_text(agreement.auc, '.3f')}"
        )
    lines.append(
        f"  Genant grade agreement over {fracture.graded_level_count} levels: kappa linear "
        f"{_text(fracture.kappa_linear, '.3f')}, quadratic {_text(fracture.kappa_quadratic, '.3f')}, "
        f"exact {_text(fracture.exact_grade_agreement, '.1%')}"
    )
    if fracture.reference_levels_without_prediction:
        lines.append(f"  {fracture.reference_levels_without_prediction} reference-graded levels have no prediction")
    return lines


def _text(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _level_list(names: list[str]) -> str:
    return ",".join(names) if names else "-"
