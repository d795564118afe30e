"""Image input: formats, DICOM series choice, canonical orientation and the exact way back."""

import gzip
import math

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.file_headers import gzip_trailer_matches
from spinefrac.io.images import ImageGrid, load_ct, to_canonical

from spine_test_utils import reoriented, write_dicom_series


def _random_ct(size=(30, 28, 10), spacing=(0.8, 0.9, 2.5), direction=None, seed=0):
    array = np.random.default_rng(seed).integers(-1000, 2000, size=size[::-1]).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 30.25, 100.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def _oblique_direction(angle_rad=0.3):
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return tuple(rotation.ravel())


ORIENTATIONS = ["LPS", "RAS", "PIR", "SAR", "ILA", "RPI"]


@pytest.mark.parametrize("orientation", ORIENTATIONS + ["oblique"])
def test_canonical_orientation_and_exact_round_trip(tmp_path, orientation):
    if orientation == "oblique":
        source = _random_ct(direction=_oblique_direction())
    else:
        source = reoriented(_random_ct(), orientation)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(source, str(path))
    ct = load_ct(path)

    # Canonical: axis directions closest to L, P, S (identity unless the input is oblique).
    direction = np.array(ct.image.GetDirection()).reshape(3, 3)
    assert np.all(np.diag(direction) > 0.7)
    # Same physical content: every voxel keeps its HU at its physical point.
    probe_index = (3, 4, 5)
    point = ct.image.TransformIndexToPhysicalPoint(probe_index)
    source_read = sitk.ReadImage(str(path))
    assert source_read[source_read.TransformPhysicalPointToIndex(point)] == ct.image[probe_index]
    # Back on the input grid: same header bit for bit, same voxels.
    restored = ct.to_source_grid(ct.image)
    assert ImageGrid.of(restored) == ImageGrid.of(source_read)
    assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(source_read))


def test_nrrd_is_read(tmp_path):
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(_random_ct(), str(path))
    ct = load_ct(path)
    assert ct.source_format == "NRRD"
    assert ct.image.GetSize() == (30, 28, 10)


def test_dicom_series_matches_simpleitk_series_reader(shared_data):
    folder = shared_data / "ts-example" / "dicom"
    ct = load_ct(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()
    assert ct.source_format == "DICOM series"
    assert ImageGrid.of(ct.to_source_grid(ct.image)) == ImageGrid.of(reference)
    assert np.allclose(ct.source_grid.spacing_mm, (0.9765625, 0.9765625, 2.0))
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(ct.image)), sitk.GetArrayFromImage(reference))


def test_dicom_folder_with_several_series_takes_the_ct_and_mixes_nothing(tmp_path):
    ct_image = _random_ct(size=(32, 32, 8), spacing=(0.7, 0.7, 3.0), seed=1)
    mr_image = _random_ct(size=(32, 32, 12), spacing=(0.7, 0.7, 2.0), seed=2)
    scout = _random_ct(size=(32, 32, 3), spacing=(0.7, 0.7, 3.0), seed=3)
    write_dicom_series(ct_image, tmp_path, "CT", "1.2.3.4.100", "abdomen")
    write_dicom_series(mr_image, tmp_path, "MR", "1.2.3.4.200", "t2")
    write_dicom_series(scout, tmp_path, "CT", "1.2.3.4.300", "scout")
    ct = load_ct(tmp_path)
    assert ct.source_grid.size == (32, 32, 8)
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(ct.image)), sitk.GetArrayFromImage(ct_image))
    assert "1.2.3.4.100" in ct.source_description and "2 other series" in ct.source_description


def test_dicom_folder_without_ct_is_refused(tmp_path):
    write_dicom_series(_random_ct(size=(8, 8, 4)), tmp_path, "MR", "1.2.3.4.5")
    with pytest.raises(InputError, match="no CT series.*MR"):
        load_ct(tmp_path)


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="no DICOM series"):
        load_ct(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="CT not found"):
        load_ct(tmp_path / "nothing.nii.gz")


def test_two_dimensional_image(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image([32, 32], sitk.sitkInt16), str(path))
    with pytest.raises(InputError, match="2-D"):
        load_ct(path)


def test_single_slice_volume(tmp_path):
    path = tmp_path / "slab.nii.gz"
    sitk.WriteImage(sitk.Image([32, 32, 1], sitk.sitkInt16), str(path))
    with pytest.raises(InputError, match="single slice"):
        load_ct(path)


def test_four_dimensional_image(tmp_path):
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), str(path))
    with pytest.raises(InputError, match="4-D"):
        load_ct(path)


def test_colour_image(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), str(path))
    with pytest.raises(InputError, match="3 components"):
        load_ct(path)


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image", encoding="utf-8")
    with pytest.raises(InputError, match="not a readable image"):
        load_ct(path)


@pytest.mark.parametrize("compressor", ["JPEG", "JPEG2000"])
def test_compressed_dicom_series_reads_the_same_voxels(tmp_path, compressor):
    image = _random_ct(size=(32, 32, 8), spacing=(0.7, 0.7, 3.0), seed=4)
    write_dicom_series(image, tmp_path, "CT", "1.2.3.4.77", compressor=compressor)
    ct = load_ct(tmp_path)
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(ct.image)), sitk.GetArrayFromImage(image))


def test_uneven_dicom_slices_are_read_with_a_warning(tmp_path):
    image = _random_ct(size=(32, 32, 10), spacing=(0.7, 0.7, 2.0), seed=5)
    files = write_dicom_series(image, tmp_path, "CT", "1.2.3.4.78")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[-1]))
    last = reader.Execute()
    position = [float(v) for v in last.GetMetaData("0020|0032").split("\\")]
    position[2] += 0.5  # the last slice sits 2.5 mm above the previous one, not 2.0
    last.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(files[-1]))
    writer.Execute(last)
    ct = load_ct(tmp_path)
    assert any("uneven slice spacing" in warning for warning in ct.warnings)


# -- files cut short: the voxel data against the header, for every format read ---------------------------

TRUNCATABLE = [("ct.mha", False), ("ct.mha", True), ("ct.mhd", False), ("ct.mhd", True), ("ct.nrrd", False),
               ("ct.nrrd", True), ("ct.nii", False), ("ct.nii.gz", True)]


def _cut(path, fraction=0.7):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("name, compressed", TRUNCATABLE)
def test_a_file_cut_short_is_refused_as_truncated(tmp_path, name, compressed):
    """Written by ITK's own writers, then the voxel data cut to 70 %: a MetaImage said 'No such file or
    directory', a .nii.gz came out with 30 % zeros."""
    image = _random_ct(size=(40, 40, 20))
    path = tmp_path / name
    sitk.WriteImage(image, str(path), useCompression=compressed)
    data_file = {".mhd": path.with_suffix(".zraw" if compressed else ".raw")}.get(path.suffix, path)
    _cut(data_file)
    with pytest.raises(InputError, match="truncated") as refused:
        load_ct(path, check_hu=False)
    assert "\n" not in str(refused.value) and "No such file" not in str(refused.value)


def test_a_metaimage_without_its_data_file_names_it(tmp_path):
    path = tmp_path / "ct.mhd"
    sitk.WriteImage(_random_ct(), str(path))
    path.with_suffix(".raw").unlink()
    with pytest.raises(InputError, match="names its voxel data file ct.raw, which is missing"):
        load_ct(path, check_hu=False)


def test_a_detached_nrrd_header_with_short_data_is_refused(tmp_path):
    """A .nhdr with its raw data beside it (as Slicer and teem write it)."""
    image = _random_ct()
    (tmp_path / "ct.raw").write_bytes(sitk.GetArrayFromImage(image).tobytes()[:-1000])
    (tmp_path / "ct.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 30 28 10\n"
        "space directions: (0.8,0,0) (0,0.9,0) (0,0,2.5)\nkinds: domain domain domain\nendian: little\n"
        "encoding: raw\nspace origin: (0,0,0)\ndata file: ct.raw\n", encoding="ascii")
    with pytest.raises(InputError, match="truncated: 15,800 bytes of the 16,800"):
        load_ct(tmp_path / "ct.nhdr", check_hu=False)


# -- NIfTI qform / sform disagreement -------------------------------------------------------------------


def _with_two_forms(nib, source, target, sform_shift_mm, sform_code=1):
    """A NIfTI as a tool that edits the sform alone leaves it: qform as it was, sform moved."""
    original = nib.load(str(source))
    image = nib.Nifti1Image(np.asanyarray(original.dataobj), original.affine)
    sform = original.affine.copy()
    sform[:3, 3] += sform_shift_mm
    image.set_qform(original.affine, code=1)
    image.set_sform(sform, code=sform_code)
    nib.save(image, str(target))
    return target


@pytest.mark.parametrize("sform_code, used", [(1, "sform"), (2, "qform")])
def test_qform_and_sform_30_mm_apart_are_warned_and_outputs_keep_the_one_read(tmp_path, sample_ct, sample_labels,
                                                                            sform_code, used):
    """30 mm head-foot apart. ITK reads the sform when its code is 'scanner' (1), the qform when it is
    'aligned' (2); the warning names the one read, and the label map written lies on that grid in both
    forms, so that no tool sees it 30 mm off the CT as read."""
    from spine_test_utils import run_cli

    nib = pytest.importorskip("nibabel")
    ct = _with_two_forms(nib, sample_ct, tmp_path / "ct.nii.gz", [0.0, 0.0, 30.0], sform_code)
    labels = _with_two_forms(nib, sample_labels, tmp_path / "labels.nii.gz", [0.0, 0.0, 30.0], sform_code)
    result = run_cli("run", ct, "--segmentation", labels, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "qform and sform" in line]
    assert len(warned) == 1 and "up to 30.0 mm apart" in warned[0] and f"read with the {used}" in warned[0], warned
    assert warned[0].startswith("spinefrac: warning: ")
    written = nib.load(str(tmp_path / "out" / "vertebrae.nii.gz"))
    read = nib.load(str(ct)).get_sform() if used == "sform" else nib.load(str(ct)).get_qform()
    assert np.allclose(written.get_qform(), read, atol=1e-3) and np.allclose(written.get_sform(), read, atol=1e-3)
    as_read = sitk.ReadImage(str(ct))
    assert ImageGrid.of(sitk.ReadImage(str(tmp_path / "out" / "vertebrae.nii.gz"))).differences(ImageGrid.of(as_read)) == []
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "vertebrae.nii.gz"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels))))


def test_agreeing_forms_give_no_warning(tmp_path, sample_ct):
    nib = pytest.importorskip("nibabel")
    ct = load_ct(_with_two_forms(nib, sample_ct, tmp_path / "ct.nii.gz", [0.0, 0.0, 0.0]))
    assert not [w for w in ct.warnings if "qform" in w]


# -- DICOM folders with several series: the CT volume, never a localizer or a dose report -----------------

STUDY_UID = "1.2.826.0.1.3680043.2.1125.1"  # the study of write_dicom_series


def _scanner_image(path, series_uid, number, pixels, orientation, position, image_type, modality="CT",
                   description="", rgb=False):
    """One image as a CT scanner writes it (CT Image Storage; a dose screen as Secondary Capture)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage if rgb else CTImageStorage
    meta.MediaStorageSOPInstanceUID = f"{series_uid}.{number}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = STUDY_UID, series_uid, modality
    ds.SeriesDescription, ds.InstanceNumber, ds.ImageType = description, number, image_type
    ds.PatientID, ds.PatientName = "SPINE01", "Anonymous"
    ds.ImageOrientationPatient, ds.ImagePositionPatient = list(orientation), list(position)
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.Rows, ds.Columns = pixels.shape[:2]
    if rgb:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


CORONAL = (1, 0, 0, 0, 0, -1)
SAGITTAL = (0, 1, 0, 0, 0, -1)


def _scout_pair(folder, series_uid, description="Topogram"):
    pixels = np.random.default_rng(5).integers(-1000, 1000, (64, 48)).astype(np.int16)
    _scanner_image(folder / "scout1.dcm", series_uid, 1, pixels, CORONAL, (-24, 0, 40),
                   ["ORIGINAL", "PRIMARY", "LOCALIZER"], description=description)
    _scanner_image(folder / "scout2.dcm", series_uid, 2, pixels, SAGITTAL, (0, -24, 40),
                   ["ORIGINAL", "PRIMARY", "LOCALIZER"], description=description)


def test_localizers_and_a_dose_screen_are_never_taken_and_are_named(tmp_path):
    axial = _random_ct(size=(32, 32, 12), spacing=(0.7, 0.7, 3.0), seed=1)
    write_dicom_series(axial, tmp_path, "CT", "1.2.3.4.100", "Abdomen 3.0")
    _scout_pair(tmp_path, "1.2.3.4.1")
    screen = np.zeros((40, 60, 3), np.uint8)
    _scanner_image(tmp_path / "dose.dcm", "1.2.3.4.999", 1, screen, CORONAL, (0, 0, 0),
                   ["DERIVED", "SECONDARY", "SCREEN SAVE"], description="Dose Report", rgb=True)
    ct = load_ct(tmp_path)
    assert ct.source_grid.size == (32, 32, 12)
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(ct.image)), sitk.GetArrayFromImage(axial))
    named = [w for w in ct.warnings if w.startswith("DICOM folder")]
    assert len(named) == 1 and "read CT series 1.2.3.4.100" in named[0], ct.warnings
    assert "1.2.3.4.1 (CT, 1 image, 64 x 48, localizer, 'Topogram')" in named[0] and "'Dose Report'" in named[0]


def test_a_localizer_inside_the_ct_series_is_left_out_not_mixed_in(tmp_path):
    """Some scanners store the scout under the axial series' UID: its images (another orientation and
    size) once went into the volume."""
    axial = _random_ct(size=(32, 32, 12), spacing=(0.7, 0.7, 3.0), seed=1)
    write_dicom_series(axial, tmp_path, "CT", "1.2.3.4.100", "Abdomen 3.0")
    _scout_pair(tmp_path, "1.2.3.4.100")
    ct = load_ct(tmp_path)
    assert ct.source_grid.size == (32, 32, 12)
    assert np.array_equal(sitk.GetArrayFromImage(ct.to_source_grid(ct.image)), sitk.GetArrayFromImage(axial))
    assert any("without its 2 images of another geometry" in w for w in ct.warnings), ct.warnings


def test_a_regular_ct_stack_wins_over_a_larger_one_with_missing_slices(tmp_path):
    regular = _random_ct(size=(32, 32, 12), spacing=(0.7, 0.7, 3.0), seed=1)
    write_dicom_series(regular, tmp_path, "CT", "1.2.3.4.100", "Abdomen 3.0")
    broken = write_dicom_series(_random_ct(size=(32, 32, 24), spacing=(0.7, 0.7, 1.0), seed=2), tmp_path, "CT",
                                "1.2.3.4.200", "Abdomen 1.0")
    for victim in broken[8:12]:
        victim.unlink()
    ct = load_ct(tmp_path)
    assert ct.source_grid.size == (32, 32, 12)
    assert any("1.2.3.4.200 (CT, 20 images, 32 x 32, irregular slice positions" in w for w in ct.warnings), ct.warnings


def test_a_folder_of_only_localizers_is_refused_by_name(tmp_path):
    _scout_pair(tmp_path, "1.2.3.4.1")
    with pytest.raises(InputError, match="no CT volume, only single CT images or localizers"):
        load_ct(tmp_path)


def _gzip_variants(tmp_path):
    """One .nii.gz as ITK writes it, and the same stream with what the gzip format allows after it."""
    path, image = tmp_path / "ct.nii.gz", _random_ct(size=(40, 40, 20))
    sitk.WriteImage(image, str(path), useCompression=True)
    return path, path.read_bytes(), image


@pytest.mark.parametrize("tail, accepted", [(b"", True), (b"\0" * 4096, True), ("member", True),
                                            (b"not gzip", False), (b"\x1f", False)])
def test_what_follows_the_gzip_stream_is_judged_as_the_gzip_module_does(tmp_path, tail, accepted):
    """Zero padding and further members are part of a gzip file; other bytes are not. (The length check
    inflates with zlib directly, so it must keep the gzip module's verdicts.)"""
    path, stream, _ = _gzip_variants(tmp_path)
    path.write_bytes(stream + (gzip.compress(b"more") if tail == "member" else tail))
    if accepted:
        assert load_ct(path, check_hu=False).image.GetSize() == (40, 40, 20)
    else:
        with pytest.raises(InputError, match="not a readable image"):
            load_ct(path, check_hu=False)


def test_a_gzip_stream_with_a_wrong_checksum_is_refused(tmp_path):
    path, stream, _ = _gzip_variants(tmp_path)
    path.write_bytes(stream[:-8] + bytes([stream[-8] ^ 1]) + stream[-7:])
    with pytest.raises(InputError, match="not a readable image"):
        load_ct(path, check_hu=False)


@pytest.mark.parametrize("fraction", [0.999, 0.5, 0.01])
def test_the_gzip_trailer_tells_a_complete_written_file_from_a_cut_one(tmp_path, fraction):
    path, stream, image = _gzip_variants(tmp_path)
    voxels = sitk.GetArrayViewFromImage(image)
    assert gzip_trailer_matches(path, voxels)
    assert not gzip_trailer_matches(path, voxels[::-1].copy())  # other voxels: another checksum
    path.write_bytes(stream[: int(len(stream) * fraction)])
    assert not gzip_trailer_matches(path, voxels)


def test_an_image_already_in_lps_is_not_copied_to_be_canonical():
    lps, ras = _random_ct(), reoriented(_random_ct(), "RAS")
    assert to_canonical(lps) is lps
    assert to_canonical(ras) is not ras
    assert np.array_equal(sitk.GetArrayFromImage(to_canonical(ras)), sitk.GetArrayViewFromImage(lps))
