"""Working grids and the spine axis (steps 1 and 3 of the offline engine).

A coarse (about 4 mm) block-averaged copy of the CT; the spine axis tracked through it by dynamic
programming over axial slices (compact bone mass near the body's left-right middle, moving smoothly
from slice to slice), which ignores the table, ribs and pelvis; a working copy (about 1.2-1.6 mm)
cropped around it; the axis refined to the vertebral body centres; each bone voxel's position
relative to the axis (lateral, anterior, arc length).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from spinefrac.errors import InputError
from spinefrac.hounsfield import AIR_MAX_HU
from spinefrac.segmentation.offline.bone import BONE_SMOOTHING_VOXELS
from spinefrac.segmentation.offline.canal import BODY_BEFORE_CANAL_MM, BODY_BESIDE_CANAL_MM, canal_fronts

COARSE_SPACING_MM = 4.0
WORK_SPACING_MM = 1.2  # finer voxels are block-averaged to about this size
COARSE_BONE_HU = 150.0


AXIS_DENSITY_SIGMA_MM = 10.0  # about a vertebral body radius
MIDLINE_PRIOR_SIGMA_MM = 35.0
# Per coarse voxel moved per slice, against a unit bone fraction: the spine drifts sideways
# slowly (scoliosis) but may run backwards steeply (sacrum).
LATERAL_MOVE_PENALTY = 0.15
AP_MOVE_PENALTY = 0.05
SPINE_PRESENCE_FRACTION = 0.12
SPINE_GAP_MM = 24.0  # longest stretch with little bone still counted as one spine
MIN_SPINE_LENGTH_MM = 40.0
BODY_SEARCH_RADIUS_MM = 25.0
AXIS_SMOOTHING_MM = 10.0


CROP_LATERAL_MM = 80.0
CROP_ANTERIOR_MM = 45.0
CROP_POSTERIOR_MM = 95.0


@dataclass
class WorkGrid:
    """An array with its voxel size and where its voxel 0 sits in the CT's index space."""

    values: np.ndarray  # [k, j, i]
    spacing_mm: np.ndarray  # (k, j, i)
    factors: np.ndarray  # native voxels per voxel along (k, j, i)
    start: np.ndarray  # native index of the first voxel block (k, j, i)

    @cached_property
    def smooth(self) -> np.ndarray:
        """``values`` smoothed as the bone threshold smooths them: once, for every step that reads it."""
        return ndimage.gaussian_filter(self.values, BONE_SMOOTHING_VOXELS)


@dataclass
class SpineAxis:
    """The spine axis sampled on every working slice: positions in working-grid mm (k, j, i)."""

    points_mm: np.ndarray  # [n, 3]
    tangents: np.ndarray  # [n, 3], unit, pointing superiorly
    arc_mm: np.ndarray  # [n], increasing superiorly

    def frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit left and anterior directions perpendicular to the axis at each point."""
        left = orthogonal(np.array([0.0, 0.0, 1.0]), self.tangents)
        anterior = np.cross(self.tangents, left)  # superior x left = anterior (k, j, i order)
        return left, anterior


def block_mean(hu: np.ndarray, spacing: np.ndarray, target_mm: float, start: np.ndarray, stop: np.ndarray) -> WorkGrid:
    """Average whole blocks of native voxels (anti-aliased and fast) inside [start, stop)."""
    factors = np.maximum(1, np.round(target_mm / spacing)).astype(int)
    counts = (stop - start) // factors
    stop = start + counts * factors
    block = hu[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    if np.any(factors > 1) and np.issubdtype(block.dtype, np.integer):
        block = _integer_block_sum(block, factors).astype(np.float32) / np.float32(np.prod(factors))
    elif np.any(factors > 1):
        block = np.asarray(block, dtype=np.float32).reshape(
            counts[0], factors[0], counts[1], factors[1], counts[2], factors[2]).mean(axis=(1, 3, 5))
    else:
        block = np.asarray(block, dtype=np.float32)
    return WorkGrid(block, spacing * factors, factors, start)


def _integer_block_sum(block: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Exact block sums of integer HU, one strided slice per offset, whole slices first (the least
    memory traffic): 2-10 times faster than a float mean over a reshaped copy, and the same numbers
    (those float sums of integers are exact too)."""
    wide = np.int32 if block.dtype.itemsize <= 2 and np.prod(factors) < 2**15 else np.int64
    for axis in (0, 1, 2):
        if factors[axis] == 1:
            continue
        offsets = [tuple(slice(a, None, factors[axis]) if n == axis else slice(None) for n in range(3))
                   for a in range(factors[axis])]
        total = block[offsets[0]].astype(wide)
        for offset in offsets[1:]:
            total += block[offset]
        block = total
    return block


def orthogonal(direction: np.ndarray, tangents: np.ndarray) -> np.ndarray:
    projected = direction[None, :] - (tangents @ direction)[:, None] * tangents
    return projected / np.linalg.norm(projected, axis=1, keepdims=True)


def largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


# -- 1. coarse axis -------------------------------------------------------------------------


def track_axis_coarse(coarse: WorkGrid) -> tuple[np.ndarray, np.ndarray]:
    """Per coarse slice the (j, i) position of the spine in mm, and which slices hold spine."""
    hu, spacing = coarse.values, coarse.spacing_mm
    body = largest_component(hu > AIR_MAX_HU)
    if not body.any():
        raise InputError("no spine found in the CT: the image holds no tissue denser than air")
    bone = ((hu > COARSE_BONE_HU) & body).astype(np.float32)
    density = ndimage.gaussian_filter(bone, sigma=AXIS_DENSITY_SIGMA_MM / spacing)
    midline_i_mm = np.nonzero(body)[2].mean() * spacing[2]
    i_mm = np.arange(hu.shape[2]) * spacing[2]
    prior = np.exp(-0.5 * ((i_mm - midline_i_mm) / MIDLINE_PRIOR_SIGMA_MM) ** 2)
    path = _best_smooth_path(density * prior[None, None, :])
    along = density[np.arange(hu.shape[0]), path[:, 0], path[:, 1]]
    spine_slices = longest_run(along > SPINE_PRESENCE_FRACTION, int(round(SPINE_GAP_MM / spacing[0])))
    if spine_slices.sum() * spacing[0] < MIN_SPINE_LENGTH_MM:
        raise InputError("no spine found in the CT: no column of bone near the body's midline "
                         f"longer than {MIN_SPINE_LENGTH_MM:.0f} mm")
    return path * spacing[1:], spine_slices


def _best_smooth_path(unary: np.ndarray) -> np.ndarray:
    """Dynamic programming: per slice one (j, i) cell, high unary, moving at most one cell per slice."""
    slices = unary.shape[0]
    moves = [(dj, di) for dj in (-1, 0, 1) for di in (-1, 0, 1)]
    total = unary[0].copy()
    choices = np.zeros(unary.shape, dtype=np.int8)
    for k in range(1, slices):
        candidates = np.stack([_shifted(total, dj, di) - AP_MOVE_PENALTY * abs(dj) - LATERAL_MOVE_PENALTY * abs(di)
                               for dj, di in moves])
        choices[k] = np.argmax(candidates, axis=0)
        total = unary[k] + candidates.max(axis=0)
    path = np.zeros((slices, 2), dtype=int)
    path[-1] = np.unravel_index(int(np.argmax(total)), total.shape)
    for k in range(slices - 1, 0, -1):
        dj, di = moves[choices[k, path[k, 0], path[k, 1]]]
        path[k - 1] = (path[k, 0] - dj, path[k, 1] - di)
    return path


def _shifted(values: np.ndarray, dj: int, di: int) -> np.ndarray:
    """values moved by (dj, di): out[j, i] = values[j - dj, i - di], -inf where undefined."""
    out = np.full_like(values, -np.inf)
    rows, cols = values.shape
    out[max(dj, 0):rows + min(dj, 0), max(di, 0):cols + min(di, 0)] = \
        values[max(-dj, 0):rows + min(-dj, 0), max(-di, 0):cols + min(-di, 0)]
    return out


def longest_run(present: np.ndarray, max_gap: int) -> np.ndarray:
    """The longest stretch of True, bridging gaps up to max_gap (discs, osteoporotic bodies)."""
    bridged = ndimage.binary_closing(np.pad(present, max_gap), structure=np.ones(2 * max_gap + 1))[max_gap:-max_gap] \
        if max_gap > 0 else present.copy()
    bridged |= present
    runs, count = ndimage.label(bridged)
    if count == 0:
        return bridged
    lengths = np.bincount(runs.ravel())
    lengths[0] = 0
    return (runs == int(np.argmax(lengths))) & _between_first_and_last(present, runs == int(np.argmax(lengths)))


def _between_first_and_last(present: np.ndarray, run: np.ndarray) -> np.ndarray:
    inside = np.nonzero(present & run)[0]
    out = np.zeros_like(present)
    if inside.size:
        out[inside[0]:inside[-1] + 1] = True
    return out


def crop_box(coarse: WorkGrid, path_mm: np.ndarray, spine_slices: np.ndarray, spacing: np.ndarray,
              shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Native index box around the spine with room for posterior elements and transverse processes."""
    k = np.nonzero(spine_slices)[0]
    k_low_mm = k[0] * coarse.spacing_mm[0] - coarse.spacing_mm[0]
    k_high_mm = (k[-1] + 2) * coarse.spacing_mm[0]
    centre_mm = path_mm[spine_slices] + coarse.spacing_mm[1:] / 2
    low_mm = np.array([k_low_mm, centre_mm[:, 0].min() - CROP_ANTERIOR_MM, centre_mm[:, 1].min() - CROP_LATERAL_MM])
    high_mm = np.array([k_high_mm, centre_mm[:, 0].max() + CROP_POSTERIOR_MM, centre_mm[:, 1].max() + CROP_LATERAL_MM])
    start = np.clip(np.floor(low_mm / spacing).astype(int), 0, shape)
    stop = np.clip(np.ceil(high_mm / spacing).astype(int), 0, shape)
    return start, stop


def refine_axis(work: WorkGrid, bone: np.ndarray, coarse: WorkGrid, coarse_path_mm: np.ndarray,
                 spine_slices: np.ndarray, canal: np.ndarray | None = None) -> SpineAxis:
    """Follow the vertebral body centres: the thickest bone (deepest inside the mask) near the coarse
    axis; with a canal mask, only in front of the spinal canal (an enhanced aorta beside an upper
    thoracic body is as thick, but has no canal behind it)."""
    spacing = work.spacing_mm
    offset_mm = work.start * (spacing / work.factors)  # working voxel 0 in the CT's index mm
    coarse_k_mm = (np.arange(coarse.values.shape[0]) + 0.5) * coarse.spacing_mm[0] - offset_mm[0]
    coarse_ji_mm = coarse_path_mm + coarse.spacing_mm[1:] / 2 - offset_mm[1:]
    valid = np.nonzero(spine_slices)[0]
    work_k_mm = (np.arange(bone.shape[0]) + 0.5) * spacing[0]
    guide = np.stack([np.interp(work_k_mm, coarse_k_mm[valid], coarse_ji_mm[valid, axis]) for axis in (0, 1)], 1)
    return axis_near_guide(work, bone, guide, canal)


def axis_near_guide(work: WorkGrid, bone: np.ndarray, guide_ji_mm: np.ndarray, canal: np.ndarray | None = None,
                    search_radius_mm: float = BODY_SEARCH_RADIUS_MM) -> SpineAxis:
    """The body centres near a guide (per working slice, its (j, i) position in working-grid mm):
    per slice the thickest bone within search_radius_mm, in front of the canal, smoothed with the
    slices through bodies trusted more than those through discs."""
    spacing = work.spacing_mm
    work_k_mm = (np.arange(bone.shape[0]) + 0.5) * spacing[0]
    guide = guide_ji_mm
    canal_ji_mm = canal_fronts(canal, spacing, guide) if canal is not None else np.full(guide.shape, np.nan)
    found = guide.copy()
    depth_mm = np.zeros(bone.shape[0])
    for k in range(bone.shape[0]):
        found[k], depth_mm[k] = _thickest_near(bone[k], guide[k], spacing[1:], canal_ji_mm[k], search_radius_mm)
    smoothed = _weighted_smooth(found, depth_mm ** 2, AXIS_SMOOTHING_MM / spacing[0])
    points = np.column_stack([work_k_mm, smoothed])
    tangents = np.gradient(points, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    return SpineAxis(points, tangents, arc)


def _thickest_near(bone_slice: np.ndarray, guide_mm: np.ndarray, spacing: np.ndarray,
                   canal_mm: np.ndarray, search_radius_mm: float = BODY_SEARCH_RADIUS_MM) -> tuple[np.ndarray, float]:
    """The point deepest inside bone near the guide: a body centre, not a thin arch or rib; where a
    canal is in reach, only in front of it (a slice without one, or without bone there, keeps the
    whole window)."""
    radius = np.ceil(search_radius_mm / spacing).astype(int)
    centre = np.round(guide_mm / spacing - 0.5).astype(int)
    low = np.clip(centre - radius, 0, bone_slice.shape)
    high = np.clip(centre + radius + 1, 0, bone_slice.shape)
    window = bone_slice[low[0]:high[0], low[1]:high[1]]
    if window.size == 0 or not window.any():
        return guide_mm, 0.0
    depth = ndimage.distance_transform_edt(window, sampling=spacing)
    zone = _before_canal(canal_mm, low, high, spacing) & window
    if zone.any():
        depth = np.where(zone, depth, 0.0)
    best = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (np.array(best) + low + 0.5) * spacing, float(depth[best])


def _before_canal(canal_mm: np.ndarray, low: np.ndarray, high: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Cells of the window [low, high) not too far in front of or beside the canal's front (all if
    none). The axis may sit at the back of the body (the deepest bone where the pedicles join it),
    so no minimum."""
    j_mm = (np.arange(low[0], high[0]) + 0.5) * spacing[0]
    i_mm = (np.arange(low[1], high[1]) + 0.5) * spacing[1]
    if np.isnan(canal_mm[0]):
        return np.ones((j_mm.size, i_mm.size), dtype=bool)
    ahead_mm = canal_mm[0] - j_mm  # LPS: anterior is towards smaller j
    return (ahead_mm <= BODY_BEFORE_CANAL_MM)[:, None] & (np.abs(i_mm - canal_mm[1]) <= BODY_BESIDE_CANAL_MM)[None, :]


def _weighted_smooth(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that trusts slices through bodies more than slices through discs."""
    weight = weight + 1e-6
    numerator = ndimage.gaussian_filter1d(values * weight[:, None], sigma, axis=0, mode="nearest")
    return numerator / ndimage.gaussian_filter1d(weight, sigma, mode="nearest")[:, None]


def local_coordinates(work: WorkGrid, bone: np.ndarray, axis: SpineAxis) -> tuple[np.ndarray, ...]:
    """For each bone voxel: lateral and anterior offsets from, and arc length along, the axis."""
    dense = _densified(axis, 0.5)
    voxels_mm = (np.argwhere(bone) + 0.5) * work.spacing_mm
    _, nearest = cKDTree(dense.points_mm).query(voxels_mm)
    offset = voxels_mm - dense.points_mm[nearest]
    left, anterior = dense.frame()
    lateral = np.einsum("ij,ij->i", offset, left[nearest])
    forward = np.einsum("ij,ij->i", offset, anterior[nearest])
    return lateral, forward, dense.arc_mm[nearest]


def _densified(axis: SpineAxis, step_mm: float) -> SpineAxis:
    arc = np.arange(axis.arc_mm[0], axis.arc_mm[-1] + step_mm, step_mm)
    points = np.column_stack([np.interp(arc, axis.arc_mm, axis.points_mm[:, c]) for c in range(3)])
    tangents = np.column_stack([np.interp(arc, axis.arc_mm, axis.tangents[:, c]) for c in range(3)])
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    # Extend the ends along the tangent so voxels beyond them do not all collapse onto one point.
    reach = np.arange(step_mm, 40.0, step_mm)
    below = points[0] - reach[::-1, None] * tangents[0]
    above = points[-1] + reach[:, None] * tangents[-1]
    return SpineAxis(np.vstack([below, points, above]),
                 np.vstack([np.repeat(tangents[:1], reach.size, 0), tangents, np.repeat(tangents[-1:], reach.size, 0)]),
                 np.concatenate([arc[0] - reach[::-1], arc, arc[-1] + reach]))
