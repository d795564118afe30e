"""The ``spinefrac`` command: the headless face of SpineFractureDetection.

Errors the user can fix end with one line on stderr and exit code 2; nothing is left
behind in the output folder. Unexpected failures exit 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
import traceback
from pathlib import Path

from spinefrac import __version__
from spinefrac.device import DEVICE_CHOICES
from spinefrac.errors import Interrupted, SpineFracError, Terminated
from spinefrac.levels import LEVELS
from spinefrac.progress import SilentStages, TerminalProgress
from spinefrac.segmentation.label_maps import LABEL_OPTIONS

PROG = "spinefrac"

DESCRIPTION = """\
Find, label (C1..L5, T13/L6, sacrum), measure and grade (Genant) every vertebra in a CT scan.

The same core runs inside the SpineFractureDetection 3D Slicer extension. Reports give
every number with its unit; coordinates are RAS millimetres (3D Slicer's world frame)."""

RUN_EPILOG = """\
outputs (in OUTDIR, which appears only when the run succeeds):
  vertebrae.nii.gz  label map on the input CT's own grid, VerSe ids
                    (1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 26 sacrum, 28 T13)
  vertebral_bodies.nii.gz  the vertebral bodies as isolated for the height
                    measurements (posterior elements removed), same grid and ids
  report.json       versioned report: input, provenance, one entry per level, definitions
  report.csv        the same levels, one row each
  overview.png      mid-sagittal and coronal views, bone window, levels coloured by decision
                    (red fractured, green normal, grey not assessable), measured heights
  gallery.png       one panel per vertebra on its own mid-sagittal plane, grade and heights
  findings.txt      the findings in words: fractures with grade and height loss, L1 density
                    screen, levels not assessable and why, mask provenance, impression
  vertebrae_seg.dcm, measurements_sr.dcm   for a DICOM series input (or --dicom-series):
                    DICOM SEG of the levels and DICOM SR (TID 1500) of their results,
                    both referring to the source series

example:
  spinefrac run ct.nii.gz --segmentation vertebrae.nii.gz -o out/
"""

EVALUATE_EPILOG = """\
metrics (per level, per case and overall):
  Dice, HD95 (95th-percentile symmetric surface distance, mm), identification
  (VerSe: predicted centroid within 20 mm of the reference and nearest to it),
  localisation distance (mm), missed and extra levels; with grades: sensitivity,
  specificity (per level and per patient), AUC from probabilities, Genant grade
  agreement (linearly and quadratically weighted kappa).
reference grades: NAME_genant.csv (level,genant_grade) beside a reference label map.
"""


class _OneLineErrors(argparse.ArgumentParser):
    """Usage mistakes end like every other error: one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog=PROG, description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_OneLineErrors)

    _add_run_parser(commands)
    _add_batch_parser(commands)
    _add_evaluate_parser(commands)
    _add_train_classifier_parser(commands)
    _add_train_segmentation_parser(commands)
    _add_levels_parser(commands)
    _add_models_parser(commands)
    return parser


def _output_path(text: str) -> Path:
    """An output path as given; an empty one is a mistake, not the current folder (Path('') is '.')."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the output folder name is empty")
    return Path(text)


def _input_path(text: str) -> Path:
    """An input path as given; an empty one is a mistake, not the current folder (Path('') is '.')."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty")
    return Path(text)


def _add_run_parser(commands) -> None:
    """The 'run' sub-command: one CT."""
    run = commands.add_parser(
        "run", help="segment/label, measure and report one CT",
        description="Run the pipeline on one CT: labels, per-level measurements, report and picture.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("ct", type=_input_path, help="CT image: .nii/.nii.gz, .nrrd, .mha, or a DICOM series folder")
    run.add_argument("-o", "--output", type=_output_path, required=True, metavar="OUTDIR",
                     help="folder for the results (must be new or empty unless --overwrite)")
    run.add_argument("--segmentation", type=_input_path, metavar="LABELMAP",
                     help="use an existing vertebra segmentation on the CT's grid: a label map file "
                          "(VerSe ids, TotalSegmentator ids, Slicer .seg.nrrd) or a folder of "
                          "TotalSegmentator masks (vertebrae_L1.nii.gz, ...)")
    run.add_argument("--points", type=Path, metavar="FILE",
                     help="one point per vertebral body, roughly central: a Slicer markups point list (.mrk.json), "
                          "a VerSe centroid file (*_ctd.json) or CSV (x,y,z in LPS mm[,level]). Name one point you "
                          "are sure of (L1, T12, sacrum...): the others are named by their order. Without "
                          "--segmentation the masks are made from the points (guided engine); with it, or with a "
                          "learned --engine, its levels are renamed by the points and no voxel changes")
    run.add_argument("--heights", type=Path, metavar="FILE",
                     help="an edited heights.mrk.json of an earlier run on this CT (Slicer markups point list, six "
                          "points per level: '<level> anterior|middle|posterior superior|inferior'): the levels it "
                          "holds are measured from its points (heights, losses, grade), the others as usual")
    run.add_argument("--labels", default="auto", choices=sorted(LABEL_OPTIONS),
                     help="label convention of --segmentation (default: auto: names when the file has segment "
                          "names, otherwise the one reading of the ids (VerSe, TotalSegmentator v2 or v1) that "
                          "knows every id and puts the levels in cranio-caudal order; 'totalseg' is v2)")
    run.add_argument("--engine", default="auto", type=_engine, metavar="auto|offline|monai|PATH",
                     help="segmentation engine when no --segmentation is given: 'offline' (classical image "
                          "analysis, no weights), a model package or MONAI bundle folder, 'monai' for the registry "
                          "model (downloaded once into ~/.cache/spinefrac), or 'auto': a verified model already "
                          "installed, else offline (default)")
    run.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                     help="compute device for learned engines: auto picks CUDA with mixed precision "
                          "when available, else CPU (default: auto)")
    run.add_argument("--classifier", type=_input_path, metavar="PACKAGE",
                     help="a trained fracture classifier package (folder with manifest.json and weights.pt); "
                          "without one, Genant morphometry alone decides")
    run.add_argument("--fracture-threshold", type=_probability, default=0.5, metavar="P",
                     help="classifier probability at or above which a level is called fractured (default 0.5)")
    run.add_argument("--no-hu-check", action="store_true",
                     help="accept an image whose values do not look like CT Hounsfield units (no air values)")
    run.add_argument("--dicom-series", type=_input_path, metavar="FOLDER",
                     help="the CT's source DICOM series, when CT is a file converted from it: the DICOM SEG and SR "
                          "refer to it (a DICOM folder input is its own source)")
    run.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTDIR")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    run.set_defaults(handler=_run)


def _add_batch_parser(commands) -> None:
    """The 'batch' sub-command: every CT of a folder."""
    batch = commands.add_parser(
        "batch", help="run every CT of a folder; bad cases are reported, never stop the batch",
        description="Run the pipeline on every case of a folder: NAME_ct.nii.gz files (or DICOM sub-folders), "
                    "each with an optional NAME_seg.nii.gz segmentation beside it. Results go to OUTDIR/NAME/, "
                    "and OUTDIR/batch_summary.json/.csv list every case with its status. Exit code 0 when every "
                    "case succeeded, 3 when some failed. Interrupted (Ctrl-C), it keeps the finished cases and "
                    "writes the summary; run again, it does the rest. OUTDIR/cohort.csv (a row per case and level) "
                    "and cohort_summary.json sum up the cohort. --workers or --scheduler run the cases on Dask "
                    "(pip install \"spinefrac[cohort]\").",
    )
    batch.add_argument("input", type=_input_path, metavar="INPUT_DIR")
    batch.add_argument("-o", "--output", type=_output_path, required=True, metavar="OUTDIR")
    batch.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    batch.add_argument("--no-hu-check", action="store_true")
    batch.add_argument("--overwrite", action="store_true",
                       help="rerun every case, replacing existing case folders in OUTDIR (without it, a batch run "
                            "again into its OUTDIR keeps each finished case of an unchanged input and runs the rest)")
    on_dask = batch.add_mutually_exclusive_group()
    on_dask.add_argument("--workers", type=_positive_int, metavar="N",
                         help="run the cases on a local Dask cluster of N worker processes (one thread each)")
    on_dask.add_argument("--scheduler", metavar="ADDRESS",
                         help="send the cases to a running Dask cluster (tcp://HOST:PORT); its workers must see "
                              "INPUT_DIR and OUTDIR at the same paths and have spinefrac installed")
    batch.set_defaults(handler=_batch)


def _add_evaluate_parser(commands) -> None:
    """The 'evaluate' sub-command: predictions against references."""
    evaluate = commands.add_parser(
        "evaluate", help="score predictions against references (Dice, HD95, identification, fracture agreement)",
        description="Compare predicted and reference vertebra label maps (VerSe ids), case by case, "
                    "and fracture grades when present.",
        epilog=EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("predictions", type=_input_path, metavar="PRED_DIR",
                          help="label maps, or output folders of 'spinefrac run' (one per case)")
    evaluate.add_argument("references", type=_input_path, metavar="REF_DIR",
                          help="reference label maps (or a VerSe-layout data set), same case names")
    evaluate.add_argument("-o", "--output", type=_output_path, metavar="OUTDIR",
                          help="also write evaluation.json and evaluation.csv here")
    evaluate.add_argument("--probability-threshold", type=_probability, default=0.5, metavar="P",
                          help="classifier probability counted as fractured when no grade is given (default 0.5)")
    evaluate.add_argument("--labels", default="auto", choices=sorted(LABEL_OPTIONS),
                          help="label convention of the predicted label map files, as for 'run --segmentation' "
                               "(default: auto, the same detection as run's); run output folders are VerSe ids")
    evaluate.add_argument("--reference-labels", default="auto", choices=sorted(LABEL_OPTIONS),
                          help="label convention of the reference label map files (default: auto)")
    evaluate.set_defaults(handler=_evaluate)


def _add_train_classifier_parser(commands) -> None:
    """The 'train-cls' sub-command: the fracture classifier."""
    train = commands.add_parser(
        "train-cls", help="train the optional fracture classifier on graded vertebrae",
        description="Train a MONAI 3-D classifier on per-vertebra crops of a data set with Genant grades "
                    "(VerSe layout or CT + label pairs; NAME_genant.csv beside each label map with columns "
                    "level,genant_grade). Writes a model package usable with 'spinefrac run --classifier'.",
    )
    train.add_argument("data", type=_input_path, metavar="DATA_DIR")
    train.add_argument("-o", "--output", type=_output_path, required=True, metavar="PACKAGE_DIR")
    train.add_argument("--epochs", type=_positive_int, default=30)
    train.add_argument("--batch-size", type=_positive_int, default=8)
    train.add_argument("--learning-rate", type=_positive_number, default=1e-3)
    train.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    train.add_argument("--simulated-fractures", type=_count, default=0, metavar="N",
                       help="add N simulated fractures per case (normal levels compressed: wedge, biconcave "
                       "or crush, 25-50 %% loss) as fractured examples")
    train.set_defaults(handler=_train_classifier)


def _add_train_segmentation_parser(commands) -> None:
    """The 'train-seg' sub-command: the learned segmentation."""
    train_seg = commands.add_parser(
        "train-seg", help="train the learned vertebra segmentation (MONAI SegResNet)",
        description="Train a MONAI SegResNet on a VerSe-layout data set (rawdata/derivatives with _ct.nii.gz and "
                    "_seg-vert_msk.nii.gz) or CT + label pairs; validates per level each epoch, checkpoints "
                    "(--resume), and exports a model package for 'spinefrac run --engine PACKAGE_DIR'.",
    )
    train_seg.add_argument("data", type=_input_path, metavar="DATA_DIR")
    train_seg.add_argument("-o", "--output", type=_output_path, required=True, metavar="PACKAGE_DIR")
    train_seg.add_argument("--epochs", type=_positive_int, default=100)
    train_seg.add_argument("--steps-per-epoch", type=_positive_int, default=50)
    train_seg.add_argument("--spacing", type=_positive_number, default=1.5, help="training voxel size, mm (default 1.5)")
    train_seg.add_argument("--patch", type=_positive_int, default=96, help="cubic patch edge, voxels (default 96)")
    train_seg.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    train_seg.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    train_seg.set_defaults(handler=_train_segmentation)


def _add_levels_parser(commands) -> None:
    """The 'levels' sub-command: the level conventions."""
    levels = commands.add_parser("levels", help="print the level conventions (ids, names, SNOMED CT codes)")
    levels.set_defaults(handler=_levels)


def _add_models_parser(commands) -> None:
    """The 'models' sub-command: the registry of downloadable segmentation models and the cache."""
    models = commands.add_parser("models", help="list, download, verify or remove registry models",
                                 description="Segmentation models of the registry and the local cache "
                                             "($SPINEFRAC_CACHE, default ~/.cache/spinefrac).")
    models.add_argument("action", choices=("list", "download", "verify", "remove"))
    models.add_argument("name", nargs="?",
                        help="registry model name (download, remove; verify: all when omitted)")
    models.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    from spinefrac.errors import InputError
    from spinefrac.segmentation.learned.registry import (
        download_model,
        installed_model,
        read_registry,
        registry_entry,
        remove_model,
        self_check_model,
        verify_model,
    )

    if args.action == "list":
        for entry in read_registry().values():
            state = "installed" if installed_model(entry) else "not installed"
            print(f"{entry.name} v{entry.version} ({entry.kind}, default on {'/'.join(entry.default_for)}): "
                  f"{state}; {entry.checksum_type} {entry.checksum or 'not published'}\n  {entry.description}\n"
                  f"  licence: {entry.licence}")
        return 0
    if args.action in ("download", "remove") and not args.name:
        raise InputError(f"models {args.action} needs a model name (see 'spinefrac models list')")
    if args.action == "download":
        entry = registry_entry(args.name)
        folder = download_model(entry, TerminalProgress(1).stage(f"Downloading {entry.name} v{entry.version}"))
        print(f"{entry.name} v{entry.version} installed in {folder}")
        return _print_self_check(entry)
    if args.action == "remove":
        entry = registry_entry(args.name)
        print(f"{entry.name} v{entry.version} " + ("removed" if remove_model(entry) else "was not installed"))
        return 0
    entries = [registry_entry(args.name)] if args.name else list(read_registry().values())
    for entry in entries:  # the model runs on the sample CT again; its record keeps the new result
        if installed_model(entry) is not None:
            print(f"{entry.name} v{entry.version}: {self_check_model(entry).summary()}")
    problems = [problem for entry in entries for problem in verify_model(entry)]
    if problems:
        raise InputError("; ".join(problems))
    print(f"{', '.join(e.name for e in entries)}: intact")
    return 0


def _print_self_check(entry) -> int:
    """After a download: the self-check's figures; exit 1 when the model failed it (it stays installed,
    and --engine auto passes it by)."""
    from spinefrac.segmentation.learned.registry import recorded_self_check

    check = recorded_self_check(entry)
    if check is None:
        return 0
    print(f"{entry.name} v{entry.version}: {check.summary()}")
    if check.passed is False:
        print(f"{entry.name} is not used by --engine auto; 'spinefrac models remove {entry.name}' removes it",
              file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    from spinefrac.io.images import InputReads
    from spinefrac.io.paths import require_usable_path

    # Before the reading thread starts: ITK aborts the whole process on a path that is not UTF-8.
    for path, what in ((args.ct, "CT"), (args.segmentation, "segmentation"), (args.classifier, "classifier"),
                       (args.dicom_series, "DICOM series"), (args.points, "points file"),
                       (args.heights, "heights file")):
        require_usable_path(path, what)
    # The CT and labels are read in a thread while the rest of the pipeline (scipy, matplotlib: about a
    # second) is imported here, after the reads began.
    reads = InputReads(args.ct, args.segmentation, check_hu=not args.no_hu_check)
    from spinefrac.pipeline import STAGE_COUNT, run_pipeline

    stages = SilentStages() if args.quiet else TerminalProgress(STAGE_COUNT)
    convention = LABEL_OPTIONS[args.labels]
    result = run_pipeline(
        args.ct, args.output, segmentation_path=args.segmentation, label_convention=convention,
        device=args.device, overwrite=args.overwrite, stages=stages, classifier_path=args.classifier,
        probability_threshold=args.fracture_threshold, check_hu=not args.no_hu_check, engine=args.engine,
        dicom_series=args.dicom_series, reads=reads, points_path=args.points, heights_path=args.heights,
    )
    if not args.quiet:
        for warning in result.ct.warnings:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
        print(_summary(result), file=sys.stderr)
    if not result.report.dicom_export["written"]:  # said even with -q: the user may expect DICOM objects
        print(f"{PROG}: note: {result.report.dicom_export['reason']}", file=sys.stderr)
    for path in result.files.values():
        print(path)
    return 0


BATCH_SOME_FAILED = 3


def _batch(args: argparse.Namespace) -> int:
    from spinefrac.batch import KEPT_MESSAGE, run_batch
    from spinefrac.io.filenames import BATCH_SUMMARY_JSON_FILE

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    outcomes = run_batch(args.input, args.output, overwrite=args.overwrite, log=log, workers=args.workers,
                         scheduler=args.scheduler, device=args.device, check_hu=not args.no_hu_check)
    failed = [o for o in outcomes if o.status == "failed"]
    ok = sum(o.status == "ok" for o in outcomes)
    kept = sum(o.message == KEPT_MESSAGE for o in outcomes)
    print(f"{ok} ok{f' ({kept} kept from an earlier run)' if kept else ''}, {len(failed)} failed, "
          f"{len(outcomes) - ok - len(failed)} skipped; summary in {args.output / BATCH_SUMMARY_JSON_FILE}")
    for outcome in failed:
        print(f"  failed: {outcome.name}: {outcome.message}")
    return BATCH_SOME_FAILED if failed else 0


def _probability(text: str) -> float:
    """A probability: a finite number in 0..1 ('nan' fails the comparison and is refused too)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def _positive_number(text: str) -> float:
    """A finite number above 0 (a learning rate, a voxel size): 0, negatives, nan and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return int(text)


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 0")
    return int(text)


def _engine(text: str) -> str:
    """auto, offline, monai, or a model folder's path (an empty one is not the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the engine is empty (auto, offline, monai or a model package folder)")
    return text


def _train_classifier(args: argparse.Namespace) -> int:
    from spinefrac.device import resolve_device
    from spinefrac.training.classifier import examples_from_dataset, train_classifier

    device = resolve_device(args.device)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    examples = examples_from_dataset(args.data, log=log, simulated_per_case=args.simulated_fractures)
    train_classifier(examples, args.output, epochs=args.epochs, batch_size=args.batch_size,
                     learning_rate=args.learning_rate, device=device.name, log=log)
    print(args.output)
    return 0


def _train_segmentation(args: argparse.Namespace) -> int:
    from spinefrac.device import resolve_device
    from spinefrac.io.filenames import TRAINING_CHECKPOINT_FILE
    from spinefrac.training.segmentation import SegmentationTrainingConfig, train_segmentation

    config = SegmentationTrainingConfig(spacing_mm=(args.spacing,) * 3, patch_size=(args.patch,) * 3,
                                        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        train_segmentation(args.data, args.output, config, device=resolve_device(args.device).name,
                           resume=args.resume, log=log)
    except (KeyboardInterrupt, Terminated) as stop:  # the epochs done are kept: "no output was written" is untrue
        checkpoint = args.output / TRAINING_CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise
        code = 128 + (signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM)
        raise Interrupted(f"training interrupted; the epochs finished are saved in {checkpoint}: rerun with "
                          "--resume to continue", code) from None
    print(args.output)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from spinefrac.evaluation.cases import evaluate_folders
    from spinefrac.evaluation.writers import format_table, write_evaluation

    summary = evaluate_folders(args.predictions, args.references, probability_threshold=args.probability_threshold,
                               prediction_labels=LABEL_OPTIONS[args.labels],
                               reference_labels=LABEL_OPTIONS[args.reference_labels])
    written = write_evaluation(summary, args.output).values() if args.output is not None else []
    print(format_table(summary))
    for path in written:
        print(path)
    return 0


def _summary(result) -> str:
    lines = [f"{len(result.report.rows)} levels (decision, Genant grade, largest height loss, trabecular HU):"]
    ignored = result.segmentation.ignored_labels
    if ignored:  # said on the terminal too, not only in report.json
        described = ", ".join(name if count is None else f"{name} ({count} voxels)" for name, count in ignored.items())
        lines.insert(0, f"labels ignored (not vertebrae, {result.segmentation.convention.value} ids): {described}")
    for row in result.report.rows:
        grade = "" if row["genant_grade"] is None else f"grade {row['genant_grade']} {row['genant_type']}"
        loss = "" if row["height_loss_percent"] is None else f"{row['height_loss_percent']:5.1f} %"
        density = "" if row["trabecular_hu"] is None else f"{row['trabecular_hu']:6.0f} HU"
        lines.append(f"  {row['level']:>6}  {row['decision'] or '':15s} {grade:18s} {loss:8s} {density}")
    screen = result.report.osteoporosis_screen
    if screen:
        lines.append(f"  L1 trabecular {screen['trabecular_hu']:.0f} HU: {screen['category']} (Pickhardt 2013 thresholds)")
    return "\n".join(lines)


def _levels(args: argparse.Namespace) -> int:
    print("verse_id  name    region    SNOMED CT")
    for level in LEVELS:
        print(f"{level.verse_id:8d}  {level.name:6s}  {level.region.value:8s}  {level.snomed_code} {level.snomed_meaning}")
    return 0


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    # ITK's own warnings are multi-line C++ traces; our checks say what matters in one line.
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.handler(args)
    except SpineFracError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.exit_code
    except Interrupted as stop:  # the cases that finished are kept and listed in the summary
        print(f"{PROG}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output was written", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG}: terminated; no output was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # the reader of our stdout went away (e.g. '| head'): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except MemoryError:  # the machine's limit, not a bug: the user can crop, resample or free memory
        print(f"{PROG}: error: out of memory; no output was written: crop the CT to the spine, resample it to "
              "coarser slices or free memory", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in SYSTEM_REFUSALS:
            return _internal_error(error, args)
        where = f" {error.filename}" if error.filename else ""
        print(f"{PROG}: error: the system refused{where} ({error.strerror}); no output was written", file=sys.stderr)
        return 2
    except Exception as error:
        return _internal_error(error, args)


# Errors the system gives for the user's files and machine (permissions, full or read-only disk, limits):
# said as they are, exit 2. Any other exception is a bug of ours.
SYSTEM_REFUSALS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG,
                   errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.ENOMEM}


def _internal_error(error: BaseException, args: argparse.Namespace) -> int:
    """A bug: say so plainly, with what to report; the traceback with --debug."""
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"{PROG}: internal error ({type(error).__name__}: {error}); no output was written. This is a bug in "
          f"spinefrac {__version__}: rerun with --debug and report the command, its output and the input's "
          "format to the maintainers", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
