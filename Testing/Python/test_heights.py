"""Six-point morphometry as a Slicer markups point list: heights.mrk.json written with every run (each pair
the reported height apart), read back with ``spinefrac run --heights`` after points were moved."""

import json
import math

import numpy as np
import pytest

from spine_test_utils import run_cli
from spinefrac.errors import InputError
from spinefrac.io.height_points import (
    ENDPLATES,
    HEIGHT_POSITIONS,
    SixPoints,
    height_points_document,
    read_height_points,
    six_point_label,
)
from spinefrac.levels import LEVEL_BY_NAME

HEIGHTS_FILE = "heights.mrk.json"
USER_SOURCE = "points placed or moved by the user"
MOVED_LEVEL = "L4"  # mid-lumbar: measured neighbours on both sides set its expected heights
MOVE_EACH_MM = 3.5  # each middle point towards the other


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, sample_ct, sample_labels):
    out = tmp_path_factory.mktemp("heights") / "out"
    result = run_cli("run", sample_ct, "--segmentation", sample_labels, "-o", out)
    assert result.returncode == 0, result.stderr
    return out


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _rows(out):
    return {row["level"]: row for row in _json(out / "report.json")["levels"]}


def _control_points(document):
    return document["markups"][0]["controlPoints"]


def _run_with_heights(sample_ct, sample_labels, out, heights, *options):
    return run_cli("run", sample_ct, "--segmentation", sample_labels, "-o", out, "--heights", heights, *options)


# -- the file every run writes ----------------------------------------------------------------------------


def test_every_measured_level_has_six_points_the_reported_heights_apart(sample_run):
    rows = _rows(sample_run)
    levels = read_height_points(sample_run / HEIGHTS_FILE)
    measured = [name for name, row in rows.items() if row["height_anterior_mm"] is not None]
    assert measured and [six.level.name for six in levels] == measured  # none for a level without heights
    for six in levels:
        for position in HEIGHT_POSITIONS:
            reported = rows[six.level.name][f"height_{position}_mm"]
            assert six.height_mm(position) == pytest.approx(reported, abs=0.05 + 1e-9), (six.level.name, position)
            superior, inferior = np.array(six.pairs_lps_mm[position])
            assert superior[2] > inferior[2]  # LPS: superior is +z on this upright CT
    labels = [c["label"] for c in _control_points(_json(sample_run / HEIGHTS_FILE))]
    assert labels[:6] == [f"{measured[0]} {p} {e}" for p in HEIGHT_POSITIONS for e in ENDPLATES]


def test_the_points_lie_on_the_measured_body(sample_run):
    """Each pair straddles its body: the midpoint of a pair lies in the level's isolated body."""
    import SimpleITK as sitk

    bodies = sitk.ReadImage(str(sample_run / "vertebral_bodies.nii.gz"))
    for six in read_height_points(sample_run / HEIGHTS_FILE):
        for position in HEIGHT_POSITIONS:
            index = bodies.TransformPhysicalPointToIndex(six.midpoint_lps_mm(position).tolist())
            assert bodies[index] == six.level.verse_id, (six.level.name, position)


def test_slicer_loads_the_heights_as_a_point_list(sample_run):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")
    rows = _rows(sample_run)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(sample_run / HEIGHTS_FILE))
    assert storage.ReadData(node)
    positions = {}
    for index in range(node.GetNumberOfControlPoints()):
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(index, ras)
        positions[node.GetNthControlPointLabel(index)] = np.array(ras)
    measured = [name for name, row in rows.items() if row["height_anterior_mm"] is not None]
    assert node.GetNumberOfControlPoints() == 6 * len(measured) == len(positions)
    for name in measured:
        for position in HEIGHT_POSITIONS:
            superior = positions[six_point_label(name, position, "superior")]
            inferior = positions[six_point_label(name, position, "inferior")]
            assert np.linalg.norm(superior - inferior) == pytest.approx(rows[name][f"height_{position}_mm"],
                                                                        abs=0.05 + 1e-9)


# -- spinefrac run --heights ---------------------------------------------------------------------------------


def _moved_middle(document: dict, level: str, each_mm: float) -> dict:
    """The document with ``level``'s two middle points moved ``each_mm`` towards each other."""
    points = {c["label"]: c for c in _control_points(document)}
    superior = points[six_point_label(level, "middle", "superior")]
    inferior = points[six_point_label(level, "middle", "inferior")]
    along = np.subtract(superior["position"], inferior["position"])
    along /= np.linalg.norm(along)
    superior["position"] = (np.array(superior["position"]) - each_mm * along).tolist()
    inferior["position"] = (np.array(inferior["position"]) + each_mm * along).tolist()
    return document


@pytest.fixture(scope="module")
def moved_run(sample_run, sample_ct, sample_labels):
    edited = sample_run.parent / "moved.mrk.json"
    edited.write_text(json.dumps(_moved_middle(_json(sample_run / HEIGHTS_FILE), MOVED_LEVEL, MOVE_EACH_MM)))
    out = sample_run.parent / "moved"
    result = _run_with_heights(sample_ct, sample_labels, out, edited)
    assert result.returncode == 0, result.stderr
    return out


def test_moved_middle_points_grade_the_level_biconcave(sample_run, moved_run):
    before, after = _rows(sample_run)[MOVED_LEVEL], _rows(moved_run)[MOVED_LEVEL]
    assert before["genant_grade"] == 0 and before["height_source"] == "measured"
    assert after["height_middle_mm"] == pytest.approx(before["height_middle_mm"] - 2 * MOVE_EACH_MM, abs=0.1)
    assert after["height_anterior_mm"] == before["height_anterior_mm"]
    assert after["height_posterior_mm"] == before["height_posterior_mm"]
    assert after["genant_grade"] >= 1 and after["genant_type"] == "biconcave" and after["decision"] == "fractured"
    assert after["middle_height_loss_percent"] >= 20.0
    assert after["height_source"] == USER_SOURCE


def test_every_other_level_keeps_its_measured_heights_and_grade(sample_run, moved_run):
    """The other levels stay measured; only their expected heights may change, since the moved level, now
    fractured, no longer serves them as a reference (as a fracture measured on the CT would not)."""
    before, after = _rows(sample_run), _rows(moved_run)
    assert list(before) == list(after)
    kept = ("height_anterior_mm", "height_posterior_mm", "height_source", "genant_grade", "genant_type", "decision",
            "trabecular_hu", "qc_verdict", "volume_mm3")
    for name in before:
        if name != MOVED_LEVEL:
            assert {k: after[name][k] for k in kept} == {k: before[name][k] for k in kept}, name
            assert MOVED_LEVEL not in (after[name]["expected_from"] or "").split(";"), name
    assert any(MOVED_LEVEL in (row["expected_from"] or "").split(";") for row in before.values())


def test_the_report_says_whose_heights_come_from_points(moved_run):
    text = (moved_run / "findings.txt").read_text(encoding="utf-8")
    heights_line = next(line for line in text.splitlines() if line.startswith("Heights:"))
    assert heights_line.startswith(f"Heights: {MOVED_LEVEL} measured from {USER_SOURCE}")
    csv_header, *csv_rows = (moved_run / "report.csv").read_text(encoding="utf-8").splitlines()
    column = csv_header.split(",").index("height_source")
    sources = {row.split(",")[0]: row.split(",")[column] for row in csv_rows}
    assert sources[MOVED_LEVEL] == USER_SOURCE
    assert {name for name, source in sources.items() if source == USER_SOURCE} == {MOVED_LEVEL}


def test_the_new_heights_file_holds_the_moved_points(sample_run, moved_run):
    moved = {six.level.name: six for six in read_height_points(moved_run / HEIGHTS_FILE)}
    rows = _rows(moved_run)
    assert moved[MOVED_LEVEL].height_mm("middle") == pytest.approx(rows[MOVED_LEVEL]["height_middle_mm"], abs=0.05)
    given = _moved_middle(_json(sample_run / HEIGHTS_FILE), MOVED_LEVEL, MOVE_EACH_MM)
    given = {c["label"]: c["position"] for c in _control_points(given)}
    for position in HEIGHT_POSITIONS:
        for endplate, point in zip(ENDPLATES, moved[MOVED_LEVEL].pairs_lps_mm[position]):
            assert point == pytest.approx(given[six_point_label(MOVED_LEVEL, position, endplate)], abs=1e-6)


def test_the_unedited_file_changes_nothing(sample_run, sample_ct, sample_labels, tmp_path):
    result = _run_with_heights(sample_ct, sample_labels, tmp_path / "out", sample_run / HEIGHTS_FILE)
    assert result.returncode == 0, result.stderr
    assert _rows(tmp_path / "out") == _rows(sample_run)
    assert "Heights:" not in (tmp_path / "out" / "findings.txt").read_text(encoding="utf-8")


def _edited(document: dict, edit) -> dict:
    edit(_control_points(document))
    return document


def _rename_level(points, old, new):
    for c in points:
        c["label"] = c["label"].replace(f"{old} ", f"{new} ", 1) if c["label"].startswith(f"{old} ") else c["label"]


BAD_FILES = {
    "level not in the CT": (lambda p: _rename_level(p, "L4", "T3"), "T3 is not one of the CT's measured levels"),
    "a point missing": (lambda p: p.pop(3), "has 5 of its six points; missing:"),
    "a point not placed": (lambda p: p[0].update(positionStatus="undefined"), "has 5 of its six points"),
    "unknown label": (lambda p: p[0].update(label=p[0]["label"].replace("superior", "top")),
                      "is not one of a level's six points"),
    "label without level": (lambda p: p[0].update(label="F-1"), "'F-1' is not one of a level's six points"),
    "a point twice": (lambda p: p[1].update(label=p[0]["label"]), "twice"),
    "NaN": (lambda p: p[2].update(position=[math.nan, 0.0, 0.0]), "not a finite number"),
    "pair on one spot": (lambda p: p[1].update(position=p[0]["position"]), "points (nearly) coincide"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_heights_files_are_refused_in_one_line(case, sample_run, sample_ct, sample_labels, tmp_path):
    edit, message = BAD_FILES[case]
    bad = tmp_path / "bad.mrk.json"
    bad.write_text(json.dumps(_edited(_json(sample_run / HEIGHTS_FILE), edit)))  # NaN written as the NaN literal
    result = _run_with_heights(sample_ct, sample_labels, tmp_path / "out", bad, "-q")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


# -- the format, without a run ---------------------------------------------------------------------------------


def _six(name: str, top_mm: float = 25.0) -> SixPoints:
    return SixPoints(LEVEL_BY_NAME[name.lower()], {
        position: ((0.0, -v, top_mm), (0.0, -v, 0.0)) for position, v in zip(HEIGHT_POSITIONS, (15.0, 0.0, -15.0))})


def test_document_round_trip_in_ras_and_in_any_label_case(tmp_path):
    document = height_points_document([_six("L1", 24.0), _six("L2", 26.5)], "test")
    for c in _control_points(document):  # Slicer may save in RAS; a hand-typed label may differ in case
        c["position"] = [-c["position"][0], -c["position"][1], c["position"][2]]
        c["label"] = c["label"].upper()
    document["markups"][0]["coordinateSystem"] = "RAS"
    path = tmp_path / "h.mrk.json"
    path.write_text(json.dumps(document))
    back = read_height_points(path)
    assert [six.level.name for six in back] == ["L1", "L2"]
    assert [six.height_mm("middle") for six in back] == pytest.approx([24.0, 26.5])
    assert back[0].pairs_lps_mm == _six("L1", 24.0).pairs_lps_mm


def test_a_subset_of_levels_is_read(tmp_path):
    path = tmp_path / "h.mrk.json"
    path.write_text(json.dumps(height_points_document([_six("T12")])))
    assert [six.level.name for six in read_height_points(path)] == ["T12"]


def test_a_heights_file_without_points_is_refused(tmp_path):
    path = tmp_path / "h.mrk.json"
    path.write_text(json.dumps(height_points_document([])))
    with pytest.raises(InputError, match="holds no placed point"):
        read_height_points(path)
