"""Morphometry on real data: the sample CT with its reference masks and with the offline
engine's masks, and the VerSe expert masks against their published Genant grades (a CT built
around each mask, spinefrac/synthetic/mask_ct.py), with each mask also dilated and eroded by
one voxel. Prints a summary and writes JSON.

    python benchmarks/morphometry_real_data.py --output benchmarks/results/morphometry-real-data.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineFractureDetection"))

from spinefrac.assessment.chain import assess  # noqa: E402
from spinefrac.io.images import load_ct  # noqa: E402
from spinefrac.segmentation.label_maps import ExistingLabelMap  # noqa: E402
from spinefrac.segmentation.offline.engine import OfflineEngine  # noqa: E402
from spinefrac.synthetic.mask_ct import each_label_morphed  # noqa: E402
from spinefrac.synthetic.real_data_cases import segmentation_of, verse_mask_case  # noqa: E402

SAMPLE = REPO / "SpineFractureDetection/Resources/SampleData"
VERSE = REPO.parent / "shared/data/verse-masks"


def level_rows(assessment) -> dict[str, dict]:
    rows = {}
    for f in assessment.findings.findings:
        if not f.level.is_vertebra:
            continue
        rows[f.level.name] = {
            "decision": f.decision.value, "grade": f.genant_grade, "type": f.genant_type.value,
            "heights_mm": [round(h, 2) for h in (f.height_anterior_mm, f.height_middle_mm, f.height_posterior_mm)],
            "expected_mm": [round(h, 2) for h in (f.height_anterior_expected_mm, f.height_middle_expected_mm,
                                                  f.height_posterior_expected_mm)],
            "reductions_percent": {k: round(100 * v, 1) for k, v in f.reductions().items() if np.isfinite(v)},
            "reason": f.reason,
        }
    return rows


def sample_ct() -> dict:
    ct = load_ct(SAMPLE / "ts-example-ct.nii.gz")
    reference = level_rows(assess(ct, ExistingLabelMap(SAMPLE / "ts-example-vertebrae.nii.gz").segment(ct)))
    offline = level_rows(assess(ct, OfflineEngine().segment(ct)))
    differences = {name: round(float(np.max(np.abs(np.subtract(offline[name]["heights_mm"],
                                                                 reference[name]["heights_mm"])))), 2)
                   for name in reference if name in offline and reference[name]["grade"] is not None}
    return {"reference_masks": reference, "offline_engine_masks": offline,
            "offline_minus_reference_max_abs_mm": differences,
            "fractured_reference": [n for n, r in reference.items() if r["decision"] == "fractured"],
            "fractured_offline": [n for n, r in offline.items() if r["decision"] == "fractured"]}


def one_voxel_edits(ct, segmentation, reference: dict) -> dict:
    result = {}
    for operation in (sitk.BinaryDilate, sitk.BinaryErode):
        edited = each_label_morphed(segmentation.label_map, operation)
        rows = level_rows(assess(ct, segmentation_of(edited, operation.__name__)))
        result[operation.__name__] = {
            name: {"height_change_mm": [round(a - b, 2) for a, b in zip(rows[name]["heights_mm"],
                                                                      reference[name]["heights_mm"])],
                   "grade": rows[name]["grade"], "reference_grade": reference[name]["grade"]}
            for name in reference
            if reference[name]["grade"] is not None and rows.get(name, {}).get("grade") is not None}
    return result


def verse() -> dict:
    with open(VERSE / "fracture_grades.csv", newline="", encoding="utf-8") as handle:
        truth = [(r["subject"], r["level"], int(r["genant_grade"])) for r in csv.DictReader(handle)]
    subjects, table = {}, []
    for subject in sorted({s for s, _, _ in truth}):
        ct, segmentation = verse_mask_case(VERSE / f"{subject}_seg-vert_msk.nii.gz")
        rows = level_rows(assess(ct, segmentation))
        subjects[subject] = {"levels": rows, "one_voxel_edits": one_voxel_edits(ct, segmentation, rows)}
    for subject, level, grade in truth:
        found = subjects[subject]["levels"][level]
        table.append({"subject": subject, "level": level, "true_grade": grade, "grade": found["grade"],
                      "type": found["type"], "decision": found["decision"]})
    summary = {
        "graded_levels": len(table),
        "grade_exact": sum(r["grade"] == r["true_grade"] for r in table),
        "grade_2_or_more_called_2_or_more": sum(r["true_grade"] >= 2 and (r["grade"] or 0) >= 2 for r in table),
        "grade_2_or_more": sum(r["true_grade"] >= 2 for r in table),
        "grade_2_or_more_called_fractured": sum(r["true_grade"] >= 2 and r["decision"] == "fractured" for r in table),
        "grade_0_called_fractured": sum(r["true_grade"] == 0 and r["decision"] == "fractured" for r in table),
    }
    return {"summary": summary, "table": table, "subjects": subjects}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/morphometry-real-data.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = {"sample_ct": sample_ct()}
    if VERSE.is_dir():
        result["verse_masks"] = verse()
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"sample_fractured_reference": result["sample_ct"]["fractured_reference"],
                      "sample_fractured_offline": result["sample_ct"]["fractured_offline"],
                      "offline_minus_reference_max_abs_mm": result["sample_ct"]["offline_minus_reference_max_abs_mm"],
                      "verse": result.get("verse_masks", {}).get("summary"),
                      "verse_table": result.get("verse_masks", {}).get("table")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
