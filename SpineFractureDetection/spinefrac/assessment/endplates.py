"""Endplates of a vertebral body, found on the CT and guided by the mask.

Along a line parallel to the body's height axis the CT runs: trabecular bone, the bright
endplate cortex, then the darker disc. The endplate is the bone/disc edge: the steepest fall
of the interpolated HU profile going outwards, within EDGE_WINDOW_VOXELS voxels of where the
mask's border crosses the line, placed at sub-voxel precision where the profile crosses the
mid-level between the bone just inside and the disc just outside (the half-maximum of a blurred
step). So a mask one voxel too large or too small gives the same endplate; where the edge has
too little contrast (under MIN_EDGE_CONTRAST_HU: marrow as faint as disc, a fused level) the
mask's own 0.5-crossing is used and counted.

The frame: planes fitted (least squares, outliers over OUTLIER_MAD times the median absolute
residual dropped) to the superior and inferior endplate points of a grid of columns over the
central part of the body (rims, osteophytes and the posterior wall's concavity left out); the
height axis is the mean of the two planes' normals, so it bisects a wedged body's endplates and
follows the body's own tilt (L5 over the sacrum, T1 under C7, kyphosis, lordosis, scoliosis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spinefrac.assessment.geometry import VertebralFrame, VoxelGrid, sample_lines

EDGE_WINDOW_VOXELS = 1.5  # search the CT edge this far (voxels along the axis) either side of the mask border
EDGE_WINDOW_EXTRA_MM = 0.5
EDGE_LEVEL_SPAN_VOXELS = 2.0  # bone and disc levels taken this far inside / outside the edge
MIN_EDGE_CONTRAST_HU = 80.0
GUIDE_TOLERANCE_VOXELS = 1.0
FIRST_EDGE_SHARE = 0.5  # a fall at least this share of the steepest one counts as an edge
LINE_STEP_MM = 0.1
COLUMN_FRACTIONS_LR = np.linspace(-0.3, 0.3, 5)  # fraction of the body width, around its middle
COLUMN_FRACTIONS_AP = np.linspace(-0.6, 0.6, 5)  # fraction of the semi-depth, around its middle
OUTLIER_MAD = 3.0
MIN_PLANE_POINTS = 6


@dataclass(frozen=True)
class Edge:
    t_mm: float  # along the height axis
    from_ct: bool  # False: the mask's 0.5-crossing (the CT edge had too little contrast)


class BodyProbe:
    """Samples one body's mask and the CT along lines of its frame."""

    def __init__(self, hu: np.ndarray, body: np.ndarray, offset: np.ndarray, grid: VoxelGrid):
        self.hu = hu
        self.mask = body.astype(np.float32)
        self.offset = offset
        self.grid = grid

    def endplates(self, frame: VertebralFrame, u: float, v: float | tuple[float, ...], reach: float,
                  planes=None) -> tuple[Edge, Edge] | None:
        """Inferior and superior endplate on the line (u, v, t) of the frame, t in mm. With several
        v (a corner point, then points further inside), the first line is used whose mask borders
        the next line in does not pass by more than a voxel: a line near a wall that tilts against
        the axis (a wedged body) leaves through the wall before it reaches the endplate, while a
        concave endplate only brings the borders further in closer together."""
        return self.endplates_of_lines(frame, [(u, v, planes)], reach)[0]

    def endplates_of_lines(self, frame: VertebralFrame, lines: list, reach: float) -> list:
        """``endplates`` of many lines (u, v, planes) of one frame: one interpolation of the mask and one
        of the CT for all of them, and the edge search on all their profiles together (element for
        element the same arithmetic as line by line, so the same edges, at a fraction of the calls)."""
        t = np.arange(-reach, reach + LINE_STEP_MM, LINE_STEP_MM)
        voxel_mm = self.grid.voxel_along_mm(frame.superior)
        candidates_v = [np.atleast_1d(v) for _, v, _ in lines]
        counts = [len(v) for v in candidates_v]
        kji, borders = self._mask_borders(frame, np.repeat([u for u, _, _ in lines], counts),
                                          np.concatenate(candidates_v), t)
        chosen = []  # (line index, candidate index) of the lines that cross the mask
        for index, first in enumerate(np.cumsum(counts) - counts):
            found = _first_fitting(borders[first:first + counts[index]], voxel_mm)
            if found is not None:
                chosen.append((index, first + found))
        found_edges: list = [None] * len(lines)
        if not chosen:
            return found_edges
        hu_profiles = sample_lines(self.hu, kji[[c for _, c in chosen]], cval=-1000.0)
        mask_low = np.array([borders[c][0] for _, c in chosen])
        mask_high = np.array([borders[c][1] for _, c in chosen])
        inner_low, inner_high = zip(*(_inner_starts(lines[i], candidates_v[i], borders[c], voxel_mm)
                                      for i, c in chosen))
        lows = bone_edges(t, hu_profiles, mask_low, -1, voxel_mm, inner_low)
        highs = bone_edges(t, hu_profiles, mask_high, +1, voxel_mm, inner_high)
        for (index, _), low, high in zip(chosen, lows, highs):
            found_edges[index] = (low, high)
        return found_edges

    def _mask_borders(self, frame: VertebralFrame, u: np.ndarray, v: np.ndarray, t: np.ndarray):
        """[line, sample, 3] grid indices of the lines (u, v, t), and per line the outermost
        0.5-crossings of the interpolated mask (None where the line misses the mask)."""
        local = np.empty((u.size, t.size, 3))
        local[..., 0], local[..., 1], local[..., 2] = u[:, None], v[:, None], t
        kji = self.grid.kji(frame.to_lps(local))
        profiles = ndimage.map_coordinates(self.mask, (kji - self.offset).reshape(-1, 3).T, order=1,
                                           mode="constant", cval=0.0).reshape(u.size, t.size)
        inside = profiles >= 0.5
        first, last = inside.argmax(axis=1), t.size - 1 - inside[:, ::-1].argmax(axis=1)
        borders = [(crossing(t, profile, a - 1, a), crossing(t, profile, b, b + 1)) if any_inside else None
                   for profile, a, b, any_inside in zip(profiles, first, last, inside.any(axis=1))]
        return kji, borders


def _first_fitting(borders: list, voxel_mm: float) -> int | None:
    """Index of the line used among a point's candidates (see ``BodyProbe.endplates``)."""
    chosen = None
    for index, (here, further_in) in enumerate(zip(borders, borders[1:] + [None])):
        if here is None:
            continue
        chosen = index
        if further_in is None or max(here[0] - further_in[0], further_in[1] - here[1]) <= voxel_mm:
            break
    return chosen


def _inner_starts(line, candidates_v: np.ndarray, border: tuple[float, float], voxel_mm: float):
    """(inferior, superior) ``t_inner`` of bone_edge for a line guided by fitted planes, or Nones."""
    u, _, planes = line
    if planes is None:
        return None, None
    v = float(candidates_v[0])
    inner_low = _inner_start(-border[0], -plane_t(planes[0], u, v), voxel_mm)
    inner_high = _inner_start(border[1], plane_t(planes[1], u, v), voxel_mm)
    return None if inner_low is None else -inner_low, inner_high


def _inner_start(mask_border: float, plane_border: float, voxel_mm: float) -> float | None:
    """Where to start looking for the edge when the mask runs outwards (+) beyond the fitted
    plane by more than the tolerance: from the plane, taking the first edge going out (the mask
    may run into the disc; a concave or intact rim lies further out than a dented plane, and the
    first edge from inside still finds it). None: the mask's border is trusted."""
    return plane_border if mask_border - plane_border > GUIDE_TOLERANCE_VOXELS * voxel_mm else None


def bone_edge(t: np.ndarray, hu: np.ndarray, t_mask: float, outward: int, voxel_mm: float,
              t_inner: float | None = None) -> Edge:
    """The bone/disc edge nearest the mask border ``t_mask``, going ``outward`` (+1 up, -1 down):
    the steepest fall within the window; with ``t_inner`` (further in than the mask border), the
    first clear fall going out from there instead."""
    window = EDGE_WINDOW_VOXELS * voxel_mm + EDGE_WINDOW_EXTRA_MM
    span = EDGE_LEVEL_SPAN_VOXELS * voxel_mm
    s = outward * (t - t_mask)  # outward distance from the mask border
    order = np.argsort(s)
    s, profile = s[order], hu[order]
    start = -window if t_inner is None else min(outward * (t_inner - t_mask), 0.0) - window
    in_window = np.nonzero((s >= start) & (s <= window))[0]
    if in_window.size < 3:
        return Edge(t_mask, False)
    slope = np.gradient(profile[in_window])
    if t_inner is None:
        k = in_window[int(np.argmin(slope))]  # steepest fall going outwards
    else:
        clear = np.nonzero(slope <= FIRST_EDGE_SHARE * slope.min())[0]
        k = in_window[_first_run_minimum(slope, clear)]
    bone = profile[(s >= s[k] - span) & (s <= s[k])].max()
    disc = profile[(s >= s[k]) & (s <= s[k] + span)].min()
    if bone - disc < MIN_EDGE_CONTRAST_HU:
        return Edge(t_mask, False)
    level = 0.5 * (bone + disc)
    near = np.nonzero((np.abs(s - s[k]) <= span) & (profile >= level))[0]
    near = near[(near + 1 < s.size)]
    falls = near[profile[near + 1] < level]
    if falls.size == 0:
        return Edge(t_mask, False)
    j = falls[np.argmin(np.abs(s[falls] - s[k]))]
    edge_s = s[j] + (profile[j] - level) / (profile[j] - profile[j + 1]) * (s[j + 1] - s[j])
    return Edge(t_mask + outward * float(edge_s), True)


def bone_edges(t: np.ndarray, hu: np.ndarray, t_mask: np.ndarray, outward: int, voxel_mm: float,
               t_inner: tuple[float | None, ...]) -> list[Edge]:
    """``bone_edge`` of many lines: rows of ``hu`` sampled at ``t``, a mask border and a ``t_inner`` (or
    None) each. Lines without ``t_inner`` are searched all at once; those with it one by one."""
    edges = _steepest_fall_edges(t, hu, t_mask, outward, voxel_mm)
    for row, inner in enumerate(t_inner):
        if inner is not None:
            edges[row] = bone_edge(t, hu[row], float(t_mask[row]), outward, voxel_mm, inner)
    return edges


def _steepest_fall_edges(t: np.ndarray, hu: np.ndarray, t_mask: np.ndarray, outward: int,
                         voxel_mm: float) -> list[Edge]:
    """``bone_edge`` without ``t_inner`` on every row at once, with the same arithmetic element for
    element (float32 profiles, float64 distances), so the same edges to the last bit."""
    window = EDGE_WINDOW_VOXELS * voxel_mm + EDGE_WINDOW_EXTRA_MM
    span = EDGE_LEVEL_SPAN_VOXELS * voxel_mm
    if outward < 0:  # samples in order of outward distance, as bone_edge's argsort puts them
        t, hu = t[::-1], hu[:, ::-1]
    s = outward * (t[None, :] - t_mask[:, None])
    in_window = (s >= -window) & (s <= window)  # one run of samples per row: s rises along a row
    rows = np.arange(hu.shape[0])
    k = _steepest_fall(hu, in_window)
    s_k = s[rows, k][:, None]
    bone = np.where((s >= s_k - span) & (s <= s_k), hu, np.float32(-np.inf)).max(axis=1)
    disc = np.where((s >= s_k) & (s <= s_k + span), hu, np.float32(np.inf)).min(axis=1)
    level = (0.5 * (bone + disc))[:, None]
    falls = (np.abs(s - s_k) <= span) & (hu >= level)
    falls[:, :-1] &= hu[:, 1:] < level
    falls[:, -1] = False
    j = np.where(falls, np.abs(s - s_k), np.inf).argmin(axis=1)  # the fall nearest the steepest point
    after = np.minimum(j + 1, t.size - 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # rows without a fall: not used
        edge_s = (s[rows, j] + (hu[rows, j] - level[:, 0]) / (hu[rows, j] - hu[rows, after])
                  * (s[rows, after] - s[rows, j]))
    found = (in_window.sum(axis=1) >= 3) & ~(bone - disc < MIN_EDGE_CONTRAST_HU) & falls.any(axis=1)
    return [Edge(float(border) + outward * float(along), True) if ok else Edge(float(border), False)
            for border, along, ok in zip(t_mask, edge_s, found)]


def _steepest_fall(hu: np.ndarray, in_window: np.ndarray) -> np.ndarray:
    """Per row, the index of the lowest np.gradient of the samples in the window (the first of equals)."""
    rows = np.arange(hu.shape[0])
    first = np.minimum(in_window.argmax(axis=1), hu.shape[1] - 2)
    last = np.maximum(first + in_window.sum(axis=1) - 1, 1)
    slope = np.empty(hu.shape, dtype=np.float32)
    slope[:, 1:-1] = (hu[:, 2:] - hu[:, :-2]) / 2.0  # np.gradient: central differences inside,
    slope[rows, first] = hu[rows, first + 1] - hu[rows, first]  # one-sided at the window's ends
    slope[rows, last] = hu[rows, last] - hu[rows, last - 1]
    slope[~in_window] = np.inf
    return slope.argmin(axis=1)


def _first_run_minimum(slope: np.ndarray, clear: np.ndarray) -> int:
    """Index of the steepest sample in the first run of consecutive ``clear`` indices."""
    run_end = clear[0]
    while run_end + 1 in clear:
        run_end += 1
    return clear[0] + int(np.argmin(slope[clear[0]:run_end + 1]))


def crossing(t: np.ndarray, values: np.ndarray, a: int, b: int, level: float = 0.5) -> float:
    """Where the interpolated profile crosses ``level`` between samples a and b."""
    if a < 0 or b >= t.size:
        return float(t[max(min(a, t.size - 1), 0)])
    va, vb = values[a], values[b]
    if va == vb:
        return float(t[a])
    return float(t[a] + (level - va) / (vb - va) * (t[b] - t[a]))


def endplate_axis(probe: BodyProbe, frame: VertebralFrame, local_body: np.ndarray, reach: float) -> np.ndarray | None:
    """The mean normal of the fitted superior and inferior endplate planes (LPS unit vector,
    pointing superior), or None when too few columns reach both endplates."""
    planes = endplate_planes(probe, frame, local_body, reach)
    if planes is None:
        return None
    normals = [plane_normal(coefficients) for coefficients in planes]
    mean = normals[0] + normals[1]
    return frame.axes() @ (mean / np.linalg.norm(mean))


def endplate_planes(probe: BodyProbe, frame: VertebralFrame, local_body: np.ndarray, reach: float):
    """(inferior, superior) planes t = a u + b v + c in the frame's coordinates, fitted to the
    endplates of a grid of columns over the central part of the body; None when too few."""
    u_low, u_high = np.percentile(local_body[:, 0], [2, 98])
    v_low, v_high = np.percentile(local_body[:, 1], [2, 98])
    u_mid, v_mid = 0.5 * (u_low + u_high), 0.5 * (v_low + v_high)
    grid_uv = [(u_mid + fu * (u_high - u_low), v_mid + fv * 0.5 * (v_high - v_low))
               for fu in COLUMN_FRACTIONS_LR for fv in COLUMN_FRACTIONS_AP]
    columns, inferior, superior = [], [], []
    for (u, v), edges in zip(grid_uv, probe.endplates_of_lines(frame, [(u, v, None) for u, v in grid_uv], reach)):
        if edges is None:
            continue
        columns.append((u, v))
        inferior.append(edges[0].t_mm)
        superior.append(edges[1].t_mm)
    if len(columns) < MIN_PLANE_POINTS:
        return None
    columns = np.array(columns)
    planes = [fit_plane(columns, np.array(heights)) for heights in (inferior, superior)]
    return None if any(p is None for p in planes) else tuple(planes)


def plane_t(plane: np.ndarray, u: float, v: float) -> float:
    return float(plane[0] * u + plane[1] * v + plane[2])


def plane_normal(plane: np.ndarray) -> np.ndarray:
    """Unit normal (local coordinates, +t side) of the plane t = a u + b v + c."""
    normal = np.array([-plane[0], -plane[1], 1.0])
    return normal / np.linalg.norm(normal)


def fit_plane(columns_uv: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """(a, b, c) of the plane t = a u + b v + c, least squares with outliers dropped."""
    keep = np.ones(t.size, dtype=bool)
    design = np.column_stack([columns_uv, np.ones(t.size)])
    for _ in range(2):
        if np.count_nonzero(keep) < MIN_PLANE_POINTS:
            return None
        coefficients, *_ = np.linalg.lstsq(design[keep], t[keep], rcond=None)
        residual = np.abs(t - design @ coefficients)
        scale = np.median(residual[keep]) + 1e-6
        keep = residual <= OUTLIER_MAD * scale + 0.5
    return coefficients
