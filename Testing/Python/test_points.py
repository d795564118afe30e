"""Vertebra points in and out: Slicer markups point lists (as Slicer 5 writes them, LPS and RAS), VerSe
centroid files (voxel units, checked against real VerSe masks and against nibabel's reorientation),
CSV; every malformed file refused in one line; the written point list read back by our reader and by
Slicer's own markups storage (slicer-core)."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.filenames import POINTS_FILE
from spinefrac.io.images import to_canonical
from spinefrac.io.points import VertebraPoint, markups_document, read_points, write_points_markups
from spinefrac.levels import LEVEL_BY_ID, LEVEL_BY_NAME

SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
          "markups-schema-v1.0.3.json#")


def _control_point(number, label, position, status="defined"):
    """A control point with every field Slicer 5's vtkMRMLMarkupsJsonStorageNode writes."""
    return {"id": str(number), "label": label, "description": "", "associatedNodeID": "vtkMRMLScalarVolumeNode1",
            "position": position, "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": False, "visibility": True, "positionStatus": status}


def _markups(control_points, system="LPS", kind="Fiducial", units="mm"):
    return {"@schema": SCHEMA, "markups": [{
        "type": kind, "coordinateSystem": system, "coordinateUnits": units, "locked": False,
        "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(control_points),
        "controlPoints": control_points, "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0], "glyphType": "Sphere3D"}}]}


def _write_json(path, document):
    path.write_text(json.dumps(document, indent=4), encoding="utf-8")
    return path


# -- Slicer markups -------------------------------------------------------------------------------------


def test_markups_point_list_names_levels_and_skips_points_not_placed(tmp_path):
    path = _write_json(tmp_path / "F.mrk.json", _markups([
        _control_point(1, "T12", [1.5, -20.0, 400.0]),
        _control_point(2, "F-2", [2.0, -21.0, 370.0]),
        _control_point(3, "L2", [0.0, 0.0, 0.0], status="undefined"),  # never placed
        _control_point(4, "vertebrae_L3", [3.0, -22.0, 340.0]),
        _control_point(5, "L4", [9.0, 9.0, 9.0], status="missing"),
    ]))
    points = read_points(path)
    assert [p.position_lps_mm for p in points] == [(1.5, -20.0, 400.0), (2.0, -21.0, 370.0), (3.0, -22.0, 340.0)]
    assert [p.level.name if p.level else None for p in points] == ["T12", None, "L3"]
    assert [p.label for p in points] == ["T12", "F-2", "vertebrae_L3"]


def test_markups_in_ras_are_converted_to_lps(tmp_path):
    path = _write_json(tmp_path / "ras.mrk.json", _markups([_control_point(1, "L1", [10.0, -30.0, 455.5])], "RAS"))
    assert read_points(path)[0].position_lps_mm == (-10.0, 30.0, 455.5)


@pytest.mark.parametrize("label, expected", [
    ("L1", "L1"), ("t12", "T12"), ("T13", "T13"), ("L6", "L6"), ("S1", "sacrum"), ("sacrum", "sacrum"),
    ("C7 vertebra", "C7"), ("F-1", None), ("F_1", None), ("MarkupsFiducial-3", None), ("P-4", None), ("", None),
])
def test_level_names_and_default_labels(tmp_path, label, expected):
    path = _write_json(tmp_path / "p.mrk.json", _markups([_control_point(1, label, [0.0, 0.0, 0.0])]))
    point = read_points(path)[0]
    assert (point.level.name if point.level else None) == expected
    assert point.label == (label or "point 1")


def _bad_markups():
    good = _control_point(1, "L1", [0.0, 0.0, 0.0])
    return [
        ("{not json", "is not valid JSON"),
        (json.dumps({"markups": [{"type": "Line", "controlPoints": [good]}]}), "must hold one point list"),
        (json.dumps(_markups([good]) | {"markups": _markups([good])["markups"] * 2}), "it holds 2"),
        (json.dumps({"something": 1}), "neither a Slicer markups point list (.mrk.json) nor a VerSe centroid file"),
        (json.dumps(_markups([good], system="XYZ")), "unknown coordinateSystem 'XYZ'"),
        (json.dumps(_markups([good], units="um")), "coordinates in 'um'"),
        (json.dumps(_markups([_control_point(1, "L1", [0.0, "a", 0.0])])), "coordinate 'a' is not a number"),
        (json.dumps(_markups([_control_point(1, "L1", [0.0, 1.0])])), "needs 3 coordinates"),
        (json.dumps(_markups([_control_point(1, "L1", [0.0, float("nan"), 0.0])])), "not a finite number"),
        (json.dumps(_markups([_control_point(1, "L1", [0.0, 0.0, 0.0], status="undefined")])), "no placed point"),
        (json.dumps(_markups([])), "no placed point"),
        (json.dumps(_markups([_control_point(1, "L9", [0.0, 0.0, 0.0])])), "'L9' is not a vertebral level"),
        (json.dumps(_markups([good, _control_point(2, "l1", [0.0, 0.0, -30.0])])), "names L1 twice"),
    ]


@pytest.mark.parametrize("text, message", _bad_markups())
def test_malformed_markups_are_refused_in_one_line(tmp_path, text, message):
    assert "\n" not in _assert_refused(tmp_path / "bad.mrk.json", text, message)


def _assert_refused(path, text: str, message: str) -> str:
    """``text`` written to ``path`` is refused naming the file and saying ``message``; the refusal."""
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read_points(path)
    refusal = str(caught.value)
    assert message in refusal and str(path) in refusal
    return refusal


def test_missing_points_file(tmp_path):
    with pytest.raises(InputError, match="points file not found"):
        read_points(tmp_path / "none.mrk.json")


# -- writing --------------------------------------------------------------------------------------------


def _points():
    return [VertebraPoint((1.25, -30.5, 410.0), LEVEL_BY_NAME["t12"], "T12"),
            VertebraPoint((2.0, -31.0, 380.125), None, "seed 2"),
            VertebraPoint((2.5, -33.0, 350.0), LEVEL_BY_NAME["sacrum"], "sacrum")]


def test_written_point_list_reads_back_with_positions_and_levels(tmp_path):
    path = write_points_markups(tmp_path / "out" / POINTS_FILE, _points(), "vertebral body centre found by test")
    assert [p.name for p in path.parent.iterdir()] == [POINTS_FILE]  # no temporary file left beside it
    back = read_points(path)
    assert [p.position_lps_mm for p in back] == [p.position_lps_mm for p in _points()]
    assert [p.level for p in back] == [p.level for p in _points()]
    assert [p.label for p in back] == ["T12", "P-2", "sacrum"]
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["markups"][0]["coordinateSystem"] == "LPS"
    descriptions = {c["description"] for c in document["markups"][0]["controlPoints"]}
    assert descriptions == {"vertebral body centre found by test"}


def test_slicer_loads_the_written_point_list(tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install '.[dev]')")
    path = write_points_markups(tmp_path / POINTS_FILE, _points(), "found by test")
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    assert node.GetNumberOfControlPoints() == 3
    for index, point in enumerate(_points()):
        position_ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(index, position_ras)  # the scene is RAS
        x, y, z = point.position_lps_mm
        assert position_ras == pytest.approx([-x, -y, z])
        assert node.GetNthControlPointDescription(index) == "found by test"
    assert [node.GetNthControlPointLabel(i) for i in range(3)] == ["T12", "P-2", "sacrum"]


def test_markups_document_labels_unnamed_points_by_number():
    labels = [c["label"] for c in markups_document(_points())["markups"][0]["controlPoints"]]
    assert labels == ["T12", "P-2", "sacrum"]


# -- VerSe centroid files -------------------------------------------------------------------------------


def _check_centroids_in_their_masks(points, mask: sitk.Image, ctd_path):
    """Each converted centroid lies in its own label's mask, nearer that label's centroid than any other's.
    VerSe's centroids are the vertebral bodies' (anterior to the whole vertebra's centroid by 10-14 mm)."""
    labels = sitk.Cast(sitk.Round(sitk.Cast(mask, sitk.sitkFloat64)), sitk.sitkUInt8)  # float64 in verse004
    values = sitk.GetArrayViewFromImage(labels)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(labels)
    centroids = {v: np.array(shape.GetCentroid(v)) for v in shape.GetLabels()}
    expected = [e["label"] for e in json.loads(ctd_path.read_text())[1:]]
    assert [p.level.verse_id for p in points] == expected
    for point in points:
        i, j, k = labels.TransformPhysicalPointToIndex(point.position_lps_mm)
        assert values[k, j, i] == point.level.verse_id, point
        distances = {v: np.linalg.norm(np.array(point.position_lps_mm) - c) for v, c in centroids.items()}
        assert min(distances, key=distances.get) == point.level.verse_id
        assert distances[point.level.verse_id] < 20.0


def test_verse012_centroids_lie_in_their_vertebrae(shared_data):
    folder = shared_data / "verse012"
    ctd = folder / "sub-verse012_seg-subreg_ctd.json"
    ct = sitk.ReadImage(str(folder / "sub-verse012_ct.nii.gz"))
    points = read_points(ctd, reference_image=ct)
    _check_centroids_in_their_masks(points, sitk.ReadImage(str(folder / "sub-verse012_seg-vert_msk.nii.gz")), ctd)
    # the pipeline's canonical copy of the CT holds the same voxels: the same positions
    canonical = read_points(ctd, reference_image=to_canonical(sitk.DICOMOrient(ct, "PIR")))
    assert np.allclose([p.position_lps_mm for p in canonical], [p.position_lps_mm for p in points], atol=1e-6)


def test_verse004_centroids_lie_in_their_vertebrae(shared_data):
    """An oblique PIR grid (1 x 1 x 2 mm), no CT: the mask is the reference image."""
    ctd = shared_data / "verse-masks" / "sub-verse004_seg-subreg_ctd.json"
    mask = sitk.ReadImage(str(shared_data / "verse-masks" / "sub-verse004_seg-vert_msk.nii.gz"))
    _check_centroids_in_their_masks(read_points(ctd, reference_image=mask), mask, ctd)


@pytest.mark.parametrize("source_codes", [("R", "A", "S"), ("L", "P", "S"), ("P", "I", "R"), ("S", "L", "A")])
@pytest.mark.parametrize("ctd_codes", [("P", "I", "R"), ("L", "P", "S"), ("I", "R", "A")])
def test_centroid_conversion_agrees_with_nibabel(tmp_path, source_codes, ctd_codes):
    """VerSe writes its centroids on the image reoriented by nibabel: build the centroid file that way and
    read it back against the image as SimpleITK reads it."""
    nib = pytest.importorskip("nibabel")
    orientations = nib.orientations
    shape, spacing = (20, 30, 16), (1.5, 0.8, 2.5)
    to_source = orientations.ornt_transform(orientations.axcodes2ornt(("R", "A", "S")),
                                            orientations.axcodes2ornt(source_codes))
    affine = np.diag([*spacing, 1.0]) @ np.eye(4)
    affine[:3, 3] = (-12.0, 40.0, 300.0)
    image = nib.Nifti1Image(np.zeros(shape, np.int16), affine).as_reoriented(to_source)
    nib.save(image, tmp_path / "ct.nii.gz")
    reoriented = image.as_reoriented(orientations.ornt_transform(orientations.io_orientation(image.affine),
                                                                 orientations.axcodes2ornt(ctd_codes)))
    truth_ras = {20: np.array([-3.0, 52.5, 318.0]), 26: np.array([1.0, 45.0, 305.5])}
    entries = [{"label": label, **dict(zip("XYZ", np.linalg.inv(reoriented.affine) @ [*ras, 1.0]))}
               for label, ras in truth_ras.items()]
    ctd = _write_json(tmp_path / "sub-x_ctd.json", [{"direction": list(ctd_codes)}, *entries])
    points = read_points(ctd, reference_image=sitk.ReadImage(str(tmp_path / "ct.nii.gz")))
    assert [p.level.name for p in points] == ["L1", "sacrum"]
    for point, ras in zip(points, truth_ras.values()):
        assert point.position_lps_mm == pytest.approx((-ras[0], -ras[1], ras[2]), abs=1e-3)


def _grid():
    image = sitk.Image(10, 12, 8, sitk.sitkInt16)
    image.SetSpacing((2.0, 2.0, 3.0))
    return image


@pytest.mark.parametrize("document, message", [
    ([{"direction": ["P", "I", "X"]}, {"label": 20, "X": 1, "Y": 1, "Z": 1}], "is not three axis codes"),
    ([{"direction": ["P", "P", "R"]}, {"label": 20, "X": 1, "Y": 1, "Z": 1}], "is not three axis codes"),
    ([{"direction": ["L", "P", "S"]}, {"label": 20, "X": 1, "Y": "a", "Z": 1}], "coordinate 'a' is not a number"),
    ([{"direction": ["L", "P", "S"]}, {"label": 20, "X": 1, "Y": 1}], "coordinate None is not a number"),
    ([{"direction": ["L", "P", "S"]}, {"label": "L1", "X": 1, "Y": 1, "Z": 1}], "is not a VerSe label id"),
    ([{"direction": ["L", "P", "S"]}, {"label": 20, "X": 1, "Y": 1, "Z": 40}], "outside the CT's grid"),
    ([{"direction": ["L", "P", "S"]}, {"label": 27, "X": 1, "Y": 1, "Z": 1}], "no placed point"),
    ([{"direction": ["L", "P", "S"]}, [1, 2, 3]], "is not a centroid"),
])
def test_malformed_centroid_files_are_refused(tmp_path, document, message):
    path = _write_json(tmp_path / "sub-x_ctd.json", document)
    with pytest.raises(InputError) as caught:
        read_points(path, reference_image=_grid())
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_centroid_file_needs_the_ct_and_skips_what_is_not_a_vertebra(tmp_path):
    path = _write_json(tmp_path / "sub-x_ctd.json", [
        {"direction": ["L", "P", "S"]}, {"label": 20, "X": 1.0, "Y": 2.0, "Z": 3.0},
        {"label": 27, "X": 1, "Y": 1, "Z": 1}, {"label": 45, "X": 1, "Y": 1, "Z": 1}])
    with pytest.raises(InputError, match="a VerSe centroid file is in voxel units: give the CT"):
        read_points(path)
    points = read_points(path, reference_image=_grid())
    assert [(p.level, p.position_lps_mm) for p in points] == [(LEVEL_BY_ID[20], (2.0, 4.0, 9.0))]


# -- CSV -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "x,y,z,level\n1,2,300,T12\n1.5,2,270,\n2,2.5,240,L2\n",
    "level;x;y;z\nT12;1;2;300\n;1.5;2;270\nL2;2;2.5;240\n",
    "1,2,300,T12\n1.5,2,270,\n2,2.5,240,L2\n",
    "# vertebra points, LPS mm\n\nX, Y, Z, Name\n1, 2, 300, T12\n1.5, 2, 270, F-2\n2, 2.5, 240, vertebrae_L2\n",
])
def test_csv_points(tmp_path, text):
    path = tmp_path / "points.csv"
    path.write_text(text, encoding="utf-8")
    points = read_points(path)
    assert [p.position_lps_mm for p in points] == [(1.0, 2.0, 300.0), (1.5, 2.0, 270.0), (2.0, 2.5, 240.0)]
    assert [p.level.name if p.level else None for p in points] == ["T12", None, "L2"]


def test_csv_without_header_and_level(tmp_path):
    path = tmp_path / "points.txt"
    path.write_text("1,2,3\n4,5,6\n", encoding="utf-8")
    assert [(p.position_lps_mm, p.level, p.label) for p in read_points(path)] == [
        ((1.0, 2.0, 3.0), None, "line 1"), ((4.0, 5.0, 6.0), None, "line 2")]


@pytest.mark.parametrize("text, message", [
    ("1,2\n", "2 columns; without a header row give x, y, z"),
    ("1,2,3,L1,extra\n", "5 columns; without a header row"),
    ("1,2,3\n4,5,6,7\n", "line 2: 4 columns where the first row has 3"),
    ("x,y,z\n1,a,3\n", "line 2: coordinate 'a' is not a number"),
    ("x,y,z\n1,nan,3\n", "line 2: coordinate nan is not a finite number"),
    ("x,y,z\n", "holds no placed point"),
    ("", "holds no placed point"),
    ("x,y,level\n1,2,L1\n", "needs columns x, y, z"),
    ("x,y,z,level\n1,2,3,L9\n", "'L9' is not a vertebral level"),
    ("x,y,z,level\n1,2,3,foo\n", "'foo' is not a vertebral level"),
    ("x,y,z,level\n1,2,3,L1\n1,2,-27,l1\n", "names L1 twice"),
])
def test_malformed_csv_is_refused(tmp_path, text, message):
    _assert_refused(tmp_path / "points.csv", text, message)


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "points.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(InputError, match="cannot be read as text"):
        read_points(path)


def test_position_values_stay_finite_floats(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("x,y,z\n1e2,-0.5,3\n", encoding="utf-8")
    assert all(isinstance(v, float) and math.isfinite(v) for v in read_points(path)[0].position_lps_mm)


# Slicer's legacy fiducial CSV, as its Markups documentation gives it (Modules/Loadable/Markups docs: ".fcsv").
FCSV = """# Markups fiducial file version = 4.11
# CoordinateSystem = {system}
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
vtkMRMLMarkupsFiducialNode_0,1.29,-40.18,60.15,0,0,0,1,1,1,0,L1,,
vtkMRMLMarkupsFiducialNode_1,2.5,-38.0,25.0,0,0,0,1,1,1,0,F-2,,vtkMRMLScalarVolumeNode1
"""


@pytest.mark.parametrize("system, lps_signs", [("LPS", (1, 1, 1)), ("1", (1, 1, 1)), ("RAS", (-1, -1, 1)),
                                               ("0", (-1, -1, 1))])
def test_slicer_fcsv_points_in_either_coordinate_system(tmp_path, system, lps_signs):
    path = tmp_path / "points.fcsv"
    path.write_text(FCSV.format(system=system), encoding="utf-8")
    points = read_points(path)
    assert [p.label for p in points] == ["L1", "F-2"]
    assert points[0].level.name == "L1" and points[1].level is None
    assert np.allclose(points[0].position_lps_mm, np.array([1.29, -40.18, 60.15]) * lps_signs)


def test_fcsv_with_an_unknown_coordinate_system_is_refused(tmp_path):
    path = tmp_path / "points.fcsv"
    path.write_text(FCSV.format(system="IJK"), encoding="utf-8")
    with pytest.raises(InputError, match="unknown CoordinateSystem 'IJK'"):
        read_points(path)
