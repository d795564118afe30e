"""Offline engine on synthetic phantoms: identification rate (VerSe rule) and mean Dice over
fields of view, grids, storage orientations and curvatures; prints a table and writes JSON.

Fields of view: a neck CT (C1 to T3, cut below), a neck CT cut through C3 (the image edge is not
the atlas), a chest CT (T4 to L2, cut at both ends), an abdominal CT (T11 to the sacrum), a
thoracolumbar and a whole-spine CT, the chest and abdomen with a contrast-filled aorta and heart
(300-500 HU; the vessel voxels labelled as vertebra are counted), and two fields with no anchor in
view, where no count can be right and the engine must say that levels are uncertain (scored apart):
a mid-thoracic slab (T4 to T10) and a lumbar crop (L1 to L5), both cut through vertebrae at both ends.
Grids: isotropic 0.7, 1.5 and 3 mm (stored LPS, RAS or PIR in turn), 5 mm slices (0.7 x 0.7 x 5 mm)
and sagittal storage (3 x 1 x 1 mm: left-right 3 mm slices, axes posterior, inferior, left).

    python benchmarks/offline_engine_phantoms.py --output benchmarks/results/offline-engine-phantoms.json

or in parallel, one part of the grids per process, then combined:

    python benchmarks/offline_engine_phantoms.py --grids "0.7 mm" --speed --output part1.json &
    python benchmarks/offline_engine_phantoms.py --grids "1.5 mm" "3.0 mm" "5 mm slices" "sagittal 3 x 1 x 1 mm" \
        --output part2.json; wait
    python benchmarks/offline_engine_phantoms.py --combine part1.json part2.json \
        --output benchmarks/results/offline-engine-phantoms.json

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

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from spinefrac.errors import SpineFracError  # noqa: E402
from spinefrac.evaluation.segmentation import evaluate_segmentation  # noqa: E402
from spinefrac.io.images import ct_from_image, to_canonical  # noqa: E402
from spinefrac.segmentation.offline.engine import OfflineEngine  # noqa: E402
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom  # noqa: E402

CERVICAL = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
THORACIC = tuple(f"T{n}" for n in range(1, 13))
LUMBAR = ("L1", "L2", "L3", "L4", "L5")
# name -> (levels, mm cut off the top, mm cut off the bottom, an anchor is in view, contrast-filled vessels)
FIELDS = {"neck": (CERVICAL + THORACIC[:3], 0.0, 10.0, True, False),
          "neck cut through C3": (CERVICAL + THORACIC[:3], 40.0, 10.0, True, False),
          "chest": (THORACIC[3:] + LUMBAR[:2], 10.0, 10.0, True, False),
          "chest, contrast": (THORACIC[3:] + LUMBAR[:2], 10.0, 10.0, True, True),
          "abdomen": (THORACIC[10:] + LUMBAR + ("sacrum",), 0.0, 0.0, True, False),
          "abdomen, contrast": (THORACIC[10:] + LUMBAR + ("sacrum",), 0.0, 0.0, True, True),
          "thoracolumbar": (THORACIC[5:] + LUMBAR + ("sacrum",), 0.0, 0.0, True, False),
          "whole spine": (CERVICAL + THORACIC + LUMBAR + ("sacrum",), 0.0, 0.0, True, False),
          "mid-thoracic, no anchor": (THORACIC[3:10], 10.0, 10.0, False, False),
          "lumbar crop, no anchor": (THORACIC[11:] + LUMBAR + ("sacrum",), 45.0, 110.0, False, False)}
CURVES = {"straight": {}, "curved": {"sagittal_curvature_mm": 20.0, "coronal_curvature_mm": 10.0}}
ORIENTATIONS = ("LPS", "RAS", "PIR")
# name -> (spacing along the grid axes, mm; storage orientation, None: LPS, RAS and PIR in turn)
GRIDS = {"0.7 mm": ((0.7, 0.7, 0.7), None), "1.5 mm": ((1.5, 1.5, 1.5), None), "3.0 mm": ((3.0, 3.0, 3.0), None),
         "5 mm slices": ((0.7, 0.7, 5.0), None), "sagittal 3 x 1 x 1 mm": ((1.0, 1.0, 3.0), "PIL")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="*", choices=list(GRIDS), default=list(GRIDS))
    parser.add_argument("--fields", nargs="*", choices=list(FIELDS), default=list(FIELDS),
                        help="a subset of the fields of view (each case keeps the seed and orientation it has in a "
                             "run over all fields)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/offline-engine-phantoms.json"))
    parser.add_argument("--speed", action="store_true", help="also time a 512 x 512 x 500 CT")
    parser.add_argument("--combine", type=Path, nargs="+", help="write one result from the JSON of runs on parts of "
                                                                 "the grids (run in parallel) instead of running")
    args = parser.parse_args(argv)
    if args.combine:
        return _combine(args.combine, args.output)
    # Timed first, so that the peak memory recorded is this CT's, not that of a large phantom made later.
    speed = _speed() if args.speed else None
    rows = []
    cases = product(enumerate(args.grids), enumerate(FIELDS), enumerate(CURVES))
    for case, ((g, grid), (f, field), (c, curve)) in enumerate(cases):
        if field not in args.fields:
            continue
        rows.append(_run_case(case, grid, GRIDS[grid][1] or ORIENTATIONS[(g + f + c) % len(ORIENTATIONS)], field, curve))
    summary = {grid: _summary([r for r in rows if r["grid"] == grid]) for grid in args.grids}
    if speed:
        summary["speed_512x512x500"] = speed
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


def _combine(parts: list[Path], output: Path) -> int:
    results = [json.loads(part.read_text(encoding="utf-8")) for part in parts]
    rows = [row for result in results for row in result["rows"]]
    grids = [grid for grid in GRIDS if any(row["grid"] == grid for row in rows)]
    summary = {grid: _summary([r for r in rows if r["grid"] == grid]) for grid in grids}
    for result in results:
        summary.update({k: v for k, v in result["summary"].items() if k not in GRIDS})  # the speed record
    output.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


def _run_case(case: int, grid: str, orientation: str, field: str, curve: str) -> dict:
    """One phantom through the engine (each field meets every orientation across the grids)."""
    levels, crop_top_mm, crop_bottom_mm, anchored, contrast = FIELDS[field]
    phantom = make_phantom(PhantomSpec(levels=levels, spacing_mm=GRIDS[grid][0], orientation=orientation,
                                       crop_superior_mm=crop_top_mm, crop_inferior_mm=crop_bottom_mm,
                                       contrast_vessels=contrast, seed=case, **CURVES[curve]))
    ct = ct_from_image(phantom.ct, "phantom", "phantom")
    row = {"grid": grid, "orientation": orientation, "curve": curve, "field": field, "anchor_in_view": anchored}
    started = time.perf_counter()
    try:
        segmentation = OfflineEngine().segment(ct)
    except SpineFracError as error:
        print(f"{grid:22s} {orientation} {curve:8s} {field:24s} failed: {error}", flush=True)
        return dict(row, error=str(error))
    seconds = time.perf_counter() - started
    score = evaluate_segmentation(segmentation.label_map, to_canonical(phantom.labels))
    note = next(n for n in segmentation.notes if "level" in n)
    row.update(identification_rate=score.identification_rate, mean_dice=score.mean_dice,
               says_uncertain="levels uncertain" in note, seconds=round(seconds, 2), note=note,
               confidence=segmentation.identification.confidence)
    if contrast:
        labelled = sitk.GetArrayFromImage(segmentation.label_map) > 0
        row["vessel_voxels_labelled"] = int(np.count_nonzero(labelled & (sitk.GetArrayFromImage(
            to_canonical(phantom.vessels)) > 0)))
    print(f"{grid:22s} {orientation} {curve:8s} {field:24s} id {score.identification_rate:5.2f} "
          f"Dice {score.mean_dice:5.3f} {seconds:5.1f} s {row.get('vessel_voxels_labelled', '')} {note}", flush=True)
    return row


def _summary(at_grid: list[dict]) -> dict:
    done = [r for r in at_grid if "error" not in r and r["anchor_in_view"]]
    unanchored = [r for r in at_grid if not r["anchor_in_view"]]
    contrast = [r for r in at_grid if "vessel_voxels_labelled" in r]
    return {
        "cases": len(at_grid),
        "failed": sum("error" in r for r in at_grid),
        "identification_rate": sum(r["identification_rate"] for r in done) / max(len(done), 1),
        "mean_dice": sum(r["mean_dice"] for r in done) / max(len(done), 1),
        "no_anchor_cases_saying_levels_uncertain": f"{sum(r.get('says_uncertain', False) for r in unanchored)}"
                                                   f"/{len(unanchored)}",
        "contrast_cases_with_vessel_voxels_labelled": f"{sum(r['vessel_voxels_labelled'] > 0 for r in contrast)}"
                                                      f"/{len(contrast)}",
        "vessel_voxels_in_vertebrae": sum(r["vessel_voxels_labelled"] for r in contrast),
    }


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
