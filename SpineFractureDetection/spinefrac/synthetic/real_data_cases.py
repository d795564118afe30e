"""Cases on real data with known answers, shared by the tests and the benchmarks (so the figures
in the README and the assertions in CI come from the same code):

- simulated fractures on a real CT with its vertebra labels (fracture_simulation.py);
- expert VerSe masks (no CT published with them) turned into a CT (mask_ct.py), for their
  published Genant grades.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from spinefrac.assessment.chain import SpineAssessment, assess
from spinefrac.assessment.fracture import Decision, genant_grade
from spinefrac.io.images import CtVolume, ct_from_image, load_ct, to_canonical
from spinefrac.segmentation.base import LabelConvention, VertebraSegmentation
from spinefrac.segmentation.label_maps import ExistingLabelMap
from spinefrac.synthetic.fracture_simulation import SimulatedFracture, simulate_fracture
from spinefrac.synthetic.mask_ct import ct_from_label_map


def segmentation_of(labels: sitk.Image, source: str) -> VertebraSegmentation:
    """VerSe-id labels already on the CT's canonical grid."""
    return VertebraSegmentation(to_canonical(labels), "reference labels", source, LabelConvention.VERSE)


def fractured_copy(ct: CtVolume, segmentation: VertebraSegmentation, baseline: SpineAssessment,
                   fracture: SimulatedFracture) -> tuple[CtVolume, VertebraSegmentation]:
    m = baseline.morphometry.by_name()[fracture.level]
    image, labels = simulate_fracture(ct.image, segmentation.label_map, m, fracture)
    name = f"{fracture.level} {fracture.kind} {fracture.loss:.0%}"
    return (ct_from_image(image, f"simulated {name}", "simulation", check_hu=False),
            segmentation_of(labels, f"simulated {name}"))


def simulated_case_rows(ct_path: Path, labels_path: Path, cases) -> list[dict]:
    """One row per (level, kind, loss): truth, what the chain found, other levels called fractured."""
    ct = load_ct(ct_path)
    segmentation = ExistingLabelMap(labels_path).segment(ct)
    baseline = assess(ct, segmentation)
    rows = []
    for level, kind, loss in cases:
        fracture = SimulatedFracture(level, kind, loss)
        findings = assess(*fractured_copy(ct, segmentation, baseline, fracture)).findings.by_name()
        rows.append(case_row(fracture, findings))
    return rows


def case_row(fracture: SimulatedFracture, findings: dict) -> dict:
    f = findings[fracture.level]
    true_grade = genant_grade(fracture.loss + 1e-9)
    others = [name for name, other in findings.items()
              if name != fracture.level and other.decision is Decision.FRACTURED]
    return {
        "level": fracture.level, "kind": fracture.kind, "loss": fracture.loss, "true_grade": true_grade,
        "decision": f.decision.value, "grade": f.genant_grade, "type": f.genant_type.value,
        "height_loss_percent": round(100 * f.height_loss, 1) if f.genant_grade is not None else None,
        "heights_mm": [round(h, 1) for h in (f.height_anterior_mm, f.height_middle_mm, f.height_posterior_mm)],
        "decision_right": f.decision is Decision.FRACTURED,
        "grade_within_one": f.genant_grade is not None and abs(f.genant_grade - true_grade) <= 1,
        "grade_exact": f.genant_grade == true_grade,
        "type_right": f.genant_type.value == fracture.kind,
        "other_levels_fractured": others,
    }


def summarise_cases(rows: list[dict]) -> dict:
    n = len(rows)

    def share(key):
        return round(sum(bool(r[key]) for r in rows) / n, 3) if n else None

    return {"cases": n, "decision_right": share("decision_right"), "grade_within_one": share("grade_within_one"),
            "grade_exact": share("grade_exact"), "type_right": share("type_right"),
            "cases_with_an_uncompressed_level_fractured": sum(bool(r["other_levels_fractured"]) for r in rows)}


def verse_mask_case(mask_path: Path, seed: int = 0) -> tuple[CtVolume, VertebraSegmentation]:
    """A VerSe expert mask (float or integer VerSe ids) with a CT built around it."""
    labels = sitk.ReadImage(str(mask_path))
    if labels.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        labels = sitk.Round(labels)
    labels = sitk.Cast(labels, sitk.sitkUInt8)
    ct = ct_from_image(ct_from_label_map(labels, seed), mask_path, "nifti", "CT built around a VerSe mask",
                       check_hu=False)
    return ct, segmentation_of(labels, str(mask_path))
