"""The per-level results as a DICOM Structured Report: TID 1500 Measurement Report (highdicom).

One TID 1411 volumetric group per level, referring to that level's segment of the DICOM SEG
(and through it to the source series), with finding site the level's SNOMED CT concept and:
the anterior, middle and posterior body heights (mm), the height loss (%), the Genant grade
(0-3), the Genant type and the decision, and the mean trabecular attenuation (HU). The values
are report.json's, as rounded there. Quantities DICOM has no concept for (the three Genant
heights, the grade and type) use the private coding scheme 99SPINEFRAC, declared in the
object's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from spinefrac import __version__
from spinefrac.io.dicom_series import SourceSeries
from spinefrac.levels import LEVEL_BY_NAME
from spinefrac.reporting.dicom_seg import MANUFACTURER, MODEL_NAME, SR_SERIES_NUMBER, level_code

PRIVATE_SCHEME = "99SPINEFRAC"
PRIVATE_SCHEME_NAME = "SpineFractureDetection vertebral fracture assessment"

# report.json column -> (code value, meaning, UCUM unit, unit meaning) of its SR measurement.
PRIVATE_MEASUREMENTS = {
    "height_anterior_mm": ("SF-HA", "Vertebral body anterior height", "mm", "millimeter"),
    "height_middle_mm": ("SF-HM", "Vertebral body middle height", "mm", "millimeter"),
    "height_posterior_mm": ("SF-HP", "Vertebral body posterior height", "mm", "millimeter"),
    "height_loss_percent": ("SF-HL", "Vertebral body height loss", "%", "percent"),
    "genant_grade": ("SF-GG", "Genant semiquantitative fracture grade", "1", "no units"),
}
TRABECULAR_KEY = "trabecular_hu"
GENANT_TYPE = ("SF-GT", "Genant fracture type")
DECISION = ("SF-DC", "Vertebral fracture assessment")
TRABECULAR_METHOD = ("SF-TB", "Vertebral body eroded by 3 mm (trabecular bone)")
QUALITATIVE_VALUES = {
    "none": "No deformity", "wedge": "Wedge deformity", "biconcave": "Biconcave deformity", "crush": "Crush deformity",
    "fractured": "Fractured", "normal": "Normal", "not_assessable": "Not assessable",
}


def private_code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value, PRIVATE_SCHEME, meaning)


def level_measurements(row: dict) -> list:
    """TID 300 measurements of one report row; values missing from the row are left out."""
    from highdicom.sr import CodedConcept, Measurement
    from pydicom.sr.codedict import codes

    found = [Measurement(name=private_code(code, meaning), value=float(row[key]),
                         unit=CodedConcept(unit, "UCUM", unit_meaning))
             for key, (code, meaning, unit, unit_meaning) in PRIVATE_MEASUREMENTS.items() if row.get(key) is not None]
    if row.get(TRABECULAR_KEY) is not None:
        found.append(Measurement(name=codes.DCM.AttenuationCoefficient, value=float(row[TRABECULAR_KEY]),
                                 unit=codes.UCUM.HounsfieldUnit, derivation=codes.SCT.Mean,
                                 method=private_code(*TRABECULAR_METHOD)))
    return found


def level_evaluations(row: dict) -> list:
    from highdicom.sr import QualitativeEvaluation

    found = []
    if row.get("genant_type") is not None:
        found.append(QualitativeEvaluation(private_code(*GENANT_TYPE),
                                           private_code(row["genant_type"], QUALITATIVE_VALUES[row["genant_type"]])))
    if row.get("decision") is not None:
        found.append(QualitativeEvaluation(private_code(*DECISION),
                                           private_code(row["decision"], QUALITATIVE_VALUES[row["decision"]])))
    return found


def level_group(row: dict, seg, segment_number: int, series_uid: str):
    """The TID 1411 group of one level, referring to its segment."""
    from highdicom import UID
    from highdicom.sr import (
        FindingSite,
        ReferencedSegment,
        SourceSeriesForSegmentation,
        TrackingIdentifier,
        VolumetricROIMeasurementsAndQualitativeEvaluations,
    )

    level = LEVEL_BY_NAME[row["level"].lower()]
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=UID(), identifier=f"{level.name} vertebra"),
        referenced_segment=ReferencedSegment(seg.SOPClassUID, seg.SOPInstanceUID, segment_number,
                                             source_series=SourceSeriesForSegmentation(series_uid)),
        finding_sites=[FindingSite(level_code(level))],
        measurements=level_measurements(row), qualitative_evaluations=level_evaluations(row) or None)


def build_measurement_report(series: SourceSeries, seg, segment_number_of: dict[str, int], report: dict):
    """A Comprehensive 3D SR holding the TID 1500 report of every level that has a segment in ``seg``."""
    from highdicom import UID
    from highdicom.sr import (
        Comprehensive3DSR,
        DeviceObserverIdentifyingAttributes,
        MeasurementReport,
        ObservationContext,
        ObserverContext,
    )
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    device = ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=(
        DeviceObserverIdentifyingAttributes(uid=UID(), name=MODEL_NAME, manufacturer_name=MANUFACTURER,
                                            model_name=f"{MODEL_NAME} {__version__}")))
    groups = [level_group(row, seg, segment_number_of[row["level"]], series.series_uid)
              for row in report["levels"] if row["level"] in segment_number_of]
    content = MeasurementReport(observation_context=ObservationContext(observer_device_context=device),
                                procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    sr = Comprehensive3DSR(
        evidence=[seg, *series.datasets], content=content[0], series_instance_uid=UID(),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=UID(), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, series_description="Vertebral fracture assessment (spinefrac)")
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = PRIVATE_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr
