"""Vertebral fractures simulated on a real CT and its label map.

One vertebral body is compressed along its own height axis (the endplate frame that
morphometry measures on the unfractured CT), in one of Genant's patterns and by a given
fraction ``loss`` of the height it reduces (Ha, Hm, Hp: the body's measured heights):
  wedge      the superior endplate drops by loss * Ha at the anterior height point, by nothing at
             the posterior one (linear between them); the spine above follows, column by column
  biconcave  the superior endplate sinks by loss * Hm in the middle, by nothing at the anterior
             and posterior points and the lateral margins; the rim holds, the disc fills the dent
  crush      the superior endplate drops by loss times the local height (Hp at the posterior
             point, Hm in the middle, Ha at the anterior one, linear between): every height
             loses the same share; the spine above follows
Inside the body the bone is squeezed (resampled) between the inferior endplate and the dropped
superior one; the disc above moves with it. Every voxel's source position is computed in the
body's frame (backward mapping): the CT is resampled linearly, the labels by nearest neighbour,
so labels follow the bone. The result is exact ground truth (level, type, loss) on real anatomy;
used by the tests and the real-data benchmark, and as augmentation by ``train-cls``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spinefrac.assessment.morphometry import HEIGHT_SAMPLE_FRACTION, VertebraMorphometry, VoxelGrid

KINDS = ("wedge", "biconcave", "crush")
DISC_SPAN_MM = 4.0  # of the disc above the body that is stretched or moved with the endplate
BICONCAVE_EXPONENT = 4.0  # flat-bottomed dent: full depth across the middle height planes


@dataclass(frozen=True)
class SimulatedFracture:
    level: str
    kind: str  # wedge | biconcave | crush
    loss: float  # fraction of the body's central height at the most compressed height point

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"fracture kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 < self.loss < 0.8:
            raise ValueError(f"loss must be within (0, 0.8), got {self.loss}")


@dataclass(frozen=True)
class BodyGeometry:
    """Where the body lies in its frame: endplates (mm along the axis) and its extent."""

    inferior_mm: float
    superior_mm: float
    v_middle_mm: float
    semi_depth_mm: float
    u_middle_mm: float
    semi_width_mm: float
    heights_mm: tuple[float, float, float]  # anterior, middle, posterior

    @property
    def height_mm(self) -> float:
        return self.superior_mm - self.inferior_mm


def body_geometry(m: VertebraMorphometry, grid: VoxelGrid) -> BodyGeometry:
    """The body's endplates at its middle line and its extent, from morphometry of the unfractured CT."""
    if m.heights is None or m.frame is None:
        raise ValueError(f"{m.level.name}: no measured body to compress ({'; '.join(m.problems)})")
    middle = next(line for line in m.heights.lines if line.name == "middle")
    low, high = m.frame.to_local(np.array([middle.inferior_lps_mm, middle.superior_lps_mm]))
    box, body = m.body_mask_box
    local = m.frame.to_local(grid.lps(np.argwhere(body) + np.array([s.start for s in box])))
    u_low, u_high = np.percentile(local[:, 0], [2, 98])
    return BodyGeometry(float(low[2]), float(high[2]), float(low[1]), 0.5 * float(m.body_depth_mm),
                        0.5 * float(u_low + u_high), 0.5 * float(u_high - u_low),
                        (m.heights.anterior_mm, m.heights.middle_mm, m.heights.posterior_mm))


def compression_mm(fracture: SimulatedFracture, body: BodyGeometry, u: np.ndarray, v: np.ndarray):
    """(drop of the superior endplate, shift of everything above) in mm, per column (u, v)."""
    anterior, middle, posterior = body.heights_mm
    q = (v - body.v_middle_mm) / (HEIGHT_SAMPLE_FRACTION * body.semi_depth_mm)  # +-1 at the height points
    if fracture.kind == "crush":
        local_height = np.interp(np.clip(q, -1.0, 1.0), [-1.0, 0.0, 1.0], [posterior, middle, anterior])
        drop = fracture.loss * local_height
        return drop, drop
    if fracture.kind == "wedge":
        drop = fracture.loss * anterior * np.clip(0.5 * (q + 1.0), 0.0, 1.0)
        return drop, drop
    r = (u - body.u_middle_mm) / (HEIGHT_SAMPLE_FRACTION * body.semi_width_mm)
    drop = fracture.loss * middle * np.clip(1.0 - np.hypot(q, r) ** BICONCAVE_EXPONENT, 0.0, 1.0)
    return drop, np.zeros_like(drop)


def source_t(t: np.ndarray, drop: np.ndarray, shift: np.ndarray, body: BodyGeometry) -> np.ndarray:
    """Where each output position t along the axis comes from (piecewise linear per column)."""
    low, high, span = body.inferior_mm, body.superior_mm, DISC_SPAN_MM
    source = t.copy()
    in_body = (t >= low) & (t < high - drop)
    source[in_body] = low + (t[in_body] - low) * body.height_mm / (body.height_mm - drop[in_body])
    disc_top = high + span - shift
    in_disc = (t >= high - drop) & (t < disc_top)
    source[in_disc] = high + (t[in_disc] - (high - drop[in_disc])) * span / (span + drop[in_disc] - shift[in_disc])
    above = t >= disc_top
    source[above] = t[above] + shift[above]
    return source


def simulate_fracture(ct: sitk.Image, labels: sitk.Image, m: VertebraMorphometry,
                      fracture: SimulatedFracture) -> tuple[sitk.Image, sitk.Image]:
    """The CT and label map (same grid as given) with ``m``'s body compressed as ``fracture`` says."""
    if m.level.name != fracture.level:
        raise ValueError(f"morphometry of {m.level.name} given for a fracture of {fracture.level}")
    grid = VoxelGrid(ct)
    body = body_geometry(m, grid)
    hu = sitk.GetArrayFromImage(ct)
    label_array = sitk.GetArrayFromImage(labels)
    kji = np.indices(hu.shape).reshape(3, -1).T
    local = m.frame.to_local(grid.lps(kji))
    moving = local[:, 2] >= body.inferior_mm  # below the inferior endplate nothing moves
    local = local[moving]
    drop, shift = compression_mm(fracture, body, local[:, 0], local[:, 1])
    local[:, 2] = source_t(local[:, 2], drop, shift, body)
    source = grid.kji(m.frame.to_lps(local)).T
    new_hu, new_labels = hu.copy(), label_array.copy()
    new_hu.reshape(-1)[np.flatnonzero(moving)] = ndimage.map_coordinates(
        hu.astype(np.float32), source, order=1, mode="nearest")
    new_labels.reshape(-1)[np.flatnonzero(moving)] = ndimage.map_coordinates(
        label_array, source, order=0, mode="nearest")
    return _like(new_hu, ct), _like(new_labels, labels)


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image
