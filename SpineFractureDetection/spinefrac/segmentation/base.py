"""Stage 2: vertebra segmentation, the engine interface and its result.

Engines turn a CtVolume into a VertebraSegmentation: a label map on the CT's canonical grid
whose voxel values are VerSe level ids. The offline, learned and existing-label-map engines all
implement ``SegmentationEngine``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import SimpleITK as sitk

from spinefrac.io.images import CtVolume
from spinefrac.levels import LEVEL_BY_ID, Level, sort_craniocaudal
from spinefrac.progress import Progress, silent

LABEL_PIXEL_TYPE = sitk.sitkUInt8  # VerSe ids fit in a byte


class LabelConvention(str, Enum):
    AUTO = "auto"
    VERSE = "verse"
    TOTALSEGMENTATOR = "totalsegmentator"  # TotalSegmentator v2 "total" task ids
    TOTALSEGMENTATOR_V1 = "totalsegmentator-v1"  # TotalSegmentator v1 "total" task ids (other order)
    NAMES = "names"  # segment names (Slicer .seg.nrrd) or mask file names


# Counting down from C2 is the reference for numbering vertebrae (Carrino et al., Radiology 2011;259:196-202);
# said wherever a numbering rests on less than that and an independent landmark agreeing.
NUMBERING_CHECK = ("the numbering needs confirming: count down from C2 where an image shows it, or name one "
                   "vertebra in guided segmentation")


@dataclass(frozen=True)
class LevelIdentification:
    """How an engine decided which vertebra is which (engines that count from landmarks)."""

    anchors: tuple[str, ...]  # the landmarks counted from, most reliable first; empty: none in view
    confidence: str  # "high" (an anchor counted from the top of the spine agrees with another, or the
    # sacrum naming lumbar levels only), "medium" (one landmark, or the sacrum and the last rib, which
    # can be off together), "low" (anchors disagree), "uncertain" (no anchor: the numbering is an assumption)
    summary: str  # one sentence for people: anchors, agreement, assumption; below high, how to confirm

    def to_dict(self) -> dict:
        return {"anchors": list(self.anchors), "confidence": self.confidence, "summary": self.summary}


@dataclass
class VertebraSegmentation:
    """Stage 1 result: vertebra labels (VerSe ids) on the CT's canonical grid."""

    label_map: sitk.Image
    engine: str
    source: str
    convention: LabelConvention
    # Source labels that are not vertebrae -> their voxel count (None: file not read).
    ignored_labels: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # False when the masks follow a bone threshold rather than the trabecular body (the offline
    # engine): the trabecular HU (the L1 density screen) is withheld.
    masks_fit_for_density: bool = True
    # True when the level borders are estimated rather than traced by a model or a clinician (the
    # offline engine): a level is graded only where quality control passes it without a warning;
    # elsewhere its heights are shown and the grade is withheld until the masks are checked
    # (Slicer: edit, then Classify).
    grading_needs_clean_qc: bool = False
    # None: the levels are as the source or the model labelled them.
    identification: LevelIdentification | None = None

    def array(self) -> np.ndarray:
        return sitk.GetArrayViewFromImage(self.label_map)

    @property
    def levels(self) -> list[Level]:
        labels = self.array()[labelled_box(self.array())]  # the background is most of the grid: left out first
        present = np.unique(labels[labels != 0])
        return sort_craniocaudal(LEVEL_BY_ID[int(v)] for v in present if int(v) in LEVEL_BY_ID)


def label_image_on(labels: np.ndarray, ct_image: sitk.Image) -> tuple[sitk.Image, list[int]]:
    """An engine's [k, j, i] VerSe-id array as a label map on the CT's grid, and the ids present (counted
    over the labelled voxels only: a count over the whole volume widens it to 8 bytes a voxel)."""
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct_image)
    if image.GetPixelID() != LABEL_PIXEL_TYPE:
        image = sitk.Cast(image, LABEL_PIXEL_TYPE)
    return image, [int(v) for v in np.flatnonzero(np.bincount(labels[labels > 0])) if v]


def labelled_box(values: np.ndarray) -> tuple[slice, slice, slice]:
    """The bounding box of a [k, j, i] array's non-zero voxels (empty slices when there are none): labels
    fill a few percent of a CT's grid, so per-voxel work is done inside it."""
    if values.dtype.kind == "u":  # the maximum is non-zero where any voxel is: no boolean copy of the grid
        k = np.flatnonzero(values.reshape(values.shape[0], -1).max(axis=1, initial=0))
        plane = values[k[0] : k[-1] + 1].max(axis=0) if k.size else None
    else:
        labelled = values != 0
        k = np.flatnonzero(labelled.any(axis=(1, 2)))
        plane = labelled[k[0] : k[-1] + 1].any(axis=0) if k.size else None
    if k.size == 0:
        return slice(0, 0), slice(0, 0), slice(0, 0)
    j, i = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return slice(k[0], k[-1] + 1), slice(j[0], j[-1] + 1), slice(i[0], i[-1] + 1)


class SegmentationEngine(ABC):
    """Something that produces vertebra labels for a CT."""

    name: str

    @abstractmethod
    def segment(self, ct: CtVolume, progress: Progress = silent) -> VertebraSegmentation:
        """Label every vertebra in ``ct``; raise a SpineFracError the user can act on."""
