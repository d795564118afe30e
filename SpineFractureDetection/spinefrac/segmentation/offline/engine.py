"""Offline classical vertebra segmentation: no trained weights, only thresholds and anatomy.

Steps, all in physical millimetres so that 0.7-5 mm voxels behave alike:
  1. a coarse (about 4 mm) copy of the CT; the spine axis is tracked through it by dynamic
     programming over axial slices (compact bone mass near the body's left-right middle,
     moving smoothly from slice to slice), which ignores the table, ribs and pelvis;
  2. a working copy (about 1.2-1.6 mm) cropped around the axis; bone = lightly smoothed HU
     above a threshold, with the marrow inside each axial cortical ring filled in;
  3. the axis is refined to the vertebral body centres, and the mean HU on small disks
     perpendicular to it gives a profile whose low-HU dips are the intervertebral discs; a
     segment much longer than the shorter of its neighbours is cut at its best endplate-flanked
     dips (thin discs vanish in partial volume at 3 mm, several in a row in the neck);
  4. every bone voxel takes the disc-bounded slab of its nearest axis point (cut planes
     perpendicular to the spine), limited to a vertebra-sized envelope around the axis so
     that ribs and iliac bones fall away; bone near a cut is then re-assigned to the level it
     is most cheaply joined to through dense bone (so facet joints, not planes, part the
     posterior elements), the partial-volume shell outside the half-maximum edge is dropped,
     marrow enclosed by each level's cortex is filled in, and unconnected fragments go;
  5. levels are counted from landmarks: the sacrum (upwards), the atlas at the top of a spine
     that ends in view (downwards), the last and the first rib-bearing vertebra (T12, T1); each
     level from its nearest landmark, and the note and ``LevelIdentification`` say which were
     used, whether they agree, and when none is in view that the levels are uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, signal, sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from spinefrac.errors import InputError
from spinefrac.hounsfield import AIR_MAX_HU, METAL_HU
from spinefrac.io.images import CtVolume
from spinefrac.levels import LEVEL_BY_ID
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import (LABEL_PIXEL_TYPE, LabelConvention, LevelIdentification, SegmentationEngine,
                           VertebraSegmentation)

SACRUM_ID = 26
C1_ID = 1
T1_ID = 8
T12_ID = 19
L5_ID = 24

COARSE_SPACING_MM = 4.0
WORK_SPACING_MM = 1.2  # finer voxels are block-averaged to about this size
COARSE_BONE_HU = 150.0
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
FIELD_EDGE_REACH_MM = 20.0  # an end vertebra cut by the field of view extends this far beyond the axis

PROFILE_RADII_MM = (0.0, 3.0, 6.0, 9.0, 12.0)
PROFILE_SMOOTHING_MM = 1.0
SPINE_PROFILE_HU = 75.0
DISC_WIDTH_RATIO = 0.55
PROFILE_STEP_MM = 1.0
MIN_SEGMENT_MM = 13.0  # shortest body + disc (upper cervical)
DISC_PROMINENCE_HU = 15.0
DISC_MAX_HU = 150.0  # discs are soft tissue (70-130 HU); dips inside bone are not discs
SPLIT_LENGTH_RATIO = 1.6  # a segment this many times its neighbours' length hides a disc
MIN_PIECE_RATIO = 0.6
MAX_SACRUM_RATIO = 3.3  # S1 to the coccyx along the curve: up to about three lumbar segments
ENDPLATE_REACH_MM = 8.0  # a disc's endplates sit within this of its centre, a body's further apart
SACRUM_LENGTH_RATIO = 1.9  # a caudal block this many typical segments long is the sacrum
# Cervical body + disc is about 20 mm (lumbar about 40): the top segments of a spine that ends in view
# this short and without ribs are the cervical spine, the top one the atlas.
CERVICAL_SEGMENT_MAX_MM = 24.0
CERVICAL_RUN = 3

# Face neighbours within a sagittal plane (k, j) and none across planes (i): per-plane morphology in one call.
SAGITTAL_CROSS = ndimage.generate_binary_structure(2, 1)[:, :, None]

CROP_LATERAL_MM = 80.0
CROP_ANTERIOR_MM = 45.0
CROP_POSTERIOR_MM = 95.0
ENVELOPE_ANTERIOR_MM = 30.0
ENVELOPE_POSTERIOR_MM = 85.0
# Lateral reach from the body centre: transverse processes, not ribs or iliac wings.
LATERAL_REACH_MM = {"cervical": 35.0, "thoracic": 31.0, "lumbar": 50.0, "sacral": 60.0}

CUT_BAND_MM = 10.0  # bone this close to a cut plane is re-assigned by geodesic competition
CUT_BAND_FRACTION = 0.3  # of the shorter neighbouring segment, at most
DIM_BONE_PENALTY = 8.0  # extra path cost per mm through dim bone (joint gaps, partial volume)
DENSE_BONE_HU = 400.0  # bone this dense costs nothing extra

RIB_ZONE_LATERAL_MM = (45.0, 90.0)
RIB_ZONE_AP_MM = (-60.0, 30.0)  # anterior positive, from the body centre
RIB_MIN_VOLUME_MM3 = 3000.0  # a pair of rib shafts gives about 7000; an iliac crest tip about 1500
PELVIS_ZONE_LATERAL_MM = (45.0, 80.0)
PELVIS_ZONE_AP_MM = (-50.0, 20.0)
PELVIS_SLICE_FRACTION = 0.8  # L5 beside the iliac crests reaches about 0.6
PELVIS_BIN_MM = 3.0


@dataclass
class _Grid:
    """An array with its voxel size and where its voxel 0 sits in the CT's index space."""

    values: np.ndarray  # [k, j, i]
    spacing_mm: np.ndarray  # (k, j, i)
    factors: np.ndarray  # native voxels per voxel along (k, j, i)
    start: np.ndarray  # native index of the first voxel block (k, j, i)


@dataclass
class _Axis:
    """The spine axis sampled on every working slice: positions in working-grid mm (k, j, i)."""

    points_mm: np.ndarray  # [n, 3]
    tangents: np.ndarray  # [n, 3], unit, pointing superiorly
    arc_mm: np.ndarray  # [n], increasing superiorly

    def frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit left and anterior directions perpendicular to the axis at each point."""
        left = _orthogonal(np.array([0.0, 0.0, 1.0]), self.tangents)
        anterior = np.cross(self.tangents, left)  # superior x left = anterior (k, j, i order)
        return left, anterior


@dataclass
class _Segment:
    low_mm: float  # arc-length interval along the axis
    high_mm: float
    cut_below: bool = False  # the lowest segment, cut by the field of view
    cut_above: bool = False  # the highest segment, cut by the field of view
    verse_id: int = 0

    @property
    def length_mm(self) -> float:
        return self.high_mm - self.low_mm


class OfflineEngine(SegmentationEngine):
    """Classical vertebra segmentation for machines without a trained model."""

    name = "offline classical"

    def __init__(self, fallback_reason: str = ""):
        self.fallback_reason = fallback_reason  # why a requested learned model is not used instead

    def segment(self, ct: CtVolume, progress: Progress = silent) -> VertebraSegmentation:
        hu = ct.array()
        spacing = np.array(ct.image.GetSpacing()[::-1], dtype=float)
        progress(0.05, "tracking the spine axis")
        coarse = _block_mean(hu, spacing, COARSE_SPACING_MM, np.zeros(3, int), np.array(hu.shape))
        coarse_path_mm, spine_slices = _track_axis_coarse(coarse)
        progress(0.25, "extracting bone around the spine")
        crop_start, crop_stop = _crop_box(coarse, coarse_path_mm, spine_slices, spacing, hu.shape)
        work = _block_mean(hu, spacing, WORK_SPACING_MM, crop_start, crop_stop)
        bone = _bone_mask(work.values, work.spacing_mm)
        axis = _refine_axis(work, bone, coarse, coarse_path_mm, spine_slices)
        progress(0.45, "finding intervertebral discs")
        segments = _segments(work, axis)
        if len(segments) < 3:
            raise InputError("no spine found in the CT: no sequence of vertebrae separated by discs "
                             "along the bone column (is the spine in the field of view?)")
        progress(0.6, "identifying levels")
        lateral_mm, anterior_mm, arc_mm = _local_coordinates(work, bone, axis)
        identification = _identify(segments, lateral_mm, anterior_mm, arc_mm, float(np.prod(work.spacing_mm)))
        progress(0.75, "labelling vertebrae")
        work_labels = _assign(segments, bone, lateral_mm, anterior_mm, arc_mm)
        work_labels = _refine_boundaries(work, segments, bone, work_labels, arc_mm)
        work_labels[~_bone_mask(work.values, work.spacing_mm, edge=True)] = 0
        labels = _fill_enclosed_marrow(_native_labels(hu, spacing, work, work_labels))
        image = sitk.GetImageFromArray(labels)
        image.CopyInformation(ct.image)
        image = sitk.Cast(image, LABEL_PIXEL_TYPE)
        present_ids = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel())) if v]  # one pass, no sort
        found = [LEVEL_BY_ID[verse_id].name for verse_id in reversed(present_ids)]
        progress(1.0, f"{len(found)} levels labelled ({', '.join(found)})")
        notes = ([f"learned model unavailable ({self.fallback_reason}): offline engine used"]
                 if self.fallback_reason else [])
        notes.append(identification.summary)
        metal = _levels_with_metal(hu, labels, present_ids)
        if metal:
            notes.append(f"metal (>= {METAL_HU:.0f} HU) in {', '.join(metal)}: the masks there follow the implant "
                         "and its streaks as well as the bone")
        return VertebraSegmentation(
            label_map=image, engine=self.name, source="offline classical segmentation (no trained model)",
            convention=LabelConvention.VERSE, notes=notes, masks_fit_for_morphometry=False,
            identification=identification,
        )


# -- grids ----------------------------------------------------------------------------------


def _block_mean(hu: np.ndarray, spacing: np.ndarray, target_mm: float, start: np.ndarray, stop: np.ndarray) -> _Grid:
    """Average whole blocks of native voxels (anti-aliased and fast) inside [start, stop)."""
    factors = np.maximum(1, np.round(target_mm / spacing)).astype(int)
    counts = (stop - start) // factors
    stop = start + counts * factors
    block = np.asarray(hu[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]], dtype=np.float32)
    if np.any(factors > 1):
        block = block.reshape(counts[0], factors[0], counts[1], factors[1], counts[2], factors[2]).mean(axis=(1, 3, 5))
    return _Grid(block, spacing * factors, factors, start)


def _orthogonal(direction: np.ndarray, tangents: np.ndarray) -> np.ndarray:
    projected = direction[None, :] - (tangents @ direction)[:, None] * tangents
    return projected / np.linalg.norm(projected, axis=1, keepdims=True)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


# -- 1. coarse axis -------------------------------------------------------------------------


def _track_axis_coarse(coarse: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Per coarse slice the (j, i) position of the spine in mm, and which slices hold spine."""
    hu, spacing = coarse.values, coarse.spacing_mm
    body = _largest_component(hu > AIR_MAX_HU)
    if not body.any():
        raise InputError("no spine found in the CT: the image holds no tissue denser than air")
    bone = ((hu > COARSE_BONE_HU) & body).astype(np.float32)
    density = ndimage.gaussian_filter(bone, sigma=AXIS_DENSITY_SIGMA_MM / spacing)
    midline_i_mm = np.nonzero(body)[2].mean() * spacing[2]
    i_mm = np.arange(hu.shape[2]) * spacing[2]
    prior = np.exp(-0.5 * ((i_mm - midline_i_mm) / MIDLINE_PRIOR_SIGMA_MM) ** 2)
    path = _best_smooth_path(density * prior[None, None, :])
    along = density[np.arange(hu.shape[0]), path[:, 0], path[:, 1]]
    spine_slices = _longest_run(along > SPINE_PRESENCE_FRACTION, int(round(SPINE_GAP_MM / spacing[0])))
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
        candidates = np.stack([_shifted(total, dj, di) - AP_MOVE_PENALTY * abs(dj) - LATERAL_MOVE_PENALTY * abs(di) for dj, di in moves])
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


def _longest_run(present: np.ndarray, max_gap: int) -> np.ndarray:
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


def _crop_box(coarse: _Grid, path_mm: np.ndarray, spine_slices: np.ndarray, spacing: np.ndarray,
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


# -- 2. bone --------------------------------------------------------------------------------


def _bone_mask(hu: np.ndarray, spacing_mm: np.ndarray, edge: bool = False) -> np.ndarray:
    """Bone with its marrow: smoothed HU above BONE_HU, cortical rings filled per axial slice.

    With ``edge``, voxels below the edge fraction of the rise from soft tissue to the nearest peak are
    left out: the partial-volume shell outside the cortex.
    """
    smooth = ndimage.gaussian_filter(hu, BONE_SMOOTHING_VOXELS)
    bone = smooth > BONE_HU
    if edge:
        size = 2 * np.ceil(EDGE_REACH_MM / np.asarray(spacing_mm)).astype(int) + 1
        peak = ndimage.maximum_filter(smooth, size=tuple(size))
        bone &= smooth - SOFT_TISSUE_HU >= _edge_fraction(spacing_mm) * (peak - SOFT_TISSUE_HU)
    marrow_possible = smooth > MARROW_MIN_HU
    for k in range(bone.shape[0]):
        if bone[k].any():
            bone[k] |= ndimage.binary_fill_holes(bone[k]) & marrow_possible[k]
    return bone


def _edge_fraction(spacing_mm: np.ndarray) -> float:
    coarseness = np.clip(float(np.max(spacing_mm)) - 1.0, 0.0, 1.0)  # 0 at 1 mm, 1 from 2 mm
    return EDGE_FRACTION_FINE + coarseness * (EDGE_FRACTION_COARSE - EDGE_FRACTION_FINE)


# -- 3. refined axis and discs --------------------------------------------------------------


def _refine_axis(work: _Grid, bone: np.ndarray, coarse: _Grid, coarse_path_mm: np.ndarray,
                 spine_slices: np.ndarray) -> _Axis:
    """Follow the vertebral body centres: the thickest bone (deepest inside the mask) near the coarse axis."""
    spacing = work.spacing_mm
    offset_mm = work.start * (spacing / work.factors)  # working voxel 0 in the CT's index mm
    coarse_k_mm = (np.arange(coarse.values.shape[0]) + 0.5) * coarse.spacing_mm[0] - offset_mm[0]
    coarse_ji_mm = coarse_path_mm + coarse.spacing_mm[1:] / 2 - offset_mm[1:]
    valid = np.nonzero(spine_slices)[0]
    work_k_mm = (np.arange(bone.shape[0]) + 0.5) * spacing[0]
    guide = np.stack([np.interp(work_k_mm, coarse_k_mm[valid], coarse_ji_mm[valid, axis]) for axis in (0, 1)], 1)
    found = guide.copy()
    depth_mm = np.zeros(bone.shape[0])
    for k in range(bone.shape[0]):
        found[k], depth_mm[k] = _thickest_near(bone[k], guide[k], spacing[1:])
    smoothed = _weighted_smooth(found, depth_mm ** 2, AXIS_SMOOTHING_MM / spacing[0])
    points = np.column_stack([work_k_mm, smoothed])
    tangents = np.gradient(points, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    return _Axis(points, tangents, arc)


def _thickest_near(bone_slice: np.ndarray, guide_mm: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, float]:
    """The point deepest inside bone near the guide: a body centre, not a thin arch or rib."""
    radius = np.ceil(BODY_SEARCH_RADIUS_MM / spacing).astype(int)
    centre = np.round(guide_mm / spacing - 0.5).astype(int)
    low = np.clip(centre - radius, 0, bone_slice.shape)
    high = np.clip(centre + radius + 1, 0, bone_slice.shape)
    window = bone_slice[low[0]:high[0], low[1]:high[1]]
    if window.size == 0 or not window.any():
        return guide_mm, 0.0
    depth = ndimage.distance_transform_edt(window, sampling=spacing)
    best = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (np.array(best) + low + 0.5) * spacing, float(depth[best])


def _weighted_smooth(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that trusts slices through bodies more than slices through discs."""
    weight = weight + 1e-6
    numerator = ndimage.gaussian_filter1d(values * weight[:, None], sigma, axis=0, mode="nearest")
    return numerator / ndimage.gaussian_filter1d(weight, sigma, mode="nearest")[:, None]


def _segments(work: _Grid, axis: _Axis) -> list[_Segment]:
    """Disc-bounded slabs along the axis, caudal first."""
    arc_grid = np.arange(axis.arc_mm[0], axis.arc_mm[-1], PROFILE_STEP_MM)
    if arc_grid.size < 3:
        return []
    profile = ndimage.gaussian_filter1d(np.interp(arc_grid, axis.arc_mm, _disk_profile(work, axis)),
                                        PROFILE_SMOOTHING_MM / PROFILE_STEP_MM)
    # Sparse trabecular bone can sit below BONE_HU; soft tissue stays below SPINE_PROFILE_HU.
    spine = _longest_run(profile > SPINE_PROFILE_HU, int(round(MIN_SEGMENT_MM / PROFILE_STEP_MM)))
    if not spine.any():
        return []
    first, last = np.nonzero(spine)[0][[0, -1]]
    section = profile[first:last + 1]
    discs = _split_long_segments(_disc_positions(section), section) + first
    bounds = [arc_grid[first]] + [arc_grid[d] for d in discs] + [arc_grid[last] + PROFILE_STEP_MM]
    segments = [_Segment(low, high) for low, high in zip(bounds[:-1], bounds[1:])]
    segments[0].cut_below = first == 0
    segments[-1].cut_above = last == arc_grid.size - 1
    return segments


def _disc_positions(profile: np.ndarray) -> np.ndarray:
    """Profile indices of the discs.

    A body with sparse trabecular bone dips between its own endplates too; a disc is the dip
    whose flanking endplate peaks are close together compared with the spacing of the dips
    around it (disc height is a fraction of body height at every level of the spine).
    """
    dips = signal.find_peaks(-profile, prominence=DISC_PROMINENCE_HU)[0]
    peaks = signal.find_peaks(profile)[0]
    if dips.size == 0:
        return dips
    discs = []
    for n, dip in enumerate(dips):
        left = peaks[peaks < dip]
        right = peaks[peaks > dip]
        before = dip - left[-1] if left.size else None
        after = right[0] - dip if right.size else None
        width = (before or after or 0) + (after or before or 0)
        previous_dip = dips[n - 1] if n > 0 else dip - profile.size
        next_dip = dips[n + 1] if n + 1 < dips.size else dip + profile.size
        if width < DISC_WIDTH_RATIO * (next_dip - previous_dip) and profile[dip] < DISC_MAX_HU:
            discs.append(dip)
    return _thinned(np.array(discs, dtype=int), profile, int(MIN_SEGMENT_MM / PROFILE_STEP_MM))


def _split_long_segments(discs: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Add the discs that partial volume hid: a segment much longer than its neighbours holds
    whole vertebrae, cut where a narrow dip is flanked by two endplate peaks."""
    discs = list(discs)
    for _ in range(len(discs) + 1):
        bounds = [0] + discs + [profile.size]
        lengths = np.diff(bounds)
        added = False
        for n in range(1, len(lengths)):  # the caudal block may be the sacrum: not split here
            neighbours = np.concatenate([lengths[max(n - 3, 1):n], lengths[n + 1:n + 4]])
            if neighbours.size == 0:
                continue
            # The shorter neighbours: a run of merged segments must not set its own standard.
            typical = float(np.percentile(neighbours, 25))
            pieces = int(round(lengths[n] / typical))
            if lengths[n] < SPLIT_LENGTH_RATIO * typical or pieces < 2:
                continue
            cuts = _best_cuts(profile, bounds[n], bounds[n + 1], pieces - 1, MIN_PIECE_RATIO * typical)
            discs.extend(cuts)
            added = added or bool(cuts)
        discs.sort()
        if not added:
            break
    return np.array(_split_caudal_block(discs, profile), dtype=int)


def _split_caudal_block(discs: list[int], profile: np.ndarray) -> list[int]:
    """A caudal block longer than any sacrum carries the lowest lumbar vertebra: cut it off the top."""
    lengths = np.diff([0] + discs + [profile.size])
    if lengths.size < 3:
        return discs
    typical = float(np.median(lengths[1:4]))
    if lengths[0] < MAX_SACRUM_RATIO * typical:
        return discs
    # The lumbar piece cut off is 0.6-1.4 typical segments long.
    low = int(discs[0] - 2 * typical)
    return sorted(discs + _best_cuts(profile, low, discs[0], 1, MIN_PIECE_RATIO * typical))


def _best_cuts(profile: np.ndarray, low: int, high: int, count: int, min_piece: float) -> list[int]:
    """Up to count dips in [low, high) of highest endplate contrast, min_piece from the ends and each other."""
    reach = int(round(ENDPLATE_REACH_MM / PROFILE_STEP_MM))
    dips = [d for d in signal.argrelmin(profile, order=1)[0] if low + min_piece <= d <= high - min_piece]
    contrast = [min(profile[max(d - reach, 0):d].max(), profile[d + 1:d + reach + 1].max()) - profile[d] for d in dips]
    cuts: list[int] = []
    for order in np.argsort(contrast)[::-1]:
        if contrast[order] < DISC_PROMINENCE_HU or len(cuts) == count:
            break
        if all(abs(dips[order] - cut) >= min_piece for cut in cuts):
            cuts.append(int(dips[order]))
    return cuts


def _thinned(discs: np.ndarray, profile: np.ndarray, min_gap: int) -> np.ndarray:
    """Of discs closer than min_gap keep the deeper one."""
    kept: list[int] = []
    for disc in discs[np.argsort(profile[discs])] if discs.size else []:
        if all(abs(disc - other) >= min_gap for other in kept):
            kept.append(int(disc))
    return np.array(sorted(kept), dtype=int)


def _disk_profile(work: _Grid, axis: _Axis) -> np.ndarray:
    """Median HU on a disk perpendicular to the axis at every axis point (robust to the canal's edge)."""
    left, anterior = axis.frame()
    smooth = ndimage.gaussian_filter(work.values, BONE_SMOOTHING_VOXELS)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    offsets = [(0.0, 0.0)] + [(r * np.cos(a), r * np.sin(a)) for r in PROFILE_RADII_MM[1:] for a in angles]
    samples = []
    for du, dv in offsets:
        points_mm = axis.points_mm + du * left + dv * anterior
        index = points_mm / work.spacing_mm - 0.5
        samples.append(ndimage.map_coordinates(smooth, index.T, order=1, mode="nearest"))
    return np.median(samples, axis=0)


# -- 4. voxels to slabs ---------------------------------------------------------------------


def _local_coordinates(work: _Grid, bone: np.ndarray, axis: _Axis) -> tuple[np.ndarray, ...]:
    """For each bone voxel: lateral and anterior offsets from, and arc length along, the axis."""
    dense = _densified(axis, 0.5)
    voxels_mm = (np.argwhere(bone) + 0.5) * work.spacing_mm
    _, nearest = cKDTree(dense.points_mm).query(voxels_mm)
    offset = voxels_mm - dense.points_mm[nearest]
    left, anterior = dense.frame()
    lateral = np.einsum("ij,ij->i", offset, left[nearest])
    forward = np.einsum("ij,ij->i", offset, anterior[nearest])
    return lateral, forward, dense.arc_mm[nearest]


def _densified(axis: _Axis, step_mm: float) -> _Axis:
    arc = np.arange(axis.arc_mm[0], axis.arc_mm[-1] + step_mm, step_mm)
    points = np.column_stack([np.interp(arc, axis.arc_mm, axis.points_mm[:, c]) for c in range(3)])
    tangents = np.column_stack([np.interp(arc, axis.arc_mm, axis.tangents[:, c]) for c in range(3)])
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    # Extend the ends along the tangent so voxels beyond them do not all collapse onto one point.
    reach = np.arange(step_mm, 40.0, step_mm)
    below = points[0] - reach[::-1, None] * tangents[0]
    above = points[-1] + reach[:, None] * tangents[-1]
    return _Axis(np.vstack([below, points, above]),
                 np.vstack([np.repeat(tangents[:1], reach.size, 0), tangents, np.repeat(tangents[-1:], reach.size, 0)]),
                 np.concatenate([arc[0] - reach[::-1], arc, arc[-1] + reach]))


def _segment_index(segments: list[_Segment], arc_mm: np.ndarray) -> np.ndarray:
    """Index of the slab holding each arc position (-1 outside the spine)."""
    edges = np.array([s.low_mm for s in segments] + [segments[-1].high_mm])
    # A vertebra cut by the field of view reaches the border in every part of it, even where the
    # cut plane through the axis's last point would stop short (a tilted spine).
    edges[0] -= FIELD_EDGE_REACH_MM if segments[0].cut_below else 0.0
    edges[-1] += FIELD_EDGE_REACH_MM if segments[-1].cut_above else 0.0
    index = np.searchsorted(edges, arc_mm, side="right") - 1
    index[(arc_mm < edges[0]) | (arc_mm >= edges[-1])] = -1
    return index


def _assign(segments: list[_Segment], bone: np.ndarray, lateral_mm: np.ndarray, anterior_mm: np.ndarray,
            arc_mm: np.ndarray) -> np.ndarray:
    """Working-grid label map: each bone voxel inside a vertebra's envelope gets its slab's level."""
    index = _segment_index(segments, arc_mm)
    verse_ids = np.array([s.verse_id for s in segments] + [0], dtype=np.uint8)
    reach = np.array([_lateral_reach(s.verse_id) for s in segments] + [0.0])
    inside = ((index >= 0) & (np.abs(lateral_mm) <= reach[index])
              & (anterior_mm <= ENVELOPE_ANTERIOR_MM) & (anterior_mm >= -ENVELOPE_POSTERIOR_MM))
    labels = np.zeros(bone.shape, dtype=np.uint8)
    labels[tuple(np.argwhere(bone)[inside].T)] = verse_ids[index[inside]]
    return _keep_connected_to_body(labels)


def _refine_boundaries(work: _Grid, segments: list[_Segment], bone: np.ndarray, labels: np.ndarray,
                       arc_mm: np.ndarray) -> np.ndarray:
    """Re-draw the cuts between levels: bone near a cut plane goes to the level it is joined to
    most cheaply through bone (geodesic competition, dim voxels costly), so the facet-joint gap
    rather than the plane parts neighbouring posterior elements."""
    if len(segments) < 2:
        return labels
    cuts_mm = np.array([s.low_mm for s in segments[1:]])
    # Short (cervical, upper thoracic) segments keep a seeded middle.
    band_mm = np.minimum(CUT_BAND_MM, CUT_BAND_FRACTION * np.minimum(
        [s.length_mm for s in segments[:-1]], [s.length_mm for s in segments[1:]]))
    arc_volume = np.full(bone.shape, np.inf)
    arc_volume[bone] = arc_mm
    labelled = labels > 0
    near_cut = np.any(np.abs(arc_volume[labelled][:, None] - cuts_mm[None, :]) <= band_mm[None, :], axis=1)
    number = np.full(bone.shape, -1)
    number[labelled] = np.arange(int(labelled.sum()))
    smooth = ndimage.gaussian_filter(work.values, BONE_SMOOTHING_VOXELS)
    cost = 1.0 + DIM_BONE_PENALTY * np.clip((DENSE_BONE_HU - smooth[labelled]) / DENSE_BONE_HU, 0.0, 1.0)
    graph = _neighbour_graph(number, cost, work.spacing_mm)
    _, _, sources = csgraph.dijkstra(graph, directed=False, indices=np.nonzero(~near_cut)[0], min_only=True,
                                     return_predecessors=True)
    values = labels[labelled]
    reached = sources >= 0
    values[reached] = values[sources[reached]]
    refined = np.zeros_like(labels)
    refined[labelled] = values
    return _keep_connected_to_body(refined)


def _neighbour_graph(number: np.ndarray, cost: np.ndarray, spacing_mm: np.ndarray) -> sparse.csr_matrix:
    """Face-neighbour edges between numbered voxels, weighted by length times mean cost."""
    rows, cols, weights = [], [], []
    for axis in range(3):
        low = [slice(None)] * 3
        high = [slice(None)] * 3
        low[axis], high[axis] = slice(0, -1), slice(1, None)
        a, b = number[tuple(low)].ravel(), number[tuple(high)].ravel()
        both = (a >= 0) & (b >= 0)
        a, b = a[both], b[both]
        rows.append(a)
        cols.append(b)
        weights.append(spacing_mm[axis] * (cost[a] + cost[b]) / 2)
    edges = (np.concatenate(rows), np.concatenate(cols))
    return sparse.csr_matrix((np.concatenate(weights), edges), shape=(cost.size, cost.size))


def _lateral_reach(verse_id: int) -> float:
    if verse_id == 0:
        return 0.0
    return LATERAL_REACH_MM[LEVEL_BY_ID[verse_id].region.value]


def _keep_connected_to_body(labels: np.ndarray) -> np.ndarray:
    """Per level keep the largest piece and pieces almost as big: rib stubs and vessels fall away."""
    for box_index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == box_index
        pieces, count = ndimage.label(mask)
        if count <= 1:
            continue
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        drop = (sizes < 0.2 * sizes.max())[pieces] & mask
        labels[box][drop] = 0
    return labels


# -- 5. level identification ----------------------------------------------------------------


@dataclass
class _Anchor:
    segment_index: int  # caudal first
    verse_id: int
    evidence: str


def _identify(segments: list[_Segment], lateral_mm: np.ndarray, anterior_mm: np.ndarray, arc_mm: np.ndarray,
              voxel_mm3: float) -> LevelIdentification:
    """Give each segment a VerSe id counted from the nearest anchor in view; returns which anchors
    were used, whether they agree, and how confident the count is."""
    index = _segment_index(segments, arc_mm)
    ribs = _rib_bearing(segments, index, lateral_mm, anterior_mm, voxel_mm3)
    sacral = _sacral_segments(segments, ribs, index, lateral_mm, anterior_mm, arc_mm)
    anchors = _anchors(segments, sacral, ribs)
    if not anchors:
        # Ribs on every vertebra in view: a thoracic stretch; without them a lumbar one is likelier.
        _count_from(segments, [_Anchor(0, T12_ID if all(ribs) else L5_ID, "")])
        assumed = "every vertebra in view bears ribs, the lowest was assumed to be T12" if all(ribs) \
            else "the lowest vertebra in view was assumed to be L5"
        return LevelIdentification((), "uncertain",
                                   f"no anchor visible (no sacrum, C1 or first/last rib): levels uncertain ({assumed})")
    _count_from(segments, anchors)
    for i in sacral:
        segments[i].verse_id = SACRUM_ID
    used, others = anchors[0], anchors[1:]
    names = tuple(anchor.evidence for anchor in anchors)
    offset = used.verse_id + used.segment_index  # a segment's id counted from the most reliable anchor, plus its index
    disagreeing = [a for a in others if a.verse_id + a.segment_index != offset]
    if disagreeing:
        found = "; ".join(f"{a.evidence} would be {_level_name(offset - a.segment_index)} counted from {used.evidence}"
                          for a in disagreeing)
        return LevelIdentification(names, "low", f"levels counted from the nearest of {', '.join(names)} (confidence "
                                   f"low: {found}; a transitional vertebra, a rib variant or a missed disc between "
                                   "them is possible)")
    if others:
        agreeing = " and ".join(a.evidence for a in others)
        return LevelIdentification(names, "high", f"levels counted from {used.evidence} "
                                                  f"(confidence high, in agreement with {agreeing})")
    confidence = "high" if used.verse_id == L5_ID else "medium"
    return LevelIdentification(names, confidence, f"levels counted from {used.evidence} (confidence {confidence})")


def _anchors(segments: list[_Segment], sacral: list[int], ribs: list[bool]) -> list[_Anchor]:
    """Landmarks that fix a level, most reliable first: the sacrum, the atlas at the top of the
    spine, the last rib-bearing vertebra (T12) and the first (T1)."""
    anchors = []
    if sacral:
        anchors.append(_Anchor(len(sacral), L5_ID, "the sacrum upwards"))
    if _atlas_on_top(segments, ribs):
        anchors.append(_Anchor(len(segments) - 1, C1_ID, "the atlas (C1, top of the spine in view) downwards"))
    # Ribs come in runs; an iliac crest beside L5 or the iliac bones beside the sacrum are single hits.
    rib_runs = [i for i in range(len(sacral), len(segments) - 1) if ribs[i] and ribs[i + 1]]
    if rib_runs:
        lowest, highest = rib_runs[0], rib_runs[-1] + 1
        if lowest > len(sacral) and not ribs[lowest - 1]:
            anchors.append(_Anchor(lowest, T12_ID, "the last rib-bearing vertebra (T12)"))
        if highest < len(segments) - 1 and not ribs[highest + 1]:
            anchors.append(_Anchor(highest, T1_ID, "the first rib-bearing vertebra (T1)"))
    return anchors


def _atlas_on_top(segments: list[_Segment], ribs: list[bool]) -> bool:
    """The spine ends inside the field of view above short rib-free segments: the top one is C1
    (an end inside the view below the lumbar or thoracic spine is never the top of the spine)."""
    top = segments[-CERVICAL_RUN:]
    return (not segments[-1].cut_above and len(segments) >= CERVICAL_RUN and not any(ribs[-CERVICAL_RUN:])
            and float(np.median([s.length_mm for s in top])) <= CERVICAL_SEGMENT_MAX_MM)


def _level_name(verse_id: int) -> str:
    """A counted level's name; a count can run past either end of the spine when anchors disagree."""
    return LEVEL_BY_ID[verse_id].name if 1 <= verse_id <= L5_ID + 1 else "outside C1-L6"


def _count_from(segments: list[_Segment], anchors: list[_Anchor]) -> None:
    """Number each segment (caudal first) by counting from its nearest anchor, the more reliable
    on a tie; C1..L6 only. Anchors that disagree then meet between them: a missed disc leaves a
    level out there, a spurious one gives one level two segments."""
    for i, segment in enumerate(segments):
        nearest = min(anchors, key=lambda anchor: abs(i - anchor.segment_index))  # first of equals
        verse_id = nearest.verse_id - (i - nearest.segment_index)
        segment.verse_id = verse_id if 1 <= verse_id <= L5_ID + 1 else 0


def _sacral_segments(segments: list[_Segment], ribs: list[bool], index: np.ndarray, lateral_mm: np.ndarray,
                     anterior_mm: np.ndarray, arc_mm: np.ndarray) -> list[int]:
    """The caudal segments that make up the sacrum (empty when it is not in view). The pelvis
    lies under the lumbar spine: a block with rib-bearing or short (cervical, upper thoracic)
    vertebrae right above it is the lower edge of a neck or chest CT, and the bone beside it is ribs."""
    inner_mm = [s.length_mm for s in segments[1:-1]]
    typical_mm = float(np.median(inner_mm)) if inner_mm else 0.0
    sacral = []
    for i, segment in enumerate(segments[:-2]):  # at least two vertebrae must stay above it
        long_block = i == 0 and typical_mm > 0 and segment.length_mm >= SACRUM_LENGTH_RATIO * typical_mm
        under_rib_cage = ribs[i + 1] and ribs[i + 2]
        under_short_vertebrae = np.median([s.length_mm for s in segments[i + 1:i + 4]]) <= CERVICAL_SEGMENT_MAX_MM
        if under_rib_cage or under_short_vertebrae:
            break
        if not (long_block or _flanked_by_pelvis(segment, index == i, lateral_mm, anterior_mm, arc_mm)):
            break
        sacral.append(i)
    return sacral


def _flanked_by_pelvis(segment: _Segment, in_segment: np.ndarray, lateral_mm: np.ndarray,
                       anterior_mm: np.ndarray, arc_mm: np.ndarray) -> bool:
    """Bone beside the axis, where the iliac bones meet the sacrum, over most of the segment's height."""
    zone = (in_segment & (np.abs(lateral_mm) >= PELVIS_ZONE_LATERAL_MM[0])
            & (np.abs(lateral_mm) <= PELVIS_ZONE_LATERAL_MM[1])
            & (anterior_mm >= PELVIS_ZONE_AP_MM[0]) & (anterior_mm <= PELVIS_ZONE_AP_MM[1]))
    bins = np.arange(segment.low_mm, segment.high_mm + PELVIS_BIN_MM, PELVIS_BIN_MM)
    if bins.size < 2 or not zone.any():
        return False
    occupied = np.histogram(arc_mm[zone], bins=bins)[0] > 0
    return float(occupied.mean()) >= PELVIS_SLICE_FRACTION


def _rib_bearing(segments: list[_Segment], index: np.ndarray, lateral_mm: np.ndarray, anterior_mm: np.ndarray,
                 voxel_mm3: float) -> list[bool]:
    """Segments (caudal first) with enough bone far out laterally behind the bodies: ribs."""
    in_zone = ((np.abs(lateral_mm) >= RIB_ZONE_LATERAL_MM[0]) & (np.abs(lateral_mm) <= RIB_ZONE_LATERAL_MM[1])
               & (anterior_mm >= RIB_ZONE_AP_MM[0]) & (anterior_mm <= RIB_ZONE_AP_MM[1]) & (index >= 0))
    counts = np.bincount(index[in_zone], minlength=len(segments))
    return [bool(count * voxel_mm3 >= RIB_MIN_VOLUME_MM3) for count in counts]


# -- back to the CT grid --------------------------------------------------------------------


def _native_labels(hu: np.ndarray, spacing_mm: np.ndarray, work: _Grid, work_labels: np.ndarray) -> np.ndarray:
    """Labels on the CT's own grid: working labels spread over the native bone voxels."""
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if np.all(work.factors == 1):
        stop = work.start + np.array(work_labels.shape)
        labels[tuple(slice(a, b) for a, b in zip(work.start, stop))] = work_labels
        return labels
    # One working voxel of growth first: native bone reaches a little beyond the averaged bone.
    grown = np.where(work_labels > 0, work_labels, ndimage.grey_dilation(work_labels, size=3))
    for axis, factor in enumerate(work.factors):
        grown = np.repeat(grown, factor, axis=axis)
    box = tuple(slice(a, a + n) for a, n in zip(work.start, grown.shape))
    native_bone = _bone_mask(np.asarray(hu[box], dtype=np.float32), spacing_mm, edge=True)
    labels[box] = np.where(native_bone, grown, 0)
    return labels


def _fill_enclosed_marrow(labels: np.ndarray) -> np.ndarray:
    """Per level, fill what its bone encloses in sagittal planes: marrow darker than the bone
    threshold (osteoporosis, fat) inside the cortical shell. Sagittal planes, because there the
    spinal canal is an open channel, never a hole, while the body is a closed box."""
    for box_index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == box_index
        filled = ndimage.binary_fill_holes(ndimage.binary_closing(mask, SAGITTAL_CROSS, border_value=0), SAGITTAL_CROSS)
        labels[box][filled & (labels[box] == 0)] = box_index
    return labels


def _levels_with_metal(hu: np.ndarray, labels: np.ndarray, verse_ids: list[int]) -> list[str]:
    """Names of the levels whose mask holds voxels as dense as an implant or cement."""
    if not verse_ids:
        return []
    densest = ndimage.maximum(hu, labels, index=verse_ids)
    return [LEVEL_BY_ID[v].name for v, value in zip(verse_ids, densest) if value >= METAL_HU]
