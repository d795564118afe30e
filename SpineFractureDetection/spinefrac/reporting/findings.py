"""The findings text a radiologist reads: one sentence per fractured level, the L1 density screen,
the levels that could not be assessed and why, where the masks came from, and a one-line impression.

Built from the report's own dictionary (``SpineReport.to_dict()``, i.e. what report.json holds),
so the text never says a number the JSON does not.
"""

from __future__ import annotations

from pathlib import Path

from spinefrac.assessment.fracture import L1_OSTEOPENIA_HU, L1_OSTEOPOROSIS_HU
from spinefrac.assessment.morphometry import HEIGHTS_FROM_USER_POINTS

GRADE_WORDS = {1: "mild", 2: "moderate", 3: "severe"}

# Set by a caller that knows (the Slicer module compares the segments with what it wrote):
# True when a clinician edited the masks, False when they are as the engine made them.
MASKS_CORRECTED_KEY = "masks_corrected"
# Engines whose masks come from the user, not from this run: whether they were corrected is unknown.
USER_SUPPLIED_ENGINES = ("existing segmentation", "segments of the scene")

# Per Genant type, the height measured against the height it is expected to have, first match
# wins: (measured key, expected key, how the expected height was obtained). A newer report
# field (for example an expected anterior height from the neighbours) goes first in its list.
HEIGHT_COMPARISONS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "wedge": (("height_anterior_mm", "height_anterior_expected_mm", "expected from the neighbouring levels"),
              ("height_anterior_mm", "height_posterior_mm", "the posterior height of the same body")),
    "biconcave": (("height_middle_mm", "height_middle_expected_mm", "expected from the neighbouring levels"),
                  ("height_middle_mm", None, "the taller of its anterior and posterior heights")),
    "crush": (("height_posterior_mm", "height_posterior_expected_mm", "expected from the neighbouring levels"),),
}
HEIGHT_NAMES = {"height_anterior_mm": "anterior", "height_middle_mm": "middle", "height_posterior_mm": "posterior"}


def findings_text(report: dict) -> str:
    """The whole findings text, one paragraph per topic, ending with the impression."""
    return "\n".join(findings_lines(report)) + "\n"


def findings_lines(report: dict) -> list[str]:
    rows = report.get("levels", [])
    fractured = [row for row in rows if row.get("decision") == "fractured"]
    lines = [f"Findings: {_study(report)}", f"Levels in view: {_span(rows)}."]
    lines.append(f"Level numbering: {numbering_sentence(report.get('segmentation', {}))}")
    lines.append("Vertebral fractures:" if fractured else _no_fracture_sentence(rows))
    lines += [f"- {fracture_sentence(row)}" for row in fractured]
    lines += [f"Heights: {user_heights_sentence(rows)}"] if user_heights_sentence(rows) else []
    lines.append(f"Osteoporosis screen: {osteoporosis_sentence(report)}")
    lines.append(f"Not assessable: {_not_assessable(rows)}")
    lines.append(f"Masks: {masks_sentence(report.get('segmentation', {}))}")
    lines.append(f"Impression: {impression(report)}")
    return lines


def fracture_sentence(row: dict) -> str:
    """'L1: moderate (Genant grade 2) wedge fracture, anterior height 17.0 mm against 25.0 mm ...'."""
    grade = row.get("genant_grade")
    if not grade:  # called by the learned classifier alone
        loss = row.get("height_loss_percent")
        measured = f"; largest height loss {loss:.0f} % (Genant grade 0)" if loss is not None else ""
        return f"{row['level']}: fracture called by the learned classifier ({row.get('decision_reason')}){measured}."
    sentence = (f"{row['level']}: {GRADE_WORDS[grade]} (Genant grade {grade}) {row.get('genant_type')} fracture, "
                f"{height_loss_phrase(row)}")
    cautions = [part for part in (row.get("decision_reason") or "").split("; ")
                if part.startswith(("lumbosacral", "classifier"))]
    return sentence + "".join(f"; {caution}" for caution in cautions) + "."


def user_heights_sentence(rows: list[dict]) -> str:
    """Which levels' heights come from points the user placed or moved (empty: none)."""
    names = [row["level"] for row in rows if row.get("height_source") == HEIGHTS_FROM_USER_POINTS]
    if not names:
        return ""
    return (f"{', '.join(names)} measured from {HEIGHTS_FROM_USER_POINTS} (the distances of the six points given "
            "with --heights); the other levels as measured on the CT.")


def height_loss_phrase(row: dict) -> str:
    """The reduced height against its expected height, in mm, and the height loss in percent."""
    loss = row.get("height_loss_percent")
    loss_text = f"{loss:.0f} % height loss" if loss is not None else "height loss not measured"
    for measured_key, expected_key, source in HEIGHT_COMPARISONS.get(row.get("genant_type"), ()):
        measured = row.get(measured_key)
        expected = row.get(expected_key) if expected_key else _taller_edge(row)
        if measured is None or expected is None:
            continue
        name = HEIGHT_NAMES.get(measured_key, measured_key)
        return f"{name} height {measured:.1f} mm against {expected:.1f} mm ({source}): {loss_text}"
    return loss_text


def _taller_edge(row: dict) -> float | None:
    edges = [row.get("height_anterior_mm"), row.get("height_posterior_mm")]
    return max(edges) if None not in edges else None


def osteoporosis_sentence(report: dict) -> str:
    thresholds = (f"thresholds <= {L1_OSTEOPOROSIS_HU:.0f} HU likely osteoporosis, <= {L1_OSTEOPENIA_HU:.0f} HU low "
                  "bone density (Pickhardt et al., Ann Intern Med 2013; 120 kVp CT, not a DXA substitute)")
    screen = report.get("osteoporosis_screen")
    if screen:
        return (f"{screen['level']} trabecular attenuation {screen['trabecular_hu']:.0f} HU: {screen['category']} "
                f"({thresholds}).")
    l1 = next((row for row in report.get("levels", []) if row.get("level") == "L1"), None)
    if l1 is None:
        return "not done: L1 is not in view."
    if report.get("segmentation", {}).get("masks_fit_for_density") is False:  # the offline and guided engines' masks
        return ("not done: L1 trabecular attenuation is not measured on bone-threshold masks (offline or "
                "guided engine: a bone threshold leaves out low-density marrow and would bias it high).")
    return f"not done: L1 trabecular attenuation not measured ({l1.get('decision_reason') or 'no vertebral body'})."


def numbering_sentence(segmentation: dict) -> str:
    """Which landmark the level names were counted from and how sure that is; below high, that the
    numbering needs confirming (the summary of report.json's level_identification says how)."""
    identification = segmentation.get("level_identification") or {}
    confidence = identification.get("confidence")
    if confidence is None:
        return "as labelled by the segmentation source."
    summary = identification.get("summary") or "no landmark recorded"
    if confidence == "high":
        return f"{summary}."
    return f"confidence {confidence}: {summary}."


def masks_sentence(segmentation: dict) -> str:
    engine = segmentation.get("engine") or "unknown engine"
    corrected = segmentation.get(MASKS_CORRECTED_KEY)
    if corrected is True:
        state = "corrected by a clinician before grading"
    elif corrected is False:
        state = "not corrected by a clinician"
    elif engine in USER_SUPPLIED_ENGINES:
        state = "supplied by the user; whether a clinician corrected them is not recorded"
    else:
        state = "as the engine made them, not corrected by a clinician"
    source = segmentation.get("source")
    origin = f"{engine} ({source})" if source and engine in USER_SUPPLIED_ENGINES else engine
    return f"{origin}; {state}."


def impression(report: dict) -> str:
    rows = report.get("levels", [])
    fractured = [row for row in rows if row.get("decision") == "fractured"]
    assessed = [row for row in rows if row.get("decision") in ("fractured", "normal")]
    if fractured:
        count = f"{len(fractured)} vertebral fracture{'s' if len(fractured) > 1 else ''}"
        listed = ", ".join(_short_fracture(row) for row in fractured)
        text = f"{count}: {listed}."
    elif assessed:
        text = f"no vertebral fracture in the {len(assessed)} assessable level{'s' * (len(assessed) > 1)} " \
               f"({_span(assessed, count=False)})."
    else:
        text = "no level could be graded for fracture (reasons above): not a normal result."
    screen = report.get("osteoporosis_screen")
    if screen and screen["category"] != "normal density":
        text += f" {screen['level']} {screen['trabecular_hu']:.0f} HU: {screen['category']}."
    return text[0].upper() + text[1:]


def _short_fracture(row: dict) -> str:
    grade = row.get("genant_grade")
    if not grade:
        return f"{row['level']} (learned classifier)"
    return f"{row['level']} {GRADE_WORDS[grade]} {row.get('genant_type')} (Genant {grade})"


def _no_fracture_sentence(rows: list[dict]) -> str:
    assessed = [row for row in rows if row.get("decision") == "normal"]
    if not assessed:
        return "Vertebral fractures: not assessed: no level could be graded (the reasons are listed below)."
    return (f"Vertebral fractures: none. No vertebral fracture was found in the {len(assessed)} assessable "
            f"level{'s' * (len(assessed) > 1)} ({_span(assessed)}): every height loss is under 20 %.")


def _not_assessable(rows: list[dict]) -> str:
    grey = [row for row in rows if row.get("decision") not in ("fractured", "normal")]
    if not grey:
        return "none."
    by_reason: dict[str, list[str]] = {}  # levels with the same reason share one clause
    for row in grey:
        by_reason.setdefault(_reason(row), []).append(row["level"])
    return "; ".join(f"{', '.join(levels)} ({reason})" for reason, levels in by_reason.items()) + "."


def _reason(row: dict) -> str:
    reason = row.get("decision_reason") or "not graded"
    return reason.removeprefix(f"{row['level']}: ")  # "sacrum: not graded" is listed under sacrum already


def _span(rows: list[dict], count: bool = True) -> str:
    names = [row["level"] for row in rows]
    if len(names) < 2:
        return names[0] if names else "none"
    return f"{names[0]}-{names[-1]}" + (f", {len(names)} levels" if count else "")


def _study(report: dict) -> str:
    source = report.get("input", {})
    name = Path(source.get("path") or "CT").name
    software = report.get("software", {})
    return (f"{name} ({source.get('description') or source.get('format', 'CT')}); spinefrac "
            f"{software.get('version', '')}, {report.get('created_utc', '')}.")
