"""Level borders through the bodies along the discs seen on the CT (step 4, after the slabs).

The slabs part neighbouring levels with planes perpendicular to the axis at the profile's disc dips;
real discs tilt against the axis (kyphosis, lordosis, a wedged body), and where the marrow is as
dark as the disc the dip can sit in a body. Between each pair of neighbouring bodies the disc is
therefore found again on the CT, column by column: on lines along the axis through every column of
the body footprint (in front of the spinal canal), a disc is a low-HU dip flanked by the two bright
endplates within ENDPLATE_REACH_MM; the plane (offset and tilt against the axis) that runs through
the best-flanked dips over all body columns is the disc, and body voxels above / below it go to the
upper / lower level. Not in the neck: no disc parts C1 from C2 (the dens rises into the atlas), and
the small cervical bodies with their uncinate processes lost Dice on phantoms (C6, C7 0.94 -> 0.90,
0.75 on a 1.5 mm whole spine). Where the disc is as dense as bone (a thoracic disc next to sparse marrow) its
voxels between the two endplates that stay below half way from the dip to the endplates are left
unlabelled, as in expert masks. The posterior elements keep their slab labels (the geodesic
re-drawing of the cuts then starts from the re-assigned bodies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spinefrac.levels import LEVEL_BY_ID, Region
from spinefrac.segmentation.offline.axis import SpineAxis, WorkGrid
from spinefrac.segmentation.offline.bone import BONE_HU
from spinefrac.segmentation.offline.discs import THICK_SLICE_MM, Segment

SAMPLE_STEP_MM = 1.0  # along the axis
COLUMN_STEP_MM = 2.0  # across it
BODY_HALF_WIDTH_MM = 30.0  # lumbar bodies are 40-50 mm wide
BODY_FRONT_MM = 30.0  # in front of the axis (the body centre)
NO_CANAL_BACK_MM = 10.0  # body columns reach at least this far behind the axis (thoracic and lumbar bodies)
CANAL_GAP_MM = 2.0  # body columns start this far in front of the canal (its front wall)
CANAL_LATERAL_MM = 12.0
SEARCH_FRACTION = 0.5  # the disc lies within half a segment of the profile's cut
MAX_TILT = 0.45  # mm along the axis per mm across it: about 24 degrees
TILT_STEP = 0.05
# A body column runs through bone or disc over its whole search range: at the rim of the body's
# concave waist a column leaves the bone, and the soft tissue there would pass for a disc.
DISC_MIN_HU = 60.0  # discs are 70-130 HU, fat and muscle below
MIN_INSIDE_FRACTION = 0.85
FOOTPRINT_FRACTION = 0.5  # of a body column's search range labelled by the slabs
MIN_BODY_COLUMNS = 6
# A disc's endplates lie within half the thickest (lumbar) disc of its middle; a thin thoracic body's
# own endplates lie further from its middle (8-9 mm), which must not pass for a disc's.
ENDPLATE_REACH_MM = 6.0


@dataclass(frozen=True)
class DiscPlane:
    """s = offset_mm + tilt_u * u + tilt_v * v in a cut's frame (mm), and the disc around it."""

    offset_mm: float
    tilt_u: float
    tilt_v: float
    below_mm: float  # median distance from the plane to the lower body's endplate peak
    above_mm: float  # ... to the upper body's
    disc_max_hu: float  # half way from the dip to the darker endplate peak (medians over the columns)
    dip_hu: float  # median HU on the plane

    def along_mm(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.offset_mm + self.tilt_u * u + self.tilt_v * v


def disc_surface_labels(work: WorkGrid, axis: SpineAxis, segments: list[Segment], labels: np.ndarray,
                        canal: np.ndarray, search_fraction: float = SEARCH_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Re-assign each pair of neighbouring bodies along the disc plane found between them, within
    search_fraction of either segment's length from the cut. Returns the labels and the mask of the
    voxels re-assigned (in the body footprints)."""
    if work.spacing_mm[0] >= THICK_SLICE_MM:  # a disc is a slice at most: no surface to follow, no tilt to see
        return labels, np.zeros(labels.shape, dtype=bool)
    smooth = work.smooth
    left, anterior = axis.frame()
    labelled_mm = (np.argwhere(labels > 0) + 0.5) * work.spacing_mm
    labelled_hu = smooth[labels > 0]
    canal_mm = (np.argwhere(canal) + 0.5) * work.spacing_mm
    values = labels[labels > 0]
    reassigned = np.zeros(values.shape, dtype=bool)
    # Between the two bodies' middles only: the far halves are another cut's (and the neck's) business.
    for lower, upper in zip(segments[:-1], segments[1:]):
        if not (lower.verse_id and upper.verse_id) or LEVEL_BY_ID[upper.verse_id].region is Region.CERVICAL:
            continue
        frame = _cut_frame(axis, left, anterior, upper.low_mm)
        reach_mm = (search_fraction * lower.length_mm, search_fraction * upper.length_mm)
        back_mm = _canal_front_mm(canal_mm, frame, reach_mm)
        s, u, v = _in_frame(labelled_mm, frame)
        pair = ((values == lower.verse_id) | (values == upper.verse_id)) & (v > back_mm) & \
            (np.abs(u) <= BODY_HALF_WIDTH_MM) & (s >= -reach_mm[0]) & (s <= reach_mm[1])
        plane = _disc_plane(smooth, work.spacing_mm, frame, reach_mm, back_mm,
                            (u[pair], v[pair], float(np.prod(work.spacing_mm))))
        if plane is None:  # no disc found between the bodies: the slabs stay
            continue
        from_plane = s - plane.along_mm(u, v)
        values[pair] = np.where(from_plane[pair] > 0, upper.verse_id, lower.verse_id)
        # Only a bone-dense disc is labelled at all; next to a dark one the voxels in reach are marrow.
        in_disc = pair & (plane.dip_hu > BONE_HU) & (from_plane > -plane.below_mm) & (from_plane < plane.above_mm) & \
            (labelled_hu < plane.disc_max_hu)
        values[in_disc] = 0
        reassigned |= pair
    out = labels.copy()
    out[labels > 0] = values
    fixed = np.zeros(labels.shape, dtype=bool)
    fixed[labels > 0] = reassigned
    return out, fixed


def _cut_frame(axis: SpineAxis, left: np.ndarray, anterior: np.ndarray, arc_mm: float) -> np.ndarray:
    """Origin, tangent, left and anterior unit vectors (rows, working-grid mm) at an arc position."""
    rows = []
    for field in (axis.points_mm, axis.tangents, left, anterior):
        rows.append([np.interp(arc_mm, axis.arc_mm, field[:, c]) for c in range(3)])
    frame = np.array(rows)
    frame[1:] /= np.linalg.norm(frame[1:], axis=1, keepdims=True)
    return frame


def _in_frame(points_mm: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along-axis, lateral and anterior offsets (mm) of points from the frame's origin."""
    offset = points_mm - frame[0]
    return offset @ frame[1], offset @ frame[2], offset @ frame[3]


def _canal_front_mm(canal_mm: np.ndarray, frame: np.ndarray, reach_mm: tuple[float, float]) -> float:
    """Anterior offset of the canal's front wall near the cut: the bodies lie in front of it."""
    if canal_mm.size == 0:
        return -NO_CANAL_BACK_MM
    s, u, v = _in_frame(canal_mm, frame)
    near = (s >= -reach_mm[0]) & (s <= reach_mm[1]) & (np.abs(u) <= CANAL_LATERAL_MM) & (v < 0)
    if not near.any():
        return -NO_CANAL_BACK_MM
    # Canal voxels closer to the axis than any body's back (the sacral canal beside a tilted
    # lumbosacral axis) do not cut the footprint short.
    return min(float(np.percentile(v[near], 90)) + CANAL_GAP_MM, -NO_CANAL_BACK_MM)


def _disc_plane(smooth: np.ndarray, spacing_mm: np.ndarray, frame: np.ndarray, reach_mm: tuple[float, float],
                back_mm: float, pair: tuple[np.ndarray, np.ndarray, float]) -> DiscPlane | None:
    """The plane through the best endplate-flanked dips of the body columns, or None where too few
    columns cross bodies. pair: lateral and anterior offsets (mm) of the pair's labelled voxels within
    reach, and a voxel's volume (mm^3)."""
    margin_mm = MAX_TILT * max(BODY_HALF_WIDTH_MM, BODY_FRONT_MM - back_mm) + ENDPLATE_REACH_MM
    s = np.arange(-reach_mm[0] - margin_mm, reach_mm[1] + margin_mm + SAMPLE_STEP_MM, SAMPLE_STEP_MM)
    u, v = np.meshgrid(np.arange(-BODY_HALF_WIDTH_MM, BODY_HALF_WIDTH_MM + 1e-6, COLUMN_STEP_MM),
                       np.arange(back_mm, BODY_FRONT_MM + 1e-6, COLUMN_STEP_MM), indexing="ij")
    u, v = u.ravel(), v.ravel()
    points_mm = (frame[0] + u[:, None, None] * frame[2] + v[:, None, None] * frame[3]
                 + s[None, :, None] * frame[1])
    index = (points_mm / spacing_mm - 0.5).reshape(-1, 3).T
    profiles = ndimage.map_coordinates(smooth, index, order=1, mode="nearest").reshape(u.size, s.size)
    in_range = (s >= -reach_mm[0]) & (s <= reach_mm[1])
    inside = ((profiles[:, in_range] > DISC_MIN_HU).mean(axis=1) >= MIN_INSIDE_FRACTION) & \
        (profiles[:, in_range].max(axis=1) > BONE_HU) & _in_labels(u, v, pair, float(in_range.sum()) * SAMPLE_STEP_MM)
    if inside.sum() < MIN_BODY_COLUMNS:
        return None
    contrast = np.where(profiles[inside] >= DISC_MIN_HU, _flanked_dips(profiles[inside]), 0.0)
    best = _best_plane(contrast, u[inside], v[inside], s, reach_mm)
    if best is None:
        return None
    offset_mm, tilt_u, tilt_v = best
    return DiscPlane(offset_mm, tilt_u, tilt_v, *_disc_extent(profiles[inside], s, offset_mm + tilt_u * u[inside]
                                                               + tilt_v * v[inside]))


def _disc_extent(profiles: np.ndarray, s: np.ndarray, plane_mm: np.ndarray) -> tuple[float, float, float, float]:
    """Median distances (mm) from the plane to the brightest sample within ENDPLATE_REACH_MM below and
    above it, the median of half way from the plane's sample up to the darker of the two, and the
    median of the plane's samples."""
    reach = int(round(ENDPLATE_REACH_MM / SAMPLE_STEP_MM))
    at = np.clip(np.round((plane_mm - s[0]) / SAMPLE_STEP_MM).astype(int), reach, s.size - reach - 1)
    rows = np.arange(at.size)[:, None]
    below = profiles[rows, at[:, None] - np.arange(1, reach + 1)[None, :]]
    above = profiles[rows, at[:, None] + np.arange(1, reach + 1)[None, :]]
    dip = profiles[rows[:, 0], at]
    half_hu = (dip + np.minimum(below.max(axis=1), above.max(axis=1))) / 2
    return (float(np.median(below.argmax(axis=1) + 1)) * SAMPLE_STEP_MM,
            float(np.median(above.argmax(axis=1) + 1)) * SAMPLE_STEP_MM, float(np.median(half_hu)),
            float(np.median(dip)))


def _in_labels(u: np.ndarray, v: np.ndarray, pair: tuple[np.ndarray, np.ndarray, float], length_mm: float) -> np.ndarray:
    """Columns labelled (as either level of the pair) over at least FOOTPRINT_FRACTION of their length:
    a contrast-filled aorta or heart in front of the bodies is bright and has dips of its own, but the
    slabs left it unlabelled."""
    half = COLUMN_STEP_MM / 2
    u_edges = np.append(np.unique(u) - half, u.max() + half)
    v_edges = np.append(np.unique(v) - half, v.max() + half)
    counts, _, _ = np.histogram2d(pair[0], pair[1], bins=(u_edges, v_edges))
    fraction = counts * pair[2] / (COLUMN_STEP_MM ** 2 * length_mm)
    cell_u = np.clip(np.searchsorted(u_edges, u) - 1, 0, counts.shape[0] - 1)
    cell_v = np.clip(np.searchsorted(v_edges, v) - 1, 0, counts.shape[1] - 1)
    return fraction[cell_u, cell_v] >= FOOTPRINT_FRACTION


def _flanked_dips(profiles: np.ndarray) -> np.ndarray:
    """Per sample, how far it lies below the darker of the brightest samples within ENDPLATE_REACH_MM
    before and after it: high in a disc between two endplates, low in marrow or on a slope."""
    reach = int(round(ENDPLATE_REACH_MM / SAMPLE_STEP_MM))
    before = np.full(profiles.shape, -np.inf)
    after = np.full(profiles.shape, -np.inf)
    for n in range(1, reach + 1):
        before[:, n:] = np.maximum(before[:, n:], profiles[:, :-n])
        after[:, :-n] = np.maximum(after[:, :-n], profiles[:, n:])
    return np.maximum(np.minimum(before, after) - profiles, 0.0)


def _best_plane(contrast: np.ndarray, u: np.ndarray, v: np.ndarray, s: np.ndarray,
                reach_mm: tuple[float, float]) -> tuple[float, float, float] | None:
    """Exhaustive search over offsets (one sample apart) and tilts for the highest mean contrast."""
    centre_u, centre_v = float(u.mean()), float(v.mean())
    offsets = np.nonzero((s >= -reach_mm[0]) & (s <= reach_mm[1]))[0]
    columns = np.arange(u.size)[:, None]
    tilts = np.arange(-MAX_TILT, MAX_TILT + 1e-6, TILT_STEP)
    best = (-np.inf, 0.0, 0.0, 0.0)
    for tilt_u in tilts:
        for tilt_v in tilts:
            shift = np.round((tilt_u * (u - centre_u) + tilt_v * (v - centre_v)) / SAMPLE_STEP_MM).astype(int)
            index = np.clip(offsets[None, :] + shift[:, None], 0, s.size - 1)
            score = contrast[columns, index].mean(axis=0)
            n = int(np.argmax(score))
            if score[n] > best[0]:
                best = (float(score[n]), float(s[offsets[n]]), float(tilt_u), float(tilt_v))
    _, offset, tilt_u, tilt_v = best
    if not s[offsets[0]] < offset < s[offsets[-1]]:
        return None  # the best at an end of the reach lies beyond it: another disc, or none
    return offset - tilt_u * centre_u - tilt_v * centre_v, tilt_u, tilt_v
