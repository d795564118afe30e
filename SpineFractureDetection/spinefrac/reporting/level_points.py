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
    present = [int(v) for v in np.unique(body_labels) if v]
    body_centres = dict(zip(present, ndimage.center_of_mass(body_labels > 0, body_labels, present))) if present else {}
    points = []
    for m in measurements.vertebrae:
        if m.level.verse_id in body_centres:
            centre_ijk = [float(v) for v in body_centres[m.level.verse_id][::-1]]
            position = label_map.TransformContinuousIndexToPhysicalPoint(centre_ijk)
        else:
            position = tuple(lps_from_ras(m.centroid_ras_mm))
        points.append(VertebraPoint(tuple(float(v) for v in position), m.level, m.level.name))
    return points
