"""Genant grading accuracy on synthetic phantoms with known height loss (the only fracture
ground truth we have). Prints a summary and writes JSON.

    python benchmarks/fracture_phantom_accuracy.py --output benchmarks/results/fracture-phantoms.json

Grid and rules: see spinefrac/synthetic/validation.py (height loss 0, 10, 15, 22, 30, 45 % x wedge,
biconcave, crush x spacings x straight / curved-tilted-oblique geometry; the single-most-
deformed-plane rule on the same phantoms for comparison).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SpineFractureDetection"))

from spinefrac.synthetic.validation import GEOMETRIES, LOSSES, run_case, summarise  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacings", type=float, nargs="+", default=[0.8, 1.0, 1.5])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/fracture-phantoms.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = []
    for spacing in args.spacings:
        for geometry in GEOMETRIES:
            for index, loss in enumerate(LOSSES):
                rows += run_case(spacing, geometry, loss, rotation=index % 3, seed=index)
    summary = {"overall": summarise(rows)}
    for spacing in args.spacings:
        summary[f"spacing {spacing} mm"] = summarise([r for r in rows if r["spacing_mm"] == spacing])
    summary["seconds"] = round(time.perf_counter() - started, 1)
    wrong = [r for r in rows if r["grade"] is not None and r["grade"] != r["true_grade"]]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"summary": summary, "wrong": wrong, "rows": rows}, indent=2) + "\n",
                           encoding="utf-8")
    print(json.dumps(summary, indent=2))
    for r in wrong:
        print("wrong:", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
