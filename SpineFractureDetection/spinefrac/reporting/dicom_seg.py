"""The vertebra labels as a DICOM Segmentation (highdicom), on the source CT series' own slices.

One segment per level present, numbered cranial to caudal, coded with the level's SNOMED CT
concept (DICOM CID 7151 "Segmentation Property Types"; T13 and L6 carry the region concept)
in the category "Anatomical Structure" (SCT 91723000, CID 7150). Frame k refers to slice k of
the series (its SOP Instance UID), on its frame of reference; empty frames are left out.
"""

from __future__ import annotations

import numpy as np

from spinefrac import __version__
from spinefrac.io.dicom_series import SourceSeries
from spinefrac.levels import LEVEL_BY_ID, SNOMED_SCHEME, Level, sort_craniocaudal

MANUFACTURER = "SpineFractureDetection"
MODEL_NAME = "spinefrac"
DEVICE_SERIAL_NUMBER = "none"  # software, no device; Type 1 in the Enhanced General Equipment module
SEG_SERIES_NUMBER = 9701
SR_SERIES_NUMBER = 9702

# Engines that made the masks in this run (segmentation.engine -> DICOM CID 7162 algorithm family).
LEARNED_ENGINE_PREFIXES = ("learned", "MONAI")


# The region concepts T13 and L6 carry have these meanings in DICOM CID 7151 (levels.py keeps
# the wording 3D Slicer shows); every other level's meaning is DICOM's already ("L1 vertebra").
DICOM_MEANINGS = {"122495006": "Thoracic spine", "122496007": "Lumbar spine"}


def level_code(level: Level):
    """The level's SNOMED CT concept as DICOM CID 7151 lists it."""
    from highdicom.sr import CodedConcept

    return CodedConcept(level.snomed_code, SNOMED_SCHEME, DICOM_MEANINGS.get(level.snomed_code, level.snomed_meaning))


def segment_numbers(labels: np.ndarray) -> dict[int, int]:
    """VerSe id -> DICOM segment number (1..N), cranial to caudal, for the levels in ``labels``."""
    present = sort_craniocaudal(LEVEL_BY_ID[int(v)] for v in np.unique(labels) if int(v) in LEVEL_BY_ID)
    return {level.verse_id: number for number, level in enumerate(present, start=1)}


def algorithm(segmentation_info: dict):
    """(algorithm type, identification) for the SEG: AUTOMATIC when an engine of this run made the masks
    and nobody edited them, SEMIAUTOMATIC for masks supplied by the user or corrected by hand."""
    from highdicom import AlgorithmIdentificationSequence
    from highdicom.seg import SegmentAlgorithmTypeValues
    from pydicom.sr.codedict import codes

    engine = str(segmentation_info.get("engine") or "unknown")
    supplied = engine in ("existing segmentation", "segments of the scene")
    corrected = segmentation_info.get("masks_corrected") is True
    if supplied or corrected:
        family = codes.DCM.ManualProcessing
    elif engine.startswith(LEARNED_ENGINE_PREFIXES):
        family = codes.DCM.ArtificialIntelligence
    else:
        family = codes.DCM.MorphologicalOperations  # the offline engine: thresholds, profiles, morphology
    kind = SegmentAlgorithmTypeValues.SEMIAUTOMATIC if supplied or corrected else SegmentAlgorithmTypeValues.AUTOMATIC
    identification = AlgorithmIdentificationSequence(name=f"spinefrac: {engine}"[:64], family=family,
                                                     version=__version__, source=MANUFACTURER)
    return kind, identification


def build_segmentation(series: SourceSeries, labels: np.ndarray, segmentation_info: dict):
    """A highdicom Segmentation of ``labels`` ([slice, row, column] VerSe ids on the series' slices)
    and the VerSe id -> segment number table it used."""
    from highdicom import UID
    from highdicom.color import CIELabColor
    from highdicom.seg import Segmentation, SegmentationTypeValues, SegmentDescription
    from pydicom.sr.codedict import codes

    numbers = segment_numbers(labels)
    kind, identification = algorithm(segmentation_info)
    descriptions = [
        SegmentDescription(
            segment_number=number, segment_label=LEVEL_BY_ID[verse_id].name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=level_code(LEVEL_BY_ID[verse_id]),
            algorithm_type=kind, algorithm_identification=identification,
            tracking_uid=UID(), tracking_id=f"{LEVEL_BY_ID[verse_id].name} vertebra",
            display_color=CIELabColor.from_rgb(*LEVEL_BY_ID[verse_id].color_rgb))
        for verse_id, number in numbers.items()]
    lookup = np.zeros(max(LEVEL_BY_ID) + 1, dtype=np.uint8)
    for verse_id, number in numbers.items():
        lookup[verse_id] = number
    segment_map = lookup[np.where(np.isin(labels, list(numbers)), labels, 0).astype(np.intp)]
    seg = Segmentation(
        source_images=source_headers(series), pixel_array=segment_map, segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=UID(), instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
        software_versions=__version__, device_serial_number=DEVICE_SERIAL_NUMBER, content_label="VERTEBRAE",
        content_description="Vertebrae C1-L5 and sacrum, VerSe levels", series_description="Vertebrae (spinefrac)")
    return seg, numbers



def source_headers(series: SourceSeries) -> list:
    """The slices' headers as the SEG's source images. Some scanners write a negative
    SpacingBetweenSlices (0018,0088), which the standard does not permit and highdicom would copy
    into the SEG: those copies go without it, and highdicom derives it from the slice positions.
    SliceThickness (0018,0050) is Type 2 (some converters drop it or leave it empty) and highdicom copies
    it into the SEG's pixel measures: a copy without it gets the distance between the slices' positions."""
    import copy

    headers = []
    for ds in series.datasets:
        negative = float(ds.get("SpacingBetweenSlices") or 0.0) < 0.0
        thickness_missing = missing_slice_thickness(ds)
        if negative or thickness_missing:
            ds = copy.deepcopy(ds)  # headers only: no pixel data was read
        if negative:
            del ds.SpacingBetweenSlices
        if thickness_missing:
            ds.SliceThickness = f"{series.grid.spacing_mm[2]:.6g}"
        headers.append(ds)
    return headers


def missing_slice_thickness(ds) -> bool:
    """SliceThickness absent, empty or not a positive number."""
    try:
        return not float(ds.get("SliceThickness") or 0.0) > 0.0
    except (TypeError, ValueError):
        return True
