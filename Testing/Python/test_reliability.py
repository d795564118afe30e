"""Bad, hostile and large inputs: a one-line message, exit code 2, nothing left behind, never a
traceback or a hang. Also: inputs are never modified, interrupted runs leave nothing that looks
complete, and a batch continues past bad cases."""

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinefrac.batch import run_batch
from spinefrac.levels import LEVEL_BY_ID
from spinefrac.synthetic.phantom import Fracture, PhantomSpec, make_phantom

from spine_test_utils import run_cli, write_dicom_series

RESULT_FILES = {"findings.txt", "gallery.png", "overview.png", "report.csv", "report.json", "vertebrae.nii.gz",
                "vertebral_bodies.nii.gz"}


def _image(array, spacing=(1.0, 1.0, 2.0), direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _ct_array(shape=(20, 40, 40), low=-1000, high=1500, seed=0):
    return np.random.default_rng(seed).integers(low, high, size=shape).astype(np.int16)


def _write(image, path):
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, sample_ct, sample_labels):
    """name -> (arguments after 'run', expected message fragment, extra environment)."""
    d = tmp_path_factory.mktemp("bad")
    good_ct, labels = sample_ct, sample_labels
    seg = ["--segmentation", labels]
    cases = {}

    def add(name, arguments, message, env=None):
        cases[name] = (arguments, message, env or {})

    add("missing CT file", [d / "none.nii.gz", *seg], "CT not found")
    (d / "empty_dir").mkdir()
    add("empty folder as CT", [d / "empty_dir", *seg], "no DICOM series found")
    add("2-D image", [_write(sitk.Image([64, 64], sitk.sitkInt16), d / "2d.nii.gz"), *seg], "is 2-D")
    add("single slice", [_write(_image(_ct_array((1, 64, 64))), d / "slice.nii.gz"), *seg], "single slice")
    add("4-D image", [_write(sitk.Image([16, 16, 16, 3], sitk.sitkInt16), d / "4d.nii.gz"), *seg], "is 4-D")
    add("colour image", [_write(sitk.Image([32, 32, 16], sitk.sitkVectorUInt8, 3), d / "rgb.nrrd"), *seg],
        "3 components")
    (d / "text.nii.gz").write_text("not an image", encoding="utf-8")
    add("text with an image name", [d / "text.nii.gz", *seg], "not a readable image")
    (d / "zero.nii.gz").write_bytes(b"")
    add("zero-byte file", [d / "zero.nii.gz", *seg], "not a readable image")
    whole = Path(good_ct).read_bytes()
    (d / "truncated.nii.gz").write_bytes(whole[: len(whole) // 3])
    add("truncated NIfTI", [d / "truncated.nii.gz", *seg], "truncated or corrupt")
    (d / "bad.nii.gz").write_bytes(gzip.compress(b"\x00" * 400))
    add("NIfTI with a garbage header", [d / "bad.nii.gz", *seg], "not a readable image")
    (d / "short.nii.gz").write_bytes(gzip.compress(gzip.decompress(whole)[:-5000]))
    add("NIfTI missing its last voxels", [d / "short.nii.gz", *seg], "bytes of the")
    nan = _ct_array().astype(np.float32)
    nan[5, 5, 5] = np.nan
    add("NaN values", [_write(_image(nan), d / "nan.nrrd"), *seg], "NaN or infinite")  # NIfTI I/O drops NaN
    add("blank image", [_write(_image(np.full((20, 40, 40), -1000, np.int16)), d / "blank.nii.gz"), *seg], "blank")
    add("MR-like intensities", [_write(_image(_ct_array(low=0, high=800)), d / "mr.nii.gz"), *seg],
        "no air or lung values")
    add("CT without rescale intercept", [_write(_image(_ct_array(low=0, high=3000)), d / "raw.nii.gz"), *seg],
        "without its rescale intercept")
    add("values beyond HU", [_write(_image(_ct_array().astype(np.int32) * 1000), d / "big.nii.gz"), *seg],
        "not Hounsfield units")
    add("absurd spacing", [_write(_image(_ct_array(), spacing=(100.0, 100.0, 100.0)), d / "far.nii.gz"), *seg],
        "outside 0.05-20.0 mm")
    add("tiny field of view", [_write(_image(_ct_array((4, 8, 8))), d / "tiny.nii.gz"), *seg], "too small to hold")
    add("sheared grid", [_write(_image(_ct_array(), direction=(1, 0.3, 0, 0, 1, 0, 0, 0, 1)), d / "shear.nrrd"),
                         *seg], "non-orthogonal direction")
    raw = d / "zero_spacing.raw"
    raw.write_bytes(_ct_array((5, 40, 40)).tobytes())
    (d / "zero_spacing.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 40 40 5\n"
        "space directions: (0,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
        "encoding: raw\nspace origin: (0,0,0)\ndata file: zero_spacing.raw\n", encoding="ascii")
    add("zero spacing", [d / "zero_spacing.nhdr", *seg], "invalid voxel spacing (0, 1, 1) mm")
    add("larger than memory", [good_ct, *seg], "GiB of memory", {"SPINEFRAC_MEMORY_LIMIT_MB": "5"})
    mr_folder = d / "mr_dicom"
    write_dicom_series(_image(_ct_array((12, 48, 48), low=0, high=800)), mr_folder, "MR", "1.2.3.4.11")
    add("DICOM MR series", [mr_folder, *seg], "no CT series")
    duplicated = d / "dup_dicom"
    files = write_dicom_series(_image(_ct_array((12, 48, 48))), duplicated, "CT", "1.2.3.4.12")
    copy = duplicated / "copy.dcm"
    copy.write_bytes(files[5].read_bytes())
    add("DICOM duplicated slice", [duplicated, *seg], "")  # GDCM may drop exact duplicates; never a crash
    gap = d / "gap_dicom"
    files = write_dicom_series(_image(_ct_array((14, 48, 48))), gap, "CT", "1.2.3.4.13")
    for victim in files[6:9]:
        victim.unlink()
    add("DICOM missing slices", [gap, *seg], "misses slices")
    other_grid = _write(sitk.ReadImage(str(labels))[:, :, 4:], d / "other_grid.nii.gz")
    add("label map on another grid", [good_ct, "--segmentation", other_grid], "not on the CT's voxel grid")
    add("empty label map", [good_ct, "--segmentation", _write(sitk.ReadImage(str(labels)) * 0, d / "empty.nii.gz")],
        "no vertebra labels")
    odd = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    odd[odd == 22] = 27
    odd_image = sitk.GetImageFromArray(odd)
    odd_image.CopyInformation(sitk.ReadImage(str(labels)))
    add("unknown label ids", [good_ct, "--segmentation", _write(odd_image, d / "odd.nii.gz")], "not VerSe vertebra ids")
    probabilities = sitk.Cast(sitk.ReadImage(str(labels)), sitk.sitkFloat32) * 0.5
    add("probability map as labels", [good_ct, "--segmentation", _write(probabilities, d / "p.nii.gz")],
        "non-integer")
    (d / "a_file").write_text("x", encoding="utf-8")
    add("output is a file", [good_ct, *seg, "--output-target", d / "a_file"], "is not a folder")
    add("CUDA requested without a GPU", [good_ct, *seg, "--device", "cuda"], "--device cuda was requested")
    add("missing classifier package", [good_ct, *seg, "--classifier", d / "no_model"], "lacks manifest.json")
    add("threshold outside 0..1", [good_ct, *seg, "--fracture-threshold", "1.5"], "not a probability")
    for builder in (_truncated_cases, _label_cases, _slicer_segmentation_cases, _dicom_cases, _output_cases):
        builder(d, good_ct, labels, add)
    return cases


def _cut(path: Path, fraction: float = 0.7) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _truncated_cases(d, good_ct, labels, add):
    """Files cut short, as each format's own writer (ITK's) leaves them when a copy breaks off."""
    seg = ["--segmentation", labels]
    ct = sitk.ReadImage(str(good_ct))
    for name, compressed, data_file in [("cut.mha", False, None), ("cutz.mha", True, None), ("cut.mhd", False, "cut.raw"),
                                        ("cut.nrrd", False, None), ("cutz.nrrd", True, None), ("cut.nii", False, None)]:
        sitk.WriteImage(ct, str(d / name), useCompression=compressed)
        _cut(d / (data_file or name))
        add(f"truncated {name.replace('cut', '', 1).lstrip('z')}{' (compressed)' if compressed else ''}",
            [d / name, *seg], "truncated")
    sitk.WriteImage(ct, str(d / "nodata.mhd"))
    (d / "nodata.raw").unlink()
    add("MetaImage without its data file", [d / "nodata.mhd", *seg], "names its voxel data file nodata.raw")


def _with_labels(labels, array, path, pixel=sitk.sitkUInt16, names=None):
    reference = sitk.ReadImage(str(labels))
    image = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    image.CopyInformation(reference)
    for index, (value, name) in enumerate((names or {}).items()):
        image.SetMetaData(f"Segment{index}_Name", name)
        image.SetMetaData(f"Segment{index}_LabelValue", str(value))
    return _write(image, path)


def _label_cases(d, good_ct, labels, add):
    verse = sitk.GetArrayFromImage(sitk.ReadImage(str(labels))).astype(np.uint16)
    stray = verse.copy()
    stray.reshape(-1)[:1] = 30
    add("stray voxel of id 30", [good_ct, "--segmentation", _with_labels(labels, stray, d / "stray.nii.gz")],
        "read as no known convention")
    blob = verse.copy()
    blob[:4, :4, :4] = 255
    add("'ignore' blob of 255", [good_ct, "--segmentation", _with_labels(labels, blob, d / "blob.nii.gz")],
        "not VerSe vertebra ids: 255 (64 voxels)")
    v2_or_v1 = np.zeros_like(verse)
    for verse_id, ts_id in {18: 33, 19: 32, 20: 31, 21: 30, 22: 29, 23: 28, 24: 27}.items():
        v2_or_v1[verse == verse_id] = ts_id  # TotalSegmentator v2's T11..L5, or v1's T2..T8
    add("ids that fit TotalSegmentator v1 and v2",
        [good_ct, "--segmentation", _with_labels(labels, v2_or_v1, d / "either.nii.gz")], "--labels totalseg-v1")
    add("VerSe ids on an image flipped head to foot",
        [good_ct, "--segmentation", _with_labels(labels, verse[::-1].copy(), d / "flipped.nii.gz")],
        "missing inside the spine")
    negative = verse.astype(np.int16)
    negative[:2, :2, :2] = -1
    add("negative label values", [good_ct, "--segmentation", _with_labels(labels, negative, d / "neg.nii.gz",
                                                                          sitk.sitkInt16)], "outside 0..65535")
    tilted = sitk.ReadImage(str(labels))
    angle = np.radians(0.5)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    tilted.SetDirection((rotation @ np.array(tilted.GetDirection()).reshape(3, 3)).ravel().tolist())
    add("label grid tilted 0.5 degrees", [good_ct, "--segmentation", _write(tilted, d / "tilted.nii.gz")],
        "axes tilted 0.50 degrees apart")
    add("segmentation not found", [good_ct, "--segmentation", d / "no_labels.nii.gz"], "not found")
    (d / "no_masks").mkdir()
    (d / "no_masks" / "notes.txt").write_text("no masks here", encoding="utf-8")
    add("segmentation folder without masks", [good_ct, "--segmentation", d / "no_masks"], "holds no NIfTI or NRRD")
    add("4-D label map", [good_ct, "--segmentation", _write(sitk.Image([8, 8, 8, 2], sitk.sitkUInt8),
                                                             d / "4d_labels.nii.gz")], "is 4-D")


def _slicer_segmentation_cases(d, good_ct, labels, add):
    verse = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    damaged = _with_labels(labels, (verse == 20).astype(np.uint8), d / "damaged.seg.nrrd", sitk.sitkUInt8, {1: "L1"})
    damaged.write_bytes(damaged.read_bytes().replace(b"Segment0_LabelValue:=1", b"Segment0_LabelValue:=one"))
    add("seg.nrrd label value 'one'", [good_ct, "--segmentation", damaged], "not a whole number")
    twice = np.where(verse == 20, 1, np.where(verse == 22, 2, 0)).astype(np.uint8)
    add("two segments named L1", [good_ct, "--segmentation", _with_labels(labels, twice, d / "twice.seg.nrrd",
                                                                          sitk.sitkUInt8, {1: "L1", 2: "L1 vertebra"})],
        "both name L1")
    add("overlapping segments in two layers", [good_ct, "--segmentation", _two_layer_seg_nrrd(labels, d)],
        "overlap in")


def _two_layer_seg_nrrd(labels, d) -> Path:
    """A .seg.nrrd as 3D Slicer's vtkMRMLSegmentationStorageNode writes overlapping segments: a 4-D NRRD, the
    layers on a first axis of kind 'list', each segment's Layer and LabelValue in the header (fields as in a
    file Slicer wrote). L2 grown by two voxels sits in its own layer, over L1 and L3."""
    from scipy import ndimage

    image = sitk.ReadImage(str(labels))
    verse = sitk.GetArrayFromImage(image)
    layers = np.zeros(verse.shape + (2,), np.uint8)
    layers[..., 0] = np.where(verse == 21, 0, verse)
    layers[..., 1] = ndimage.binary_dilation(verse == 21, iterations=2)
    segments = [(0, v, LEVEL_BY_ID[int(v)].name) for v in np.unique(verse) if v and v != 21] + [(1, 1, "L2")]
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    vectors = " ".join("(" + ",".join(f"{x:.17g}" for x in direction[:, c]) + ")" for c in range(3))
    header = ["NRRD0004", "# Complete NRRD file format specification at:",
              "# http://teem.sourceforge.net/nrrd/format.html", "type: unsigned char", "dimension: 4",
              "space: left-posterior-superior", f"sizes: 2 {' '.join(map(str, image.GetSize()))}",
              f"space directions: none {vectors}", "kinds: list domain domain domain", "encoding: gzip",
              "space origin: (" + ",".join(f"{x:.17g}" for x in image.GetOrigin()) + ")"]
    for index, (layer, value, name) in enumerate(segments):
        header += [f"Segment{index}_ID:=Segment_{index + 1}", f"Segment{index}_LabelValue:={value}",
                   f"Segment{index}_Layer:={layer}", f"Segment{index}_Name:={name}",
                   f"Segment{index}_NameAutoGenerated:=0"]
    header += ["Segmentation_MasterRepresentation:=Binary labelmap", "Segmentation_ReferenceImageExtentOffset:=0 0 0"]
    path = d / "overlap.seg.nrrd"
    path.write_bytes(("\n".join(header) + "\n\n").encode("ascii") + gzip.compress(layers.tobytes()))
    return path


def _dicom_cases(d, good_ct, labels, add):
    seg = ["--segmentation", labels]
    no_spacing = d / "no_spacing_dicom"
    for path in write_dicom_series(_image(_ct_array((12, 48, 48))), no_spacing, "CT", "1.2.3.4.14"):
        path.write_bytes(path.read_bytes().replace(b"\x28\x00\x30\x00", b"\x28\x00\x31\x00"))
    add("DICOM without PixelSpacing", [no_spacing, *seg], "has no PixelSpacing")
    single = d / "single_images_dicom"
    write_dicom_series(_image(_ct_array((1, 48, 48))), single, "CT", "1.2.3.4.15", "Dose Report")
    write_dicom_series(_image(_ct_array((1, 48, 48))), single, "CT", "1.2.3.4.16", "Topogram")
    add("DICOM of single images only", [single, *seg], "no CT volume")
    (d / "text_folder").mkdir()
    (d / "text_folder" / "readme.txt").write_text("not DICOM", encoding="utf-8")
    add("folder without DICOM as CT", [d / "text_folder", *seg], "no DICOM series found")
    os.mkfifo(d / "pipe_ct.nii.gz")
    add("named pipe as CT", [d / "pipe_ct.nii.gz", *seg], "named pipe (FIFO)")
    os.mkfifo(d / "pipe_labels.nii.gz")
    add("named pipe as segmentation", [good_ct, "--segmentation", d / "pipe_labels.nii.gz"], "named pipe (FIFO)")


def _output_cases(d, good_ct, labels, add):
    seg = ["--segmentation", labels]
    add("empty output name", [good_ct, *seg, "--output-target", ""], "output folder name is empty")
    (d / "elsewhere").mkdir()
    (d / "link_out").symlink_to(d / "elsewhere")
    add("symlinked output", [good_ct, *seg, "--output-target", d / "link_out"], "is a symbolic link")
    (d / "dangling_out").symlink_to(d / "missing_target")
    add("dangling symlink output", [good_ct, *seg, "--output-target", d / "dangling_out"], "is a symbolic link")
    add("memory limit '4GB'", [good_ct, *seg], "not a number of megabytes", {"SPINEFRAC_MEMORY_LIMIT_MB": "4GB"})
    inputs = d / "inputs"
    inputs.mkdir()
    for source in (good_ct, labels):
        (inputs / Path(source).name).write_bytes(Path(source).read_bytes())
    add("output holds the inputs (--overwrite)", [inputs / Path(good_ct).name, "--segmentation",
                                                  inputs / Path(labels).name, "--overwrite", "--output-target", inputs],
        "holds the input")
    series = d / "dicom_as_output"
    write_dicom_series(_image(_ct_array((12, 48, 48))), series, "CT", "1.2.3.4.17")
    add("output inside the DICOM input", [series, *seg, "--output-target", series / "results"],
        "lies inside the input folder")
    (d / ".locked_out.lock").write_text(f"{os.getpid()}\n", encoding="utf-8")  # this test process: alive
    add("output locked by another run", [good_ct, *seg, "--output-target", d / "locked_out"],
        "being written by another run")
    add("output is an input file", [good_ct, *seg, "--output-target", labels], "holds the input")


CATALOGUE = ["missing CT file", "empty folder as CT", "2-D image", "single slice", "4-D image", "colour image",
             "text with an image name", "zero-byte file", "truncated NIfTI", "NIfTI with a garbage header",
             "NIfTI missing its last voxels",
             "NaN values", "blank image", "MR-like intensities", "CT without rescale intercept", "values beyond HU",
             "absurd spacing", "tiny field of view", "sheared grid", "zero spacing", "larger than memory",
             "DICOM MR series", "DICOM duplicated slice", "DICOM missing slices", "label map on another grid",
             "empty label map", "unknown label ids", "probability map as labels", "output is a file",
             "CUDA requested without a GPU", "missing classifier package", "threshold outside 0..1",
             # files cut short, for every format read
             "truncated .mha", "truncated .mha (compressed)", "truncated .mhd", "truncated .nrrd",
             "truncated .nrrd (compressed)", "truncated .nii", "MetaImage without its data file",
             # label maps: conventions, values, grids
             "stray voxel of id 30", "'ignore' blob of 255", "ids that fit TotalSegmentator v1 and v2",
             "VerSe ids on an image flipped head to foot", "negative label values", "label grid tilted 0.5 degrees",
             "segmentation not found", "segmentation folder without masks", "4-D label map",
             # Slicer segmentations
             "seg.nrrd label value 'one'", "two segments named L1", "overlapping segments in two layers",
             # DICOM folders and special files
             "DICOM without PixelSpacing", "DICOM of single images only", "folder without DICOM as CT",
             "named pipe as CT", "named pipe as segmentation",
             # outputs and settings
             "empty output name", "symlinked output", "dangling symlink output", "memory limit '4GB'",
             "output holds the inputs (--overwrite)", "output inside the DICOM input", "output locked by another run",
             "output is an input file"]


@pytest.mark.parametrize("name", CATALOGUE)
def test_bad_input_gets_one_clear_line_and_leaves_nothing(tmp_path, catalogue, name):
    arguments, message, env = catalogue[name]
    if name == "CUDA requested without a GPU":
        try:
            import torch

            if torch.cuda.is_available():
                pytest.skip("this machine has a GPU")
        except ImportError:
            pass
    out_parent = tmp_path / "results"
    out_parent.mkdir()
    arguments = [str(a) for a in arguments]
    if "--output-target" in arguments:
        index = arguments.index("--output-target")
        target = arguments[index + 1]
        del arguments[index:index + 2]
    else:
        target = str(out_parent / "out")
    inputs = [Path(a) for a in arguments if a and not a.startswith("-") and os.path.lexists(a)] + [Path(target)]
    before = _input_digests(inputs)
    started = time.perf_counter()
    os.environ.update(env)
    try:
        result = run_cli("run", *arguments, "-o", target)
    finally:
        for key in env:
            os.environ.pop(key)
    assert time.perf_counter() - started < 120
    assert "Traceback" not in result.stderr
    if name == "DICOM duplicated slice" and result.returncode == 0:
        return  # the reader dropped the exact copy: a valid run
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("[", "      "))]
    assert len(lines) == 1, result.stderr
    assert message in lines[0], lines[0]
    assert list(out_parent.iterdir()) == []
    assert _input_digests(inputs) == before  # every input byte for byte, its folder unchanged


def _input_digests(paths: list[Path]) -> dict[str, str]:
    """sha256 of every regular file given or inside a folder given (links and pipes are named, not read)."""
    digests = {}
    for given in paths:
        if given.is_symlink() or (given.exists() and not (given.is_file() or given.is_dir())):
            digests[str(given)] = "special"
            continue
        files = sorted(given.rglob("*")) if given.is_dir() else [given] if given.exists() else []
        digests.update({str(f): _digest(f) for f in files if f.is_file() and not f.is_symlink()})
    return digests


def test_the_catalogue_has_at_least_55_distinct_cases():
    assert len(set(CATALOGUE)) == len(CATALOGUE) >= 55


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inputs_are_never_modified(tmp_path, sample_ct, sample_labels):
    before = (_digest(sample_ct), _digest(sample_labels), sample_ct.stat().st_mtime_ns)
    result = run_cli("run", sample_ct, "--segmentation", sample_labels, "-o", tmp_path / "out", "-q")
    assert result.returncode == 0
    assert (_digest(sample_ct), _digest(sample_labels), sample_ct.stat().st_mtime_ns) == before


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, signal_number):
    phantom = make_phantom(PhantomSpec(spacing_mm=(0.8, 0.8, 0.8), ribs=False))
    sitk.WriteImage(phantom.ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(phantom.labels, str(tmp_path / "labels.nii.gz"))
    core = str(Path(__file__).resolve().parents[2] / "SpineFractureDetection")
    process = subprocess.Popen([sys.executable, "-m", "spinefrac", "run", str(tmp_path / "ct.nii.gz"),
                                "--segmentation", str(tmp_path / "labels.nii.gz"), "-o", str(tmp_path / "out")],
                               env=dict(os.environ, PYTHONPATH=core), stderr=subprocess.PIPE, text=True)
    # The first progress line: past Python's start-up (a signal during imports is Python's own, not the run's;
    # a fixed 2 s sleep hit the imports on a loaded machine).
    first = process.stderr.readline()
    time.sleep(1.0)
    process.send_signal(signal_number)
    _, rest = process.communicate(timeout=120)
    stderr = first + rest
    out = tmp_path / "out"
    if out.exists():  # the run finished before the signal: then it is complete
        assert {p.name for p in out.iterdir()} == RESULT_FILES
    else:
        assert process.returncode != 0
        if signal_number == signal.SIGINT:
            assert "interrupted; no output was written" in stderr
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_batch_of_50_phantoms_with_5_corrupted_reports_them_and_gets_the_rest_right(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    expected = {}
    rng = np.random.default_rng(7)
    levels = ("L1", "L2", "L3", "L4", "L5", "sacrum")
    for index in range(50):
        name = f"case{index:02d}"
        fractured = str(rng.choice(["L2", "L3", "L4"])) if index % 2 else None
        spec = PhantomSpec(levels=levels, spacing_mm=(2.5, 2.5, 2.5), ribs=False, seed=index,
                           fractures={fractured: Fracture(str(rng.choice(["wedge", "crush"])), 0.45)} if fractured else {})
        phantom = make_phantom(spec)
        sitk.WriteImage(phantom.ct, str(folder / f"{name}_ct.nii.gz"))
        sitk.WriteImage(phantom.labels, str(folder / f"{name}_seg.nii.gz"))
        expected[name] = fractured
    corrupted = {
        "case03": lambda: (folder / "case03_ct.nii.gz").write_bytes(b"\x1f\x8b garbage"),
        "case14": lambda: (folder / "case14_ct.nii.gz").write_text("text", encoding="utf-8"),
        "case25": lambda: sitk.WriteImage(sitk.ReadImage(str(folder / "case25_seg.nii.gz"))[:, :, 3:],
                                          str(folder / "case25_seg.nii.gz")),
        "case36": lambda: sitk.WriteImage(sitk.Image([32, 32], sitk.sitkInt16), str(folder / "case36_ct.nii.gz")),
        "case47": lambda: sitk.WriteImage(sitk.ReadImage(str(folder / "case47_seg.nii.gz")) * 0,
                                          str(folder / "case47_seg.nii.gz")),
    }
    for corrupt in corrupted.values():
        corrupt()
    outcomes = run_batch(folder, tmp_path / "out", log=lambda line: None)
    by_name = {o.name: o for o in outcomes}
    assert len(by_name) == 50
    assert {o.name for o in outcomes if o.status == "failed"} == set(corrupted)
    assert all(by_name[name].message for name in corrupted)
    for name, fractured in expected.items():
        if name in corrupted:
            assert not (tmp_path / "out" / name).exists()
            continue
        assert by_name[name].status == "ok" and by_name[name].levels == 6
        assert by_name[name].fractured_levels == (fractured or ""), name
    summary = (tmp_path / "out" / "batch_summary.json").read_text(encoding="utf-8")
    assert '"failed": 5' in summary and '"ok": 45' in summary
