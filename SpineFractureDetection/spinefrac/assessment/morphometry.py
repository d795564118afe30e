"""Stage 3a: vertebral body morphometry — body isolation, local frame, heights, trabecular HU.

For each vertebra:
1. A local frame that follows the spine: the cranio-caudal axis starts as the line joining the
   neighbouring levels' bodies and ends as the mean normal of the body's own fitted endplates
   (endplates.py: it bisects a wedged body's endplates); the antero-posterior axis is the body's
   in-plane principal axis nearest the patient's anterior direction (so axial rotation in scoliosis
   is followed).
2. The vertebral body: the anterior-most solid run of the mask along the AP axis in a
   mid-sagittal band; everything posterior to the gap of the spinal canal (pedicles, arch,
   processes) is removed, and so is anything beside the body's lateral extent (a transverse
   process or rib head reaching in front of the canal's posterior-wall plane).
3. Heights at the anterior, middle and posterior positions of Genant's six-point method (the
   middle and +/- HEIGHT_SAMPLE_FRACTION of the semi-depth), measured along the cranio-caudal
   axis on several parasagittal planes around the midline and summarised by their median —
   not by the single most deformed plane; the middle height is the lowest over the central
   part of the depth (the deepest point of a depressed endplate). Each height runs between the
   endplates' bone/disc edges on the CT (endplates.py).
4. Trabecular density: mean HU of the body eroded by TRABECULAR_MARGIN_MM (cortex and
   endplates excluded).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from spinefrac.assessment.endplates import BodyProbe, endplate_axis, endplate_planes
from spinefrac.assessment.geometry import VertebralFrame, VoxelGrid, make_frame, sample_at  # noqa: F401 (re-exported)
from spinefrac.assessment.measurement import SpineMeasurements
from spinefrac.coordinates import lps_from_ras
from spinefrac.io.images import CtVolume
from spinefrac.levels import Level, Region
from spinefrac.segmentation.base import VertebraSegmentation, labelled_box

HEIGHT_SAMPLE_FRACTION = 0.85  # Genant's anterior/posterior points, fraction of the semi-depth
PLANE_OFFSETS = (-0.2, -0.1, 0.0, 0.1, 0.2)  # parasagittal planes, fraction of the body width
TRABECULAR_MARGIN_MM = 3.0
MIDLINE_BAND_MM = 2.0  # half-width of the mid-sagittal band; narrower than the canal
MIN_BODY_VOXELS = 30
MIN_TRABECULAR_VOXELS = 10
MIN_BODY_SOLIDITY = 0.75
BODY_WIDTH_MARGIN_FRACTION = 0.10  # a side: a thoracic body's posterior half is up to 16 % wider in all (VerSe)
FRAME_ITERATIONS = 2
LEVEL_WORKERS = 2  # processes for the per-level work: the target machine has 2 cores
LEVEL_WORKERS_TIMEOUT_S = 60.0  # then the levels are measured in this process (a watchdog, not a budget:
LEVEL_WORKER_TIMEOUT_S_PER_LEVEL = 10.0  # a level takes well under a second on a 512 x 512 x 500 CT)
SLAB_FRACTIONS = (1 / 3, 1 / 2, 2 / 3)  # of the body height, where the AP extent is taken
CORNER_INWARD_FRACTIONS = np.array([0.0, 0.1, 0.2])  # lines just inside a corner point (semi-depth)
MIDDLE_SPAN_FRACTIONS = np.array([-0.1, 0.0, 0.1])  # middle-height lines (semi-depth from mid-depth)
MAX_ENDPLATE_TILT_DEG = 35.0  # against the neighbour axis: beyond it the fit caught something else
LPS_ANTERIOR = np.array([0.0, -1.0, 0.0])
LPS_SUPERIOR = np.array([0.0, 0.0, 1.0])
HEIGHTS_MEASURED = "measured"  # report.json's height_source of a level measured on the CT
HEIGHTS_FROM_USER_POINTS = "points placed or moved by the user"  # ... of a level measured from --heights points


@dataclass(frozen=True)
class HeightLine:
    """Where one height was measured: its endpoints (LPS mm) on the mid-sagittal plane."""

    name: str  # anterior | middle | posterior
    inferior_lps_mm: tuple[float, float, float]
    superior_lps_mm: tuple[float, float, float]


@dataclass(frozen=True)
class BodyHeights:
    anterior_mm: float
    middle_mm: float
    posterior_mm: float
    per_plane_mm: np.ndarray  # [plane, (anterior, middle, posterior)]
    plane_offsets_mm: tuple[float, ...]
    lines: tuple[HeightLine, ...]
    ct_edge_fraction: float = 1.0  # endplate points found on the CT (the rest: the mask's border)
    # Heights at MIDDLE_SPAN_FRACTIONS of the semi-depth around mid-depth (median over the planes);
    # middle_mm is the lowest of them.
    middle_profile_mm: tuple[float, ...] = ()
    # Where each middle-profile height was measured, on the plane of the middle line (None: not found there).
    middle_lines: tuple[HeightLine | None, ...] = ()
    source: str = HEIGHTS_MEASURED  # or HEIGHTS_FROM_USER_POINTS (assessment/user_heights.py)
    point_distance_mm: float | None = None  # between the anterior and posterior points, where the user placed them


@dataclass
class VertebraMorphometry:
    level: Level
    frame: VertebralFrame | None = None
    body_voxel_count: int = 0
    body_depth_mm: float = float("nan")
    body_width_mm: float = float("nan")
    heights: BodyHeights | None = None
    trabecular_hu: float = float("nan")
    trabecular_voxel_count: int = 0
    body_max_hu: float = float("nan")
    body_mask_box: tuple | None = None  # (slices into the canonical array, boolean body mask)
    problems: list[str] = field(default_factory=list)  # why heights are missing or doubtful


@dataclass
class SpineMorphometry:
    """Stage 3a result: morphometry per level, cranial to caudal (same order as measurements)."""

    vertebrae: list[VertebraMorphometry]
    spacing_mm: tuple[float, float, float]

    def by_name(self) -> dict[str, VertebraMorphometry]:
        return {m.level.name: m for m in self.vertebrae}

    def body_label_array(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Vertebral bodies as isolated here, VerSe ids on the canonical [k, j, i] grid."""
        bodies = np.zeros(shape, dtype=np.uint8)
        for m in self.vertebrae:
            if m.body_mask_box is not None:
                box, body = m.body_mask_box
                bodies[box][body] = m.level.verse_id
        return bodies


def measure_morphometry(
    ct: CtVolume, segmentation: VertebraSegmentation, measurements: SpineMeasurements
) -> SpineMorphometry:
    grid = VoxelGrid(ct.image)
    labels = segmentation.array()
    hu = ct.array()
    centroids = {m.level.name: lps_from_ras(m.centroid_ras_mm) for m in measurements.vertebrae}
    vertebrae = [m.level for m in measurements.vertebrae]
    boxes = _level_boxes(labels)

    def isolate(level: Level) -> VertebraMorphometry:
        result = VertebraMorphometry(level)
        if level.is_vertebra:
            axis = _craniocaudal_axis(level, vertebrae, centroids)
            _isolate_and_measure(result, labels, hu, grid, centroids[level.name], axis, boxes[level.verse_id - 1])
        return result

    results = map_levels(isolate, vertebrae)
    # Second pass: with body centroids known, the axis joining neighbouring bodies (not whole
    # vertebrae, whose posterior elements bias the centroid) starts the endplate fit; the frame
    # then comes from the body's own endplates and the heights are measured in it.
    body_centres = {r.level.name: r.frame.centre_lps_mm for r in results if r.frame is not None}

    def measure(result: VertebraMorphometry) -> VertebraMorphometry:
        if result.frame is None:
            return result
        neighbour_axis = _craniocaudal_axis(result.level, vertebrae, body_centres, fallback=result.frame.superior)
        frame = make_frame(result.frame.centre_lps_mm, neighbour_axis, result.frame.anterior)
        probe = _probe(result, hu, grid)
        frame = _endplate_frame(result, frame, probe, grid)
        local = _body_local(result, frame, grid)
        planes = endplate_planes(probe, frame, local, _reach(local, grid))
        _measure_body(result, frame, grid, probe, planes=planes)
        return result

    return SpineMorphometry(map_levels(measure, results), tuple(ct.image.GetSpacing()))


_FORKED_WORK = None  # the function the forked workers of map_levels call: inherited, never pickled


def map_levels(work, items: list) -> list:
    """[work(item) for item in items], the levels shared out over forked worker processes (one per usable
    core, at most LEVEL_WORKERS; the levels are independent): each worker inherits the CT and masks without a
    copy and sends back only its results. In this process where fork is unavailable or one core is usable."""
    global _FORKED_WORK
    workers = min(LEVEL_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if workers < 2 or len(items) < 2 or not _may_fork():
        return [work(item) for item in items]
    _FORKED_WORK = lambda index: work(items[index])  # noqa: E731 - bound here, run in the forks
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_default_termination) as pool:
            pending = pool.map_async(_run_forked_work, range(len(items)), chunksize=1)
            # A watchdog: a forked worker that never answers (a lock inherited in its held state, a
            # worker killed) must not hang the run; the levels are then measured here instead.
            return pending.get(timeout=LEVEL_WORKERS_TIMEOUT_S + LEVEL_WORKER_TIMEOUT_S_PER_LEVEL * len(items))
    except multiprocessing.TimeoutError:
        return [work(item) for item in items]
    finally:
        _FORKED_WORK = None


def _may_fork() -> bool:
    """Fork only a plain Python process's main thread: inside the Slicer application (Qt event loop,
    VTK and OpenGL state) or from a worker thread, the levels are measured in this process."""
    return ("fork" in multiprocessing.get_all_start_methods() and "slicer" not in sys.modules
            and threading.current_thread() is threading.main_thread())


def _default_termination() -> None:
    """A worker ends quietly when the pool terminates it: the parent's SIGTERM handler (the CLI turns
    SIGTERM into a clean one-line exit) must not run in the worker and print a traceback, nor Ctrl-C (sent
    to the terminal's whole process group) a KeyboardInterrupt traceback: the parent stops the pool. On
    Linux it also ends when its parent does (killed outright, the pool cannot end it): no orphan waits."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def _run_forked_work(index: int):
    return _FORKED_WORK(index)


def _craniocaudal_axis(level: Level, levels: list[Level], centres: dict, fallback=LPS_SUPERIOR) -> np.ndarray:
    """Direction from the level below to the level above (or the one available neighbour)."""
    ranks = {lv.name: lv.craniocaudal_rank for lv in levels if lv.name in centres and lv.is_vertebra}
    above = [n for n, r in ranks.items() if r < level.craniocaudal_rank and level.craniocaudal_rank - r <= 2]
    below = [n for n, r in ranks.items() if r > level.craniocaudal_rank and r - level.craniocaudal_rank <= 2]
    upper = centres[max(above, key=ranks.get)] if above else centres.get(level.name)
    lower = centres[min(below, key=ranks.get)] if below else centres.get(level.name)
    if upper is None or lower is None or np.linalg.norm(upper - lower) < 1e-6:
        return fallback / np.linalg.norm(fallback)
    axis = np.asarray(upper) - np.asarray(lower)
    return axis / np.linalg.norm(axis)


def _level_boxes(labels: np.ndarray) -> list[tuple[slice, ...] | None]:
    """Every level's box (index: VerSe id - 1), from one pass over the labelled box of the grid."""
    box = labelled_box(labels)
    corner = [part.start for part in box]
    return [None if found is None else tuple(slice(p.start + c, p.stop + c) for p, c in zip(found, corner))
            for found in ndimage.find_objects(labels[box])]


def _padded(box: tuple[slice, ...], shape, pad: int = 2) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, shape))


def _isolate_and_measure(result: VertebraMorphometry, labels, hu, grid: VoxelGrid, centroid, axis, label_box) -> None:
    box = _padded(label_box, labels.shape)
    vertebra = labels[box] == result.level.verse_id
    offset = np.array([s.start for s in box])
    kji = np.argwhere(vertebra)
    points = grid.lps(kji + offset)
    frame = make_frame(centroid, axis, LPS_ANTERIOR)
    local = frame.to_local(points)
    voxel_mm = float(grid.spacing.max())

    anterior_limit = _posterior_wall(local, voxel_mm)
    if anterior_limit is None:
        result.problems.append("no gap of the spinal canal found: body and posterior elements not separable")
        return
    in_body = local[:, 1] >= anterior_limit
    in_body[in_body] = _within_body_width(local[in_body])
    if np.count_nonzero(in_body) < MIN_BODY_VOXELS:
        result.problems.append(f"vertebral body too small ({np.count_nonzero(in_body)} voxels)")
        return
    solidity = _mid_height_solidity(local[in_body], voxel_mm)
    if solidity < MIN_BODY_SOLIDITY:
        result.problems.append(
            f"no solid vertebral body in front of the canal (cross-section {solidity:.0%} filled): "
            "the mask may hold posterior elements only")
        return
    body = np.zeros_like(vertebra)
    body[tuple(kji[in_body].T)] = True
    body_points = points[in_body]
    anterior = _in_plane_ap_axis(body_points, axis, frame.anterior)
    result.frame = make_frame(body_points.mean(axis=0), axis, anterior)
    result.body_voxel_count = int(np.count_nonzero(body))
    result.body_mask_box = (box, body)
    body_hu = hu[box][body]
    result.body_max_hu = float(body_hu.max())
    _trabecular(result, hu[box], body, grid.spacing)


def _within_body_width(local: np.ndarray) -> np.ndarray:
    """Points within the lateral extent of the body's anterior half (and a margin): transverse
    processes and rib heads that reach in front of the canal's posterior-wall plane (T1 under C7,
    a tilted upper thoracic level) lie beside the body, not in front of the pedicles; kept, they
    would widen the body and move its mid-sagittal planes off its middle."""
    v_low, v_high = np.percentile(local[:, 1], [2, 98])
    front = local[local[:, 1] >= 0.5 * (v_low + v_high), 0]
    if front.size < 2:
        return np.ones(len(local), dtype=bool)
    u_low, u_high = np.percentile(front, [1, 99])
    margin = BODY_WIDTH_MARGIN_FRACTION * (u_high - u_low)
    return (local[:, 0] >= u_low - margin) & (local[:, 0] <= u_high + margin)


def _mid_height_solidity(local: np.ndarray, voxel_mm: float) -> float:
    """Filled fraction of the convex hull of the body's mid-height cross-section: about 1 for a
    vertebral body, far less for the U of pedicles and arch."""
    section = local[_mid_height_slab(local, voxel_mm)][:, :2]
    cell_mm = max(voxel_mm, 1.0)
    cells = _unique_rows(np.floor(section / cell_mm).astype(int))
    if len(cells) < 6:
        return 0.0
    corners = (cells[:, None, :] + np.array([[0, 0], [0, 1], [1, 0], [1, 1]])[None]).reshape(-1, 2)
    try:
        hull_area = ConvexHull(corners).volume  # in 2-D, "volume" is the area
    except QhullError:
        return 0.0
    return float(len(cells) / hull_area)


def _unique_rows(cells: np.ndarray) -> np.ndarray:
    """np.unique(cells, axis=0) for [N, 2] integers, in the same order, through one integer key per row
    (np.unique along an axis sorts structured rows, several times slower)."""
    if cells.size == 0:
        return cells.reshape(0, 2)
    low = cells.min(axis=0)
    span = int(cells[:, 1].max() - low[1]) + 1
    keys = np.unique((cells[:, 0] - low[0]) * span + (cells[:, 1] - low[1]))
    return np.column_stack([keys // span + low[0], keys % span + low[1]])


def _posterior_wall(local: np.ndarray, voxel_mm: float) -> float | None:
    """AP coordinate of the body's posterior wall: the first gap (the canal) behind the body."""
    band = np.abs(local[:, 0]) <= max(MIDLINE_BAND_MM, 0.6 * voxel_mm)
    v = np.sort(local[band, 1])[::-1]  # anterior first
    if v.size < 3:
        return None
    gaps = -np.diff(v)
    min_gap_mm = max(4.0, 1.6 * voxel_mm)
    wide = np.nonzero(gaps >= min_gap_mm)[0]
    if wide.size == 0:
        return None
    return float(v[wide[0]] - 0.5 * min(gaps[wide[0]], voxel_mm))


def _in_plane_ap_axis(points: np.ndarray, superior: np.ndarray, hint: np.ndarray) -> np.ndarray:
    """The body's in-plane principal axis nearest the hint; the hint when the section is round."""
    centred = points - points.mean(axis=0)
    in_plane = centred - np.outer(centred @ superior, superior)
    values, vectors = np.linalg.eigh(np.cov(in_plane.T))
    candidates = vectors[:, 1:]  # the two in-plane axes (the smallest eigenvalue is along superior)
    lengths = values[1:]
    if lengths.max() < 1.15 * max(lengths.min(), 1e-9):
        return hint
    best = candidates[:, np.argmax(np.abs(candidates.T @ hint))]
    return best if best.dot(hint) > 0 else -best


def _trabecular(result: VertebraMorphometry, hu_box: np.ndarray, body: np.ndarray, spacing: np.ndarray) -> None:
    # Within the body's own box, padded with background: no voxel outside it is nearer to a body voxel
    # than the padding, so the depths are those in the whole vertebra's box, at a fraction of the work.
    inner = ndimage.find_objects(body.view(np.uint8))[0]
    hu_box, body = hu_box[inner], body[inner]
    depth_mm = ndimage.distance_transform_edt(np.pad(body, 1), sampling=spacing[::-1])[1:-1, 1:-1, 1:-1]
    core = depth_mm > TRABECULAR_MARGIN_MM
    result.trabecular_voxel_count = int(np.count_nonzero(core))
    if result.trabecular_voxel_count >= MIN_TRABECULAR_VOXELS:
        result.trabecular_hu = float(hu_box[core].mean())


def sagittal_plane_heights(ct: CtVolume, m: VertebraMorphometry, plane_fractions) -> np.ndarray:
    """[plane, (anterior, middle, posterior)] heights in mm on the given parasagittal planes
    (fractions of the body width from its middle), in the vertebra's measured frame."""
    if m.frame is None or m.body_mask_box is None:
        return np.empty((0, 3))
    copy = replace(m, problems=[], heights=None)
    grid = VoxelGrid(ct.image)
    _measure_body(copy, m.frame, grid, _probe(m, ct.array(), grid), tuple(plane_fractions))
    return copy.heights.per_plane_mm if copy.heights is not None else np.empty((0, 3))


def _probe(result: VertebraMorphometry, hu: np.ndarray, grid: VoxelGrid) -> BodyProbe:
    box, body = result.body_mask_box
    return BodyProbe(hu, body, np.array([s.start for s in box]), grid)


def _body_local(result: VertebraMorphometry, frame: VertebralFrame, grid: VoxelGrid) -> np.ndarray:
    box, body = result.body_mask_box
    return frame.to_local(grid.lps(np.argwhere(body) + np.array([s.start for s in box])))


def _reach(local: np.ndarray, grid: VoxelGrid) -> float:
    """Half-length of the lines along the axis: the body's half-height and a margin."""
    return 0.5 * float(np.ptp(local[:, 2])) + 3 * float(grid.spacing.max())


def _endplate_frame(result: VertebraMorphometry, frame: VertebralFrame, probe: BodyProbe,
                    grid: VoxelGrid) -> VertebralFrame:
    """The frame of the body's own endplates (endplates.py), starting from ``frame``."""
    box, body = result.body_mask_box
    points = grid.lps(np.argwhere(body) + np.array([s.start for s in box]))
    for _ in range(FRAME_ITERATIONS):
        local = frame.to_local(points)
        axis = endplate_axis(probe, frame, local, _reach(local, grid))
        if axis is None:
            result.problems.append("endplates not found on enough columns: axis from the neighbouring bodies")
            return frame
        if np.degrees(np.arccos(np.clip(axis.dot(frame.superior), -1, 1))) > MAX_ENDPLATE_TILT_DEG:
            result.problems.append("endplate planes tilted implausibly against the spine: axis from the "
                                   "neighbouring bodies")
            return frame
        frame = make_frame(points.mean(axis=0), axis, _in_plane_ap_axis(points, axis, frame.anterior))
    return frame


def _measure_body(result: VertebraMorphometry, frame: VertebralFrame, grid: VoxelGrid, probe: BodyProbe,
                  plane_fractions: tuple[float, ...] = PLANE_OFFSETS, planes=None) -> None:
    """Heights at Genant's points on parasagittal planes; the corner (anterior, posterior) lines
    are guided by the fitted endplate ``planes`` where the mask strays, the middle lines are not
    (a biconcave endplate sinks there, away from any plane)."""
    local = _body_local(result, frame, grid)
    voxel_mm = float(grid.spacing.max())
    half_voxel = 0.5 * float(grid.spacing.min())
    u_right, u_left = local[:, 0].min() - half_voxel, local[:, 0].max() + half_voxel
    result.frame = frame
    result.body_width_mm = float(u_left - u_right)
    u_middle = 0.5 * (u_left + u_right)
    planes_u = tuple(u_middle + f * result.body_width_mm for f in plane_fractions)
    reach = _reach(local, grid)
    band = max(MIDLINE_BAND_MM, 0.6 * voxel_mm)
    per_plane = np.full((len(planes_u), 3), np.nan)
    middle_per_plane = np.full((len(planes_u), len(MIDDLE_SPAN_FRACTIONS)), np.nan)
    depths, plane_lines, edges_from_ct = [], {}, []
    extents = [_ap_extent(local, np.abs(local[:, 0] - u) <= band, voxel_mm, half_voxel) for u in planes_u]
    measured = _genant_points(probe, frame, planes_u, extents, reach, planes)
    for p, (u, extent, points) in enumerate(zip(planes_u, extents, measured)):
        if extent is None:
            continue
        depths.append(extent[0] - extent[1])
        anterior, middle, posterior = points
        middle_per_plane[p] = [_height(edges) for _, edges in middle]
        plane_lines[p] = {"middle profile": tuple(_height_line(frame, "middle", u, v, edges) for v, edges in middle)}
        # The drawn middle line stays at mid-depth (the fracture simulator compresses around it).
        mid_depth = middle[int(np.argmin(np.abs(MIDDLE_SPAN_FRACTIONS)))]
        for q, (v, edges) in enumerate((anterior, mid_depth, posterior)):
            if edges is None:
                continue
            per_plane[p, q] = _height(edges) if q != 1 else np.nanmin(middle_per_plane[p])
            edges_from_ct += [edges[0].from_ct, edges[1].from_ct]
            name = ("anterior", "middle", "posterior")[q]
            plane_lines[p][name] = _height_line(frame, name, u, v, edges)
    if not depths or not np.all(np.any(np.isfinite(per_plane), axis=0)):
        result.problems.append("body heights could not be measured on the mid-sagittal planes")
        return
    result.body_depth_mm = float(depths[len(depths) // 2])
    heights = np.nanmedian(per_plane, axis=0)
    profile = tuple(float(h) for h in np.nanmedian(middle_per_plane, axis=0))
    lines, middle_lines = _central_lines(plane_lines, len(planes_u) // 2)
    result.heights = BodyHeights(float(heights[0]), float(np.nanmin(profile)), float(heights[2]), per_plane,
                                 planes_u, lines, float(np.mean(edges_from_ct)), profile, middle_lines)


def _height(edges) -> float:
    return math.nan if edges is None else edges[1].t_mm - edges[0].t_mm


def _height_line(frame: VertebralFrame, name: str, u: float, v: float, edges) -> HeightLine | None:
    if edges is None:
        return None
    return HeightLine(name, tuple(frame.to_lps([u, v, edges[0].t_mm]).tolist()),
                      tuple(frame.to_lps([u, v, edges[1].t_mm]).tolist()))


def _central_lines(plane_lines: dict, central: int) -> tuple[tuple[HeightLine, ...], tuple]:
    """The anterior, middle and posterior lines where they were measured on the mid-sagittal plane (on the
    nearest plane where one was not found there: every measured height gets its points), and the
    middle-profile lines of the plane of the middle line."""
    nearest_first = sorted(plane_lines, key=lambda p: (abs(p - central), p))
    lines, middle_lines = [], ()
    for name in ("anterior", "middle", "posterior"):
        plane = next((p for p in nearest_first if plane_lines[p].get(name) is not None), None)
        if plane is not None:
            lines.append(plane_lines[plane][name])
            middle_lines = plane_lines[plane]["middle profile"] if name == "middle" else middle_lines
    return tuple(lines), middle_lines


def _genant_points(probe: BodyProbe, frame: VertebralFrame, planes_u: tuple[float, ...], extents: list,
                   reach: float, planes) -> list:
    """Per plane (None where ``extents`` has no AP extent): (v, endplate edges or None) of the anterior
    height line, of the middle lines (at MIDDLE_SPAN_FRACTIONS of the semi-depth around mid-depth) and
    of the posterior line, all lines of the body searched together. The middle height is the lowest of
    the middle lines: the deepest point of a depressed endplate, where a reader puts the middle points,
    need not lie exactly mid-depth."""
    lines, where = [], []
    for u, extent in zip(planes_u, extents):
        if extent is None:
            where.append(None)
            continue
        v_front, v_back = extent
        v_middle, semi_depth = 0.5 * (v_front + v_back), 0.5 * (v_front - v_back)
        inside = CORNER_INWARD_FRACTIONS * semi_depth
        v_anterior = v_middle + HEIGHT_SAMPLE_FRACTION * semi_depth
        v_posterior = v_middle - HEIGHT_SAMPLE_FRACTION * semi_depth
        v_lines = [v_anterior, *(v_middle + MIDDLE_SPAN_FRACTIONS * semi_depth), v_posterior]
        where.append((len(lines), v_lines))
        lines += [(u, tuple(v_anterior - inside), planes), *((u, v, None) for v in v_lines[1:-1]),
                  (u, tuple(v_posterior + inside), planes)]
    edges = probe.endplates_of_lines(frame, lines, reach) if lines else []
    points = []
    for found in where:
        if found is None:
            points.append(None)
            continue
        first, v_lines = found
        measured = list(zip(v_lines, edges[first:first + len(v_lines)]))
        points.append((measured[0], measured[1:-1], measured[-1]))
    return points


def _mid_height_slab(local: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Voxels in the middle third of the body's height (at least one voxel thick)."""
    low, high = np.percentile(local[:, 2], [2, 98])
    half_thickness = max((high - low) / 6.0, 0.6 * voxel_mm)
    return np.abs(local[:, 2] - 0.5 * (low + high)) <= half_thickness


def _ap_extent(local: np.ndarray, in_plane: np.ndarray, voxel_mm: float, half_voxel: float):
    """AP extent of one parasagittal plane of the body: the part that is body at a third, half
    and two thirds of its height, so the height points stay inside a wedged body whose walls
    tilt against the mean endplate normal; endplate rims and osteophytes, which flare beyond the
    walls, are left out, and a lateral plane of a rounded body is shallower than the midline one."""
    low, high = np.percentile(local[:, 2], [2, 98])
    half_thickness = max((high - low) / 10.0, 0.6 * voxel_mm)
    fronts, backs = [], []
    for fraction in SLAB_FRACTIONS:
        section = in_plane & (np.abs(local[:, 2] - (low + fraction * (high - low))) <= half_thickness)
        if np.count_nonzero(section) < 2:
            return None
        fronts.append(local[section, 1].max() + half_voxel)
        backs.append(local[section, 1].min() - half_voxel)
    front, back = min(fronts), max(backs)
    return (front, back) if front - back > 2 * voxel_mm else None


def is_validated_region(level: Level) -> bool:
    """Grading is in our validated range for T1-L5 (with T13/L6); cervical levels are measured only."""
    return level.region in (Region.THORACIC, Region.LUMBAR)
