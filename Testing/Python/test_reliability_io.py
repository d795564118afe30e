"""Images read as they are or refused, never silently misread: NaN voxels, DICOM series with uneven
steps, without slice positions or slice thickness, with a damaged slice, beside a series that is no CT.
Every run checks that its inputs are byte for byte unchanged (sha256)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_ct_writer import write_ct_series

from spinefrac.errors import InputError
from spinefrac.io.dicom_folder import resample_along_slices
from spinefrac.io.dicom_series import read_source_series
from spinefrac.io.images import load_ct, read_image
from spinefrac.io.unmeasured import AIR_HU
from spinefrac.levels import LEVEL_BY_NAME
from spinefrac.pipeline import run_pipeline
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom

from spine_test_utils import run_cli


def _digests(*paths: Path) -> dict[str, str]:
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def _refused(tmp_path: Path, *arguments) -> str:
    """The one line of a run refused with exit code 2 that left no output."""
    result = run_cli("run", *arguments, "-o", tmp_path / "out", "-q")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- NaN and infinite voxels -----------------------------------------------------------------------------


def _float_ct(sample_ct: Path) -> sitk.Image:
    return sitk.Cast(sitk.ReadImage(str(sample_ct)), sitk.sitkFloat32)


def _outside_circle(image: sitk.Image) -> np.ndarray:
    """[k, j, i] mask of the voxels outside the circle inscribed in each axial slice (the sample is RAS)."""
    k, j, i = sitk.GetArrayViewFromImage(image).shape
    jj, ii = np.mgrid[:j, :i]
    radius = min(i, j) / 2.0
    outside = (ii - (i - 1) / 2.0) ** 2 + (jj - (j - 1) / 2.0) ** 2 > radius ** 2
    return np.broadcast_to(outside, (k, j, i))


@pytest.fixture(scope="module")
def clean_float_run(tmp_path_factory, sample_ct, sample_labels):
    folder = tmp_path_factory.mktemp("nan-clean")
    sitk.WriteImage(_float_ct(sample_ct), str(folder / "ct.nii.gz"))
    run_pipeline(folder / "ct.nii.gz", folder / "out", segmentation_path=sample_labels)
    return _report(folder / "out")


def test_nan_outside_the_field_of_view_is_air_with_a_note_and_l1_density_equals_the_clean_run(
        tmp_path, sample_ct, sample_labels, clean_float_run):
    image = _float_ct(sample_ct)
    values = sitk.GetArrayFromImage(image)
    outside = _outside_circle(image)
    values[outside] = np.nan
    values[:, 0, 0] = np.inf  # a converter's other marker of "not measured"
    nan_image = sitk.GetImageFromArray(values)
    nan_image.CopyInformation(image)
    path = tmp_path / "ct_nan.nii.gz"
    sitk.WriteImage(nan_image, str(path))
    before = _digests(path, sample_labels)
    ct = load_ct(path)
    source_grid = ct.to_source_grid(ct.image)  # held: a view does not keep its image alive
    read = sitk.GetArrayViewFromImage(source_grid)
    assert np.all(read[outside] == AIR_HU)  # ITK alone reads them as 0 HU
    assert np.array_equal(read[~outside], sitk.GetArrayViewFromImage(image)[~outside])
    run_pipeline(path, tmp_path / "out", segmentation_path=sample_labels)
    report = _report(tmp_path / "out")
    assert any(f"{int(outside.sum()):,} NaN or infinite voxels" in note and "read as air" in note
               for note in report["notes"]), report["notes"]
    assert report["osteoporosis_screen"] == clean_float_run["osteoporosis_screen"]
    clean_levels = {row["level"]: row for row in clean_float_run["levels"]}
    for row in report["levels"]:
        for key in ("trabecular_hu", "mean_hu", "height_anterior_mm", "height_middle_mm", "height_posterior_mm",
                    "genant_grade", "decision"):
            assert row[key] == clean_levels[row["level"]][key], (row["level"], key)
    assert _digests(path, sample_labels) == before


def test_nan_inside_the_body_is_refused_naming_how_many(tmp_path, sample_ct, sample_labels):
    values = sitk.GetArrayFromImage(_float_ct(sample_ct))
    k, j, i = values.shape
    values[k // 2, j // 2 - 2:j // 2 + 2, i // 2 - 2:i // 2 + 2] = np.nan  # 16 voxels mid-body, not at an edge
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(sitk.ReadImage(str(sample_ct)))
    path = tmp_path / "ct_hole.nii.gz"
    sitk.WriteImage(image, str(path))
    before = _digests(path, sample_labels)
    line = _refused(tmp_path, path, "--segmentation", sample_labels)
    assert "16 NaN or infinite voxels, 16 of them within the field of view" in line, line
    assert _digests(path, sample_labels) == before


def test_a_slice_of_nan_is_refused_not_read_as_air(tmp_path, sample_ct):
    values = sitk.GetArrayFromImage(_float_ct(sample_ct))
    values[40] = np.nan
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(sitk.ReadImage(str(sample_ct)))
    path = tmp_path / "ct_gap.nii"
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputError, match="1 slice\\(s\\) with no measured voxel \\(slice 40"):
        load_ct(path)


def test_a_float_label_map_with_nan_is_refused_not_read_as_background(tmp_path, sample_ct, sample_labels):
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels))).astype(np.float32)
    labels[labels == 20] = np.nan  # L1 not measured: ITK reads it as 0, background
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(sitk.ReadImage(str(sample_labels)))
    path = tmp_path / "labels_nan.nii.gz"
    sitk.WriteImage(image, str(path))
    assert np.isnan(sitk.GetArrayFromImage(read_image(path, "segmentation"))).sum() == np.sum(np.isnan(labels))
    assert "non-integer voxel values" in _refused(tmp_path, sample_ct, "--segmentation", path)


# -- DICOM: slices placed by their positions -------------------------------------------------------------


@pytest.fixture(scope="module")
def fine_phantom():
    """A lumbar phantom on 1 mm slices, the anatomy each DICOM series below samples at its own positions."""
    return make_phantom(PhantomSpec(levels=("T12", "L1", "L2", "L3", "L4", "L5", "sacrum"),
                                    spacing_mm=(1.0, 1.0, 1.0), seed=1))


def _series_at(phantom, along_mm, folder: Path) -> list[Path]:
    """The phantom as a DICOM CT series with slices at ``along_mm`` (mm along S from its origin),
    each interpolated linearly between the phantom's 1 mm slices."""
    values = sitk.GetArrayFromImage(phantom.ct).astype(np.float32)
    index = np.asarray(along_mm) / phantom.ct.GetSpacing()[2]
    below = np.clip(np.floor(index).astype(int), 0, values.shape[0] - 2)
    weight = (index - below)[:, None, None]
    slab = sitk.GetImageFromArray(np.rint((1 - weight) * values[below] + weight * values[below + 1]).astype(np.int16))
    slab.SetSpacing((*phantom.ct.GetSpacing()[:2], 2.0))
    origin = np.array(phantom.ct.GetOrigin())
    return write_ct_series(slab, folder, positions_mm=[origin + [0.0, 0.0, z] for z in along_mm])


def _uneven_steps(phantom, around: str) -> np.ndarray:
    """2.0 mm steps, 2.9 mm within 20 mm of a level's centre (under the 1.5 x limit of a missing slice)."""
    end_mm = (phantom.ct.GetSize()[2] - 1) * phantom.ct.GetSpacing()[2]
    centre_mm = phantom.truth[around].centre_lps_mm[2] - phantom.ct.GetOrigin()[2]
    along = [0.0]
    while along[-1] + 2.9 < end_mm:
        along.append(along[-1] + (2.9 if abs(along[-1] - centre_mm) < 20.0 else 2.0))
    return np.array(along)


def test_uneven_slices_are_resampled_by_their_positions_and_heights_equal_the_even_series(tmp_path, fine_phantom):
    end_mm = (fine_phantom.ct.GetSize()[2] - 1) * fine_phantom.ct.GetSpacing()[2]
    _series_at(fine_phantom, np.arange(0.0, end_mm, 2.0), tmp_path / "even")
    uneven = _uneven_steps(fine_phantom, "L3")
    assert 2.85 < np.diff(uneven).max() < 1.5 * 2.0
    _series_at(fine_phantom, uneven, tmp_path / "uneven")
    before = _digests(tmp_path / "even", tmp_path / "uneven")
    reports = {}
    for name in ("even", "uneven"):
        run_pipeline(tmp_path / name, tmp_path / f"out_{name}", engine="offline")
        reports[name] = {row["level"]: row for row in _report(tmp_path / f"out_{name}")["levels"]}
    notes = _report(tmp_path / "out_uneven")["notes"]
    assert any("uneven slice spacing (2.00-2.90 mm" in note and "resampled by the slices' positions" in note
               for note in notes), notes
    measured = [level for level, row in reports["even"].items() if row["height_middle_mm"] is not None]
    assert "L3" in measured and len(measured) >= 4
    for level in measured:
        for key in ("height_anterior_mm", "height_middle_mm", "height_posterior_mm"):
            assert abs(reports["uneven"][level][key] - reports["even"][level][key]) <= 2.0, (level, key)
        assert reports["uneven"][level]["genant_grade"] == reports["even"][level]["genant_grade"] == 0, level
    assert _digests(tmp_path / "even", tmp_path / "uneven") == before
    if importlib.util.find_spec("highdicom") is not None:
        _assert_seg_frames_hold_the_labels_at_their_slices(tmp_path / "uneven", tmp_path / "out_uneven")


def _assert_seg_frames_hold_the_labels_at_their_slices(series_folder: Path, out: Path) -> None:
    """The SEG of a resampled series: one frame per source slice, holding the label map's voxels at that
    slice's own position (the nearest slice of the regular grid)."""
    import highdicom as hd

    assert _report(out)["dicom_export"]["written"] is True
    seg = hd.seg.segread(out / "vertebrae_seg.dcm")
    series = read_source_series(series_folder)
    numbers = seg.get_segment_numbers()
    stacked = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in series.datasets],
                                                segment_numbers=numbers, combine_segments=True)
    verse_of_segment = np.zeros(max(numbers) + 1, dtype=np.uint8)
    for number in numbers:
        verse_of_segment[number] = LEVEL_BY_NAME[seg.get_segment_description(number).segment_label.lower()].verse_id
    labels = sitk.ReadImage(str(out / "vertebrae.nii.gz"))
    values = sitk.GetArrayViewFromImage(labels)
    for frame, ds in enumerate(series.datasets):
        k = labels.TransformPhysicalPointToIndex([float(v) for v in ds.ImagePositionPatient])[2]
        assert np.array_equal(verse_of_segment[stacked[frame]], values[k]), frame


def test_resampling_along_uneven_slices_is_exact_for_a_linear_ramp():
    along = np.array([0.0, 2.0, 4.0, 6.9, 9.8, 11.8, 13.8])
    ramp = sitk.GetImageFromArray(np.broadcast_to((10.0 * along)[:, None, None], (7, 3, 4)).astype(np.float32))
    ramp.SetOrigin((5.0, -3.0, 100.0))
    resampled = resample_along_slices(ramp, along, 2.0)
    assert resampled.GetSize() == (4, 3, 8) and resampled.GetSpacing()[2] == pytest.approx(13.8 / 7)
    assert resampled.GetOrigin() == ramp.GetOrigin()
    expected = 10.0 * np.linspace(0.0, 13.8, 8)
    assert np.allclose(sitk.GetArrayViewFromImage(resampled)[:, 1, 2], expected, atol=1e-4)


def test_a_series_without_image_position_is_refused_naming_the_tag(tmp_path, fine_phantom):
    files = _series_at(fine_phantom, np.arange(0.0, 60.0, 2.0), tmp_path / "dicom")
    for number, path in enumerate(reversed(files), start=1):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.InstanceNumber, ds.SliceThickness = number, "3.0"
        ds.save_as(path)
    before = _digests(tmp_path / "dicom")
    line = _refused(tmp_path, tmp_path / "dicom", "--engine", "offline")
    assert "has no ImagePositionPatient (0020,0032) on 30 of 30 slices" in line, line
    assert _digests(tmp_path / "dicom") == before


def test_a_series_with_positions_wins_over_a_larger_one_without(tmp_path, fine_phantom):
    _series_at(fine_phantom, np.arange(0.0, 40.0, 2.0), tmp_path)
    unplaced = _series_at(fine_phantom, np.arange(0.0, 60.0, 1.0), tmp_path / "unplaced")
    for path in unplaced:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(tmp_path / f"u_{path.name}")
    shutil.rmtree(tmp_path / "unplaced")
    ct = load_ct(tmp_path)
    assert ct.source_grid.size[2] == 20
    assert any("(CT, 60 images, 212 x 185, no slice positions)" in w for w in ct.warnings), ct.warnings


@pytest.fixture(scope="module")
def no_thickness_run(tmp_path_factory, lumbar_phantom):
    folder = tmp_path_factory.mktemp("no-thickness")
    for path in write_ct_series(lumbar_phantom.ct, folder / "dicom"):
        ds = pydicom.dcmread(path)
        del ds.SliceThickness  # Type 2: some converters drop it
        ds.save_as(path)
    sitk.WriteImage(lumbar_phantom.labels, str(folder / "labels.nii.gz"))
    before = _digests(folder / "dicom", folder / "labels.nii.gz")
    run_pipeline(folder / "dicom", folder / "out", segmentation_path=folder / "labels.nii.gz")
    assert _digests(folder / "dicom", folder / "labels.nii.gz") == before
    return folder


def test_a_series_without_slice_thickness_gets_its_seg_and_sr_from_the_positions(no_thickness_run):
    hd = pytest.importorskip("highdicom")
    report = _report(no_thickness_run / "out")
    assert report["dicom_export"]["written"] is True
    assert any("no SliceThickness (0018,0050)" in note and "2 mm" in note for note in report["notes"])
    seg = hd.seg.segread(no_thickness_run / "out" / "vertebrae_seg.dcm")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(2.0)


def test_a_seg_that_cannot_be_built_costs_the_dicom_objects_not_the_results(tmp_path, lumbar_phantom, monkeypatch):
    pytest.importorskip("highdicom")
    import spinefrac.reporting.dicom_seg as dicom_seg

    def broken(*_args, **_kwargs):
        raise AttributeError("'FileDataset' object has no attribute 'SomethingHighdicomNeeds'")

    monkeypatch.setattr(dicom_seg, "build_segmentation", broken)
    write_ct_series(lumbar_phantom.ct, tmp_path / "dicom")
    sitk.WriteImage(lumbar_phantom.labels, str(tmp_path / "labels.nii.gz"))
    result = run_pipeline(tmp_path / "dicom", tmp_path / "out", segmentation_path=tmp_path / "labels.nii.gz")
    report = _report(tmp_path / "out")
    assert report["dicom_export"]["written"] is False and "SomethingHighdicomNeeds" in report["dicom_export"]["reason"]
    assert (tmp_path / "out" / "report.json").is_file() and (tmp_path / "out" / "vertebrae.nii.gz").is_file()
    assert result.findings is not None


@pytest.mark.parametrize("victim, cut", [(10, 0.5), (10, 0.05), (29, 0.5)])
def test_a_damaged_slice_is_named(tmp_path, fine_phantom, victim, cut):
    files = _series_at(fine_phantom, np.arange(0.0, 60.0, 2.0), tmp_path / "dicom")
    data = files[victim].read_bytes()
    files[victim].write_bytes(data[: int(len(data) * cut)])
    before = _digests(tmp_path / "dicom")
    if victim == len(files) - 1:  # the last slice: no gap, the series is read without it and the file named
        ct = load_ct(tmp_path / "dicom")
        assert ct.source_grid.size[2] == 29
        assert any(f"not read as DICOM images (not DICOM, or cut short or damaged): {files[victim].name}" in w
                   for w in ct.warnings), ct.warnings
    else:
        with pytest.raises(InputError, match=f"between {files[victim - 1].name} and {files[victim + 1].name}.*"
                                             f"not read as DICOM images: {files[victim].name}"):
            load_ct(tmp_path / "dicom")
    assert _digests(tmp_path / "dicom") == before


def test_a_small_noise_series_beside_the_ct_is_not_taken_and_both_are_named(tmp_path, fine_phantom):
    _series_at(fine_phantom, np.arange(0.0, 40.0, 2.0), tmp_path)
    noise = sitk.GetImageFromArray(np.random.default_rng(3).integers(-1000, 1500, (30, 64, 64)).astype(np.int16))
    noise.SetSpacing((0.7, 0.7, 1.0))
    write_ct_series(noise, tmp_path / "noise")
    for path in (tmp_path / "noise").iterdir():
        path.rename(tmp_path / f"noise_{path.name}")
    ct = load_ct(tmp_path)
    assert ct.source_grid.size == (185, 212, 20)
    assert "20 images, 212 x 185" in ct.series_choice and "ignored: " in ct.series_choice
    assert "30 images, 64 x 64" in ct.series_choice.split("ignored: ")[1]


def test_no_spine_in_the_chosen_series_names_the_choice(tmp_path):
    """A CT-sized series without bone (a water cylinder) beside a small one: the offline engine finds no
    spine, and the one line says which series was read and which was not."""
    jj, ii = np.mgrid[:256, :256]
    water = np.where((ii - 127.5) ** 2 + (jj - 127.5) ** 2 < 100 ** 2, 0, -1000).astype(np.int16)
    cylinder = sitk.GetImageFromArray(np.broadcast_to(water, (24, 256, 256)).copy())
    cylinder.SetSpacing((0.8, 0.8, 2.0))
    write_ct_series(cylinder, tmp_path / "dicom")
    small = sitk.GetImageFromArray(np.random.default_rng(4).integers(-1000, 1500, (30, 64, 64)).astype(np.int16))
    write_ct_series(small, tmp_path / "small")
    for path in (tmp_path / "small").iterdir():
        path.rename(tmp_path / "dicom" / f"small_{path.name}")
    line = _refused(tmp_path, tmp_path / "dicom", "--engine", "offline")
    assert "no spine found" in line and "[DICOM folder: read CT series " in line, line
    assert "24 images, 256 x 256" in line and "ignored: " in line and "30 images, 64 x 64" in line, line
