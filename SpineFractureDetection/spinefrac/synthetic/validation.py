"""Fracture-grading validation on synthetic phantoms with known height loss.

Shared by the accuracy benchmark (benchmarks/fracture_phantom_accuracy.py) and the tests, so
the figures in the README and the assertions in CI come from the same code.

Grid: height loss x type (wedge, biconcave, crush) x spacing x geometry (straight; curved +
tilted on an oblique grid). Each phantom holds T10-L5 + sacrum with three fractured levels
(T11, L1, L3: every other level, so each has undeformed neighbours), types rotated between
phantoms. The single-most-deformed-sagittal-plane rule runs on the same phantoms for comparison.
"""

from __future__ import annotations

import numpy as np

from spinefrac.assessment.fracture import assess_fractures, genant_grade
from spinefrac.assessment.measurement import measure_vertebrae
from spinefrac.assessment.morphometry import measure_morphometry, sagittal_plane_heights
from spinefrac.io.images import ct_from_image, to_canonical
from spinefrac.segmentation.base import LabelConvention, VertebraSegmentation
from spinefrac.synthetic.phantom import Fracture, PhantomSpec, make_phantom

LEVELS = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum")
FRACTURED = ("T11", "L1", "L3")
TYPES = ("wedge", "biconcave", "crush")
LOSSES = (0.0, 0.10, 0.15, 0.22, 0.30, 0.45)
# "Within one voxel", allowing for the 0.1 mm line sampling and for the phantom's point-spread
# function: heights come from the CT's bone/disc edge, which the phantom blurs (PhantomSpec.blur_mm).
HEIGHT_TOLERANCE_SLACK_MM = 0.01 + PhantomSpec.__dataclass_fields__["blur_mm"].default
ALL_PLANES = np.linspace(-0.45, 0.45, 19)  # sagittal planes across the whole body width
GEOMETRIES = {  # name -> PhantomSpec geometry arguments
    "straight": dict(),
    "curved-tilted-oblique": dict(sagittal_curvature_mm=20.0, coronal_curvature_mm=12.0, forward_tilt_deg=12.0,
                                  orientation=tuple(np.array([[np.cos(0.3), -np.sin(0.3), 0.0],
                                                              [np.sin(0.3), np.cos(0.3), 0.0],
                                                              [0.0, 0.0, 1.0]]).ravel())),
}


def single_worst_plane_grades(ct, morphometry) -> dict[str, int]:
    """The single-slice rule: grade each level on the one sagittal plane, among all planes
    across its body, that shows the largest deformation."""
    grades = {}
    for m in morphometry.vertebrae:
        if m.heights is None:
            continue
        worst = 0.0
        for anterior, middle, posterior in sagittal_plane_heights(ct, m, ALL_PLANES):
            if not np.all(np.isfinite([anterior, middle, posterior])):
                continue
            worst = max(worst, 1 - anterior / posterior, 1 - middle / max(anterior, posterior))
        grades[m.level.name] = genant_grade(worst)
    return grades


def run_case(spacing_mm: float, geometry: str, loss: float, rotation: int, seed: int) -> list[dict]:
    kinds = TYPES[rotation:] + TYPES[:rotation]
    fractures = {name: Fracture(kind, loss) for name, kind in zip(FRACTURED, kinds)} if loss > 0 else {}
    spec = PhantomSpec(levels=LEVELS, spacing_mm=(spacing_mm,) * 3, fractures=fractures, seed=seed,
                       **GEOMETRIES[geometry])
    phantom = make_phantom(spec)
    ct = ct_from_image(phantom.ct, "phantom", "phantom")
    segmentation = VertebraSegmentation(to_canonical(phantom.labels), "truth", "phantom", LabelConvention.VERSE)
    measurements = measure_vertebrae(ct, segmentation)
    morphometry = measure_morphometry(ct, segmentation, measurements)
    findings = assess_fractures(measurements, morphometry).by_name()
    baseline = single_worst_plane_grades(ct, morphometry)
    rows = []
    for name, truth in phantom.truth.items():
        finding = findings[name]
        true_grade = genant_grade(truth.genant_height_loss + 1e-9)
        heights = (finding.height_anterior_mm, finding.height_middle_mm, finding.height_posterior_mm)
        truths = (truth.height_anterior_mm, truth.height_middle_mm, truth.height_posterior_mm)
        rows.append(dict(
            spacing_mm=spacing_mm, geometry=geometry, level=name, loss=loss,
            type=truth.fracture.kind.value if truth.fracture else "none",
            true_grade=true_grade, grade=finding.genant_grade, decision=finding.decision.value,
            baseline_grade=baseline.get(name),
            max_height_error_mm=float(np.max(np.abs(np.subtract(heights, truths)))),
        ))
    return rows


def summarise(rows: list[dict]) -> dict:
    graded = [r for r in rows if r["grade"] is not None]
    normal = [r for r in rows if r["true_grade"] == 0]
    return {
        "levels": len(rows),
        "assessable": len(graded),
        "grade_accuracy": sum(r["grade"] == r["true_grade"] for r in graded) / max(len(graded), 1),
        "false_fractures_on_normal_levels": sum((r["grade"] or 0) >= 1 for r in normal),
        "baseline_false_fractures_on_normal_levels": sum((r["baseline_grade"] or 0) >= 1 for r in normal),
        "normal_levels": len(normal),
        "heights_within_one_voxel": sum(r["max_height_error_mm"] <= r["spacing_mm"] + HEIGHT_TOLERANCE_SLACK_MM for r in graded)
        / max(len(graded), 1),
        "max_height_error_mm": max((r["max_height_error_mm"] for r in graded), default=None),
    }


