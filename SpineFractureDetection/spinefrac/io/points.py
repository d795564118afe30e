"""Vertebra points: one point per vertebral body, placed by a clinician or written by a run.

Read from a Slicer markups point list (``.mrk.json``), a VerSe centroid file (``*_ctd.json``) or a
CSV (x, y, z in LPS mm, optional level); written as a Slicer markups point list. Positions are
held in LPS millimetres (ITK's patient coordinates), whatever the file used.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.coordinates import lps_from_ras
from spinefrac.errors import InputError
from spinefrac.io.outputs import write_text_atomically
from spinefrac.levels import LEVEL_BY_ID, Level, level_for_name

# The schema version whose fields we write (Slicer 5.x reads it; the reader accepts every 1.0.x).
MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                  "Schema/markups-schema-v1.0.3.json#")
UNNAMED_LABEL_PREFIX = "P-"  # the label written for an unnamed point: P-1, P-2, ...

# A label that tries to name a level ("L9", "T14", "S2", "vertebra C0") but names none is a typo, not a
# default label like Slicer's "F-3": it is refused rather than read as unnamed.
_LEVEL_LIKE = re.compile(r"^\s*(?:vertebra[e]?[\s_-]*)?[ctls]\d{1,2}(?:[\s_-]*vertebra[e]?)?\s*$", re.IGNORECASE)

# nibabel axis codes (VerSe's "direction"): the letter is where a voxel axis points TO -> (LPS axis, sign).
_AXCODE = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


@dataclass(frozen=True)
class VertebraPoint:
    """One point in a vertebral body, with the level it names (None: unnamed)."""

    position_lps_mm: tuple[float, float, float]
    level: Level | None
    label: str  # how the file names the point (its markups label, "row 4", ...), for messages


def describe_point(point: VertebraPoint) -> str:
    """'L1' (L1) at (12, -30, 455) mm LPS: for messages that must let the user find the point."""
    x, y, z = (round(v) for v in point.position_lps_mm)
    name = f" ({point.level.name})" if point.level and point.level.name != point.label else ""
    return f"'{point.label}'{name} at ({x}, {y}, {z}) mm LPS"


# -- reading -------------------------------------------------------------------------------------


def read_points(path: Path | str, reference_image: sitk.Image | None = None) -> list[VertebraPoint]:
    """The points of a Slicer markups point list, a VerSe centroid file (needs ``reference_image``, the CT
    whose voxels the centroids count) or a CSV, in the file's order. Points not placed (Slicer's undefined
    or missing control points) are left out; anything malformed is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"points file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as error:
        raise InputError(f"points file {path} cannot be read as text ({error.__class__.__name__})") from None
    if path.name.lower().endswith(".json") or text.lstrip()[:1] in ("{", "["):
        points = _points_from_json(text, path, reference_image)
    elif path.name.lower().endswith(".fcsv") or text.lstrip().startswith(FCSV_SIGNATURE):
        points = _points_from_fcsv(text, path)
    else:
        points = _points_from_csv(text, path)
    if not points:
        raise InputError(f"points file {path} holds no placed point")
    _refuse_duplicate_levels(points, path)
    return points


def _points_from_json(text: str, path: Path, reference_image: sitk.Image | None) -> list[VertebraPoint]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"points file {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if isinstance(document, dict) and "markups" in document:
        return _points_from_markups(document, path)
    if isinstance(document, list) and document and isinstance(document[0], dict) and "direction" in document[0]:
        return _points_from_verse_centroids(document, path, reference_image)
    raise InputError(f"points file {path} is neither a Slicer markups point list (.mrk.json) nor a VerSe centroid "
                     "file (*_ctd.json)")


def _refuse_duplicate_levels(points: list[VertebraPoint], path: Path) -> None:
    seen: dict[Level, VertebraPoint] = {}
    for point in points:
        if point.level is None:
            continue
        if point.level in seen:
            raise InputError(f"points file {path} names {point.level.name} twice: points "
                             f"{describe_point(seen[point.level])} and {describe_point(point)}")
        seen[point.level] = point


def level_of_label(label: str, where: str) -> Level | None:
    """The level a point's label names; None for a label that names none (Slicer's "F-1", "P-2", ...);
    an InputError for one that looks like a level but is not one ("L9")."""
    level = level_for_name(label)
    if level is None and _LEVEL_LIKE.match(label):
        raise InputError(f"{where}: '{label.strip()}' is not a vertebral level (C1-C7, T1-T13, L1-L6, S1 or sacrum)")
    return level


def _finite_position(values, where: str) -> tuple[float, float, float]:
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise InputError(f"{where}: a position needs 3 coordinates, found {values!r}")
    position = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: coordinate {value!r} is not a number")
        if not math.isfinite(value):
            raise InputError(f"{where}: coordinate {value!r} is not a finite number")
        position.append(float(value))
    return (position[0], position[1], position[2])


# -- Slicer markups point list ----------------------------------------------------------------------


def _points_from_markups(document: dict, path: Path) -> list[VertebraPoint]:
    markups = document.get("markups")
    if not isinstance(markups, list) or not all(isinstance(m, dict) for m in markups):
        raise InputError(f"points file {path}: 'markups' is not a list of markups")
    lists = [m for m in markups if m.get("type") == "Fiducial"]
    if len(lists) != 1:
        kinds = ", ".join(str(m.get("type")) for m in markups) or "none"
        raise InputError(f"points file {path} must hold one point list (markups type Fiducial); it holds "
                         f"{len(lists)} (markups: {kinds})")
    markup = lists[0]
    system = markup.get("coordinateSystem", "LPS")  # the schema's default
    if system not in ("LPS", "RAS"):
        raise InputError(f"points file {path}: unknown coordinateSystem {system!r} (LPS or RAS)")
    units = markup.get("coordinateUnits", "mm")
    unit = units[0] if isinstance(units, list) and units else units
    if unit != "mm":
        raise InputError(f"points file {path}: coordinates in {units!r}; only mm is read")
    control_points = markup.get("controlPoints", [])
    if not isinstance(control_points, list):
        raise InputError(f"points file {path}: 'controlPoints' is not a list")
    points = []
    for number, control in enumerate(control_points, start=1):
        point = _control_point(control, number, system, path)
        if point is not None:
            points.append(point)
    return points


def _control_point(control, number: int, system: str, path: Path) -> VertebraPoint | None:
    """One control point as a VertebraPoint; None when it was never placed (its position is not defined)."""
    if not isinstance(control, dict):
        raise InputError(f"points file {path}: control point {number} is not an object")
    if control.get("positionStatus", "defined") != "defined":  # undefined, preview, missing: not placed
        return None
    label = control.get("label")
    label = label.strip() if isinstance(label, str) and label.strip() else f"point {number}"
    where = f"points file {path}, point {label!r}"
    position = _finite_position(control.get("position"), where)
    if system == "RAS":
        position = tuple(float(v) for v in lps_from_ras(position))
    return VertebraPoint(position, level_of_label(label, where), label)


# -- VerSe centroid file -----------------------------------------------------------------------------


def _points_from_verse_centroids(document: list, path: Path, reference_image: sitk.Image | None) -> list[VertebraPoint]:
    codes = document[0].get("direction")
    if (not isinstance(codes, list) or len(codes) != 3 or not all(c in _AXCODE for c in codes)
            or sorted(_AXCODE[c][0] for c in codes) != [0, 1, 2]):
        raise InputError(f"points file {path}: VerSe 'direction' {codes!r} is not three axis codes such as "
                         "[\"P\", \"I\", \"R\"]")
    if reference_image is None:
        raise InputError(f"points file {path}: a VerSe centroid file is in voxel units: give the CT")
    points = []
    for number, entry in enumerate(document[1:], start=2):
        where = f"points file {path}, entry {number}"
        if not isinstance(entry, dict) or "label" not in entry:
            raise InputError(f"{where} is not a centroid ({{\"label\": ..., \"X\": ..., \"Y\": ..., \"Z\": ...}})")
        verse_id = entry["label"]
        if (isinstance(verse_id, bool) or not isinstance(verse_id, (int, float)) or not math.isfinite(verse_id)
                or verse_id != int(verse_id)):
            raise InputError(f"{where}: label {verse_id!r} is not a VerSe label id")
        level = LEVEL_BY_ID.get(int(verse_id))
        if level is None:  # coccyx (27), sub-region centroids (41-50): not a vertebral body
            continue
        voxel = _finite_position([entry.get(axis) for axis in ("X", "Y", "Z")], f"{where} ({level.name})")
        position = verse_voxel_to_lps(voxel, codes, reference_image, f"{where} ({level.name})")
        points.append(VertebraPoint(position, level, level.name))
    return points


def verse_voxel_to_lps(voxel, codes, image: sitk.Image, where: str = "centroid") -> tuple[float, float, float]:
    """A VerSe centroid (voxel units of ``image`` reoriented, as nibabel does, to the axis codes ``codes``)
    in LPS mm. The reoriented grid holds the same voxel centres, only its axes permuted and flipped, so
    the index along each of ``image``'s own axes is the centroid's coordinate on the axis that runs along
    it, counted from the other end where the two point opposite ways. Any orientation of the same grid
    (the file as read or its canonical copy) gives the same position."""
    direction = np.array(image.GetDirection()).reshape(3, 3)  # columns: image axes in LPS
    size = image.GetSize()
    index = [0.0, 0.0, 0.0]
    for coordinate, code in zip(voxel, codes):
        lps_axis, sign = _AXCODE[code]
        image_axis = int(np.argmax(np.abs(direction[lps_axis, :])))  # the image axis closest to that direction
        same_way = np.sign(direction[lps_axis, image_axis]) == sign
        index[image_axis] = coordinate if same_way else size[image_axis] - 1 - coordinate
    if any(not -0.5 <= i <= n - 0.5 for i, n in zip(index, size)):
        raise InputError(f"{where}: the centroid lies outside the CT's grid: is this the centroid file of this CT?")
    return tuple(float(v) for v in image.TransformContinuousIndexToPhysicalPoint(index))


# -- Slicer's legacy fiducial CSV (.fcsv) ------------------------------------------------------------------

FCSV_SIGNATURE = "# Markups fiducial file version"
# Slicer's default columns; before 4.11 the coordinate system was a number (0 RAS, 1 LPS) and files
# without the line were RAS.
_FCSV_COLUMNS = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"
_FCSV_SYSTEMS = {"ras": "RAS", "0": "RAS", "lps": "LPS", "1": "LPS"}


def _points_from_fcsv(text: str, path: Path) -> list[VertebraPoint]:
    """A Slicer fiducial CSV: '# CoordinateSystem = LPS|RAS|0|1', '# columns = ...', one point per row."""
    header = {key.strip().lower(): value.strip() for key, _, value in
              (line.lstrip("#").partition("=") for line in text.splitlines() if line.startswith("#"))}
    system = _FCSV_SYSTEMS.get(header.get("coordinatesystem", "RAS").lower())
    if system is None:
        raise InputError(f"points file {path}: unknown CoordinateSystem {header['coordinatesystem']!r} "
                         "(LPS, RAS, 0 or 1)")
    columns = [name.strip().lower() for name in header.get("columns", _FCSV_COLUMNS).split(",")]
    if not {"x", "y", "z"} <= set(columns):
        raise InputError(f"points file {path}: the '# columns' line names no x, y, z")
    body = "\n".join([",".join(columns)] + [line for line in text.splitlines() if line.strip()
                                            and not line.startswith("#")])
    points = _points_from_csv(body, path)
    if system == "RAS":
        points = [VertebraPoint(tuple(float(v) for v in lps_from_ras(p.position_lps_mm)), p.level, p.label)
                  for p in points]
    return points


# -- CSV -----------------------------------------------------------------------------------------------

_COORDINATE_COLUMNS = {"x": 0, "y": 1, "z": 2, "x_mm": 0, "y_mm": 1, "z_mm": 2}
_NAME_COLUMNS = ("level", "name", "label")


def _points_from_csv(text: str, path: Path) -> list[VertebraPoint]:
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return []
    delimiter = next((d for d in (";", "\t", ",") if d in lines[0][1]), ",")  # ";": decimal commas
    rows = [(n, [cell.strip() for cell in row]) for (n, _), row in
            zip(lines, csv.reader([line for _, line in lines], delimiter=delimiter))]
    first = rows[0][1]
    if any(not _is_number(cell) for cell in first[:3]):
        columns, strict = _header_columns(first, path)
        rows = rows[1:]
    else:
        columns, strict = (0, 1, 2, 3), True  # x, y, z, level
        if len(first) not in (3, 4):
            raise InputError(f"points file {path}, line {rows[0][0]}: {len(first)} columns; without a header "
                             "row give x, y, z (LPS mm) and optionally the level")
    width = len(first)
    return [_csv_point(cells, n, width, columns, strict, path) for n, cells in rows]


def _header_columns(header: list[str], path: Path) -> tuple[tuple[int, int, int, int | None], bool]:
    """Where x, y, z and the name are in a header row, and whether the name column must name a level
    ("level") or may hold any label ("name", "label", as Slicer's point labels)."""
    names = [cell.lower() for cell in header]
    found: dict[int, int] = {}
    for column, name in enumerate(names):
        if name in _COORDINATE_COLUMNS:
            found[_COORDINATE_COLUMNS[name]] = column
    if sorted(found) != [0, 1, 2]:
        raise InputError(f"points file {path}: the header row {','.join(header)!r} needs columns x, y, z "
                         "(LPS mm) and optionally level")
    name_column = next((names.index(n) for n in _NAME_COLUMNS if n in names), None)
    strict = name_column is not None and names[name_column] == "level"
    return (found[0], found[1], found[2], name_column), strict


def _csv_point(cells: list[str], line: int, width: int, columns, strict: bool, path: Path) -> VertebraPoint:
    where = f"points file {path}, line {line}"
    if len(cells) != width:
        raise InputError(f"{where}: {len(cells)} columns where the first row has {width}")
    coordinates = []
    for column in columns[:3]:
        if not _is_number(cells[column]):
            raise InputError(f"{where}: coordinate {cells[column]!r} is not a number")
        coordinates.append(float(cells[column]))
    name = cells[columns[3]] if columns[3] is not None and columns[3] < len(cells) else ""
    label = name or f"line {line}"
    position = _finite_position(coordinates, f"{where} ({name})" if name else where)
    level = None
    if name:
        level = level_of_label(name, where)
        if level is None and strict:
            raise InputError(f"{where}: '{name}' is not a vertebral level (C1-C7, T1-T13, L1-L6, S1 or sacrum)")
    return VertebraPoint(position, level, label)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


# -- writing ---------------------------------------------------------------------------------------


def markups_document(points: list[VertebraPoint], description: str = "", labels: list[str] | None = None) -> dict:
    """A Slicer markups point list (LPS mm): one control point per point, labelled with its level's name
    or P-<n> when unnamed (or with ``labels``, one per point: "L1 anterior superior"); ``description``
    (e.g. "vertebral body centre found by the guided engine") on every point."""
    if labels is not None and len(labels) != len(points):
        raise ValueError(f"{len(labels)} labels for {len(points)} points")
    control_points = []
    for number, point in enumerate(points, start=1):
        control_points.append({
            "id": str(number),
            "label": (labels[number - 1] if labels is not None
                      else point.level.name if point.level else f"{UNNAMED_LABEL_PREFIX}{number}"),
            "description": description,
            "associatedNodeID": "",
            "position": [float(v) for v in point.position_lps_mm],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        })
    return {
        "@schema": MARKUPS_SCHEMA,
        "markups": [{
            "type": "Fiducial",
            "coordinateSystem": "LPS",
            "coordinateUnits": "mm",
            "locked": False,
            "fixedNumberOfControlPoints": False,
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(control_points),
            "controlPoints": control_points,
            "measurements": [],
            "display": {"visibility": True, "pointLabelsVisibility": True},
        }],
    }


def write_points_markups(path: Path | str, points: list[VertebraPoint], description: str = "") -> Path:
    """Write ``points`` as a Slicer markups point list, atomically (readers never see half a file)."""
    path = Path(path)
    write_text_atomically(path, json.dumps(markups_document(points, description), indent=2) + "\n")
    return path
