"""Reference and predicted fracture grade files: one Genant grade and/or fracture probability per level.

Reference grade files. Beside a reference label map NAME.nii.gz (or NAME_seg-vert_msk.nii.gz,
...) put NAME_genant.csv or NAME_genant.json; inside a run-output folder put genant.csv or
genant.json (without one, the rows of its report.json are read). The same files beside a
predicted label map give predicted grades; a run's report.json rows give them when they carry
the keys. One row per level:
  CSV:   header "level,genant_grade[,fracture_probability]", e.g. "L1,2"; a verse_id column
         may replace level; other columns are ignored; an empty cell means "not given"
  JSON:  [{"level": "L1", "genant_grade": 2}, ...]  or  {"levels": [...]}  (report.json's shape)
Level names as in reports (C1..L5, T13, L6); "vertebrae_L1", "L1 vertebra" are accepted too.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spinefrac.errors import InputError
from spinefrac.levels import LEVEL_BY_ID, Level, level_for_name

GENANT_GRADES = (0, 1, 2, 3)
GRADES_FILE_STEM = "genant"  # NAME_genant.csv beside a label map, genant.csv in a run folder


@dataclass(frozen=True)
class Grading:
    """What a grade file or report row says about one level."""

    genant_grade: int | None = None
    fracture_probability: float | None = None


def read_gradings(path: Path | str | None) -> dict[int, Grading]:
    """VerSe id -> grading from a CSV or JSON grade file or a report.json (empty for None).

    Levels whose row gives neither a grade nor a probability are left out.
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets often add a byte-order mark
    except OSError as error:
        raise InputError(f"grade file {path} cannot be read ({error.strerror})") from None
    rows = _csv_rows(text, path) if path.suffix.lower() == ".csv" else _json_rows(text, path)
    gradings: dict[int, Grading] = {}
    seen: set[int] = set()
    for number, row in enumerate(rows, start=1):
        where = f"{path}, row {number}"
        level = _row_level(row, where)
        if level.verse_id in seen:
            raise InputError(f"{where}: level {level.name} is listed twice")
        seen.add(level.verse_id)
        grading = Grading(_optional_grade(row.get("genant_grade"), where),
                          _optional_probability(row.get("fracture_probability"), where))
        if grading != Grading():  # rows without either (a report of an ungraded run) say nothing
            gradings[level.verse_id] = grading
    return gradings


def _csv_rows(text: str, path: Path) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    columns = {name.strip() for name in reader.fieldnames or []}
    if not columns & {"level", "verse_id"}:
        found = ", ".join(sorted(columns)) or "none"
        raise InputError(f"grade file {path} needs a 'level' or 'verse_id' column (columns found: {found})")
    return [{key.strip(): value for key, value in row.items() if key} for row in reader]


def _json_rows(text: str, path: Path) -> list[dict]:
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"grade file {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    rows = content.get("levels") if isinstance(content, dict) else content
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InputError(f"grade file {path} is neither a list of level rows nor an object with 'levels'")
    return rows


def _row_level(row: Mapping, where: str) -> Level:
    name = str(row.get("level") or "").strip()
    if name:
        level = level_for_name(name)
        if level is None:
            raise InputError(f"{where}: '{name}' is not a vertebral level name (C1..L5, T13, L6, sacrum)")
        return level
    try:
        return LEVEL_BY_ID[int(row.get("verse_id"))]
    except (TypeError, ValueError, KeyError):
        raise InputError(f"{where}: no level name and no VerSe id") from None


def _optional_number(value) -> float | None:
    """None for a missing or empty cell; NaN for text that is not a number (then refused)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _optional_grade(value, where: str) -> int | None:
    grade = _optional_number(value)
    if grade is None:
        return None
    if grade not in GENANT_GRADES:
        raise InputError(f"{where}: genant_grade {value!r} is not 0, 1, 2 or 3")
    return int(grade)


def _optional_probability(value, where: str) -> float | None:
    probability = _optional_number(value)
    if probability is not None and not 0.0 <= probability <= 1.0:
        raise InputError(f"{where}: fracture_probability {value!r} is not a number from 0 to 1")
    return probability


def grade_file(folder: Path, prefix: str) -> Path | None:
    """``{prefix}genant.csv`` or ``.json`` in ``folder``; None without one, InputError when both are there."""
    found = [folder / f"{prefix}{GRADES_FILE_STEM}{ext}" for ext in (".csv", ".json")]
    found = [path for path in found if path.is_file()]
    if len(found) > 1:
        raise InputError(f"two grade files for one case: {found[0]} and {found[1]}; keep one")
    return found[0] if found else None
