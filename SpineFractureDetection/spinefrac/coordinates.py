"""Patient coordinates, in one place.

ITK, SimpleITK and DICOM use LPS (x to the patient's left, y posterior, z superior); 3D Slicer's
world and every coordinate this project reports use RAS. The two differ by the sign of x and y,
so the conversion is its own inverse.
"""

from __future__ import annotations

import numpy as np

# Multiply a point (or rows of points) by this to go LPS -> RAS, or RAS -> LPS.
LPS_RAS_SIGNS = np.array([-1.0, -1.0, 1.0])
# The same as a matrix, for direction matrices: direction_ras = LPS_RAS_MATRIX @ direction_lps.
LPS_RAS_MATRIX = np.diag(LPS_RAS_SIGNS)


def ras_from_lps(point_lps_mm) -> tuple[float, float, float]:
    """One point, LPS mm -> RAS mm, as plain floats (for reports and JSON)."""
    return tuple(float(v) for v in np.asarray(point_lps_mm, dtype=float) * LPS_RAS_SIGNS)


def lps_from_ras(point_ras_mm) -> np.ndarray:
    """One point or an array of points, RAS mm -> LPS mm."""
    return np.asarray(point_ras_mm, dtype=float) * LPS_RAS_SIGNS
