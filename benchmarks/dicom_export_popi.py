"""Acceptance check of the DICOM output on a real chest CT series (../shared/data/popi-chest/dicom).

Runs ``spinefrac run`` on the series (offline engine, as a user without a model would), then:
reads the DICOM SEG back with highdicom and compares it voxel for voxel with vertebrae.nii.gz on
the source slices; reads the DICOM SR (TID 1500) back and compares every value with report.json;
runs ``dciodvfy`` (Debian dicom3tools) on both and lists its errors and warnings. Writes
``<output>/dicom-export-popi.json``; exits 1 when a check fails.

    python benchmarks/dicom_export_popi.py --output benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineFractureDetection"))  # the core, also when not pip-installed

import highdicom as hd
import numpy as np
import SimpleITK as sitk

import spinefrac
from spinefrac.io.dicom_series import read_source_series
from spinefrac.io.outputs import write_text_atomically
from spinefrac.levels import LEVEL_BY_NAME
from spinefrac.reporting.dicom_sr import PRIVATE_MEASUREMENTS, PRIVATE_SCHEME, TRABECULAR_KEY

SERIES = REPO.parent / "shared" / "data" / "popi-chest" / "dicom"


def seg_matches_label_map(out: Path, series) -> dict:
    seg = hd.seg.segread(out / "vertebrae_seg.dcm")
    numbers = seg.get_segment_numbers()
    stacked = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in series.datasets],
                                                segment_numbers=numbers, combine_segments=True)
    verse = np.zeros(max(numbers) + 1, dtype=np.uint8)
    for number in numbers:
        verse[number] = LEVEL_BY_NAME[seg.get_segment_description(number).segment_label.lower()].verse_id
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "vertebrae.nii.gz")))
    return {"segments": len(numbers), "frames": int(seg.NumberOfFrames),
            "voxels_differing": int(np.count_nonzero(verse[stacked] != labels)),
            "labelled_voxels": int(np.count_nonzero(labels))}


def sr_matches_report(out: Path) -> dict:
    rows = {row["level"]: row for row in json.loads((out / "report.json").read_text())["levels"]}
    keys = {code: key for key, (code, *_rest) in PRIVATE_MEASUREMENTS.items()}
    compared, mismatches = 0, []
    groups = hd.sr.srread(out / "measurements_sr.dcm").content.get_volumetric_roi_measurement_groups()
    for group in groups:
        level = group.tracking_identifier.removesuffix(" vertebra")
        found = {keys[m.name.value] if m.name.scheme_designator == PRIVATE_SCHEME else TRABECULAR_KEY: m.value
                 for m in group.get_measurements()}
        expected = {k: rows[level][k] for k in (*PRIVATE_MEASUREMENTS, TRABECULAR_KEY) if rows[level][k] is not None}
        decision = {e.name.meaning: e.value.value for e in group.get_qualitative_evaluations()}
        compared += len(expected) + 1
        if found.keys() != expected.keys() or any(abs(found[k] - expected[k]) > 1e-6 for k in expected) \
                or decision.get("Vertebral fracture assessment") != rows[level]["decision"]:
            mismatches.append(level)
    return {"groups": len(groups), "levels_in_report": len(rows), "values_compared": compared,
            "levels_mismatching": mismatches}


def dciodvfy(path: Path) -> dict:
    if shutil.which("dciodvfy") is None:
        return {"skipped": "dciodvfy not installed (Debian package dicom3tools)"}
    completed = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=300, check=False)
    lines = (completed.stdout + completed.stderr).splitlines()
    warnings = sorted({line for line in lines if line.startswith("Warning")})
    return {"errors": [line for line in lines if line.startswith("Error")], "distinct_warnings": warnings,
            "warning_count": sum(line.startswith("Warning") for line in lines)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if not SERIES.is_dir():
        print(f"skipped: {SERIES} is not here", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as temporary:
        out = Path(temporary) / "out"
        started = time.perf_counter()
        completed = subprocess.run([sys.executable, "-m", "spinefrac", "run", str(SERIES), "-o", str(out), "-q"],
                                   capture_output=True, text=True, check=False,
                                   env=dict(os.environ, PYTHONPATH=str(REPO / "SpineFractureDetection")))
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            print(completed.stderr, file=sys.stderr)
            return 1
        series = read_source_series(SERIES)
        result = {
            "schema": "spinefrac-benchmark-dicom-export", "schema_version": "1.0.0",
            "software_version": spinefrac.__version__, "created_utc": datetime.now(timezone.utc).isoformat(),
            "command": f"spinefrac run {SERIES.relative_to(REPO.parent)} -o OUT -q",
            "input": {"slices": len(series.datasets), "size_voxels": list(series.grid.size),
                      "spacing_mm": list(series.grid.spacing_mm)},
            "run_seconds": round(seconds, 1),
            "run_peak_memory_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1),
            "files": sorted(p.name for p in out.iterdir()),
            "seg_round_trip": seg_matches_label_map(out, series),
            "sr_round_trip": sr_matches_report(out),
            "dciodvfy": {name: dciodvfy(out / name) for name in ("vertebrae_seg.dcm", "measurements_sr.dcm")},
            "findings_text": (out / "findings.txt").read_text(),
            "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        }
    args.output.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.output / "dicom-export-popi.json", json.dumps(result, indent=2) + "\n")
    failed = (result["seg_round_trip"]["voxels_differing"] or result["sr_round_trip"]["levels_mismatching"]
              or any(check.get("errors") for check in result["dciodvfy"].values()))
    print(json.dumps({k: result[k] for k in ("run_seconds", "files", "seg_round_trip", "sr_round_trip", "dciodvfy")},
                     indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
