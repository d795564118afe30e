"""Fracture grading on simulated fractures of a real CT: the TotalSegmentator example CT
(3 mm, T11-sacrum) and its reference vertebra labels, one body compressed per case
(spinefrac/synthetic/fracture_simulation.py: wedge, biconcave, crush; 25-50 % loss; L1-L5),
then the whole assessment chain on the compressed CT and labels. Prints a summary, writes JSON.

    python benchmarks/simulated_fractures_real_ct.py --output benchmarks/results/simulated-fractures-real-ct.json

Scores: decision right (the compressed level fractured), grade within one of Genant's grade for
the applied loss, grade exact, type right, and uncompressed levels called fractured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineFractureDetection"))

from spinefrac.synthetic.real_data_cases import simulated_case_rows, summarise_cases  # noqa: E402

SAMPLE_CT = REPO / "SpineFractureDetection/Resources/SampleData/ts-example-ct.nii.gz"
SAMPLE_LABELS = REPO / "SpineFractureDetection/Resources/SampleData/ts-example-vertebrae.nii.gz"

LEVELS = ("L1", "L2", "L3", "L4", "L5")
LOSSES = (0.25, 0.3, 0.4, 0.5)
KINDS = ("wedge", "biconcave", "crush")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=Path, default=SAMPLE_CT)
    parser.add_argument("--labels", type=Path, default=SAMPLE_LABELS)
    parser.add_argument("--levels", nargs="+", default=list(LEVELS))
    parser.add_argument("--losses", type=float, nargs="+", default=list(LOSSES))
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/simulated-fractures-real-ct.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cases = [(level, kind, loss) for level in args.levels for kind in KINDS for loss in args.losses]
    rows = simulated_case_rows(args.ct, args.labels, cases)
    summary = summarise_cases(rows)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"ct": str(args.ct.name), "summary": summary, "rows": rows}, indent=2) + "\n",
                           encoding="utf-8")
    print(json.dumps(summary, indent=2))
    for row in rows:
        if not row["grade_within_one"] or not row["type_right"] or row["other_levels_fractured"]:
            print("miss:", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
