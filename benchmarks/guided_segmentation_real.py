"""Guided segmentation on real CTs with reference vertebra labels: one point per labelled vertebra at
the reference body centre (VerSe's own centroid file where there is one, verse012: body centroids;
elsewhere the deepest point of the reference mask; the sacrum: of its top 30 mm, S1), moved
a fixed distance in a random direction, one point (chosen at random) named; the others unnamed.
Per level: Dice against the reference, whether the level is named right (the predicted label
overlapping the reference most is the reference's level), and the quality-control verdict. Levels
whose reference mask is smaller than 40 % of the CT's median level (slivers cut by the field of
view) get no point and are not scored.

    python benchmarks/guided_segmentation_real.py --shift-mm 3 --seeds 3 --output benchmarks/results/guided-real-3mm.json
    python benchmarks/guided_segmentation_real.py --shift-mm 6 --seeds 3 --output benchmarks/results/guided-real-6mm.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineFractureDetection"))

from spinefrac.assessment.measurement import measure_vertebrae  # noqa: E402
from spinefrac.assessment.quality import check_quality  # noqa: E402
from spinefrac.errors import SpineFracError  # noqa: E402
from spinefrac.io.images import load_ct, to_canonical  # noqa: E402
from spinefrac.io.points import VertebraPoint, read_points  # noqa: E402
from spinefrac.levels import LEVEL_BY_ID, SACRUM  # noqa: E402
from spinefrac.progress import silent  # noqa: E402
from spinefrac.segmentation.guided.engine import GuidedEngine  # noqa: E402

DATA = REPO.parent / "shared/data"
CASES = {
    "ts-example": ("ts-example/ct.nii.gz", "ts-example/vertebrae.nii.gz"),
    "verse012": ("verse012/sub-verse012_ct.nii.gz", "verse012/sub-verse012_seg-vert_msk.nii.gz"),
    "tptbox-lumbar": ("tptbox-lumbar/sub-ct_label-22_ct.nii.gz", "tptbox-lumbar/sub-ct_seg-vert_label-22_msk.nii.gz"),
    "chest-contrast": ("chest-contrast/ct.nii.gz", "chest-contrast/vertebrae_verse.nii.gz"),
}
CENTROID_FILES = {"verse012": "verse012/sub-verse012_seg-subreg_ctd.json"}  # VerSe's ctd: the expert's centroids
MIN_VOLUME_SHARE = 0.4
SACRUM_TOP_MM = 30.0


def reference_points(labels: sitk.Image) -> dict[int, np.ndarray]:
    """Per scored level (VerSe id) the reference body centre in LPS mm: the deepest point of its mask (the
    body is a vertebra's bulkiest part; a whole-vertebra centroid lies at the back of the body or in the
    canal); the sacrum's in its top 30 mm (S1)."""
    values = sitk.GetArrayViewFromImage(labels)
    spacing_kji = np.array(labels.GetSpacing()[::-1])
    ids = [int(v) for v in np.unique(values) if v in LEVEL_BY_ID]
    counts = {v: int((values == v).sum()) for v in ids}
    median = float(np.median([counts[v] for v in ids if v != SACRUM.verse_id] or [1]))
    points = {}
    for verse_id, box in enumerate(ndimage.find_objects(values), start=1):
        if verse_id not in counts or (counts[verse_id] < MIN_VOLUME_SHARE * median and verse_id != SACRUM.verse_id):
            continue
        mask = np.pad(values[box] == verse_id, 1)
        if verse_id == SACRUM.verse_id:  # S1: the top of the sacrum (k increases superiorly on the canonical grid)
            top_k = np.flatnonzero(mask.any(axis=(1, 2)))[-1]
            mask[: max(top_k - int(round(SACRUM_TOP_MM / spacing_kji[0])), 0)] = False
        depth = ndimage.distance_transform_edt(mask, sampling=spacing_kji)
        deepest = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape)) - 1 + [b.start for b in box]
        deepest_ijk = deepest[::-1].astype(float).tolist()
        points[verse_id] = np.array(labels.TransformContinuousIndexToPhysicalPoint(deepest_ijk))
    return points


def shifted_points(reference: dict[int, np.ndarray], shift_mm: float, rng: np.random.Generator) -> list[VertebraPoint]:
    ids = sorted(reference)
    named = ids[int(rng.integers(len(ids)))]
    points = []
    for n, verse_id in enumerate(ids):
        direction = rng.normal(size=3)
        position = reference[verse_id] + shift_mm * direction / np.linalg.norm(direction)
        level = LEVEL_BY_ID[verse_id] if verse_id == named else None
        points.append(VertebraPoint(tuple(float(v) for v in position), level, level.name if level else f"F-{n + 1}"))
    return points


def score(predicted: np.ndarray, reference: np.ndarray, verse_id: int) -> dict:
    truth = reference == verse_id
    mine = predicted == verse_id
    dice = 2.0 * np.logical_and(truth, mine).sum() / max(truth.sum() + mine.sum(), 1)
    overlapping = predicted[truth]
    overlapping = overlapping[overlapping > 0]
    best = int(np.bincount(overlapping).argmax()) if overlapping.size else 0
    return {"dice": round(float(dice), 3), "named_as": LEVEL_BY_ID[best].name if best else None,
            "named_right": best == verse_id}


def case_points(name: str, shift_mm: float, seed: int):
    """The CT, its reference labels (canonical grid, VerSe ids), the reference body centres and the moved points."""
    ct_file, label_file = CASES[name]
    ct = load_ct(DATA / ct_file)
    labels = to_canonical(sitk.ReadImage(str(DATA / label_file)))
    labels = sitk.Cast(sitk.Round(labels) if labels.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) else labels,
                       sitk.sitkUInt8)
    reference_lps = reference_points(labels)
    if name in CENTROID_FILES:
        expert = {p.level.verse_id: np.array(p.position_lps_mm)
                  for p in read_points(DATA / CENTROID_FILES[name], ct.image)}
        reference_lps = {verse_id: expert.get(verse_id, position) for verse_id, position in reference_lps.items()}
    return ct, labels, reference_lps, shifted_points(reference_lps, shift_mm, np.random.default_rng(seed))


def run_case(name: str, shift_mm: float, seed: int) -> dict:
    ct, labels, reference_lps, points = case_points(name, shift_mm, seed)
    started = time.perf_counter()
    try:
        engine = GuidedEngine(points, source=f"{name} reference centroids moved {shift_mm:g} mm")
        segmentation = engine.segment(ct, silent)
    except SpineFracError as error:
        return {"case": name, "seed": seed, "error": str(error), "levels": {}}
    seconds = time.perf_counter() - started
    quality = check_quality(ct, segmentation, measure_vertebrae(ct, segmentation))
    verdicts = {q.level.name: q.verdict.value for q in quality.levels}
    predicted, reference = segmentation.array(), sitk.GetArrayViewFromImage(labels)
    levels = {}
    for verse_id in sorted(reference_lps, key=lambda v: LEVEL_BY_ID[v].craniocaudal_rank):
        row = score(predicted, reference, verse_id)
        row["qc"] = verdicts.get(LEVEL_BY_ID[verse_id].name, "absent")
        levels[LEVEL_BY_ID[verse_id].name] = row
    named = next(p.level.name for p in points if p.level)
    return {"case": name, "seed": seed, "named_point": named, "engine_seconds": round(seconds, 2),
            "identification": segmentation.identification.to_dict(), "levels": levels}


def summary(rows: list[dict]) -> dict:
    levels = [level for row in rows for level in row["levels"].values()]
    errors = [row for row in rows if "error" in row]
    good = [lv for lv in levels if lv["dice"] >= 0.85]
    return {
        "cases_run": len(rows), "cases_refused": len(errors),
        "levels_scored": len(levels),
        "dice_at_least_0.85": len(good),
        "named_right": sum(lv["named_right"] for lv in levels),
        "qc_pass": sum(lv["qc"] == "pass" for lv in levels), "qc_warn": sum(lv["qc"] == "warn" for lv in levels),
        "qc_fail": sum(lv["qc"] == "fail" for lv in levels),
        "mean_dice": round(float(np.mean([lv["dice"] for lv in levels])), 3) if levels else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shift-mm", type=float, default=3.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    rows = []
    for name in args.cases:
        for seed in range(args.seeds):
            row = run_case(name, args.shift_mm, seed)
            rows.append(row)
            table = " ".join(f"{lv}:{r['dice']:.2f}{'' if r['named_right'] else '!'}{r['qc'][0]}"
                             for lv, r in row["levels"].items())
            print(f"{name} seed {seed}: {row.get('error') or table}", flush=True)
    result = {"shift_mm": args.shift_mm, "seeds": args.seeds, "summary": summary(rows), "cases": rows}
    print(json.dumps(result["summary"], indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
