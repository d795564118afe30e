"""Time and memory of each pipeline stage on whole-spine CT grids of growing size.

A synthetic whole-spine phantom (C1 to sacrum, ribs, exact labels) is built once and resampled
onto grids of a clinical 512 x 512 matrix over a 400 mm field of view with N axial slices
covering the spine (N = 128 ... 1024: slice spacing about 6 mm down to 0.8 mm). For each size
the CT and label map are written as NIfTI, then a fresh process runs the stages of the core
as ``spinefrac run --segmentation`` does, timing each with ``time.perf_counter`` and recording
its peak resident memory (the kernel's high-water mark, reset per stage; ``getrusage`` where
that is unavailable), its CPU seconds (user + system of all threads) and, with CUDA, its peak GPU
memory. Then the whole command ``spinefrac run CT --segmentation LABELS`` runs as its own process
(``--cli-runs`` times): wall seconds, CPU seconds (user + system, from the child's rusage) and the
1-minute load average before and after, since on a shared machine the wall time is an upper bound.
Results go to ``<output>/pipeline-<machine>.json``, with a PNG plot of time and memory against size.

    python benchmarks/benchmark_pipeline.py --sizes 128 256 --output benchmarks/results
    python benchmarks/benchmark_pipeline.py --largest      # adds 1024 slices (several GB of RAM)
    python benchmarks/benchmark_pipeline.py --sizes 500 --cli-runs 3 --tag 500-slices-amd-epyc-2cpu
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineFractureDetection"))  # the core, also when not pip-installed

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

import spinefrac  # noqa: E402
from spinefrac.io.outputs import write_text_atomically  # noqa: E402
from spinefrac.levels import LEVELS  # noqa: E402
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom  # noqa: E402

DEFAULT_SIZES = (128, 256, 512)
LARGEST_SIZE = 1024
MATRIX_VOXELS = 512  # in-plane, as in clinical CT
FIELD_OF_VIEW_MM = 400.0
BASE_SPACING_MM = 1.5  # the phantom is sampled once at this spacing, then resampled
CRANIOCAUDAL_MARGIN_MM = 20.0
MIB = 1024.0 * 1024.0
SCHEMA = "spinefrac-benchmark-pipeline"
SCHEMA_VERSION = "1.1.0"  # 1.1: CPU seconds per stage, whole-command runs, load


# -- the measured process ---------------------------------------------------------------------


@dataclass
class StageResult:
    name: str
    seconds: float
    rss_before_mib: float
    peak_rss_mib: float  # highest resident memory during the stage
    peak_gpu_mib: float | None = None
    cpu_seconds: float = 0.0  # user + system time of the process (all threads) during the stage
    load_1min_before: float | None = None


@dataclass
class CommandRun:
    """One ``spinefrac run CT --segmentation LABELS`` as its own process."""

    wall_seconds: float
    cpu_seconds: float  # user + system of the child process and its threads
    load_1min_before: float | None
    load_1min_after: float | None
    core: str = "this"  # or "baseline": the --baseline-core checkout, timed in turn with this one


@dataclass
class RunResult:
    slices: int
    size_voxels: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    input_megabytes: float
    stages: list[StageResult] = field(default_factory=list)
    process_peak_rss_mib: float = 0.0
    command_runs: list[CommandRun] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(stage.seconds for stage in self.stages)


class PeakMemory:
    """Peak resident memory of this process per stage.

    On Linux the kernel's high-water mark (VmHWM) is exact and can be reset between stages
    (``clear_refs`` 5). Elsewhere only the lifetime peak from ``getrusage`` exists: each stage
    then reports the peak so far. (``ru_maxrss`` is not used on Linux: it survives ``exec``, so
    a spawned child would inherit the peak of the parent that built the phantom.)
    """

    def __init__(self):
        high_water = self._read_high_water_bytes()  # read before the first reset: the startup peak
        self.resettable = high_water is not None and self._clear_high_water()
        self.startup_peak_bytes = high_water if self.resettable else self.peak_bytes()

    def reset(self) -> None:
        if self.resettable:
            self._clear_high_water()

    def peak_bytes(self) -> int:
        if self.resettable:
            return self._read_high_water_bytes()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere

    @staticmethod
    def _read_high_water_bytes() -> int | None:
        try:
            with open("/proc/self/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    @staticmethod
    def _clear_high_water() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
                clear_refs.write("5")
            return True
        except OSError:
            return False


def load_1min() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def run_command(ct_path: Path, labels_path: Path, output: Path, core: Path | None = None) -> CommandRun:
    """The whole command in a fresh process, as a user runs it; ``core``: another checkout's
    SpineFractureDetection folder to run instead of this one."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = load_1min()
    started = time.perf_counter()
    environment = dict(os.environ, PYTHONPATH=str(core or REPO / "SpineFractureDetection"))
    subprocess.run([sys.executable, "-m", "spinefrac.cli", "run", str(ct_path), "--segmentation", str(labels_path),
                    "-o", str(output), "--overwrite", "-q"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=environment)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return CommandRun(wall, cpu, load_before, load_1min(), "baseline" if core else "this")


def _current_rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class GpuMemory:
    """Peak CUDA memory allocated by torch during a stage; inactive without CUDA."""

    def __init__(self, enabled: bool):
        self.torch = None
        if enabled:
            import torch

            self.torch = torch if torch.cuda.is_available() else None

    def reset(self) -> None:
        if self.torch:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        if not self.torch:
            return None
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated() / MIB


def run_stages(ct_path: str, labels_path: str, output_dir: str, use_gpu: bool) -> tuple[list[dict], float]:
    """The stages of ``spinefrac run --segmentation``, one at a time, in this (fresh) process."""
    from spinefrac.assessment.fracture import assess_fractures
    from spinefrac.assessment.measurement import measure_vertebrae
    from spinefrac.assessment.morphometry import measure_morphometry
    from spinefrac.assessment.quality import check_quality
    from spinefrac.io.images import load_ct, write_image
    from spinefrac.reporting.gallery import write_gallery_png
    from spinefrac.reporting.overview import write_overview_png
    from spinefrac.reporting.report import SpineReport
    from spinefrac.segmentation.label_maps import ExistingLabelMap

    output = Path(output_dir)
    gpu = GpuMemory(use_gpu)
    state: dict = {}
    stages: list[tuple[str, Callable[[], None]]] = [
        ("load_ct", lambda: state.update(ct=load_ct(ct_path))),
        ("segment_existing_labels", lambda: state.update(seg=ExistingLabelMap(labels_path).segment(state["ct"]))),
        ("measure_vertebrae", lambda: state.update(measurements=measure_vertebrae(state["ct"], state["seg"]))),
        ("quality_control", lambda: state.update(
            quality=check_quality(state["ct"], state["seg"], state["measurements"]))),
        ("morphometry", lambda: state.update(
            morphometry=measure_morphometry(state["ct"], state["seg"], state["measurements"]))),
        ("classify_genant", lambda: state.update(
            findings=assess_fractures(state["measurements"], state["morphometry"]))),
        ("build_report", lambda: state.update(
            report=SpineReport.from_stages(state["ct"], state["seg"], state["measurements"], state["findings"]))),
        ("write_label_map", lambda: write_image(state["ct"].to_source_grid(state["seg"].label_map),
                                                output / "vertebrae.nii.gz")),
        ("write_body_label_map", lambda: write_image(state["ct"].to_source_grid(body_image(state)),
                                                     output / "vertebral_bodies.nii.gz")),
        ("write_report", lambda: state["report"].write(output)),
        ("write_overview_png", lambda: write_overview_png(state["ct"], state["seg"], state["measurements"],
                                                          output / "overview.png", morphometry=state["morphometry"],
                                                          findings=state["findings"])),
        ("write_gallery_png", lambda: write_gallery_png(state["ct"], state["seg"], state["morphometry"],
                                                        state["findings"], output / "gallery.png")),
    ]
    memory = PeakMemory()
    process_peak = memory.startup_peak_bytes  # the interpreter and imports
    results = []
    for name, stage in stages:
        memory.reset()
        rss_before = _current_rss_bytes() if memory.resettable else memory.peak_bytes()
        gpu.reset()
        load = load_1min()
        started, cpu_started = time.perf_counter(), time.process_time()
        stage()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        peak = memory.peak_bytes()
        process_peak = max(process_peak, peak)
        results.append(asdict(StageResult(name, seconds, rss_before / MIB, peak / MIB, gpu.peak_mib(), cpu_seconds,
                                          load)))
    return results, process_peak / MIB


def body_image(state: dict) -> sitk.Image:
    image = sitk.GetImageFromArray(state["morphometry"].body_label_array(state["ct"].image.GetSize()[::-1]))
    image.CopyInformation(state["ct"].image)
    return image


# -- inputs -----------------------------------------------------------------------------------


def whole_spine_phantom():
    """C1 to sacrum with ribs and a lordotic curve; a wide margin keeps the trunk in view."""
    names = [level.name for level in LEVELS if not level.is_transitional]
    return make_phantom(PhantomSpec(levels=names, spacing_mm=(BASE_SPACING_MM,) * 3, ribs=True,
                                    sagittal_curvature_mm=15.0, margin_mm=90.0, seed=0))


def target_grid(base_labels: sitk.Image, slices: int) -> sitk.Image:
    """A 512 x 512 x ``slices`` LPS grid over the phantom's spine, 400 mm field of view."""
    labels = sitk.GetArrayViewFromImage(base_labels)
    k_with_bone = np.flatnonzero(labels.any(axis=(1, 2)))
    low = np.array(base_labels.TransformIndexToPhysicalPoint([0, 0, int(k_with_bone[0])]))
    high = np.array(base_labels.TransformIndexToPhysicalPoint([0, 0, int(k_with_bone[-1])]))
    centre = np.array(base_labels.TransformContinuousIndexToPhysicalPoint(
        [(s - 1) / 2.0 for s in base_labels.GetSize()]))
    length_mm = abs(high[2] - low[2]) + 2 * CRANIOCAUDAL_MARGIN_MM
    spacing = (FIELD_OF_VIEW_MM / MATRIX_VOXELS, FIELD_OF_VIEW_MM / MATRIX_VOXELS, length_mm / slices)
    grid = sitk.Image([MATRIX_VOXELS, MATRIX_VOXELS, slices], sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    origin = centre - np.array([FIELD_OF_VIEW_MM / 2, FIELD_OF_VIEW_MM / 2, 0.0]) + np.array(spacing) / 2
    origin[2] = min(low[2], high[2]) - CRANIOCAUDAL_MARGIN_MM + spacing[2] / 2
    grid.SetOrigin(origin.tolist())
    return grid


def write_inputs(phantom, slices: int, folder: Path) -> tuple[Path, Path, sitk.Image]:
    grid = target_grid(phantom.labels, slices)
    ct = sitk.Resample(phantom.ct, grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    labels = sitk.Resample(phantom.labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ct_path, labels_path = folder / "ct.nii.gz", folder / "labels.nii.gz"
    sitk.WriteImage(ct, str(ct_path), useCompression=True)
    sitk.WriteImage(labels, str(labels_path), useCompression=True)
    return ct_path, labels_path, grid


def measure_size(phantom, slices: int, work: Path, use_gpu: bool, command_runs: int = 1,
                 baseline_core: Path | None = None) -> RunResult:
    folder = work / f"slices-{slices}"
    output = folder / "out"
    output.mkdir(parents=True)
    ct_path, labels_path, grid = write_inputs(phantom, slices, folder)
    input_megabytes = (ct_path.stat().st_size + labels_path.stat().st_size) / 1e6
    # A fresh process per size: its peak memory is this size's alone, and no cache carries over.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        stages, process_peak = pool.submit(run_stages, str(ct_path), str(labels_path), str(output), use_gpu).result()
    runs = []
    for _ in range(command_runs):  # the baseline and this core in turn, so both meet the same load
        cores = ([baseline_core] if baseline_core else []) + [None]
        runs += [run_command(ct_path, labels_path, folder / "command", core) for core in cores]
    shutil.rmtree(folder)
    return RunResult(slices, tuple(grid.GetSize()), tuple(grid.GetSpacing()), input_megabytes,
                     [StageResult(**stage) for stage in stages], process_peak, runs)


# -- machine and output -----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return None


def gpu_info() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    return {"name": properties.name, "memory_gib": round(properties.total_memory / 1024**3, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda}


def machine_info() -> dict:
    import matplotlib
    import scipy

    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(total_ram_gib() or 0.0, 1) or None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "SimpleITK": sitk.Version.VersionString(),
        "SimpleITK_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "matplotlib": matplotlib.__version__,
        "spinefrac": spinefrac.__version__,
        "gpu": gpu_info(),
    }


def machine_tag(machine: dict) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", machine["cpu_model"].lower().replace("(r)", "").replace("(tm)", ""))
    return f"{slug.strip('-')}-{machine['cpu_count']}cpu"


def write_plot(results: list[RunResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = [result.slices for result in results]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 5.4))
    for index, name in enumerate(stage.name for stage in results[0].stages):
        line, = time_axis.plot(slices, [result.stages[index].seconds for result in results], marker="o", label=name)
        memory_axis.plot(slices, [result.stages[index].peak_rss_mib for result in results], marker="o",
                         color=line.get_color())
    time_axis.plot(slices, [result.total_seconds for result in results], marker="s", color="black",
                   linewidth=2, label="total time / process peak memory")
    memory_axis.plot(slices, [result.process_peak_rss_mib for result in results], marker="s", color="black",
                     linewidth=2)
    gpu_peaks = [max((stage.peak_gpu_mib or 0.0) for stage in result.stages) for result in results]
    if any(gpu_peaks):
        memory_axis.plot(slices, gpu_peaks, marker="^", color="grey", linestyle="--", label="peak GPU memory")
    for axis, label in ((time_axis, "seconds (log scale)"), (memory_axis, "MiB")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(slices, [f"{n}\n{n * MATRIX_VOXELS**2 / 1e6:.0f} M voxels" for n in slices])
        axis.set_xlabel(f"slices ({MATRIX_VOXELS} x {MATRIX_VOXELS} matrix)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.set_yscale("log")
    memory_axis.set_ylim(bottom=0)
    time_axis.set_title("time per stage")
    memory_axis.set_title("peak resident memory per stage")
    handles = time_axis.get_legend_handles_labels()[0] + memory_axis.get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)


def summary_table(results: list[RunResult]) -> str:
    """Stages down, sizes across: seconds and peak resident memory of each."""
    width = 18
    lines = [f"{'stage':<26}" + "".join(f"{f'{r.slices} slices':>{width}}" for r in results),
             f"{'':<26}" + "".join(f"{f'{np.prod(r.size_voxels) / 1e6:.0f} M voxels':>{width}}" for r in results)]
    for index, stage in enumerate(results[0].stages):
        cells = (f"{r.stages[index].seconds:.2f} s {r.stages[index].peak_rss_mib:5.0f} MiB" for r in results)
        lines.append(f"{stage.name:<26}" + "".join(f"{cell:>{width}}" for cell in cells))
    cells = (f"{r.total_seconds:.2f} s {r.process_peak_rss_mib:5.0f} MiB" for r in results)
    lines.append(f"{'total, process peak':<26}" + "".join(f"{cell:>{width}}" for cell in cells))
    return "\n".join(lines)


@contextmanager
def work_folder(keep: bool) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="spinefrac-benchmark-"))
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), metavar="SLICES",
                        help=f"numbers of axial slices to measure (default: {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--largest", action="store_true",
                        help=f"add {LARGEST_SIZE} slices ({LARGEST_SIZE * MATRIX_VOXELS**2 / 1e6:.0f} M voxels; "
                             "about 1 minute and 2 GB of RAM on 2 cores)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for the JSON and PNG results (default: benchmarks/results)")
    parser.add_argument("--tag", help="machine name in the file names (default: from the CPU model)")
    parser.add_argument("--keep-inputs", action="store_true", help="keep the temporary inputs and outputs")
    parser.add_argument("--cli-runs", type=int, default=1, metavar="N",
                        help="times the whole 'spinefrac run' command is timed per size (default 1)")
    parser.add_argument("--baseline-core", type=Path, metavar="FOLDER",
                        help="another checkout's SpineFractureDetection folder (e.g. 'git archive' of an earlier "
                             "commit): its 'spinefrac run' is timed in turn with this one's")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    sizes = sorted(set(args.sizes) | ({LARGEST_SIZE} if args.largest else set()))
    if min(sizes) < 16:
        print("benchmark: error: sizes must be at least 16 slices", file=sys.stderr)
        return 2
    machine = machine_info()
    tag = args.tag or machine_tag(machine)
    print(f"machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['ram_gib']} GiB RAM, "
          f"GPU: {machine['gpu']['name'] if machine['gpu'] else 'none'}", flush=True)
    started = time.perf_counter()
    phantom = whole_spine_phantom()
    print(f"whole-spine phantom built in {time.perf_counter() - started:.1f} s "
          f"({' x '.join(map(str, phantom.ct.GetSize()))} voxels at {BASE_SPACING_MM} mm)", flush=True)

    results = []
    with work_folder(args.keep_inputs) as work:
        for slices in sizes:
            result = measure_size(phantom, slices, work, use_gpu=machine["gpu"] is not None,
                                  command_runs=args.cli_runs, baseline_core=args.baseline_core)
            results.append(result)
            print(f"{slices:5d} slices: {result.total_seconds:7.2f} s, peak {result.process_peak_rss_mib:7.0f} MiB",
                  flush=True)
            for run in result.command_runs:
                print(f"      spinefrac run ({run.core}): {run.wall_seconds:6.2f} s wall, {run.cpu_seconds:6.2f} s "
                      f"CPU, load {run.load_1min_before} -> {run.load_1min_after}", flush=True)
        if args.keep_inputs:
            print(f"inputs and outputs kept in {work}")

    json_path = args.output / f"pipeline-{tag}.json"
    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {"matrix_voxels": MATRIX_VOXELS, "field_of_view_mm": FIELD_OF_VIEW_MM,
                     "phantom_spacing_mm": BASE_SPACING_MM, "input_format": "NIfTI, gzip",
                     "peak_memory": "per stage: Linux high-water mark VmHWM, reset before each stage; "
                                    "elsewhere the lifetime peak from getrusage",
                     "cpu_seconds": "user + system time of all threads (stages: time.process_time; command: "
                                    "getrusage of the child)",
                     "load_1min": "1-minute load average (os.getloadavg): other work on the machine; wall "
                                  "times under load are upper bounds"},
        "baseline_core": str(args.baseline_core) if args.baseline_core else None,
        "results": [dict(asdict(result), total_seconds=result.total_seconds) for result in results],
    }
    write_text_atomically(json_path, json.dumps(document, indent=2) + "\n")
    png_path = json_path.with_suffix(".png")
    write_plot(results, png_path, f"spinefrac {spinefrac.__version__} pipeline on {machine['cpu_model']} "
               f"({machine['cpu_count']} CPUs)")
    print(summary_table(results))
    print(f"wrote {json_path}\nwrote {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
