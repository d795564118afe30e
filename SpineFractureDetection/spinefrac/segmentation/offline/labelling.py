"""Voxels to levels (step 4): every bone voxel takes the disc-bounded slab of its nearest axis point
(cut planes perpendicular to the spine), limited to a vertebra-sized envelope so that ribs and
iliac bones fall away; bone near a cut is re-assigned to the level it is most cheaply joined to
through dense bone (facet joints, not planes, part the posterior elements); then back to the
CT's grid, with the marrow each level's cortex encloses filled in.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from spinefrac.hounsfield import METAL_HU
from spinefrac.levels import LEVEL_BY_ID
from spinefrac.segmentation.base import labelled_box
from spinefrac.segmentation.offline.axis import WorkGrid
from spinefrac.segmentation.offline.bone import bone_mask
from spinefrac.segmentation.offline.discs import Segment

FIELD_EDGE_REACH_MM = 20.0  # an end vertebra cut by the field of view extends this far beyond the axis


# Face neighbours within a sagittal plane (k, j) and none across planes (i): per-plane morphology in one call.
SAGITTAL_CROSS = ndimage.generate_binary_structure(2, 1)[:, :, None]


ENVELOPE_ANTERIOR_MM = 30.0
ENVELOPE_POSTERIOR_MM = 85.0
# Lateral reach from the body centre: transverse processes, not ribs or iliac wings.
LATERAL_REACH_MM = {"cervical": 35.0, "thoracic": 31.0, "lumbar": 50.0, "sacral": 60.0}

BODY_CENTRE_MM = 6.0  # a piece with bone this close to the axis holds the body
FRONT_PIECE_MM = 10.0  # a piece whose mean lies this far in front of the axis is not the vertebra

# Contrast-filled blood: homogeneous, 250-650 HU on lightly smoothed voxels (cortex is denser, and
# too thin to hold a core); a vessel core is what is left of it after an axial erosion by
# VESSEL_CORE_MM (the aorta is 20-30 mm across, partial-volume bridges to a body a voxel or two wide).
VESSEL_HU = (250.0, 650.0)
VESSEL_CORE_MM = 4.0
VESSEL_LENGTH_RATIO = 1.3  # of the typical segment (body and disc): longer than any body
VESSEL_CELL_MM = 2.0  # cross-section cells of bright voxels crossing a disc plane
DISC_PLANE_MM = 1.5  # half thickness of a disc plane: inside the thinnest disc

CUT_BAND_MM = 10.0  # bone this close to a cut plane is re-assigned by geodesic competition
CUT_BAND_FRACTION = 0.3  # of the shorter neighbouring segment, at most
DIM_BONE_PENALTY = 8.0  # extra path cost per mm through dim bone (joint gaps, partial volume)
DENSE_BONE_HU = 400.0  # bone this dense costs nothing extra


def segment_index(segments: list[Segment], arc_mm: np.ndarray) -> np.ndarray:
    """Index of the slab holding each arc position (-1 outside the spine)."""
    edges = np.array([s.low_mm for s in segments] + [segments[-1].high_mm])
    # A vertebra cut by the field of view reaches the border in every part of it, even where the
    # cut plane through the axis's last point would stop short (a tilted spine).
    edges[0] -= FIELD_EDGE_REACH_MM if segments[0].cut_below else 0.0
    edges[-1] += FIELD_EDGE_REACH_MM if segments[-1].cut_above else 0.0
    index = np.searchsorted(edges, arc_mm, side="right") - 1
    index[(arc_mm < edges[0]) | (arc_mm >= edges[-1])] = -1
    return index


def assign_levels(segments: list[Segment], bone: np.ndarray, lateral_mm: np.ndarray, anterior_mm: np.ndarray,
            arc_mm: np.ndarray) -> np.ndarray:
    """Working-grid label map: each bone voxel inside a vertebra's envelope gets its slab's level."""
    index = segment_index(segments, arc_mm)
    verse_ids = np.array([s.verse_id for s in segments] + [0], dtype=np.uint8)
    reach = np.array([_lateral_reach(s.verse_id) for s in segments] + [0.0])
    inside = ((index >= 0) & (np.abs(lateral_mm) <= reach[index])
              & (anterior_mm <= ENVELOPE_ANTERIOR_MM) & (anterior_mm >= -ENVELOPE_POSTERIOR_MM))
    labels = np.zeros(bone.shape, dtype=np.uint8)
    inside &= ~_through_the_discs(segments, lateral_mm, anterior_mm, arc_mm)
    labels[tuple(np.argwhere(bone)[inside].T)] = verse_ids[index[inside]]
    return _keep_connected_to_body(_drop_pieces_in_front(labels, bone, lateral_mm, anterior_mm))


def _through_the_discs(segments: list[Segment], lateral_mm: np.ndarray, anterior_mm: np.ndarray,
                       arc_mm: np.ndarray) -> np.ndarray:
    """Bone voxels (of those given) in front of the axis where bright voxels also cross the nearest
    disc planes: a contrast-filled vessel running past the bodies, continuous where the bodies stop.
    Its cross-section in each disc plane (lateral, anterior cells) is compared between the discs on
    either side; where partial volume joins the vessel to a body, no piece parts them."""
    cuts_mm = np.array([s.low_mm for s in segments[1:]])
    front = anterior_mm > 0.0
    if cuts_mm.size == 0 or not front.any():
        return np.zeros(arc_mm.shape, dtype=bool)
    cells = np.round(np.column_stack([lateral_mm, anterior_mm]) / VESSEL_CELL_MM).astype(int)
    nearest_cut = np.abs(arc_mm[:, None] - cuts_mm[None, :]).argmin(axis=1)
    # Endplates can reach a disc plane in partial volume (the bodies are wider than deep, so only the
    # front counts); a vessel lies in front of the bodies.
    beyond_bodies = anterior_mm > _body_front_mm(segments, lateral_mm, anterior_mm, arc_mm)
    in_disc_plane = front & beyond_bodies & (np.abs(arc_mm - cuts_mm[nearest_cut]) <= DISC_PLANE_MM)
    if not in_disc_plane.any():
        return np.zeros(arc_mm.shape, dtype=bool)
    cells -= cells.min(axis=0)
    crossing = np.zeros((cuts_mm.size, *(cells.max(axis=0) + 1)), dtype=bool)
    crossing[nearest_cut[in_disc_plane], cells[in_disc_plane, 0], cells[in_disc_plane, 1]] = True
    crossing = ndimage.binary_dilation(crossing, np.ones((1, 3, 3), dtype=bool))
    # A vessel crosses the disc planes below and above a voxel at the same place; a body's rim can
    # reach one disc plane where the plane and the endplate are not parallel, rarely both at one place.
    above = np.clip(np.searchsorted(cuts_mm, arc_mm), 0, cuts_mm.size - 1)
    below = np.clip(above - 1, 0, cuts_mm.size - 1)
    return front & crossing[below, cells[:, 0], cells[:, 1]] & crossing[above, cells[:, 0], cells[:, 1]]


def _drop_pieces_in_front(labels: np.ndarray, bone: np.ndarray, lateral_mm: np.ndarray,
                          anterior_mm: np.ndarray) -> np.ndarray:
    """Per level, drop the pieces that lie in front of the body without holding its centre: a
    contrast-filled aorta or vena cava beside the body is as bright as bone, but a fat plane parts
    it from the cortex, and nothing of a vertebra lies in front of its body apart from it."""
    forward = np.zeros(bone.shape, dtype=np.float32)
    forward[bone] = anterior_mm
    centre = np.zeros(bone.shape, dtype=bool)
    centre[bone] = (np.abs(lateral_mm) <= BODY_CENTRE_MM) & (np.abs(anterior_mm) <= BODY_CENTRE_MM)
    for box_index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(labels[box] == box_index)
        if count <= 1:  # a level of one piece is its vertebra (the body centre may sit between thick slices)
            continue
        numbers = np.arange(1, count + 1)
        in_front = np.asarray(ndimage.mean(forward[box], pieces, numbers)) > FRONT_PIECE_MM
        holds_centre = np.asarray(ndimage.maximum(centre[box], pieces, numbers)) > 0
        labels[box][np.isin(pieces, numbers[in_front & ~holds_centre])] = 0
    return labels


def vessel_mask(work: WorkGrid, bone: np.ndarray, lateral_mm: np.ndarray, anterior_mm: np.ndarray,
                segment_lengths_mm: list[float]) -> np.ndarray:
    """Working voxels of contrast-filled vessels running past the bodies: cores of blood-bright tissue
    in front of the axis that hold no body centre and run further along the spine than a vertebra
    (a disc, dark, parts the bodies; the aorta crosses it), with the partial-volume rim around them.
    A body's marrow can be as bright, but holds its centre; nothing of a vertebra lies in front of
    its body and is longer than it."""
    smooth = work.smooth
    bright = (smooth >= VESSEL_HU[0]) & (smooth <= VESSEL_HU[1]) & bone
    disk = _axial_disk(VESSEL_CORE_MM, work.spacing_mm)
    cores, count = ndimage.label(ndimage.binary_erosion(bright, disk))
    if count == 0:
        return np.zeros(bone.shape, dtype=bool)
    forward = np.zeros(bone.shape, dtype=np.float32)
    forward[bone] = anterior_mm
    centre = np.zeros(bone.shape, dtype=bool)
    centre[bone] = (np.abs(lateral_mm) <= BODY_CENTRE_MM) & (np.abs(anterior_mm) <= BODY_CENTRE_MM)
    numbers = np.arange(1, count + 1)
    in_front = np.asarray(ndimage.mean(forward, cores, numbers)) > FRONT_PIECE_MM
    holds_centre = np.asarray(ndimage.maximum(centre, cores, numbers)) > 0
    boxes = ndimage.find_objects(cores)
    length_mm = np.array([(box[0].stop - box[0].start) * work.spacing_mm[0] for box in boxes])
    longer = length_mm > VESSEL_LENGTH_RATIO * float(np.median(segment_lengths_mm))
    vessels = np.isin(cores, numbers[in_front & ~holds_centre & longer])
    rim = _axial_disk(VESSEL_CORE_MM + float(np.max(work.spacing_mm[1:])), work.spacing_mm)
    return ndimage.binary_dilation(vessels, rim) & bone


def _axial_disk(radius_mm: float, spacing_mm: np.ndarray) -> np.ndarray:
    """A structuring element: the voxels of one axial slice within radius_mm of its centre."""
    reach = np.maximum(1, np.floor(radius_mm / np.asarray(spacing_mm[1:]))).astype(int)
    j, i = np.ogrid[-reach[0]:reach[0] + 1, -reach[1]:reach[1] + 1]
    return (np.hypot(j * spacing_mm[1], i * spacing_mm[2]) <= max(radius_mm, *spacing_mm[1:]))[None]


def refine_boundaries(work: WorkGrid, segments: list[Segment], bone: np.ndarray, labels: np.ndarray,
                       arc_mm: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
    """Re-draw the cuts between levels: bone near a cut plane goes to the level it is joined to
    most cheaply through bone (geodesic competition, dim voxels costly), so the facet-joint gap
    rather than the plane parts neighbouring posterior elements. Voxels in ``fixed`` (the bodies,
    already parted along their discs) keep their labels and seed the competition."""
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
    if fixed is not None:
        near_cut &= ~fixed[labelled]
    number = np.full(bone.shape, -1)
    number[labelled] = np.arange(int(labelled.sum()))
    smooth = work.smooth
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


def _body_front_mm(segments: list[Segment], lateral_mm: np.ndarray, anterior_mm: np.ndarray,
                   arc_mm: np.ndarray) -> float:
    """How far in front of the axis the bodies reach: bone on the midline (vessels run beside it)
    in the middle third of each segment, the largest over the segments, plus a voxel's margin."""
    fronts = [0.0]
    for segment in segments:
        middle = (np.abs(arc_mm - (segment.low_mm + segment.high_mm) / 2) <= segment.length_mm / 6) & \
            (np.abs(lateral_mm) <= BODY_CENTRE_MM) & (anterior_mm > 0)
        if middle.any():
            fronts.append(float(np.percentile(anterior_mm[middle], 95)))
    return max(fronts) + VESSEL_CELL_MM


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


def native_labels(hu: np.ndarray, spacing_mm: np.ndarray, work: WorkGrid, work_labels: np.ndarray,
                  vessels: np.ndarray) -> np.ndarray:
    """Labels on the CT's own grid: working labels spread over the native bone voxels, none on the
    working voxels of vessels, and each level's enclosed marrow filled in."""
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if np.all(work.factors == 1):
        box = tuple(slice(a, a + n) for a, n in zip(work.start, work_labels.shape))
        labels[box] = work_labels
        labels = fill_enclosed_marrow(labels)
        labels[box][vessels] = 0
        return labels
    # One working voxel of growth first: native bone reaches a little beyond the averaged bone.
    grown = np.where(work_labels > 0, work_labels, ndimage.grey_dilation(work_labels, size=3))
    for axis, factor in enumerate(work.factors):
        grown = np.repeat(grown, factor, axis=axis)
    box = tuple(slice(a, a + n) for a, n in zip(work.start, grown.shape))
    # Integer HU are smoothed as they are (exactly as a float32 copy would be, without the copy).
    native = hu[box] if np.issubdtype(hu.dtype, np.integer) else np.asarray(hu[box], dtype=np.float32)
    native_bone = bone_mask(native, spacing_mm, edge=True)
    labels[box] = np.where(native_bone, grown, 0)
    labels = fill_enclosed_marrow(labels)
    for axis, factor in enumerate(work.factors):
        vessels = np.repeat(vessels, factor, axis=axis)
    labels[box][vessels] = 0
    return labels


def fill_enclosed_marrow(labels: np.ndarray) -> np.ndarray:
    """Per level, fill what its bone encloses in sagittal planes: marrow darker than the bone
    threshold (osteoporosis, fat) inside the cortical shell. Sagittal planes, because there the
    spinal canal is an open channel, never a hole, while the body is a closed box."""
    inside = labels[labelled_box(labels)]  # a view, filled in place: levels looked for there only (a CT: seconds)
    for box_index, box in enumerate(ndimage.find_objects(inside), start=1):
        if box is None:
            continue
        mask = inside[box] == box_index
        filled = ndimage.binary_fill_holes(ndimage.binary_closing(mask, SAGITTAL_CROSS, border_value=0), SAGITTAL_CROSS)
        inside[box][filled & (inside[box] == 0)] = box_index
    return labels


def levels_with_metal(hu: np.ndarray, labels: np.ndarray, verse_ids: list[int]) -> list[str]:
    """Names of the levels whose mask holds voxels as dense as an implant or cement."""
    if not verse_ids:
        return []
    occupied = labelled_box(labels)
    # The labels of the metal voxels, not a per-label maximum: that sorts the whole volume (seconds).
    with_metal = set(np.unique(labels[occupied][hu[occupied] >= METAL_HU]).tolist())
    return [LEVEL_BY_ID[v].name for v in verse_ids if v in with_metal]
