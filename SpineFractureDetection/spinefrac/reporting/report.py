"""Final stage: the per-level report, as JSON (versioned schema) and CSV (one row per level).

Every numeric key carries its unit in its name (``volume_mm3``, ``centroid_s_mm``); HU values
are Hounsfield units. The JSON also carries a ``definitions`` block that says for each column
what it is and how it was measured, so a reader never has to guess.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from spinefrac import __version__
from spinefrac.assessment.fracture import FractureFindings, VertebraFinding
from spinefrac.assessment.measurement import SpineMeasurements, VertebraMeasurement
from spinefrac.assessment.quality import QC_METHOD, LevelQuality, SegmentationQuality
from spinefrac.io.filenames import REPORT_CSV_FILE, REPORT_JSON_FILE
from spinefrac.io.images import CtVolume
from spinefrac.io.outputs import rounded_or_none
from spinefrac.reporting.findings import findings_text
from spinefrac.segmentation.base import NUMBERING_CHECK, VertebraSegmentation

REPORT_SCHEMA = "spinefrac-report"
REPORT_SCHEMA_VERSION = "1.6.0"  # 1.1: fracture findings per level; 1.2: segmentation.level_identification;
# 1.3: quality control (per level qc_verdict/qc_reasons columns, a quality_control block); expected
# anterior/middle heights and the relative height loss per section; findings_text (what findings.txt
# holds) and dicom_export; 1.4: segmentation.masks_fit_for_density, segmentation.grading_needs_clean_qc,
# quality_control.levels[].border_contact_ratios; 1.5: input.fingerprint and segmentation.fingerprint (sha256,
# size and file count of the inputs, spinefrac.io.paths.input_fingerprint); 1.6: levels[].height_source (measured, or
# points placed or moved by the user: spinefrac run --heights)

SACRUM_NOTE = "sacrum: fused bone, reported for level counting; not graded for fracture"

# Column -> what it is, in the order of the CSV.
COLUMN_DEFINITIONS: dict[str, str] = {
    "level": "vertebral level name (C1..L5, T13/L6 variants, sacrum)",
    "verse_id": "label id in the VerSe convention (1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 26 sacrum, 28 T13)",
    "region": "cervical, thoracic, lumbar or sacral",
    "kind": "vertebra, or sacrum (not graded)",
    "snomed_ct_code": "SNOMED CT concept of the level (DICOM CID 7603)",
    "voxel_count": "number of voxels carrying this label",
    "volume_mm3": "voxel_count x voxel volume, mm^3 (whole vertebra incl. posterior elements)",
    "volume_ml": "volume_mm3 / 1000, millilitres",
    "centroid_r_mm": "centroid of the label, R coordinate (RAS, 3D Slicer world), mm",
    "centroid_a_mm": "centroid of the label, A coordinate (RAS), mm",
    "centroid_s_mm": "centroid of the label, S coordinate (RAS), mm",
    "bbox_min_r_mm": "bounding box of voxel centres, minimum R, mm",
    "bbox_min_a_mm": "bounding box of voxel centres, minimum A, mm",
    "bbox_min_s_mm": "bounding box of voxel centres, minimum S, mm",
    "bbox_max_r_mm": "bounding box of voxel centres, maximum R, mm",
    "bbox_max_a_mm": "bounding box of voxel centres, maximum A, mm",
    "bbox_max_s_mm": "bounding box of voxel centres, maximum S, mm",
    "mean_hu": "mean CT value over all voxels of the label (cortical + trabecular + posterior elements), HU",
    "median_hu": "median CT value over all voxels of the label, HU",
    "fov_status": "inside | touches_border | cut (touches the image border and has under "
    "50 % of the volume of the nearest complete levels: partly outside the field of view)",
    "fov_border_faces": "image faces the label touches (patient sides), ';'-separated",
    "height_anterior_mm": "vertebral body height at the anterior point (85 % of the semi-depth in front of "
    "the middle), between the endplates found on the CT (sub-voxel bone/disc edge near the mask's border), "
    "along the body's own axis (mean normal of its fitted endplate planes); median over 5 parasagittal "
    "planes, mm",
    "height_middle_mm": "body height at the middle of the body, same method, mm",
    "height_posterior_mm": "body height at the posterior point (85 % of the semi-depth behind the middle), mm",
    "height_source": "where the three heights come from: 'measured' on the CT as above, or 'points placed or moved "
    "by the user' (spinefrac run --heights: the distances of the level's six points in the edited heights.mrk.json); "
    "empty without heights",
    "height_anterior_expected_mm": "expected anterior height: central height (anterior + posterior) / 2 of up "
    "to two undeformed levels on each side (median), less half this level's physiological wedging "
    "(Masharawi et al., Eur Spine J 2010) and the neighbours' own, mm",
    "height_middle_expected_mm": "expected middle height: that central height times the neighbours' own "
    "middle/central ratio, mm",
    "height_posterior_expected_mm": "expected posterior height: the central height plus half the "
    "physiological and the neighbours' own wedging, mm",
    "anterior_height_loss_percent": "relative height loss of the anterior height against its expected value "
    "(1 - H / H_expected, as HealthiVert-GAN's RHLV per section), percent",
    "middle_height_loss_percent": "relative height loss of the middle height against its expected value, percent",
    "posterior_height_loss_percent": "relative height loss of the posterior height against its expected value "
    "(the crush reduction), percent",
    "expected_from": "the neighbouring levels that set the expected heights, ';'-separated",
    "wedge_ratio": "anterior height / (posterior height less this level's physiological wedging)",
    "biconcave_ratio": "(middle / central height) / the neighbours' middle / central ratio",
    "crush_ratio": "posterior / expected posterior height",
    "height_loss_percent": "largest reduction of the five (wedge, biconcave; anterior, middle and posterior "
    "loss against the expected heights), percent",
    "genant_grade": "Genant semi-quantitative grade: 0 < 20 %, 1 20-25 %, 2 25-40 %, 3 > 40 % height reduction",
    "genant_type": "none, wedge, biconcave or crush: crush when the posterior height is reduced at least 3/4 "
    "as much as the most reduced one (the whole body lower), else wedge when the anterior is reduced more than "
    "the middle, else biconcave",
    "trabecular_hu": "mean CT value of the body eroded by 3 mm (cortex and endplates excluded), HU",
    "fracture_probability": "calibrated probability of a learned classifier (empty without one)",
    "decision": "fractured (red), normal (green) or not_assessable (grey)",
    "decision_reason": "why: the grade and reduction, or what prevents an assessment",
    "in_validated_range": "true for T1-L5 (and T13/L6); cervical levels are outside it: heights measured and "
    "shown, never graded (not_assessable)",
    "qc_verdict": "quality control of the level's mask before grading: pass, warn (graded, check the mask; not "
    "graded when segmentation.grading_needs_clean_qc: the offline engine's estimated level borders) or fail "
    "(not graded: grey); see quality_control.method",
    "qc_reasons": "why the level warns or fails, ';'-separated (empty when it passes)",
    "note": "field-of-view and sacrum remarks, in words",
}

# The quality_control block's fields (JSON only), what each is and how it was measured.
QC_DEFINITIONS: dict[str, str] = {
    "quality_control.overall_verdict": "fail when any level fails, else warn when any warns, else pass",
    "quality_control.identification_confidence": "level identification confidence after QC: one step lower when "
    "masks fail, low when the order or spacing of levels fails, uncertain when most vertebrae fail",
    "quality_control.identification_confidence_before_qc": "the engine's own confidence (null: levels as labelled)",
    "quality_control.levels[].volume_ml": "label volume, millilitres",
    "quality_control.levels[].volume_expected_ml": "adult whole-vertebra volume for the level (Panjabi et al. body "
    "dimensions as elliptic cylinders x whole/body ratio; spinefrac/assessment/anatomy.py), millilitres",
    "quality_control.levels[].volume_relative_to_others": "volume / median of the other complete vertebrae's "
    "volumes scaled to this level by the expected volumes (null with fewer than 3 to compare), ratio",
    "quality_control.levels[].bone_fraction": "fraction of the label's voxels >= 150 HU (cortex and healthy marrow)",
    "quality_control.levels[].hu_median": "median CT value of the label, HU",
    "quality_control.levels[].hu_p95": "95th percentile of the label's CT values, HU (cortex: several hundred)",
    "quality_control.levels[].hu_relative_spread": "inter-quartile range / median of the label's CT values "
    "(bone ~0.7-1.2; contrast-filled blood 0.1-0.3)",
    "quality_control.levels[].rim_minus_interior_hu": "median HU of the label's outer layer (one block of "
    "QC's ~1.5 mm block-averaged grid) minus that of the rest (a vertebra's cortex makes it positive), HU",
    "quality_control.levels[].piece_volumes_ml": "26-connected pieces of the label on QC's ~1.5 mm blocks, "
    "largest first, millilitres",
    "quality_control.levels[].canal_slices": "axial slices in which the label encloses a hole >= 30 mm2 behind "
    "its centre (the spinal canal); judged where axial voxels are <= 1 mm",
    "quality_control.levels[].spacing_ratios": "neighbouring labelled level -> centroid distance / expected "
    "distance (level pitch x one scale factor per patient), ratio",
    "quality_control.levels[].border_contact_ratios": "neighbouring labelled level -> area over which the two "
    "labels touch face to face in the front 30 % of their antero-posterior extent (the bodies, mm2) over the "
    "larger level's volume^(2/3) (mm2), ratio; >= 0.25 with marrow on both sides: a border through a body",
}


@dataclass
class SpineReport:
    """The report of one run: input, segmentation provenance, and one row per level."""

    input: dict
    segmentation: dict
    rows: list[dict]
    notes: list[str] = field(default_factory=list)
    osteoporosis_screen: dict | None = None
    quality_control: dict | None = None
    dicom_export: dict | None = None  # the DICOM SEG/SR written, or why none was
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def from_stages(
        cls,
        ct: CtVolume,
        segmentation: VertebraSegmentation,
        measurements: SpineMeasurements,
        findings: FractureFindings | None = None,
        quality: SegmentationQuality | None = None,
    ) -> "SpineReport":
        grid = ct.source_grid
        by_level = findings.by_name() if findings else {}
        by_quality = quality.by_name() if quality else {}
        report = cls(
            input={
                "path": str(ct.source_path),
                "format": ct.source_format,
                "description": ct.source_description,
                "size_voxels": list(grid.size),
                "spacing_mm": list(grid.spacing_mm),
                "origin_lps_mm": list(grid.origin_mm),
                "orientation": grid.orientation,
            },
            segmentation={
                "engine": segmentation.engine,
                "source": segmentation.source,
                "label_convention": segmentation.convention.value,
                "ignored_labels": segmentation.ignored_labels,
                "notes": segmentation.notes,
                "masks_fit_for_density": segmentation.masks_fit_for_density,
                "grading_needs_clean_qc": segmentation.grading_needs_clean_qc,
                "level_identification": (segmentation.identification.to_dict() if segmentation.identification
                                         else {"anchors": [], "confidence": None,
                                               "summary": "levels as labelled by the segmentation source"}),
            },
            rows=[level_row(m, by_level.get(m.level.name), by_quality.get(m.level.name))
                  for m in measurements.vertebrae],
            notes=list(measurements.notes) + (list(findings.notes) if findings else []),
            osteoporosis_screen=_screen(findings),
            quality_control=quality_block(quality) if quality else None,
        )
        if quality is not None:
            identification = report.segmentation["level_identification"]
            identification["confidence_before_qc"] = identification["confidence"]
            identification["confidence"] = quality.identification_confidence
            if quality.identification_confidence != quality.identification_confidence_before:
                identification["summary"] += f"; quality control: {quality.summary()}"
                if NUMBERING_CHECK not in identification["summary"]:  # lowered from high
                    identification["summary"] += f"; {NUMBERING_CHECK}"
        return report

    def _data(self) -> dict:
        return {
            "schema": REPORT_SCHEMA,
            "schema_version": REPORT_SCHEMA_VERSION,
            "software": {"name": "spinefrac", "version": __version__},
            "created_utc": self.created_utc,
            "coordinate_frame": "RAS (3D Slicer world coordinates), millimetres",
            "input": self.input,
            "segmentation": self.segmentation,
            "definitions": {**COLUMN_DEFINITIONS, **QC_DEFINITIONS},
            "levels": self.rows,
            "quality_control": self.quality_control,
            "osteoporosis_screen": self.osteoporosis_screen,
            "fracture_method": FRACTURE_METHOD,
            "notes": self.notes,
            "dicom_export": self.dicom_export,
        }

    def to_dict(self) -> dict:
        data = self._data()
        data["findings_text"] = findings_text(data)
        return data

    def findings_text(self) -> str:
        """The findings as a radiologist reads them (findings.txt)."""
        return self.to_dict()["findings_text"]

    def to_json(self) -> str:
        return json.dumps(_finite_or_none(self.to_dict()), indent=2, allow_nan=False) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(COLUMN_DEFINITIONS), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({key: csv_value(row[key]) for key in COLUMN_DEFINITIONS})
        return buffer.getvalue()

    def write(self, folder: Path) -> tuple[Path, Path]:
        json_path, csv_path = folder / REPORT_JSON_FILE, folder / REPORT_CSV_FILE
        json_path.write_text(self.to_json(), encoding="utf-8")
        csv_path.write_text(self.to_csv(), encoding="utf-8")
        return json_path, csv_path


FRACTURE_METHOD = (
    "Genant semi-quantitative grading (Genant et al., J Bone Miner Res 1993) from vertebral body heights: "
    "body isolated from the posterior elements at the spinal canal, heights between the endplates found on "
    "the CT along the body's own endplate axis, median over five parasagittal planes; reductions within the "
    "vertebra (physiological wedging by level allowed) and against the heights expected from undeformed "
    "neighbours. Red = grade >= 1 (or classifier probability >= threshold), green = normal, grey = not "
    "assessable."
)


def _screen(findings: FractureFindings | None) -> dict | None:
    if findings is None or findings.osteoporosis is None:
        return None
    screen = findings.osteoporosis
    return {"level": screen.level, "trabecular_hu": round(screen.trabecular_hu, 1),
            "category": screen.category, "method": screen.method}


def _finding_columns(f: VertebraFinding | None) -> dict:
    if f is None:
        return {key: None for key in ("height_anterior_mm", "height_middle_mm", "height_posterior_mm", "height_source",
                                      "height_anterior_expected_mm", "height_middle_expected_mm",
                                      "height_posterior_expected_mm", "anterior_height_loss_percent",
                                      "middle_height_loss_percent", "posterior_height_loss_percent",
                                      "expected_from", "wedge_ratio", "biconcave_ratio",
                                      "crush_ratio", "height_loss_percent", "genant_grade", "genant_type",
                                      "trabecular_hu", "fracture_probability", "decision", "decision_reason",
                                      "in_validated_range")}
    return {
        "height_anterior_mm": rounded_or_none(f.height_anterior_mm, 1),
        "height_middle_mm": rounded_or_none(f.height_middle_mm, 1),
        "height_posterior_mm": rounded_or_none(f.height_posterior_mm, 1),
        "height_source": f.height_source,
        "height_anterior_expected_mm": rounded_or_none(f.height_anterior_expected_mm, 1),
        "height_middle_expected_mm": rounded_or_none(f.height_middle_expected_mm, 1),
        "height_posterior_expected_mm": rounded_or_none(f.height_posterior_expected_mm, 1),
        "anterior_height_loss_percent": rounded_or_none(100.0 * f.anterior_loss, 1),
        "middle_height_loss_percent": rounded_or_none(100.0 * f.middle_loss, 1),
        "posterior_height_loss_percent": rounded_or_none(100.0 * f.crush_reduction, 1),
        "expected_from": ";".join(f.expected_from) or None,
        "wedge_ratio": rounded_or_none(1.0 - f.wedge_reduction, 3),
        "biconcave_ratio": rounded_or_none(1.0 - f.biconcave_reduction, 3),
        "crush_ratio": rounded_or_none(1.0 - f.crush_reduction, 3),
        "height_loss_percent": rounded_or_none(100.0 * f.height_loss, 1),
        "genant_grade": f.genant_grade,
        "genant_type": f.genant_type.value if f.genant_grade is not None else None,
        "trabecular_hu": rounded_or_none(f.trabecular_hu, 1),
        "fracture_probability": f.fracture_probability,
        "decision": f.decision.value,
        "decision_reason": f.reason,
        "in_validated_range": f.in_validated_range,
    }


def quality_block(quality: SegmentationQuality) -> dict:
    """The report's quality_control block: overall verdict, confidence, and per-level evidence."""
    return {
        "method": QC_METHOD,
        "overall_verdict": quality.verdict.value,
        "summary": quality.summary(),
        "counts": quality.counts(),
        "identification_confidence": quality.identification_confidence,
        "identification_confidence_before_qc": quality.identification_confidence_before,
        "levels": [_quality_entry(q) for q in quality.levels],
    }


def _quality_entry(q: LevelQuality) -> dict:
    e = q.evidence
    return {
        "level": q.level.name,
        "verdict": q.verdict.value,
        "failures": list(q.failures),
        "warnings": list(q.warnings),
        "volume_ml": round(q.volume_ml, 2),
        "volume_expected_ml": q.volume_expected_ml,
        "volume_relative_to_others": rounded_or_none(q.volume_relative_to_others, 2),
        "bone_fraction": round(e.bone_fraction, 3),
        "hu_median": round(e.hu_median, 1),
        "hu_p95": round(e.hu_p95, 1),
        "hu_relative_spread": round(e.hu_relative_spread, 3),
        "rim_minus_interior_hu": rounded_or_none(e.rim_minus_interior_hu, 1),
        "piece_volumes_ml": [round(v, 2) for v in e.piece_volumes_ml[:5]],
        "canal_slices": e.canal_slices,
        "spacing_ratios": {name: round(r, 2) for name, r in q.spacing_ratios.items()},
        "border_contact_ratios": {name: round(r, 2) for name, r in q.border_contact_ratios.items()},
    }


def level_row(m: VertebraMeasurement, finding: VertebraFinding | None = None,
              quality: LevelQuality | None = None) -> dict:
    notes = [m.fov_note] if m.fov_note else []
    if not m.level.is_vertebra:
        notes.append(SACRUM_NOTE)
    (r, a, s), (r0, a0, s0), (r1, a1, s1) = m.centroid_ras_mm, m.bbox_min_ras_mm, m.bbox_max_ras_mm
    return {
        "level": m.level.name,
        "verse_id": m.level.verse_id,
        "region": m.level.region.value,
        "kind": "vertebra" if m.level.is_vertebra else "sacrum",
        "snomed_ct_code": m.level.snomed_code,
        "voxel_count": m.voxel_count,
        "volume_mm3": round(m.volume_mm3, 3),
        "volume_ml": round(m.volume_mm3 / 1000.0, 3),
        "centroid_r_mm": round(r, 2),
        "centroid_a_mm": round(a, 2),
        "centroid_s_mm": round(s, 2),
        "bbox_min_r_mm": round(r0, 2),
        "bbox_min_a_mm": round(a0, 2),
        "bbox_min_s_mm": round(s0, 2),
        "bbox_max_r_mm": round(r1, 2),
        "bbox_max_a_mm": round(a1, 2),
        "bbox_max_s_mm": round(s1, 2),
        "mean_hu": round(m.hu_mean, 1),
        "median_hu": round(m.hu_median, 1),
        "fov_status": m.fov_status.value,
        "fov_border_faces": list(m.fov_border_faces),
        **_finding_columns(finding),
        "qc_verdict": quality.verdict.value if quality else None,
        "qc_reasons": list(quality.reasons) if quality else [],
        "note": "; ".join(notes),
    }


def csv_value(value):
    """A report value as its CSV cell: lists joined with ";", None and NaN empty."""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def _finite_or_none(value):
    """JSON has no NaN: unmeasurable numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value
