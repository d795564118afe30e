"""Property-based tests (hypothesis): invariants that must hold for any input, not just examples.

1. Loading: canonical orientation is lossless and exactly reversible, for any of the 48 axis
   orders/flips, oblique rotations, anisotropic spacings and origins, NIfTI and NRRD.
2. Level conventions: name spellings, non-names, TotalSegmentator id mapping.
3. Measurement: counts, volumes, centroids, boxes, HU and field-of-view faces equal an
   independent NumPy computation, whatever the storage orientation.
4. Grading: Genant grade thresholds and the phantom's height-loss truth.

Expected values are computed independently of the code under test (NumPy geometry from the
direction matrix, not SimpleITK's re-orientation), so a property fails when the core is wrong.
"""

from __future__ import annotations

import itertools
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spinefrac.assessment.fracture import GRADE_THRESHOLDS, genant_grade
from spinefrac.assessment.measurement import measure_vertebrae
from spinefrac.errors import InputError
from spinefrac.io.images import ImageGrid, ct_from_image, load_ct, to_canonical
from spinefrac.io.input_checks import MIN_EXTENT_MM
from spinefrac.levels import (
    LEVEL_BY_ID,
    LEVEL_BY_NAME,
    LEVELS,
    SACRUM,
    TOTALSEGMENTATOR_V2_IDS,
    level_for_name,
)
from spinefrac.segmentation.base import LabelConvention, VertebraSegmentation
from spinefrac.synthetic.phantom import Fracture, FractureType, PhantomSpec, make_phantom

# No example database: the tests must not write files into the checkout.
FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=200, deadline=None, database=None)

# -- geometry strategies -------------------------------------------------------------------

# Patient direction of each orientation letter, in LPS (ITK's physical frame).
LETTER_VECTOR = {
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0),
}
AXIS_PAIRS = (("L", "R"), ("P", "A"), ("S", "I"))
# All 48 codes: an order of the three axis pairs, and one letter of each pair.
ORIENTATION_CODES = sorted(
    "".join(letters)
    for order in itertools.permutations(AXIS_PAIRS)
    for letters in itertools.product(*order)
)
assert len(ORIENTATION_CODES) == 48
MAX_OBLIQUE_DEG = 40.0  # below 45 degrees the closest axis of each column is unambiguous


def direction_of_code(code: str) -> np.ndarray:
    """3x3 direction matrix (columns = voxel axes, LPS) of an orientation code."""
    return np.column_stack([LETTER_VECTOR[letter] for letter in code])


def rotation_matrix(axis, angle_deg: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    a = math.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


@st.composite
def directions(draw, oblique: bool = True):
    """(code, angle, 3x3 direction): an axis permutation/flip, optionally rotated obliquely."""
    code = draw(st.sampled_from(ORIENTATION_CODES))
    angle = 0.0
    if oblique:
        angle = draw(st.one_of(st.just(0.0), st.floats(0.5, MAX_OBLIQUE_DEG)))
    if angle == 0.0:
        return code, 0.0, direction_of_code(code)
    theta, phi = draw(st.floats(0.0, math.pi)), draw(st.floats(0.0, 2 * math.pi))
    axis = (math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta))
    return code, angle, rotation_matrix(axis, angle) @ direction_of_code(code)


origins = st.tuples(*[st.floats(-500.0, 500.0)] * 3)


@st.composite
def grids(draw, extra_voxels: int = 6):
    """(size, spacing): anisotropic spacing 0.3..5 mm, and just enough voxels (plus a few) per axis
    for the extent the input checks require."""
    spacing = draw(st.tuples(*[st.floats(0.3, 5.0)] * 3))
    # Margin above 20 mm: NIfTI stores spacing as float32.
    size = tuple(max(2, math.ceil((MIN_EXTENT_MM + 0.01) / s)) + draw(st.integers(0, extra_voxels)) for s in spacing)
    return size, spacing


def make_image(array_kji: np.ndarray, spacing, origin, direction: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    return image


def voxel_points_lps(image: sitk.Image) -> np.ndarray:
    """Physical points of every voxel centre, [k, j, i, 3], from the header alone (NumPy)."""
    size = image.GetSize()
    kk, jj, ii = np.meshgrid(*[np.arange(n, dtype=float) for n in size[::-1]], indexing="ij")
    index = np.stack([ii, jj, kk], axis=-1) * np.asarray(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return index @ direction.T + np.asarray(image.GetOrigin())


def continuous_index(image: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Inverse of voxel_points_lps: continuous (i, j, k) of physical points."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = direction * np.asarray(image.GetSpacing())  # scale the columns
    return (points_lps - np.asarray(image.GetOrigin())) @ np.linalg.inv(matrix).T


def reorient_to_lps_numpy(image: sitk.Image) -> sitk.Image:
    """The same physical image stored closest to LPS, computed with NumPy (not DICOMOrient)."""
    array = sitk.GetArrayFromImage(image)  # [k, j, i]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    size = np.asarray(image.GetSize())
    source_axis = [int(np.argmax(np.abs(direction[row]))) for row in range(3)]  # per L, P, S
    assert sorted(source_axis) == [0, 1, 2]
    signs = [np.sign(direction[row, a]) for row, a in enumerate(source_axis)]
    # Index (i, j, k) of the source voxel that becomes the new origin voxel.
    corner = np.zeros(3)
    for sign, a in zip(signs, source_axis):
        corner[a] = size[a] - 1 if sign < 0 else 0
    new_origin = np.asarray(image.GetOrigin()) + direction @ (corner * spacing)
    # Array axes are reversed: array axis (2 - a) is voxel axis a.
    flipped = array
    for sign, a in zip(signs, source_axis):
        if sign < 0:
            flipped = np.flip(flipped, axis=2 - a)
    new_array = np.transpose(flipped, [2 - source_axis[2], 2 - source_axis[1], 2 - source_axis[0]])
    new_direction = np.column_stack([sign * direction[:, a] for sign, a in zip(signs, source_axis)])
    return make_image(np.ascontiguousarray(new_array), spacing[source_axis], new_origin, new_direction)


# -- 1. loaders and canonical orientation ---------------------------------------------------


@FAST
@given(grid=grids(), origin=origins, orientation=directions(),
       seed=st.integers(0, 2**32 - 1), suffix=st.sampled_from([".nii.gz", ".nrrd"]))
def test_loading_is_canonical_lossless_and_exactly_reversible(grid, origin, orientation, seed, suffix):
    size, spacing = grid
    code, angle, direction = orientation
    rng = np.random.default_rng(seed)
    values = rng.integers(-32768, 32767, size=size[::-1], endpoint=True).astype(np.int16)
    values.flat[rng.integers(values.size)] = -1000  # air somewhere, so the Hounsfield check passes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"ct{suffix}"
        sitk.WriteImage(make_image(values, spacing, origin, direction), str(path))
        on_disk = sitk.ReadImage(str(path))
        ct = load_ct(path)

    # (a) back on the input grid: the file's voxels and header, bit for bit.
    restored = ct.to_source_grid(ct.image)
    assert restored.GetSize() == on_disk.GetSize()
    assert restored.GetOrigin() == on_disk.GetOrigin()
    assert restored.GetSpacing() == on_disk.GetSpacing()
    assert restored.GetDirection() == on_disk.GetDirection()
    assert restored.GetPixelID() == on_disk.GetPixelID()
    assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(on_disk))
    assert ct.source_grid == ImageGrid.of(on_disk)

    # (b) every voxel keeps its value at its physical point (NumPy geometry, all voxels).
    canonical = sitk.GetArrayFromImage(ct.image)
    source = sitk.GetArrayFromImage(on_disk)
    index = continuous_index(ct.image, voxel_points_lps(on_disk))  # [k, j, i, (i, j, k)]
    rounded = np.rint(index).astype(int)
    assert np.allclose(index, rounded, atol=1e-6), "voxel centres do not land on voxel centres"
    assert np.all(rounded >= 0) and np.all(rounded < np.asarray(ct.image.GetSize()))
    assert np.array_equal(canonical[rounded[..., 2], rounded[..., 1], rounded[..., 0]], source)
    # The canonical grid is a permutation of the source grid: same voxel count and spacings.
    assert sorted(ct.image.GetSize()) == sorted(on_disk.GetSize())
    assert sorted(ct.image.GetSpacing()) == sorted(on_disk.GetSpacing())

    # (c) canonical direction is the one closest to LPS (identity when not oblique).
    canonical_direction = np.array(ct.image.GetDirection()).reshape(3, 3)
    assert np.all(np.diag(canonical_direction) > 0.5)
    if angle == 0.0:
        assert np.allclose(canonical_direction, np.eye(3), atol=1e-6)
    # The canonical image is what an independent NumPy re-orientation gives.
    expected = reorient_to_lps_numpy(on_disk)
    assert np.array_equal(canonical, sitk.GetArrayFromImage(expected))
    assert np.allclose(ct.image.GetOrigin(), expected.GetOrigin(), atol=1e-6)
    assert np.allclose(ct.image.GetSpacing(), expected.GetSpacing(), atol=0)
    assert np.allclose(ct.image.GetDirection(), expected.GetDirection(), atol=1e-9)


@QUICK
@given(size=st.tuples(*[st.integers(2, 12)] * 3), spacing=st.tuples(*[st.floats(0.3, 5.0)] * 3),
       orientation=directions(), origin=origins)
def test_ct_smaller_than_a_vertebra_is_refused_and_larger_is_accepted(size, spacing, orientation, origin):
    values = np.zeros(size[::-1], dtype=np.int16)
    values.flat[0] = -1000  # air: only the extent can make it fail
    image = make_image(values, spacing, origin, orientation[2])
    extent = np.asarray(size, dtype=float) * np.asarray(spacing)
    if extent.min() < MIN_EXTENT_MM - 1e-9:
        with pytest.raises(InputError, match="too small to hold a vertebra"):
            ct_from_image(image, "memory", "test")
    elif extent.min() > MIN_EXTENT_MM + 1e-9:
        ct = ct_from_image(image, "memory", "test")
        assert sorted(ct.image.GetSize()) == sorted(size)


# -- 2. level conventions -------------------------------------------------------------------

SPELLINGS = ("{}", "{lower}", "{upper}", "vertebrae_{}", "{} vertebra", "Vertebra {}", "vertebra_{}",
             "  {}  ", "VERTEBRAE-{}", "{}_vertebrae")


@QUICK
@given(level=st.sampled_from(LEVELS), spelling=st.sampled_from(SPELLINGS))
def test_every_level_name_round_trips_in_every_spelling(level, spelling):
    name = spelling.format(level.name, lower=level.name.lower(), upper=level.name.upper())
    assert level_for_name(name) is level, name


@QUICK
@given(spelling=st.sampled_from(SPELLINGS))
def test_totalsegmentator_s1_is_the_sacrum(spelling):
    assert level_for_name(spelling.format("S1", lower="s1", upper="S1")) is SACRUM


def _cannot_name_a_level(text: str) -> bool:
    # Without a digit and without "sacrum", a string holds no level token at all.
    return re.search("sacrum", text, re.IGNORECASE) is None


@QUICK
# No decimal digits of any script (Unicode category Nd, what regex \d matches).
@given(text=st.text(st.characters(exclude_categories=("Nd", "Cs")), max_size=30).filter(_cannot_name_a_level))
def test_random_text_names_no_level(text):
    assert level_for_name(text) is None


OUT_OF_RANGE = {"C": [0, *range(8, 100)], "T": [0, *range(14, 100)], "L": [0, *range(7, 100)],
                "S": [0, *range(2, 100)]}


@QUICK
@given(region=st.sampled_from(sorted(OUT_OF_RANGE)), data=st.data(),
       spelling=st.sampled_from(SPELLINGS), lower=st.booleans())
def test_out_of_range_level_numbers_name_no_level(region, data, spelling, lower):
    number = data.draw(st.sampled_from(OUT_OF_RANGE[region]))
    token = f"{region.lower() if lower else region}{number}"
    assert level_for_name(spelling.format(token, lower=token.lower(), upper=token.upper())) is None


@QUICK
@given(first=st.sampled_from(LEVELS), second=st.sampled_from(LEVELS), separator=st.sampled_from(["", " ", "_", "-", "/"]))
def test_two_level_names_together_name_no_single_level(first, second, separator):
    assert level_for_name(f"{first.name}{separator}{second.name}") is None


@QUICK
@given(level=st.sampled_from(LEVELS), junk=st.text(alphabet="abxyzQ!.#", min_size=1, max_size=4),
       before=st.booleans())
def test_level_name_glued_to_other_characters_names_no_level(level, junk, before):
    name = junk + level.name if before else level.name + junk
    assert level_for_name(name) is None, name


def test_level_tables_are_consistent():
    assert [level.craniocaudal_rank for level in LEVELS] == list(range(len(LEVELS)))
    assert set(LEVEL_BY_ID) == {level.verse_id for level in LEVELS}
    assert len(LEVEL_BY_NAME) == len(LEVELS)


@QUICK
@given(a=st.sampled_from(sorted(TOTALSEGMENTATOR_V2_IDS)), b=st.sampled_from(sorted(TOTALSEGMENTATOR_V2_IDS)))
def test_totalsegmentator_mapping_is_injective_except_sacrum_and_keeps_craniocaudal_order(a, b):
    va, vb = TOTALSEGMENTATOR_V2_IDS[a], TOTALSEGMENTATOR_V2_IDS[b]
    assert va in LEVEL_BY_ID and vb in LEVEL_BY_ID
    if {a, b} <= {25, 26}:
        assert va == vb == SACRUM.verse_id
        return
    if a != b:
        assert va != vb
    if 27 <= a <= 50 and 27 <= b <= 50 and a < b:
        # Higher TotalSegmentator id = more cranial = smaller cranio-caudal rank.
        assert LEVEL_BY_ID[va].craniocaudal_rank > LEVEL_BY_ID[vb].craniocaudal_rank
    if a in (25, 26) and b not in (25, 26):
        assert LEVEL_BY_ID[va].craniocaudal_rank > LEVEL_BY_ID[vb].craniocaudal_rank  # sacrum is lowest


def test_totalsegmentator_mapping_covers_the_standard_spine():
    assert set(TOTALSEGMENTATOR_V2_IDS) == set(range(25, 51))
    # Every VerSe level but the transitional ones (TotalSegmentator has no T13 / L6).
    assert set(TOTALSEGMENTATOR_V2_IDS.values()) == set(LEVEL_BY_ID) - {25, 28}


# -- 3. measurement -------------------------------------------------------------------------

VERSE_IDS = sorted(LEVEL_BY_ID)
# Outward normal of an image face -> patient side; the face names of the canonical grid.
PATIENT_SIDES = {"left": (1, 0, 0), "right": (-1, 0, 0), "posterior": (0, 1, 0),
                 "anterior": (0, -1, 0), "superior": (0, 0, 1), "inferior": (0, 0, -1)}


@st.composite
def label_scenes(draw):
    """Random label map (a few overlapping boxes plus speckles, VerSe ids) and a CT on one grid."""
    size, spacing = draw(grids(extra_voxels=4))
    origin = draw(origins)
    code, angle, direction = draw(directions())
    ids = draw(st.lists(st.sampled_from(VERSE_IDS), min_size=1, max_size=4, unique=True))
    labels = np.zeros(size[::-1], dtype=np.uint8)
    for verse_id in ids:
        low = [draw(st.integers(0, n - 1)) for n in labels.shape]
        high = [draw(st.integers(lo, n - 1)) for lo, n in zip(low, labels.shape)]
        labels[tuple(slice(lo, hi + 1) for lo, hi in zip(low, high))] = verse_id
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    speckles = draw(st.integers(0, 5))
    for _ in range(speckles):
        labels[tuple(rng.integers(0, n) for n in labels.shape)] = rng.choice(ids)
    assume(labels.any())
    hu = rng.integers(-1024, 3071, size=labels.shape, endpoint=True).astype(np.int16)
    hu.flat[0], hu.flat[-1] = -1024, 3071  # air and bone: the Hounsfield check passes
    return (make_image(hu, spacing, origin, direction), make_image(labels, spacing, origin, direction), angle)


def _measure(ct_image: sitk.Image, label_image: sitk.Image):
    ct = ct_from_image(ct_image, "memory", "test")
    segmentation = VertebraSegmentation(label_map=to_canonical(label_image), engine="test", source="test",
                                        convention=LabelConvention.VERSE)
    return measure_vertebrae(ct, segmentation)


def _expected_faces(label_image: sitk.Image, mask_kji: np.ndarray) -> set[str]:
    """Patient sides of the image faces a mask touches, from the face normals (NumPy)."""
    direction = np.array(label_image.GetDirection()).reshape(3, 3)
    faces = set()
    for axis in range(3):  # voxel axis i, j, k = array axis 2, 1, 0
        array_axis = 2 - axis
        n = mask_kji.shape[array_axis]
        for side, index, outward in ((0, 0, -direction[:, axis]), (1, n - 1, direction[:, axis])):
            if np.take(mask_kji, index, axis=array_axis).any():
                faces.add(max(PATIENT_SIDES, key=lambda name: np.dot(outward, PATIENT_SIDES[name])))
    return faces


@FAST
@given(scene=label_scenes())
def test_measurements_equal_numpy_and_do_not_depend_on_storage_orientation(scene):
    ct_image, label_image, angle = scene
    result = _measure(ct_image, label_image)
    labels = sitk.GetArrayFromImage(label_image)
    hu = sitk.GetArrayFromImage(ct_image)
    points_ras = voxel_points_lps(label_image) * np.array([-1.0, -1.0, 1.0])
    voxel_volume = float(np.prod(label_image.GetSpacing()))

    present = sorted(int(v) for v in np.unique(labels) if v)
    assert sorted(m.level.verse_id for m in result.vertebrae) == present
    ranks = [m.level.craniocaudal_rank for m in result.vertebrae]
    assert ranks == sorted(ranks)
    assert result.voxel_volume_mm3 == pytest.approx(voxel_volume, rel=1e-12)
    for m in result.vertebrae:
        mask = labels == m.level.verse_id
        count = int(mask.sum())
        assert m.voxel_count == count
        assert m.volume_mm3 == pytest.approx(count * voxel_volume, rel=1e-12)
        # Centroid: mean of the voxel centres (RAS), and inside the reported box.
        points = points_ras[mask]
        assert np.allclose(m.centroid_ras_mm, points.mean(axis=0), atol=1e-6, rtol=0)
        low, high = np.asarray(m.bbox_min_ras_mm), np.asarray(m.bbox_max_ras_mm)
        assert np.all(low - 1e-6 <= m.centroid_ras_mm) and np.all(np.asarray(m.centroid_ras_mm) <= high + 1e-6)
        # The box holds every voxel centre, and is the RAS box of the index box's corners.
        assert np.all(points >= low - 1e-6) and np.all(points <= high + 1e-6)
        kji = np.argwhere(mask)
        corner_index = np.array([[kji[:, a].min(), kji[:, a].max()] for a in range(3)])  # per array axis
        corners = np.array([points_ras[k, j, i] for k in corner_index[0] for j in corner_index[1]
                            for i in corner_index[2]])
        assert np.allclose(low, corners.min(axis=0), atol=1e-6, rtol=0)
        assert np.allclose(high, corners.max(axis=0), atol=1e-6, rtol=0)
        if angle == 0.0:  # axis-aligned grid: the box is tight around the voxel centres
            assert np.allclose(low, points.min(axis=0), atol=1e-6, rtol=0)
            assert np.allclose(high, points.max(axis=0), atol=1e-6, rtol=0)
        # HU: exact statistics over the level's voxels.
        values = hu[mask].astype(float)
        assert m.hu_mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-9)
        assert m.hu_median == np.median(values)
        # Field of view: faces touched, named by the patient side they face.
        touches = any(np.take(mask, index, axis=a).any() for a in range(3) for index in (0, mask.shape[a] - 1))
        assert bool(m.fov_border_faces) == touches
        assert set(m.fov_border_faces) == _expected_faces(label_image, mask)
        assert len(set(m.fov_border_faces)) == len(m.fov_border_faces)

    # The same physical images stored closest to LPS (re-oriented with NumPy) measure the same.
    lps = _measure(reorient_to_lps_numpy(ct_image), reorient_to_lps_numpy(label_image))
    assert [m.level for m in lps.vertebrae] == [m.level for m in result.vertebrae]
    for a, b in zip(lps.vertebrae, result.vertebrae):
        assert a.voxel_count == b.voxel_count
        assert a.volume_mm3 == pytest.approx(b.volume_mm3, rel=1e-12)
        assert np.allclose(a.centroid_ras_mm, b.centroid_ras_mm, atol=1e-6, rtol=0)
        assert np.allclose(a.bbox_min_ras_mm, b.bbox_min_ras_mm, atol=1e-6, rtol=0)
        assert np.allclose(a.bbox_max_ras_mm, b.bbox_max_ras_mm, atol=1e-6, rtol=0)
        assert a.hu_mean == pytest.approx(b.hu_mean, rel=1e-12, abs=1e-9)
        assert a.hu_median == b.hu_median
        assert set(a.fov_border_faces) == set(b.fov_border_faces)
        assert a.fov_status == b.fov_status


# -- 4. grading -----------------------------------------------------------------------------

reductions = st.floats(-1.0, 2.0, allow_nan=False)


@QUICK
@given(a=reductions, b=reductions)
def test_genant_grade_is_monotonic(a, b):
    low, high = sorted((a, b))
    assert genant_grade(low) <= genant_grade(high)


@QUICK
@given(reduction=reductions)
def test_genant_grade_thresholds(reduction):
    grade = genant_grade(reduction)
    assert type(grade) is int
    assert grade in (0, 1, 2, 3)
    if reduction < 0.20:
        assert grade == 0
    elif reduction < 0.25:
        assert grade == 1
    elif reduction < 0.40:
        assert grade == 2
    else:
        assert grade == 3


def test_genant_grade_boundaries_are_exact():
    assert GRADE_THRESHOLDS == (0.20, 0.25, 0.40)
    for grade, threshold in enumerate(GRADE_THRESHOLDS, start=1):
        assert genant_grade(threshold) == grade
        assert genant_grade(math.nextafter(threshold, -math.inf)) == grade - 1


@settings(max_examples=8, deadline=None, database=None)
@given(kind=st.sampled_from(list(FractureType)), loss=st.floats(0.0, 0.6), level=st.sampled_from(["L1", "L2", "L3"]))
def test_phantom_truth_height_loss_equals_the_fracture(kind, loss, level):
    phantom = make_phantom(PhantomSpec(levels=("L1", "L2", "L3"), spacing_mm=(3.0, 3.0, 3.0), ribs=False,
                                       noise_hu=0.0, fractures={level: Fracture(kind, loss)}))
    assert set(phantom.truth) == {"L1", "L2", "L3"}
    for name, truth in phantom.truth.items():
        normal = truth.dimensions.body_height
        if name != level:
            assert truth.fracture is None
            assert truth.genant_height_loss == pytest.approx(0.0, abs=1e-9)
            assert truth.height_anterior_mm == truth.height_middle_mm == truth.height_posterior_mm == normal
            continue
        assert truth.fracture == Fracture(kind, loss)
        assert abs(truth.genant_height_loss - loss) <= 1e-9
        heights = {"anterior": truth.height_anterior_mm, "middle": truth.height_middle_mm,
                   "posterior": truth.height_posterior_mm}
        # The fracture's pattern shows where Genant's points see it.
        if kind is FractureType.WEDGE:
            assert heights["posterior"] == pytest.approx(normal, abs=1e-9)
            assert heights["anterior"] == pytest.approx(normal * (1 - loss), abs=1e-9)
            assert heights["anterior"] <= heights["middle"] <= heights["posterior"]
        elif kind is FractureType.BICONCAVE:
            assert heights["middle"] == pytest.approx(normal * (1 - loss), abs=1e-9)
            assert heights["anterior"] == pytest.approx(normal, abs=1e-9)
            assert heights["posterior"] == pytest.approx(normal, abs=1e-9)
        else:
            for value in heights.values():
                assert value == pytest.approx(normal * (1 - loss), abs=1e-9)
        if min(abs(loss - t) for t in GRADE_THRESHOLDS) > 1e-9:  # rounding cannot cross a threshold
            assert genant_grade(truth.genant_height_loss) == genant_grade(loss)
