"""Offline engine on synthetic phantoms: identification rate (VerSe rule) and mean Dice over
fields of view, spacings, storage orientations and curvatures; prints a table and writes JSON.

Fields of view: a neck CT (C1 to T3, cut below), a chest CT (T4 to L2, cut at both ends), an
abdominal CT (T11 to the sacrum), a thoracolumbar and a whole-spine CT, and a mid-thoracic slab
with no anchor in view (T4 to T10, cut at both ends), where no count can be right and the engine
must say that levels are uncertain: it is scored apart from the others.

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
from spinefrac.evaluation.segmentation import evaluate_segmentation  # noqa: E402
from spinefrac.io.images import ct_from_image, to_canonical  # noqa: E402
from spinefrac.segmentation.offline.engine import OfflineEngine  # noqa: E402
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom  # noqa: E402

CERVICAL = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
THORACIC = tuple(f"T{n}" for n in range(1, 13))
LUMBAR = ("L1", "L2", "L3", "L4", "L5")
# name -> (levels, mm cut off the top, mm cut off the bottom, an anchor is in view)
FIELDS = {"neck": (CERVICAL + THORACIC[:3], 0.0, 10.0, True),
          "chest": (THORACIC[3:] + LUMBAR[:2], 10.0, 10.0, True),
          "abdomen": (THORACIC[10:] + LUMBAR + ("sacrum",), 0.0, 0.0, True),
          "thoracolumbar": (THORACIC[5:] + LUMBAR + ("sacrum",), 0.0, 0.0, True),
          "whole spine": (CERVICAL + THORACIC + LUMBAR + ("sacrum",), 0.0, 0.0, True),
          "mid-thoracic, no anchor": (THORACIC[3:10], 10.0, 10.0, False)}
CURVES = {"straight": {}, "curved": {"sagittal_curvature_mm": 20.0, "coronal_curvature_mm": 10.0}}
ORIENTATIONS = ("LPS", "RAS", "PIR")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacings", type=float, nargs="+", default=[0.7, 1.5, 3.0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/offline-engine-phantoms.json"))
    parser.add_argument("--speed", action="store_true", help="also time a 512 x 512 x 500 CT")
    args = parser.parse_args(argv)
    # Timed first, so that the peak memory recorded is this CT's, not that of a large phantom made later.
    speed = _speed() if args.speed else None
    rows = []
    grid = product(enumerate(args.spacings), enumerate(FIELDS), enumerate(CURVES))
    for case, ((s, spacing), (f, field), (c, curve)) in enumerate(grid):
        orientation = ORIENTATIONS[(s + f + c) % len(ORIENTATIONS)]  # each field meets every orientation
        levels, crop_top_mm, crop_bottom_mm, anchored = FIELDS[field]
        phantom = make_phantom(PhantomSpec(levels=levels, spacing_mm=(spacing,) * 3, orientation=orientation,
                                           crop_superior_mm=crop_top_mm, crop_inferior_mm=crop_bottom_mm,
                                           seed=case, **CURVES[curve]))
        ct = ct_from_image(phantom.ct, "phantom", "phantom")
        row = dict(spacing_mm=spacing, orientation=orientation, curve=curve, field=field, anchor_in_view=anchored)
        started = time.perf_counter()
        try:
            segmentation = OfflineEngine().segment(ct)
        except SpineFracError as error:
            rows.append(dict(row, error=str(error)))
            print(f"{spacing:4.1f} mm {orientation} {curve:8s} {field:24s} failed: {error}", flush=True)
            continue
        seconds = time.perf_counter() - started
        score = evaluate_segmentation(segmentation.label_map, to_canonical(phantom.labels))
        note = next(n for n in segmentation.notes if "level" in n)
        rows.append(dict(row, identification_rate=score.identification_rate, mean_dice=score.mean_dice,
                         says_uncertain="levels uncertain" in note, seconds=round(seconds, 2), note=note))
        print(f"{spacing:4.1f} mm {orientation} {curve:8s} {field:24s} id {score.identification_rate:5.2f} "
              f"Dice {score.mean_dice:5.3f} {seconds:5.1f} s  {note}", flush=True)
    summary = {}
    for spacing in args.spacings:
        at_spacing = [r for r in rows if r["spacing_mm"] == spacing]
        done = [r for r in at_spacing if "error" not in r and r["anchor_in_view"]]
        unanchored = [r for r in at_spacing if not r["anchor_in_view"]]
        summary[f"{spacing} mm"] = {
            "cases": len(at_spacing),
            "failed": sum("error" in r for r in at_spacing),
            "identification_rate": sum(r["identification_rate"] for r in done) / max(len(done), 1),
            "mean_dice": sum(r["mean_dice"] for r in done) / max(len(done), 1),
            "no_anchor_cases_saying_levels_uncertain": f"{sum(r.get('says_uncertain', False) for r in unanchored)}"
                                                       f"/{len(unanchored)}",
        }
    if speed:
        summary["speed_512x512x500"] = speed
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
