"""The spinal canal behind the bone column: what tells the spine from other bright columns.

Contrast-filled blood (aorta, heart, 300-500 HU) is as bright as bone, but only the spine has, behind
its bodies, a low-HU channel (cerebrospinal fluid, cord, epidural fat) enclosed by bone on nearly every
side (the body in front, the pedicles at the sides, the laminae behind) and continuous along the body.
A canal voxel is soft-tissue dense with bone within ENCLOSURE_MM along at least ENCLOSING_RAYS of 8
rays in its plane. A column the engine followed is the spine only if most of its segments have such
voxels just behind the axis: the ring closes at the pedicles of every vertebra, whatever the discs do.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from spinefrac.errors import InputError

CANAL_HU = (-60.0, 110.0)  # cerebrospinal fluid, cord and epidural fat, partial volume with the dura
CANAL_BONE_HU = 180.0  # cortex and the denser marrow, lightly smoothed
ENCLOSURE_MM = 16.0  # a thoracic canal is 15 mm across, a lumbar one about 20 mm wide
ENCLOSING_RAYS = 6  # of 8: gaps (a foramen, a thin lamina lost to partial volume) allowed
BEHIND_AXIS_MM = (8.0, 40.0)  # canal centre behind the body centre, cervical to lumbar
CANAL_LATERAL_MM = 12.0
# A body centre lies up to about 25 mm in front of the canal's front (half a lumbar body's depth, more
# where the lumbosacral junction tilts the body across axial slices); an enhanced aorta beside an upper
# thoracic body lies behind the body's front, more than 25 mm in front of the canal, its centre 40 mm.
BODY_BEFORE_CANAL_MM = 28.0
BODY_BESIDE_CANAL_MM = 25.0  # the canal's voxels can be lopsided (a foramen on one side)
CANAL_FRONT_PERCENTILE = 10.0
# The canal closes its bony ring only at the pedicles: a body lies in front of a ring found within
# about half a vertebra above or below.
CANAL_REACH_MM = 15.0
CANAL_BEHIND_GUIDE_MM = (0.0, 45.0)  # the coarse guide is the centre of the bone mass: body and arch
CANAL_GUIDE_LATERAL_MM = 20.0
MIN_CANAL_VOXELS_MM3 = 20.0  # per segment: a few voxels of canal at one pedicle level suffice
# Measured: 3 of 9 segments (a straight 3 mm neck phantom) to all, on phantoms; 7 of 7 to 14 of 14 on
# the real CTs of ../shared/data; 0 on a bright contrast column with disc-like bands.
MIN_SEGMENTS_WITH_CANAL = 3
MIN_FRACTION_WITH_CANAL = 0.25


def canal_mask(hu: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Soft-tissue voxels enclosed in their axial plane by bone on at least ENCLOSING_RAYS of 8 rays."""
    smooth = ndimage.gaussian_filter(hu, 0.5)
    bone = smooth > CANAL_BONE_HU
    enclosed = np.zeros(hu.shape, dtype=np.uint8)
    for dj, di in ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)):
        step_mm = float(np.hypot(dj * spacing_mm[1], di * spacing_mm[2]))
        hit = np.zeros(hu.shape, dtype=bool)
        for n in range(1, int(ENCLOSURE_MM / step_mm) + 1):
            hit |= _shifted(bone, n * dj, n * di)
        enclosed += hit
    return (smooth >= CANAL_HU[0]) & (smooth <= CANAL_HU[1]) & (enclosed >= ENCLOSING_RAYS)


def canal_fronts(canal: np.ndarray, spacing_mm: np.ndarray, guide_ji_mm: np.ndarray) -> np.ndarray:
    """Per axial slice, the (j, i) mm of the spinal canal's front (the CANAL_FRONT_PERCENTILE of its
    voxels' j, their median i, within CANAL_REACH_MM above and below; NaN where none). Only canal
    behind the column's guide ([k, 2] mm) counts: the fat between an enhanced aorta and a body, or
    the papillary muscles of an enhanced heart, are enclosed by bright voxels too, but lie in front."""
    k, j, i = np.nonzero(canal)
    ji_mm = (np.column_stack([j, i]) + 0.5) * spacing_mm[1:]
    behind_mm = ji_mm[:, 0] - guide_ji_mm[k, 0]  # LPS: j runs posteriorly
    near = ((behind_mm >= CANAL_BEHIND_GUIDE_MM[0]) & (behind_mm <= CANAL_BEHIND_GUIDE_MM[1])
            & (np.abs(ji_mm[:, 1] - guide_ji_mm[k, 1]) <= CANAL_GUIDE_LATERAL_MM))
    k, ji_mm = k[near], ji_mm[near]  # np.nonzero gives k in ascending order
    reach = int(CANAL_REACH_MM / spacing_mm[0])
    fronts = np.full((canal.shape[0], 2), np.nan)
    for n in range(canal.shape[0]):
        low, high = np.searchsorted(k, [n - reach, n + reach + 1])
        if high > low:
            fronts[n] = np.percentile(ji_mm[low:high, 0], CANAL_FRONT_PERCENTILE), np.median(ji_mm[low:high, 1])
    return fronts


def _shifted(mask: np.ndarray, dj: int, di: int) -> np.ndarray:
    """out[:, j, i] = mask[:, j + dj, i + di] (False beyond the edge): what lies dj, di voxels away."""
    out = np.zeros_like(mask)
    rows, cols = mask.shape[1:]
    if abs(dj) >= rows or abs(di) >= cols:
        return out
    out[:, max(-dj, 0):rows - max(dj, 0), max(-di, 0):cols - max(di, 0)] = \
        mask[:, max(dj, 0):rows + min(dj, 0), max(di, 0):cols + min(di, 0)]
    return out


def segments_with_canal(canal: np.ndarray, voxel_mm3: float, segment_of_voxel: np.ndarray, lateral_mm: np.ndarray,
                        anterior_mm: np.ndarray, count: int) -> np.ndarray:
    """Per segment (caudal first), whether canal voxels lie just behind the axis within it. The
    arrays describe the canal voxels: their segment (-1: none), lateral and anterior offsets (mm)."""
    behind = ((segment_of_voxel >= 0) & (np.abs(lateral_mm) <= CANAL_LATERAL_MM)
              & (-anterior_mm >= BEHIND_AXIS_MM[0]) & (-anterior_mm <= BEHIND_AXIS_MM[1]))
    volume_mm3 = np.bincount(segment_of_voxel[behind], minlength=count)[:count] * voxel_mm3
    return volume_mm3 >= MIN_CANAL_VOXELS_MM3


def require_canal(canal_found: np.ndarray) -> None:
    """Refuse a column with a canal behind too few of its segments: a contrast-filled vessel or the
    heart, not the spine. The end segments may lack one (the sacrum, a vertebra cut by the field of
    view), and at 3 mm a thin neural arch can close its ring in no voxel of a whole vertebra."""
    needed = min(MIN_SEGMENTS_WITH_CANAL, max(1, canal_found.size - 2))
    if canal_found.sum() < needed or canal_found.mean() < MIN_FRACTION_WITH_CANAL:
        raise InputError(f"no spine found in the CT: the bright column followed has no spinal canal behind it "
                         f"({int(canal_found.sum())} of {canal_found.size} vertebra-like segments; contrast-filled "
                         "vessels or the heart?)")
