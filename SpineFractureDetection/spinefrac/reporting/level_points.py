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


def level_points(label_map: sitk.Image, body_labels: np.ndarray, measurements: SpineMeasurements) -> list[VertebraPoint]:
    """Per measured level (cranial first) the centroid of its isolated body, or of the whole level where no
    body was isolated (the sacrum, a level cut by the field of view). body_labels: the bodies, VerSe ids on
    label_map's [k, j, i] grid."""
    levels = [m.level for m in measurements.vertebrae]
    ids = [level.verse_id for level in levels]
    present = set(np.unique(body_labels).tolist()) if body_labels.any() else set()
    body_centres = ndimage.center_of_mass(body_labels > 0, body_labels, ids) if present else [None] * len(ids)
    points = []
    for m, centre_kji in zip(measurements.vertebrae, body_centres):
        if m.level.verse_id in present:
            position = label_map.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre_kji[::-1]])
        else:
            position = tuple(lps_from_ras(m.centroid_ras_mm))
        points.append(VertebraPoint(tuple(float(v) for v in position), m.level, m.level.name))
    return points
