"""One point per level found: where a clinician would click it, the centre of its vertebral body.

Written with every run (``points.mrk.json``, a Slicer markups point list) so that guided segmentation
can start from the engine's own points: the clinician moves, adds or deletes the wrong ones, names
one level, and segments again.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spinefrac.assessment.measurement import SpineMeasurements
from spinefrac.coordinates import lps_from_ras
from spinefrac.io.points import VertebraPoint
from spinefrac.levels import SACRUM

S1_HEIGHT_MM = 30.0  # the top of the sacrum that is S1's body: the guided engine expects S1 there


def level_points(labels: sitk.Image, body_labels: np.ndarray, measurements: SpineMeasurements) -> list[VertebraPoint]:
    """Per measured level (cranial first) the centroid of its isolated body; the sacrum's in its top
    S1_HEIGHT_MM (S1); the whole level's where no body was isolated (a level cut by the field of view).
    labels: VerSe ids on the canonical grid; body_labels: the bodies on the same [k, j, i] grid."""
    present = [int(v) for v in np.unique(body_labels) if v]
    centres_kji = dict(zip(present, ndimage.center_of_mass(body_labels > 0, body_labels, present))) if present else {}
    if any(m.level is SACRUM for m in measurements.vertebrae):
        centres_kji[SACRUM.verse_id] = _s1_centre_kji(labels)
    points = []
    for m in measurements.vertebrae:
        if centres_kji.get(m.level.verse_id) is not None:
            centre_ijk = [float(v) for v in centres_kji[m.level.verse_id][::-1]]
            position = labels.TransformContinuousIndexToPhysicalPoint(centre_ijk)
        else:
            position = tuple(lps_from_ras(m.centroid_ras_mm))
        points.append(VertebraPoint(tuple(float(v) for v in position), m.level, m.level.name))
    return points


def _s1_centre_kji(labels: sitk.Image) -> np.ndarray | None:
    """The centroid of the sacrum's top S1_HEIGHT_MM (k increases superiorly on the canonical grid)."""
    values = sitk.GetArrayViewFromImage(labels)
    slices = np.flatnonzero((values == SACRUM.verse_id).any(axis=(1, 2)))
    if slices.size == 0:
        return None
    low = max(int(slices[-1] - round(S1_HEIGHT_MM / labels.GetSpacing()[2])), 0)
    top = values[low:slices[-1] + 1] == SACRUM.verse_id
    return np.argwhere(top).mean(axis=0) + [low, 0, 0]
