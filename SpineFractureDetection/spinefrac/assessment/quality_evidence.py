"""What the CT says about each labelled level: the image evidence quality control judges.

Per level, on its own bounding box of the canonical [k, j, i] grid (k superior, j posterior),
averaged into blocks of ~1.5 mm (as a CT reconstructed at 1.5 mm would show it: finer voxels add
time, not evidence; a thin cortex still brightens the rim blocks, pieces and canal stay visible):
- the HU distribution of its voxels: a vertebra is cortex (a few hundred to over 1000 HU) around
  marrow (tens to a few hundred HU), so it has a bright tail and a wide spread; soft tissue has
  no bright tail; contrast-filled blood is bright but homogeneous;
- rim minus interior: the median HU of the label's outer layer (one sampled voxel, about 1.5 mm)
  against the rest. A label that
  follows the bone has its cortex on the rim (brighter); a shifted or flipped label cuts through
  bone and soft tissue alike, and a vessel's rim is its darker wall;
- its pieces (26-connected components), to find a level split in two;
- the spinal canal: per axial slice, a hole enclosed by the label behind its centre.

Per pair of neighbouring levels, their border (``border_contact``): where the two labels touch
face to face in front of the canal (the bodies), and over how much of that the CT shows marrow on
both sides. A border at the disc leaves the disc unlabelled between the bodies (the labels touch
only at the arches, behind), or, where the disc is thinner than a voxel, touches on the bright
endplates; a border that runs through a vertebral body touches over the body, with marrow on both
sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spinefrac.coordinates import LPS_RAS_SIGNS

BONE_HU = 150.0  # marrow of healthy bone and all cortex lie above; muscle, fat, fluid below
SAMPLING_MM = 1.5  # cortex (0.3-1 mm) plus the partial-volume layer outside it: the rim's depth
CANAL_MIN_AREA_MM2 = 30.0  # a stenotic canal is still over 70 mm2; 30 allows partial volume
# The bodies: the front of a vertebra's antero-posterior extent (body 35-45 %, canal and arch
# behind it, from cervical to lumbar); facet joints, arches and rib heads lie behind this.
BODY_FRONT_FRACTION = 0.3
# Marrow of a vertebral body, HU: above soft tissue (muscle <= 60), below cortex and endplates (the
# endplates either side of a disc thinner than a voxel make a legitimately touching border bright).
# Disc tissue (70-130) is inside this band: marrow of older bones is as dark (the sample CT's L3
# body 90-140 HU at 3 mm), so HU cannot tell a disc from marrow; the contact area does.
MARROW_HU = (60.0, 400.0)
# Where the marrow is fatty and the endplates sclerotic, a disc thinner than a slice and its two
# endplates make one band brighter than the bodies either side (POPI: 200-250 HU against 120-150);
# a border through a body lies in marrow as dark as the body a few millimetres away.
BAND_REACH_MM = 8.0  # from the band's middle to its bodies' marrow: half a thoracic body
BAND_CONTRAST_HU = 40.0
FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)
EIGHT_CONNECTED_IN_SLICE = np.array([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))], dtype=bool)


@dataclass(frozen=True)
class LevelEvidence:
    """Image evidence for one labelled level (HU are Hounsfield units)."""

    sampled_voxel_count: int  # ~1.5 mm blocks at least half inside the label
    hu_p05: float
    hu_p25: float
    hu_median: float
    hu_p75: float
    hu_p95: float
    bone_fraction: float  # fraction of voxels >= BONE_HU
    rim_minus_interior_hu: float  # median HU of the outer layer minus that of the rest; nan if no interior
    piece_volumes_ml: tuple[float, ...]  # 26-connected pieces, largest first
    canal_slices: int  # axial slices in which the label encloses a canal-sized hole behind its centre
    in_plane_spacing_mm: float  # the coarser of the two axial-plane spacings

    @property
    def hu_relative_spread(self) -> float:
        """Inter-quartile range over the median: about 1 for bone, 0.1-0.3 for contrast blood."""
        return (self.hu_p75 - self.hu_p25) / max(abs(self.hu_median), 1.0)


def index_box(image: sitk.Image, bbox_min_ras_mm, bbox_max_ras_mm) -> tuple[slice, ...]:
    """The [k, j, i] box holding a level, from its measured RAS box of voxel centres (no pass over
    the whole label map: on a 512 x 512 x 500 CT that pass alone would take seconds)."""
    corners = np.array(list(product(*zip(bbox_min_ras_mm, bbox_max_ras_mm)))) * LPS_RAS_SIGNS
    ijk = np.array([image.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in corners])
    low = np.clip(np.floor(ijk.min(axis=0) - 1e-3).astype(int), 0, None)
    high = np.minimum(np.ceil(ijk.max(axis=0) + 1e-3).astype(int) + 1, image.GetSize())
    return tuple(slice(int(a), int(b)) for a, b in zip(low[::-1], high[::-1]))


def level_evidence(hu: np.ndarray, labels: np.ndarray, level_id: int, box: tuple[slice, ...],
                   spacing_kji_mm: tuple[float, float, float]) -> LevelEvidence:
    """Evidence for one level, from its box averaged into ~1.5 mm blocks."""
    stride = tuple(max(1, round(SAMPLING_MM / s)) for s in spacing_kji_mm)
    sampled_spacing = tuple(s * step for s, step in zip(spacing_kji_mm, stride))
    hu_box = block_mean(hu[box], stride)
    mask = block_mean(labels[box] == level_id, stride) >= 0.5
    if not mask.any():  # a level thinner than one block: keep its voxels as they are
        hu_box, mask, sampled_spacing = hu[box].astype(np.float32), labels[box] == level_id, spacing_kji_mm
    values = hu_box[mask]
    p05, p25, p50, p75, p95 = np.percentile(values, [5, 25, 50, 75, 95])
    voxel_ml = float(np.prod(sampled_spacing)) / 1000.0
    return LevelEvidence(
        sampled_voxel_count=int(values.size),
        hu_p05=float(p05), hu_p25=float(p25), hu_median=float(p50), hu_p75=float(p75), hu_p95=float(p95),
        bone_fraction=float(np.mean(values >= BONE_HU)),
        rim_minus_interior_hu=_rim_contrast(hu_box, mask),
        piece_volumes_ml=tuple(size * voxel_ml for size in _piece_sizes(mask)),
        canal_slices=_canal_slices(mask, sampled_spacing),
        in_plane_spacing_mm=float(max(spacing_kji_mm[1], spacing_kji_mm[2])),
    )


def block_mean(volume: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """Mean over blocks of ``block`` voxels (edges padded by repeating the last voxels)."""
    if block == (1, 1, 1):
        return volume.astype(np.float32)
    pad = [(0, (-n) % b) for n, b in zip(volume.shape, block)]
    padded = np.pad(volume.astype(np.float32), pad, mode="edge")
    shape = [d for n, b in zip(padded.shape, block) for d in (n // b, b)]
    return padded.reshape(shape).mean(axis=(1, 3, 5))


def _rim_contrast(hu_box: np.ndarray, mask: np.ndarray) -> float:
    # The interior is what survives one erosion; the box's faces count as outside.
    interior = ndimage.binary_erosion(np.pad(mask, 1), structure=FACE_NEIGHBOURS)[1:-1, 1:-1, 1:-1]
    rim = mask & ~interior
    if interior.sum() < 8 or not rim.any():
        return math.nan
    return float(np.median(hu_box[rim]) - np.median(hu_box[interior]))


def _piece_sizes(mask: np.ndarray) -> list[int]:
    pieces, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(pieces.ravel())[1:]
    return sorted((int(s) for s in sizes if s > 0), reverse=True)


def _canal_slices(mask: np.ndarray, spacing_kji_mm) -> int:
    """Axial slices where the label encloses a hole of canal size lying behind the label's centre
    (the arch behind the body); holes are filled slice by slice."""
    filled = ndimage.binary_fill_holes(mask, structure=EIGHT_CONNECTED_IN_SLICE)
    holes = filled & ~mask
    if not holes.any():
        return 0
    pixel_mm2 = spacing_kji_mm[1] * spacing_kji_mm[2]
    centre_j = float(np.nonzero(mask)[1].mean())
    count = 0
    for k in np.nonzero(holes.any(axis=(1, 2)))[0]:
        regions, n = ndimage.label(holes[k])
        for region in range(1, n + 1):
            j_idx = np.nonzero(regions == region)[0]
            if j_idx.size * pixel_mm2 >= CANAL_MIN_AREA_MM2 and j_idx.mean() > centre_j:
                count += 1
                break
    return count


@dataclass(frozen=True)
class BorderContact:
    """Where two neighbouring labels touch in front of the canal (areas in mm2: face-adjacent voxel
    pairs times their face area, at the label map's own resolution)."""

    body_contact_mm2: float  # the labels touch face to face here
    marrow_contact_mm2: float  # ... and both touching voxels hold marrow (MARROW_HU): inside a body


def border_contact(hu: np.ndarray, labels: np.ndarray, first_id: int, second_id: int,
                   first_box: tuple[slice, ...], second_box: tuple[slice, ...],
                   spacing_kji_mm: tuple[float, float, float]) -> BorderContact:
    """The border between two levels, each in its own box (the tight [k, j, i] box of its voxels),
    in front of the canal. Full resolution (sampling coarser than a thin disc would step over it
    and make the labels seem to touch), but only where the two boxes meet."""
    j_front = min(first_box[1].start, second_box[1].start)
    j_depth = max(first_box[1].stop, second_box[1].stop) - 1 - j_front
    body_j_stop = j_front + int(BODY_FRONT_FRACTION * j_depth) + 1
    # Touching voxels lie in both boxes grown by one voxel.
    box = tuple(slice(max(a.start, b.start) - 1, min(a.stop, b.stop) + 1) for a, b in zip(first_box, second_box))
    box = tuple(slice(max(b.start, 0), min(b.stop, n)) for b, n in zip(box, labels.shape))
    box = (box[0], slice(box[1].start, min(box[1].stop, body_j_stop)), box[2])
    if any(b.stop - b.start < 1 for b in box):
        return BorderContact(0.0, 0.0)
    region = labels[box]
    offset = np.array([b.start for b in box])
    body, marrow = 0.0, 0.0
    for axis in range(3):
        low, high = _shifted_pair(region, axis)
        touching = np.nonzero(((low == first_id) & (high == second_id)) | ((low == second_id) & (high == first_id)))
        if not touching[0].size:
            continue
        face_mm2 = float(np.prod(np.delete(spacing_kji_mm, axis)))
        first = np.stack(touching, axis=1) + offset
        second = first.copy()
        second[:, axis] += 1
        sides = np.stack([_face_mean_hu(hu, first, axis), _face_mean_hu(hu, second, axis)])
        in_marrow = (sides.min(axis=0) >= MARROW_HU[0]) & (sides.max(axis=0) <= MARROW_HU[1])
        in_marrow &= ~_in_endplate_band(hu, first, second, sides, spacing_kji_mm[0])
        body += first.shape[0] * face_mm2
        marrow += int(np.count_nonzero(in_marrow)) * face_mm2
    return BorderContact(body, marrow)


def _in_endplate_band(hu: np.ndarray, first: np.ndarray, second: np.ndarray, sides: np.ndarray,
                      slice_mm: float) -> np.ndarray:
    """Touching voxel pairs with a face brighter by BAND_CONTRAST_HU than the bodies BAND_REACH_MM
    below and above: a disc thinner than a slice merged with its two endplates into one bright band
    (fatty marrow, sclerotic endplates), not marrow inside one body. One face suffices: on thick
    slices the border falls between the band's slice and the next body's, or within the band's
    slice where it crosses the slices obliquely (the labels then touch in the slice's plane)."""
    reach = max(1, int(round(BAND_REACH_MM / slice_mm)))
    # first and second touch along any axis; their bodies lie along k (second is never below first).
    inner_below, inner_above = first.copy(), second.copy()
    inner_below[:, 0] -= reach
    inner_above[:, 0] += reach
    inner = np.maximum(_face_mean_hu(hu, inner_below, 0), _face_mean_hu(hu, inner_above, 0))
    return sides.max(axis=0) >= inner + BAND_CONTRAST_HU


def _face_mean_hu(hu: np.ndarray, kji: np.ndarray, axis: int) -> np.ndarray:
    """Mean HU of each voxel and its 8 neighbours in the plane across ``axis`` (the border's
    plane): less noise than one voxel, no blur across the border."""
    total = np.zeros(kji.shape[0], dtype=np.float64)
    in_plane = [a for a in range(3) if a != axis]
    for d0, d1 in product((-1, 0, 1), repeat=2):
        index = kji.copy()
        index[:, in_plane[0]] += d0
        index[:, in_plane[1]] += d1
        index = np.clip(index, 0, np.array(hu.shape) - 1)
        total += hu[index[:, 0], index[:, 1], index[:, 2]]
    return total / 9.0


def _shifted_pair(volume: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The volume without its last and without its first layer along ``axis``: face neighbours."""
    low = [slice(None)] * 3
    high = [slice(None)] * 3
    low[axis], high[axis] = slice(0, -1), slice(1, None)
    return volume[tuple(low)], volume[tuple(high)]
