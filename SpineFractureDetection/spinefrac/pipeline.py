"""The whole job: CT in, label map + report + pictures out, one typed result per stage.

load_ct -> CtVolume -> engine.segment -> VertebraSegmentation -> assess (measurement, morphometry,
grading: the same chain the Slicer module runs) -> SpineReport -> files (written atomically).
"""

from __future__ import annotations

import json
import multiprocessing
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from spinefrac.assessment.chain import assess
from spinefrac.assessment.classifier import FractureClassifier
from spinefrac.assessment.fracture import DEFAULT_PROBABILITY_THRESHOLD, FractureFindings
from spinefrac.assessment.measurement import SpineMeasurements
from spinefrac.assessment.morphometry import SpineMorphometry
from spinefrac.assessment.quality import SegmentationQuality
from spinefrac.device import DeviceChoice, resolve_device
from spinefrac.errors import EngineUnavailableError, InputError
from spinefrac.io.filenames import (
    BODY_LABEL_MAP_FILE,
    DICOM_SEG_FILE,
    DICOM_SR_FILE,
    FINDINGS_FILE,
    GALLERY_FILE,
    HEIGHTS_FILE,
    LABEL_MAP_FILE,
    OVERVIEW_FILE,
    POINTS_FILE,
    REPORT_CSV_FILE,
    REPORT_JSON_FILE,
)
from spinefrac.io.height_points import read_height_points
from spinefrac.io.images import CtVolume, ImageGrid, InputReads, load_ct, write_image
from spinefrac.io.outputs import AtomicOutputFolder
from spinefrac.io.paths import input_fingerprint, require_usable_path
from spinefrac.io.points import markups_document, read_points
from spinefrac.progress import SilentStages
from spinefrac.reporting.dicom_export import plan_dicom_export, write_dicom_objects
from spinefrac.reporting.gallery import write_gallery_png
from spinefrac.reporting.height_markups import heights_markups
from spinefrac.reporting.level_points import level_points
from spinefrac.reporting.overview import write_overview_png
from spinefrac.reporting.report import SpineReport
from spinefrac.segmentation.base import LabelConvention, SegmentationEngine, VertebraSegmentation
from spinefrac.segmentation.guided.engine import GuidedEngine
from spinefrac.segmentation.guided.rename import rename_by_points
from spinefrac.segmentation.label_maps import ExistingLabelMap

STAGE_COUNT = 7  # loading, segmentation, measuring, quality control, grading, report, outputs


@dataclass
class RunResult:
    ct: CtVolume
    segmentation: VertebraSegmentation
    measurements: SpineMeasurements
    morphometry: SpineMorphometry
    findings: FractureFindings
    report: SpineReport
    quality: SegmentationQuality
    device: DeviceChoice
    output_folder: Path
    files: dict[str, Path] = field(default_factory=dict)


ENGINE_CHOICES = ("auto", "offline", "monai")  # or the path of a model package / MONAI bundle folder


def choose_engine(
    segmentation_path: Path | str | None,
    label_convention: str = LabelConvention.AUTO.value,
    engine: str = "auto",
    device: str = "cpu",
    read_label_file=None,
) -> SegmentationEngine:
    """The engine for this run: the user's own segmentation when given; otherwise a model
    package path, the registry's model ("monai", downloaded on first use), the classical
    "offline" engine, or for "auto" a verified model already in the cache that passed its self-check on
    the sample CT, else "offline" with the reason."""
    if segmentation_path is not None:
        return ExistingLabelMap(segmentation_path, label_convention, read_label_file)
    from spinefrac.segmentation.learned.auto3dseg import Auto3DSegEngine, is_auto3dseg_model
    from spinefrac.segmentation.learned.bundle import MonaiBundleEngine, is_monai_bundle
    from spinefrac.segmentation.learned.engine import LearnedEngine
    from spinefrac.segmentation.learned.registry import (
        engine_from_registry,
        installed_engines,
        read_registry,
        recorded_self_check,
        self_check_model,
        verify_model,
    )
    from spinefrac.segmentation.offline.engine import OfflineEngine

    if engine not in ENGINE_CHOICES:
        folder = Path(engine)
        if not folder.is_dir():
            raise EngineUnavailableError(f"--engine {engine}: not auto, monai, or a model package folder")
        if is_monai_bundle(folder):
            return MonaiBundleEngine(folder, device)
        return Auto3DSegEngine(folder, device) if is_auto3dseg_model(folder) else LearnedEngine(folder, device)
    if engine == "monai":
        try:
            entry = next(e for e in read_registry().values() if device in e.default_for)
            return engine_from_registry(entry, device)
        except EngineUnavailableError as error:  # offline: say so, and still give a result
            return OfflineEngine(fallback_reason=str(error))
    failures = []
    if engine == "auto":
        for entry in installed_engines(device):
            if recorded_self_check(entry) is None:  # installed before models checked themselves: once, now
                self_check_model(entry, device)
            problems = verify_model(entry)
            if problems:
                failures.append(f"{entry.name} v{entry.version} not used: {'; '.join(problems)}")
                continue
            try:
                return engine_from_registry(entry, device)
            except (EngineUnavailableError, InputError) as error:  # a cached model that fails to load
                failures.append(f"{entry.name} v{entry.version} failed to load: {error}")
        if not failures:
            suggested = next((e for e in read_registry().values() if device in e.default_for), None)
            failures = [f"no model installed; 'spinefrac models download {suggested.name}' installs "
                        f"{suggested.name} v{suggested.version}"] if suggested else []
    return OfflineEngine(fallback_reason="; ".join(failures))


def check_input_paths(ct_path, segmentation_path=None, classifier_path=None, model_folder=None,
                      dicom_series=None, points_path=None, heights_path=None) -> None:
    """Refuse, before any reader starts, input paths that are empty, run into a link loop or hold bytes
    that are not UTF-8 (ITK aborts the process on those): one line naming the path."""
    for path, what in ((ct_path, "CT"), (segmentation_path, "segmentation"), (classifier_path, "classifier"),
                       (model_folder, "model package"), (dicom_series, "DICOM series"), (points_path, "points file"),
                       (heights_path, "heights file")):
        require_usable_path(path, what)


def run_pipeline(
    ct_path: Path | str,
    output_folder: Path | str,
    segmentation_path: Path | str | None = None,
    label_convention: str = LabelConvention.AUTO.value,
    device: str = "auto",
    overwrite: bool = False,
    stages=None,
    classifier_path: Path | str | None = None,
    probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD,
    check_hu: bool = True,
    engine: str = "auto",
    dicom_series: Path | str | None = None,
    reads: InputReads | None = None,
    points_path: Path | str | None = None,
    heights_path: Path | str | None = None,
) -> RunResult:
    """Run every stage; nothing appears under ``output_folder`` unless all of them succeed.
    A DICOM input (or ``dicom_series``, the CT's source series) also gets a DICOM SEG and SR.
    ``reads``: the CT and label map already being read (InputReads), used where they are these files.
    ``points_path``: one point per vertebral body (Slicer markups, VerSe centroids, CSV): with
    ``segmentation_path`` or a learned ``engine`` they rename its levels, otherwise the guided engine
    segments from them. ``heights_path``: an edited heights.mrk.json: its levels are measured from its points."""
    stages = stages or SilentStages()
    model_folder = Path(engine) if engine not in ENGINE_CHOICES else None
    inputs = (ct_path, segmentation_path, classifier_path, model_folder, dicom_series, points_path, heights_path)
    check_input_paths(*inputs)
    # Refused up front: a non-empty folder without --overwrite, and one that is, holds or lies in an input.
    output = AtomicOutputFolder(output_folder, overwrite, inputs=inputs)
    user_heights = read_height_points(heights_path) if heights_path is not None else None
    device_choice = resolve_device(device)
    guided = points_path is not None and segmentation_path is None and engine in ("auto", "offline")
    engine = None if guided else _chosen_engine(segmentation_path, label_convention, engine, device_choice, reads)
    classifier = FractureClassifier.load(classifier_path, device_choice.name) if classifier_path else None

    stages.stage("Loading CT")
    ct = reads.ct(ct_path, check_hu) if reads is not None else load_ct(ct_path, check_hu=check_hu)
    dicom_plan = plan_dicom_export(ct, dicom_series)  # a named series that does not fit is refused here
    # The inputs hashed for report.json (a batch tells a finished case of this input by them) while the
    # segmentation runs; the thread ends before the measurements fork their workers, as the reading thread.
    with ThreadPoolExecutor(max_workers=1) as hashing:
        fingerprints = hashing.submit(_fingerprints, ct_path, segmentation_path)
        segmentation = _segment(ct, engine, Path(points_path) if points_path is not None else None, guided, stages)
        if reads is not None:
            reads.finish()
        fingerprints = fingerprints.result()
    assessment = assess(ct, segmentation, classifier, probability_threshold, stages, user_heights)
    stages.stage("Building report")
    report = _report(ct, segmentation, assessment, device_choice, dicom_plan, classifier, probability_threshold)
    report.input["fingerprint"], report.segmentation["fingerprint"] = fingerprints

    stages.stage("Writing outputs")
    with output as work:
        _write_outputs(work, ct, segmentation, assessment, report, dicom_plan)
    final = Path(output_folder)
    files = _written_files(final, report.dicom_export["written"])
    stages.close()
    return RunResult(ct, segmentation, assessment.measurements, assessment.morphometry, assessment.findings, report,
                     assessment.quality, device_choice, final, files)


def _chosen_engine(segmentation_path, label_convention: str, engine: str, device_choice: DeviceChoice,
                   reads: InputReads | None) -> SegmentationEngine:
    """choose_engine, with the label map already being read where it is the segmentation given."""
    read_ahead = reads is not None and segmentation_path is not None and reads.labels_path == Path(segmentation_path)
    return choose_engine(segmentation_path, label_convention, engine, device_choice.name,
                         reads.label_image if read_ahead else None)


def _fingerprints(ct_path, segmentation_path) -> tuple[dict | None, dict | None]:
    """Fingerprints of the CT and the segmentation (None: none given, or the file could not be read)."""
    found = []
    for path in (ct_path, segmentation_path):
        try:
            found.append(input_fingerprint(path) if path is not None else None)
        except OSError:  # read by the pipeline a moment ago; gone or unreadable now: nothing to record
            found.append(None)
    return found[0], found[1]


def _report(ct: CtVolume, segmentation: VertebraSegmentation, assessment, device_choice: DeviceChoice, dicom_plan,
            classifier: FractureClassifier | None, probability_threshold: float) -> SpineReport:
    report = SpineReport.from_stages(ct, segmentation, assessment.measurements, assessment.findings,
                                     assessment.quality)
    report.segmentation["device"] = device_choice.name
    report.notes[:0] = [f"input: {warning}" for warning in ct.warnings]
    report.notes += [dicom_plan.reason] if dicom_plan.reason else []
    report.notes += [_classifier_note(classifier, probability_threshold)] if classifier is not None else []
    return report


def expected_outputs(folder: Path, report: dict) -> list[Path]:
    """The files a finished run left in ``folder``, by its report.json (DICOM objects when it says so)."""
    return list(_written_files(folder, bool((report.get("dicom_export") or {}).get("written"))).values())


def _classifier_note(classifier: FractureClassifier, probability_threshold: float) -> str:
    return (f"classifier {classifier.manifest.name} v{classifier.manifest.version} (sha256 "
            f"{classifier.manifest.weights_sha256[:12]}), threshold {probability_threshold:.2f}: fractured when "
            "Genant grade >= 1 or probability >= threshold")


def _segment(ct: CtVolume, engine: SegmentationEngine | None, points_path: Path | None, guided: bool,
             stages) -> VertebraSegmentation:
    """The engine's labels; with points, the guided engine's (``guided``) or the engine's renamed by them."""
    points = read_points(points_path, ct.image) if points_path is not None else None
    if guided:
        engine = GuidedEngine(points, source=points_path.name)
    try:
        segmentation = engine.segment(ct, stages.stage(f"Segmentation ({engine.name})"))
    except InputError as error:  # "no spine found": which series of a DICOM folder was read, and which not
        raise ct.naming_series_choice(error) from None
    if points is not None and not guided:  # the points name the levels of a given or learned segmentation
        segmentation = rename_by_points(segmentation, points)
    return segmentation


class BackgroundDrawing:
    """Runs one drawing in a forked child process (a second core for matplotlib, which holds the GIL), or in
    this process where fork is unavailable. ``result`` waits for it and raises the child's exception here, so
    a full disk in the child is the same one-line error; leaving the block unfinished ends the child."""

    def __init__(self, timeout_s: float = 300.0):
        self._child = self._answer = self._drawing = None
        self._timeout_s = timeout_s  # a watchdog: a child that never answers is ended, the drawing done here

    def start(self, draw, *args, **kwargs) -> None:
        # A daemonic process (a Dask worker, a multiprocessing pool's) may not start children: drawn here.
        if "fork" not in multiprocessing.get_all_start_methods() or multiprocessing.current_process().daemon:
            draw(*args, **kwargs)
            return
        self._drawing = (draw, args, kwargs)
        self._answer, sending = multiprocessing.Pipe(duplex=False)
        self._child = multiprocessing.get_context("fork").Process(
            target=_draw_and_answer, args=(sending, draw, args, kwargs), daemon=True)
        self._child.start()
        sending.close()

    def result(self) -> None:
        if self._child is None:
            return
        if not self._answer.poll(self._timeout_s):  # hung (a lock inherited in its held state)
            self._finish()
            draw, args, kwargs = self._drawing
            draw(*args, **kwargs)
            return
        try:
            error = self._answer.recv()
        except EOFError:  # the child died without answering (killed, out of memory)
            self._child.join()
            error = RuntimeError(f"the drawing process ended with exit code {self._child.exitcode}")
        except Exception as unreadable:  # an exception that pickles but does not unpickle
            error = RuntimeError(f"the drawing process failed: {unreadable}")
        self._finish()
        if error is not None:
            raise error

    def _finish(self) -> None:
        child, self._child = self._child, None
        if child.is_alive():
            child.terminate()
        child.join()
        self._answer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        if self._child is not None:
            self._finish()


def _draw_and_answer(sending, draw, args, kwargs) -> None:
    """In the child: draw, then send None or the exception (its type and message survive pickling). The
    parent's SIGTERM handler is not the child's: ended by the parent, it ends quietly; Ctrl-C (sent to the whole
    process group) is the parent's to act on."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        draw(*args, **kwargs)
        error = None
    except BaseException as caught:  # noqa: BLE001 - every failure goes back to the parent
        error = caught
    try:
        sending.send(error)
    except Exception:  # an exception that does not pickle: its type name and message instead
        sending.send(RuntimeError(f"{type(error).__name__}: {error}"))
    sending.close()


def _write_outputs(work: Path, ct: CtVolume, segmentation: VertebraSegmentation, assessment, report: SpineReport,
                   dicom_plan) -> None:
    """Every output file into the work folder (renamed into place by AtomicOutputFolder when all succeed)."""
    with BackgroundDrawing() as gallery, ThreadPoolExecutor(max_workers=1) as writer:
        # The gallery drawn in a forked child on the second core; forked before the writer thread starts, so the
        # child inherits no lock that thread holds.
        gallery.start(write_gallery_png, ct, segmentation, assessment.morphometry, assessment.findings,
                      work / GALLERY_FILE, quality=assessment.quality)
        # Label maps written (ITK, zlib: no GIL) while the pictures are drawn, from images and a grid of their own:
        # GetArrayViewFromImage copies an image another thread holds, leaving earlier views on a freed buffer.
        bodies = assessment.morphometry.body_label_array(ct.grid.size[::-1])
        label_maps = writer.submit(_write_label_maps, ct, ct.to_source_grid(segmentation.label_map), ct.grid,
                                   bodies, work)
        # The work folder is renamed into place whole: a plain write, so a full disk reads as every other output's.
        points = markups_document(level_points(segmentation.label_map, bodies, assessment.measurements),
                                  f"vertebral body centres of the levels labelled by {segmentation.engine}")
        (work / POINTS_FILE).write_text(json.dumps(points, indent=2) + "\n", encoding="utf-8")
        heights = heights_markups(assessment.morphometry, assessment.findings)
        (work / HEIGHTS_FILE).write_text(json.dumps(heights, indent=2) + "\n", encoding="utf-8")
        report.dicom_export = write_dicom_objects(dicom_plan, segmentation, report, work)
        report.write(work)
        (work / FINDINGS_FILE).write_text(report.findings_text(), encoding="utf-8")
        write_overview_png(ct, segmentation, assessment.measurements, work / OVERVIEW_FILE,
                           title=_title(ct, segmentation), morphometry=assessment.morphometry,
                           findings=assessment.findings, quality=assessment.quality)
        label_maps.result()
        gallery.result()


def _written_files(folder: Path, dicom_written: bool) -> dict[str, Path]:
    written = {"label_map": LABEL_MAP_FILE, "body_label_map": BODY_LABEL_MAP_FILE, "report_json": REPORT_JSON_FILE,
               "report_csv": REPORT_CSV_FILE, "overview_png": OVERVIEW_FILE, "gallery_png": GALLERY_FILE,
               "findings_txt": FINDINGS_FILE, "points": POINTS_FILE,
               "heights": HEIGHTS_FILE}
    if dicom_written:
        written.update(dicom_seg=DICOM_SEG_FILE, dicom_sr=DICOM_SR_FILE)
    return {key: folder / name for key, name in written.items()}


def _write_label_maps(ct: CtVolume, label_map: sitk.Image, grid: ImageGrid, bodies, folder: Path) -> None:
    """The labels and the isolated bodies (``bodies``: VerSe ids on the canonical ``grid``), on the CT's own grid."""
    write_image(label_map, folder / LABEL_MAP_FILE)
    write_image(ct.to_source_grid(grid.apply_to(sitk.GetImageFromArray(bodies))), folder / BODY_LABEL_MAP_FILE)


def _title(ct: CtVolume, segmentation: VertebraSegmentation) -> str:
    spacing = " x ".join(f"{s:.2f}" for s in ct.source_grid.spacing_mm)
    names = [level.name for level in segmentation.levels]
    span = f"{names[0]}-{names[-1]}" if names else "no levels"
    return f"{ct.source_path.name} ({spacing} mm): {span}, {len(names)} labels"
