"""Speed of the offline engine and of quality control on a 512 x 512 x 500 CT, per stage.

The CT is the thoraco-lumbar phantom of benchmark_learned_engine.py resampled onto a clinical
512 x 512 x 500 grid (400 mm field of view, about 0.78 x 0.78 x 1 mm). The engine's stages are
timed between its own progress messages (tracking the axis, bone, discs, canal, identification,
labelling), each with wall seconds (``time.perf_counter``) and process CPU seconds (user + sys of
all threads, ``time.process_time``); then the measurements the quality control needs and the
quality control itself. The load average before and after each run is recorded: wall seconds
are upper bounds when other processes share the cores, CPU seconds much less so.

    python benchmarks/offline_engine_speed.py --repeats 3 --output benchmarks/results/offline-engine-speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SpineFractureDetection"))  # the core measured
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared CT grid of the engine benchmarks

import numpy as np
import SimpleITK as sitk

from spinefrac.assessment.measurement import measure_vertebrae
from spinefrac.assessment.quality import check_quality
from spinefrac.io.images import ct_from_image
from spinefrac.segmentation.offline.engine import OfflineEngine

REPO = Path(__file__).resolve().parents[1]
SLICES = 500
TARGETS_S = {"offline_engine": 15.0, "quality_control": 1.0}  # issue 16, on 2 cores


class StageClock:
    """A Progress callback that closes one stage and opens the next at every message."""

    def __init__(self):
        self.stages: list[dict] = []
        self._name = "start"
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def __call__(self, fraction: float, message: str) -> None:
        self.close(message if fraction < 1.0 else "after the final message (metal check, notes)")

    def close(self, next_name: str = "") -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.stages.append(
            {"name": self._name, "wall_s": round(wall - self._wall, 3), "cpu_s": round(cpu - self._cpu, 3)}
        )
        self._name, self._wall, self._cpu = next_name, wall, cpu


def timed(function, *arguments) -> tuple[object, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*arguments)
    return result, {"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3)}


def one_run(ct) -> dict:
    """The engine stage by stage, then the measurements and the quality control of its masks."""
    from benchmark_pipeline import MIB, PeakMemory

    load_before = os.getloadavg()
    memory = PeakMemory()  # the kernel's high-water mark, reset here: the engine's own peak
    clock = StageClock()
    wall, cpu = time.perf_counter(), time.process_time()
    segmentation = OfflineEngine().segment(ct, clock)
    clock.close()
    engine = {
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(time.process_time() - cpu, 3),
        "peak_rss_mib": round(memory.peak_bytes() / MIB),
    }
    stages = [stage for stage in clock.stages if stage["name"] != "start" or stage["wall_s"] > 0.0005]
    measurements, measuring = timed(measure_vertebrae, ct, segmentation)
    quality, quality_control = timed(check_quality, ct, segmentation, measurements)
    labels = sitk.GetArrayViewFromImage(segmentation.label_map)
    return {
        "load_average_1_5_15_before": [round(v, 2) for v in load_before],
        "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "offline_engine": dict(engine, stages=stages),
        "measure_vertebrae": measuring,
        "quality_control": quality_control,
        "levels": [level.name for level in segmentation.levels],
        "labelled_voxels": int(np.count_nonzero(labels)),
        "qc_verdicts": {q.level.name: q.verdict.value for q in quality.levels},
    }


def summary(runs: list[dict]) -> dict:
    """Per quantity the fastest run: the least disturbed by other processes."""
    best = {}
    for key, target_s in TARGETS_S.items():
        fastest = min(runs, key=lambda run: run[key]["wall_s"])
        best[key] = {
            "wall_s": fastest[key]["wall_s"],
            "cpu_s": fastest[key]["cpu_s"],
            "target_s": target_s,
            "load_average_1min_before": fastest["load_average_1_5_15_before"][0],
        }
    return best


def code_version() -> str:
    """The commit measured, with '+changes' when the work tree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+changes" if changed else "")


def main(argv: list[str] | None = None) -> int:
    from benchmark_learned_engine import clinical_ct
    from benchmark_pipeline import cpu_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="runs on the same CT (the fastest is summarised)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/offline-engine-speed.json"))
    parser.add_argument("--code", help="what code is measured (default: the git commit of this checkout)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        print("offline_engine_speed: error: --repeats must be at least 1", file=sys.stderr)
        return 2
    image = clinical_ct(SLICES)
    ct = ct_from_image(image, "benchmark", "phantom")
    runs = []
    for repeat in range(args.repeats):
        runs.append(one_run(ct))
        print(
            f"run {repeat + 1}: engine {runs[-1]['offline_engine']['wall_s']:.1f} s wall "
            f"{runs[-1]['offline_engine']['cpu_s']:.1f} s CPU, QC {runs[-1]['quality_control']['wall_s']:.2f} s, "
            f"load {runs[-1]['load_average_1_5_15_before'][0]:.1f}",
            flush=True,
        )
    document = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code": args.code or code_version(),
        "ct": {
            "size_voxels": list(image.GetSize()),
            "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
            "what": "thoraco-lumbar phantom (T10-sacrum) of benchmark_learned_engine.clinical_ct",
        },
        "machine": {
            "cpu_model": cpu_model(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "SimpleITK_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        },
        "timing": "wall: time.perf_counter; cpu: time.process_time (user + sys, all threads of the process)",
        "summary_fastest_run": summary(runs),
        "process_peak_rss_mib_with_phantom_building": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "runs": runs,
    }
    write_result(document, args.output)
    return 0


def write_result(document: dict, output: Path) -> None:
    """The benchmark's JSON, and its summary on the terminal."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(document["summary_fastest_run"], indent=2))


if __name__ == "__main__":
    sys.exit(main())
