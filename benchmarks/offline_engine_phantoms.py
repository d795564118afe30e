"""Offline engine on synthetic phantoms: identification rate (VerSe rule) and mean Dice over
spacings, storage orientations and curvatures; prints a table and writes JSON.

    python benchmarks/offline_engine_phantoms.py --output benchmarks/results/offline-engine-phantoms.json

With --speed, also times the engine on a 512 x 512 x 500 CT (about 0.78 x 0.78 x 1 mm, the
grid of benchmark_learned_engine.py) and records seconds and peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SpineFractureDetection"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared CT grid of the engine benchmarks

from spinefrac.errors import SpineFracError  # noqa: E402
from spinefrac.evaluation import evaluate_segmentation  # noqa: E402
from spinefrac.image_io import ct_from_image, to_canonical  # noqa: E402
from spinefrac.offline_engine import OfflineEngine  # noqa: E402
from spinefrac.phantom import PhantomSpec, make_phantom  # noqa: E402

FIELDS = {"lumbar": ("T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum"),
          "thoracolumbar": ("T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum")}
CURVES = {"straight": {}, "curved": {"sagittal_curvature_mm": 20.0, "coronal_curvature_mm": 10.0}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacings", type=float, nargs="+", default=[1.5, 3.0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/offline-engine-phantoms.json"))
    parser.add_argument("--speed", action="store_true", help="also time a 512 x 512 x 500 CT")
    args = parser.parse_args(argv)
    rows = []
    for spacing, orientation, curve, field in product(args.spacings, ("LPS", "RAS", "PIR"), CURVES, FIELDS):
        phantom = make_phantom(PhantomSpec(levels=FIELDS[field], spacing_mm=(spacing,) * 3, orientation=orientation,
                                           seed=1, **CURVES[curve]))
        ct = ct_from_image(phantom.ct, "phantom", "phantom")
        started = time.perf_counter()
        try:
            segmentation = OfflineEngine().segment(ct)
        except SpineFracError as error:
            rows.append(dict(spacing_mm=spacing, orientation=orientation, curve=curve, field=field, error=str(error)))
            continue
        seconds = time.perf_counter() - started
        score = evaluate_segmentation(segmentation.label_map, to_canonical(phantom.labels))
        rows.append(dict(spacing_mm=spacing, orientation=orientation, curve=curve, field=field,
                         identification_rate=score.identification_rate, mean_dice=score.mean_dice,
                         seconds=round(seconds, 2), note=segmentation.notes[0] if segmentation.notes else ""))
        print(f"{spacing:4.1f} mm {orientation} {curve:8s} {field:13s} id {score.identification_rate:5.2f} "
              f"Dice {score.mean_dice:5.3f} {seconds:5.1f} s", flush=True)
    summary = {}
    for spacing in args.spacings:
        done = [r for r in rows if r["spacing_mm"] == spacing and "error" not in r]
        summary[f"{spacing} mm"] = {
            "cases": sum(r["spacing_mm"] == spacing for r in rows),
            "failed": sum(r["spacing_mm"] == spacing and "error" in r for r in rows),
            "identification_rate": sum(r["identification_rate"] for r in done) / max(len(done), 1),
            "mean_dice": sum(r["mean_dice"] for r in done) / max(len(done), 1),
        }
    if args.speed:
        summary["speed_512x512x500"] = _speed()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


def _speed() -> dict:
    import resource

    from benchmark_learned_engine import clinical_ct

    ct = ct_from_image(clinical_ct(500), "benchmark", "phantom")
    started = time.perf_counter()
    segmentation = OfflineEngine().segment(ct)
    return {"seconds": round(time.perf_counter() - started, 2), "levels": [lv.name for lv in segmentation.levels],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


if __name__ == "__main__":
    sys.exit(main())
