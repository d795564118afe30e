"""Bone masks of the offline engine (step 2): lightly smoothed HU above a threshold, the marrow
inside each axial cortical ring filled in, and optionally the partial-volume shell outside the
half-maximum edge dropped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BONE_HU = 110.0  # on HU smoothed by half a voxel: tuned on the 3 mm TotalSegmentator example
MARROW_MIN_HU = 60.0  # filled cortical rings keep marrow, not CSF in the spinal canal
BONE_SMOOTHING_VOXELS = 0.5
# A blurred bone edge lies where HU has risen a fraction of the way from soft tissue to the nearest
# cortical peak: half way (half maximum) where voxels resolve the cortex; on coarse voxels the peak
# itself is diluted by partial volume, so the edge sits lower. Voxels below it are the
# partial-volume shell that a fixed threshold keeps. Fractions measured on phantoms (0.7-3 mm) and
# the 3 mm TotalSegmentator example.
EDGE_FRACTION_FINE = 0.5  # voxels up to 1 mm
EDGE_FRACTION_COARSE = 0.3  # voxels of 2 mm and more
EDGE_REACH_MM = 1.5  # the peak is looked for this far around each voxel
SOFT_TISSUE_HU = 40.0


def bone_mask(hu: np.ndarray, spacing_mm: np.ndarray, edge: bool = False) -> np.ndarray:
    """Bone with its marrow: smoothed HU above BONE_HU, cortical rings filled per axial slice.

    With ``edge``, voxels below the edge fraction of the rise from soft tissue to the nearest peak are
    left out: the partial-volume shell outside the cortex.
    """
    # Integer HU smoothed straight into float32: the numbers of a float32 copy, without the copy.
    smooth = ndimage.gaussian_filter(hu, BONE_SMOOTHING_VOXELS, output=np.float32 if hu.dtype.kind in "iu" else None)
    bone = smooth > BONE_HU
    if edge:
        size = 2 * np.ceil(EDGE_REACH_MM / np.asarray(spacing_mm)).astype(int) + 1
        peak = ndimage.maximum_filter(smooth, size=tuple(size))
        bone &= smooth - SOFT_TISSUE_HU >= _edge_fraction(spacing_mm) * (peak - SOFT_TISSUE_HU)
    bone |= _holes_in_axial_planes(bone) & (smooth > MARROW_MIN_HU)
    return bone


def _holes_in_axial_planes(mask: np.ndarray) -> np.ndarray:
    """What ``binary_fill_holes`` adds in each axial plane (4-connected): background pieces that do
    not reach the plane's edge. One labelling of the volume, pieces confined to their plane: half
    the time of a fill per slice."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    pieces, count = ndimage.label(~mask, in_plane)
    reaches_edge = np.zeros(count + 1, dtype=bool)
    reaches_edge[0] = True  # the mask itself
    for face in (pieces[:, 0, :], pieces[:, -1, :], pieces[:, :, 0], pieces[:, :, -1]):
        reaches_edge[face] = True
    return ~reaches_edge[pieces]


def _edge_fraction(spacing_mm: np.ndarray) -> float:
    coarseness = np.clip(float(np.max(spacing_mm)) - 1.0, 0.0, 1.0)  # 0 at 1 mm, 1 from 2 mm
    return EDGE_FRACTION_FINE + coarseness * (EDGE_FRACTION_COARSE - EDGE_FRACTION_FINE)
