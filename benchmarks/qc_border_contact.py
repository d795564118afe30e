"""Quality control's border check on real data: for every pair of neighbouring labelled levels,
the area over which their labels touch in front of the canal over volume^(2/3) of the larger level
(``border_contact_ratios`` in report.json), and which levels fail with a border reason. Reference
masks (the sample CT's, the VerSe expert masks with a CT built around each, spinefrac/synthetic/
mask_ct.py) must stay far under the limit; the offline engine's masks of every CT in ../shared/data
are listed with their verdicts. Prints a summary and writes JSON.

    python benchmarks/qc_border_contact.py --output benchmarks/results/qc-border-contact.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineFractureDetection"))

from spinefrac.assessment.measurement import measure_vertebrae  # noqa: E402
from spinefrac.assessment.quality import check_quality  # noqa: E402
from spinefrac.errors import SpineFracError  # noqa: E402
from spinefrac.io.images import load_ct  # noqa: E402
from spinefrac.levels import LEVEL_BY_NAME  # noqa: E402
from spinefrac.segmentation.label_maps import ExistingLabelMap  # noqa: E402
from spinefrac.segmentation.offline.engine import OfflineEngine  # noqa: E402
from spinefrac.synthetic.real_data_cases import verse_mask_case  # noqa: E402

SHARED = REPO.parent / "shared/data"
VERSE_MASKS = ("sub-verse004", "sub-verse010", "sub-gl003_dir-ax", "sub-gl017")
OFFLINE_CTS = {"sample CT": "ts-example/ct.nii.gz", "POPI chest (DICOM)": "popi-chest/dicom",
               "lung1 (5 mm)": "pyradiomics-lung/lung1_image.nrrd", "lung2 (5 mm)": "pyradiomics-lung/lung2_image.nrrd",
               "cardiac crop": "cardiac-contrast/ct.nii.gz", "DICOM slab (20 slices)": "ts-example/dicom"}


def borders(ct, segmentation) -> dict:
    """Per neighbouring pair its contact ratio; the levels failing with a border reason."""
    started = time.process_time()
    quality = check_quality(ct, segmentation, measure_vertebrae(ct, segmentation))
    pairs = {}
    for q in quality.levels:
        for other, ratio in q.border_contact_ratios.items():
            pairs.setdefault("/".join(sorted((q.level.name, other), key=_rank)), round(ratio, 2))
    failing = {name: reason for name, reason in quality.failing().items() if "border with" in reason}
    return {"contact_ratios": pairs, "border_failures": failing, "verdicts": quality.summary(),
            "qc_cpu_s": round(time.process_time() - started, 3)}


def _rank(name: str) -> int:
    return LEVEL_BY_NAME[name.lower()].craniocaudal_rank


def references() -> dict:
    ct = load_ct(SHARED / "ts-example/ct.nii.gz")
    result = {"sample CT reference": borders(ct, ExistingLabelMap(SHARED / "ts-example/vertebrae.nii.gz",
                                                                   "verse").segment(ct))}
    for subject in VERSE_MASKS:
        result[subject] = borders(*verse_mask_case(SHARED / f"verse-masks/{subject}_seg-vert_msk.nii.gz"))
    return result


def offline() -> dict:
    result = {}
    for name, path in OFFLINE_CTS.items():
        ct = load_ct(SHARED / path)
        try:
            segmentation = OfflineEngine().segment(ct)
        except SpineFracError as error:
            result[name] = {"error": str(error)}
            continue
        result[name] = borders(ct, segmentation)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/qc-border-contact.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = {"references": references(), "offline_engine": offline()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for group, cases in result.items():
        for name, case in cases.items() if isinstance(cases, dict) else ():
            if "error" in case:
                print(f"{group}, {name}: {case['error']}")
                continue
            ratios = ", ".join(f"{pair} {ratio:.2f}" for pair, ratio in case["contact_ratios"].items())
            print(f"{group}, {name}: {case['verdicts']}; border fail: {sorted(case['border_failures'], key=_rank)}"
                  f"\n    {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
