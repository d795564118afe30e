"""The vertebra SNOMED CT codes as a Slicer terminology context, shipped with the module.

Slicer's "DICOM master list" context has no entry per vertebral level, so a segment coded
"L1 vertebra" against it is found in no loaded terminology. The module ships its own context
(``Resources/Terminology/*.term.json``, the dcmqi segment-context format Slicer reads, generated
from ``spinefrac.levels``) and loads it, as SlicerTotalSegmentator does with its own. No Qt.
"""

from __future__ import annotations

from pathlib import Path

from spinefrac.levels import ANATOMICAL_STRUCTURE_CATEGORY, SNOMED_SCHEME, Level

TERMINOLOGY_FILE = (Path(__file__).resolve().parents[1] / "Resources" / "Terminology"
                    / "SegmentationCategoryTypeModifier-SpineFractureDetection.term.json")
TERMINOLOGY_CONTEXT = "Segmentation category and type - SpineFractureDetection"


def load_terminology(terminologies_logic) -> str:
    """Load the module's context into a vtkSlicerTerminologiesModuleLogic once; its name."""
    if not terminologies_logic.IsTerminologyContextLoaded(TERMINOLOGY_CONTEXT):
        loaded = terminologies_logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
        if loaded != TERMINOLOGY_CONTEXT:
            raise RuntimeError(f"the vertebra terminology {TERMINOLOGY_FILE.name} could not be loaded")
    return TERMINOLOGY_CONTEXT


def terminology_entry(level: Level) -> str:
    """Slicer's serialised terminology entry (context~category~type~type modifier~anatomic
    context~region~region modifier), the form vtkSlicerTerminologiesModuleLogic writes."""
    category = f"{SNOMED_SCHEME}^{ANATOMICAL_STRUCTURE_CATEGORY[0]}^{ANATOMICAL_STRUCTURE_CATEGORY[1]}"
    segment_type = f"{SNOMED_SCHEME}^{level.snomed_code}^{level.snomed_meaning}"
    return f"{TERMINOLOGY_CONTEXT}~{category}~{segment_type}~^^~~^^~^^"
