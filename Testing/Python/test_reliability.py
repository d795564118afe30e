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
    return cases


CATALOGUE = ["missing CT file", "empty folder as CT", "2-D image", "single slice", "4-D image", "colour image",
             "text with an image name", "zero-byte file", "truncated NIfTI", "NIfTI with a garbage header",
             "NIfTI missing its last voxels",
             "NaN values", "blank image", "MR-like intensities", "CT without rescale intercept", "values beyond HU",
             "absurd spacing", "tiny field of view", "sheared grid", "zero spacing", "larger than memory",
             "DICOM MR series", "DICOM duplicated slice", "DICOM missing slices", "label map on another grid",
             "empty label map", "unknown label ids", "probability map as labels", "output is a file",
             "CUDA requested without a GPU", "missing classifier package", "threshold outside 0..1"]


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


def test_the_catalogue_has_at_least_25_distinct_cases():
    assert len(set(CATALOGUE)) >= 25


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
                                "--segmentation", str(tmp_path / "labels.nii.gz"), "-o", str(tmp_path / "out"), "-q"],
                               env=dict(os.environ, PYTHONPATH=core), stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
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
