"""Synthetic spine phantoms with known levels, geometry and vertebral height loss.

The only fracture ground truth we have: a CT-like volume (air, fat, soft tissue, discs,
spinal canal, cortical and trabecular bone, optional ribs) with its exact label map (VerSe
ids at voxel centres), a vertebral-body-only label map, and per-level truth (centre, local
axes, anterior/middle/posterior body heights in mm, fracture type and height loss).

The phantom is defined analytically in patient space (LPS millimetres) and sampled on any
grid, so spacing, orientation (including oblique direction cosines), curvature and tilt are
independent choices. Dimensions are typical adult values (body height, depth, width and disc
height per region); they are plausible, not an anatomical atlas.

Fractures follow Genant's patterns, as a height-loss profile along the body's
antero-posterior axis q (-1 posterior wall, +1 anterior wall):
  wedge      loss rises from 0 at the posterior sample point to r at the anterior one;
             the superior endplate tilts down anteriorly
  biconcave  loss r at the middle, 0 at the anterior/posterior sample points; both
             endplates are concave
  crush      loss r everywhere; the superior endplate drops
Heights are reported where Genant's six-point method places its points: at the middle and at
+/- HEIGHT_SAMPLE_FRACTION of the body's semi-depth (just inside the cortical corners).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from spinefrac.levels import LEVEL_BY_NAME, Level, Region
from spinefrac.synthetic.vessels import Aorta, Heart, aorta_along, heart_before

HEIGHT_SAMPLE_FRACTION = 0.85

# Intensities (HU) of the tissue classes.
HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT_TISSUE = 40.0
HU_DISC = 90.0
HU_CSF = 15.0
HU_CORTICAL = 900.0
HU_POSTERIOR_ELEMENTS = 550.0
HU_RIB = 500.0


class FractureType(str, Enum):
    WEDGE = "wedge"
    BICONCAVE = "biconcave"
    CRUSH = "crush"


@dataclass(frozen=True)
class Fracture:
    kind: FractureType | str
    height_loss: float  # fraction 0..0.8 of the normal body height at the deepest point

    def __post_init__(self):
        object.__setattr__(self, "kind", FractureType(self.kind))
        if not 0.0 <= self.height_loss <= 0.8:
            raise ValueError(f"height_loss must be within 0..0.8, got {self.height_loss}")

    def loss_profile(self, q: np.ndarray) -> np.ndarray:
        """Fractional height loss at normalised AP position q (-1 posterior .. +1 anterior)."""
        qs = HEIGHT_SAMPLE_FRACTION
        r = self.height_loss
        if self.kind is FractureType.WEDGE:
            return r * np.clip((q + qs) / (2 * qs), 0.0, 1.0)
        if self.kind is FractureType.BICONCAVE:
            return r * np.clip(1.0 - (q / qs) ** 2, 0.0, 1.0)
        return np.full_like(q, r, dtype=float)


@dataclass(frozen=True)
class VertebraDimensions:
    """Vertebral body and posterior element sizes in mm."""

    body_height: float
    body_depth: float  # antero-posterior
    body_width: float  # left-right
    disc_below: float  # height of the disc under this level
    canal_radius: float
    spinous_length: float
    transverse_length: float
    cortical_thickness: float
    trabecular_hu: float
    cortical_hu: float = HU_CORTICAL  # cortex of the body and its endplates


def typical_dimensions(level: Level) -> VertebraDimensions:
    """Adult dimensions interpolated along the spine (approximate literature values)."""
    name = level.name
    if level.region is Region.CERVICAL:
        return VertebraDimensions(14.0, 16.0, 22.0, 5.0, 8.0, 18.0, 10.0, 1.0, 260.0)
    if level.region is Region.THORACIC:
        t = (min(int(name[1:]), 12) - 1) / 11.0  # T1 -> 0, T12/T13 -> 1
        return VertebraDimensions(
            17.0 + 7.0 * t, 16.0 + 14.0 * t, 25.0 + 15.0 * t, 5.0 + 3.0 * t,
            7.0, 30.0, 18.0 - 2.0 * t, 1.0, 230.0,
        )
    if level.region is Region.LUMBAR:
        t = (min(int(name[1:]), 5) - 1) / 4.0
        return VertebraDimensions(26.0 + 2.0 * t, 32.0 + 3.0 * t, 42.0 + 8.0 * t, 9.0 + 2.0 * t,
                                  9.0, 28.0, 22.0, 1.2, 200.0)
    return VertebraDimensions(45.0, 36.0, 50.0, 0.0, 9.0, 0.0, 0.0, 1.5, 200.0)  # sacrum


@dataclass
class PhantomSpec:
    """What to build. Lengths in mm, angles in degrees."""

    levels: Sequence[str] = ("T12", "L1", "L2", "L3", "L4", "L5", "sacrum")
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    # Grid axes: a 3-letter orientation code (patient direction each voxel axis points to,
    # e.g. "LPS", "RAS", "PIR") or a 3x3 direction matrix (row-major, columns = axes, LPS).
    orientation: str | Sequence[float] = "LPS"
    sagittal_curvature_mm: float = 0.0  # + = lordotic arc (apex anterior), - = kyphotic
    coronal_curvature_mm: float = 0.0  # scoliotic arc, + = apex to the patient's left
    forward_tilt_deg: float = 0.0  # whole spine leaning (rotation about the left-right axis)
    lateral_tilt_deg: float = 0.0  # rotation about the antero-posterior axis
    # Each vertebra pitched (its front up for +) about its own left-right axis against the line of
    # body centres: endplates and discs tilted against the spine axis, the centres still stacked.
    body_pitch_deg: float = 0.0
    disc_hu: float = HU_DISC  # degenerated or partial-volume discs can be as dense as sparse marrow
    fractures: dict[str, Fracture] = field(default_factory=dict)
    disc_height_factor: float = 1.0  # < 1: thin (degenerated) discs, e.g. 0.25 -> lumbar discs ~2.5 mm
    # Marrow HU of every body; None: each level's typical adult value (200-260 HU). Elderly,
    # osteoporotic spines have fatty marrow (100-150 HU), darker than thin discs and their endplates.
    trabecular_hu: float | None = None
    # Body cortex and endplate HU; None: HU_CORTICAL. Osteoporotic cortex is thinner than a voxel,
    # so it reads far below compact bone (e.g. 600 HU) once averaged over the voxel.
    cortical_hu: float | None = None
    ribs: bool = True
    margin_mm: float = 30.0  # field of view beyond the outermost bone
    crop_superior_mm: float = 0.0  # cut the field of view into the top of the spine
    crop_inferior_mm: float = 0.0
    # Contrast-enhanced vessels: a descending aorta on the left front of the thoracic and lumbar
    # bodies, and a heart (blood, myocardium, papillary muscles) in front of the mid-thoracic spine.
    contrast_vessels: bool = False
    noise_hu: float = 15.0
    blur_mm: float = 0.6  # Gaussian PSF sigma
    seed: int = 0


@dataclass(frozen=True)
class LevelTruth:
    level: Level
    centre_lps_mm: tuple[float, float, float]  # vertebral body centre (nominal, unfractured)
    axis_superior: tuple[float, float, float]  # local cranio-caudal axis (unit, LPS)
    axis_anterior: tuple[float, float, float]  # local antero-posterior axis (unit, LPS)
    dimensions: VertebraDimensions
    fracture: Fracture | None
    height_anterior_mm: float
    height_middle_mm: float
    height_posterior_mm: float

    @property
    def genant_height_loss(self) -> float:
        """Height loss as Genant reads it: the largest relative reduction against the normal height."""
        normal = self.dimensions.body_height
        return 1.0 - min(self.height_anterior_mm, self.height_middle_mm, self.height_posterior_mm) / normal


@dataclass
class Phantom:
    ct: sitk.Image  # int16 HU
    labels: sitk.Image  # uint8 VerSe ids, whole vertebra
    body_labels: sitk.Image  # uint8 VerSe ids, vertebral body only
    truth: dict[str, LevelTruth]  # level name -> truth (mobile vertebrae only)
    spec: PhantomSpec
    vessels: sitk.Image | None = None  # uint8, 1 = contrast-filled blood (with contrast_vessels)


# -- geometry helpers -----------------------------------------------------------------------


def _direction_matrix(orientation) -> np.ndarray:
    if isinstance(orientation, str):
        reference = sitk.Image([2, 2, 2], sitk.sitkUInt8)
        return np.array(sitk.DICOMOrient(reference, orientation.upper()).GetDirection()).reshape(3, 3)
    matrix = np.asarray(orientation, dtype=float).reshape(3, 3)
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-6):
        raise ValueError("orientation matrix must be orthonormal")
    return matrix


def _rotation(forward_deg: float, lateral_deg: float) -> np.ndarray:
    a, b = np.deg2rad(forward_deg), np.deg2rad(lateral_deg)
    about_lr = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_ap = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return about_ap @ about_lr


@dataclass(frozen=True)
class _Placed:
    level: Level
    dims: VertebraDimensions
    centre: np.ndarray  # LPS mm
    frame: np.ndarray  # 3x3, columns u (left), v (anterior), w (superior) in LPS
    fracture: Fracture | None


def _centreline(spec: PhantomSpec, levels: list[Level]) -> list[_Placed]:
    dims = [typical_dimensions(level) for level in levels]
    dims = [replace(d, disc_below=d.disc_below * spec.disc_height_factor) for d in dims]
    if spec.trabecular_hu is not None:
        dims = [replace(d, trabecular_hu=spec.trabecular_hu) for d in dims]
    if spec.cortical_hu is not None:
        dims = [replace(d, cortical_hu=spec.cortical_hu) for d in dims]
    # Stack bodies bottom-up along z: body, disc, body, ...
    z_centres = [0.0] * len(levels)
    z = 0.0
    for index in range(len(levels) - 1, -1, -1):
        d = dims[index]
        z_centres[index] = z + d.body_height / 2
        z += d.body_height + (dims[index - 1].disc_below if index > 0 else 0.0)
    length = max(z, 1.0)

    def offset(zz: float) -> np.ndarray:  # arc: zero at both ends, full amplitude in the middle
        s = np.sin(np.pi * zz / length)
        return np.array([spec.coronal_curvature_mm * s, -spec.sagittal_curvature_mm * s, zz])

    rotation = _rotation(spec.forward_tilt_deg, spec.lateral_tilt_deg)
    middle = np.array([0.0, 0.0, length / 2])
    placed = []
    for level, d, zc in zip(levels, dims, z_centres):
        tangent = offset(zc + 0.5) - offset(zc - 0.5)
        w = rotation @ (tangent / np.linalg.norm(tangent))
        anterior = rotation @ np.array([0.0, -1.0, 0.0])
        v = anterior - anterior.dot(w) * w
        v /= np.linalg.norm(v)
        u = np.cross(w, v)
        pitch = np.deg2rad(spec.body_pitch_deg)
        v, w = np.cos(pitch) * v + np.sin(pitch) * w, np.cos(pitch) * w - np.sin(pitch) * v
        centre = rotation @ (offset(zc) - middle)
        placed.append(_Placed(level, d, centre, np.column_stack([u, v, w]), spec.fractures.get(level.name)))
    return placed


def _grid(spec: PhantomSpec, placed: list[_Placed], vessel_points: np.ndarray) -> sitk.Image:
    direction = _direction_matrix(spec.orientation)
    spacing = np.asarray(spec.spacing_mm, dtype=float)
    corners = []
    for p in placed:
        reach = np.array([p.dims.body_width / 2 + p.dims.transverse_length + 15,
                          p.dims.body_depth / 2 + 2 * p.dims.canal_radius + p.dims.spinous_length + 12,
                          p.dims.body_height * (1.5 if p.level.region is Region.SACRAL else 0.5)
                          + p.dims.disc_below / 2 + 2])
        for signs in np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T:
            corners.append(p.centre + p.frame @ (signs * reach))
    along_axes = np.array(corners) @ direction  # coordinates along each grid axis
    low = along_axes.min(axis=0) - spec.margin_mm
    high = along_axes.max(axis=0) + spec.margin_mm
    # Cropping cuts along the grid axis closest to the patient's cranio-caudal axis.
    axis = int(np.argmax(np.abs(direction[2])))
    if len(vessel_points):  # room for the vessels across the body, never beyond the spine's ends
        across = np.arange(3) != axis
        vessels_along = vessel_points @ direction
        low[across] = np.minimum(low, vessels_along.min(axis=0) - 10.0)[across]
        high[across] = np.maximum(high, vessels_along.max(axis=0) + 10.0)[across]
    superior_is_high = direction[2, axis] > 0
    if spec.crop_superior_mm:
        if superior_is_high:
            high[axis] = along_axes[:, axis].max() - spec.crop_superior_mm
        else:
            low[axis] = along_axes[:, axis].min() + spec.crop_superior_mm
    if spec.crop_inferior_mm:
        if superior_is_high:
            low[axis] = along_axes[:, axis].min() + spec.crop_inferior_mm
        else:
            high[axis] = along_axes[:, axis].max() - spec.crop_inferior_mm
    size = np.maximum(np.ceil((high - low) / spacing).astype(int) + 1, 2)
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((direction @ low).tolist())
    return image


def _physical_points(image: sitk.Image, start, stop) -> np.ndarray:
    """LPS coordinates of the voxel centres in an index box, shaped [k, j, i, 3]."""
    axes = [np.arange(a, b, dtype=float) for a, b in zip(start, stop)]
    kk, jj, ii = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    index = np.stack([ii, jj, kk], axis=-1) * np.asarray(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return index @ direction.T + np.asarray(image.GetOrigin())


def _index_box(image: sitk.Image, points_lps: np.ndarray, pad_mm: float):
    """Index box [start, stop) of the voxels within ``pad_mm`` of the points' bounding box."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    index = (np.atleast_2d(points_lps) - np.asarray(image.GetOrigin())) @ direction / spacing
    pad = pad_mm / spacing
    size = np.asarray(image.GetSize())
    start = np.clip(np.floor(index.min(axis=0) - pad).astype(int), 0, size)
    stop = np.clip(np.ceil(index.max(axis=0) + pad).astype(int) + 1, 0, size)
    return start, stop


def _local_box_corners(p: "_Placed", low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """LPS corners of a box given in the local (u, v, w) frame of a vertebra."""
    corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1).T
    return p.centre + corners @ p.frame.T


# -- tissue model in the local frame of one vertebra ---------------------------------------


def _body_extent(p: _Placed, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inferior and superior endplate heights (local w, mm) at normalised AP position q."""
    h = p.dims.body_height
    if p.fracture is None:
        return np.full_like(q, -h / 2), np.full_like(q, h / 2)
    loss = p.fracture.loss_profile(q) * h
    if p.fracture.kind is FractureType.BICONCAVE:
        return -h / 2 + loss / 2, h / 2 - loss / 2
    return np.full_like(q, -h / 2), h / 2 - loss


def _vertebra_masks(p: _Placed, local: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the parts of one vertebra at local coordinates [..., (u, v, w)]."""
    u, v, w = local[..., 0], local[..., 1], local[..., 2]
    d = p.dims
    a, b = d.body_width / 2, d.body_depth / 2
    radial = (u / a) ** 2 + (v / b) ** 2
    if p.level.name == "C1":
        body = np.zeros_like(u, dtype=bool)
        cortex = body
    else:
        bottom, top = _body_extent(p, np.clip(v / b, -1, 1))
        body = (radial <= 1.0) & (w >= bottom) & (w <= top)
        t = d.cortical_thickness
        inner = ((u / max(a - t, 1)) ** 2 + (v / max(b - t, 1)) ** 2 <= 1.0) & (w >= bottom + t) & (w <= top - t)
        cortex = body & ~inner
    canal_v = -b - d.canal_radius - 2.0  # canal centre, behind the body
    canal_r = np.hypot(u, (v - canal_v))
    arch_height = 0.3 * d.body_height
    in_slab = np.abs(w) <= arch_height
    ring = in_slab & (canal_r >= d.canal_radius) & (canal_r <= d.canal_radius + 4.5) & (v <= canal_v + 0.5 * d.canal_radius)
    # Pedicles are the canal's lateral walls: their inner faces touch the canal, never cross it.
    pedicles = in_slab & (np.abs(np.abs(u) - (d.canal_radius + 3.0)) <= 3.0) & (v <= -b + 2.0) & (v >= canal_v)
    spinous = ((np.abs(u) <= 3.0) & (v <= canal_v - d.canal_radius) & (v >= canal_v - d.canal_radius - d.spinous_length)
               & (np.abs(w + 0.25 * (canal_v - d.canal_radius - v)) <= 0.5 * arch_height))
    transverse = (in_slab & (np.abs(w) <= 4.0) & (np.abs(v - canal_v) <= 4.0)
                  & (np.abs(u) <= d.canal_radius + 4.5 + d.transverse_length))
    posterior = (ring | pedicles | spinous | transverse) & ~body
    if p.level.name == "C2":  # the dens rises from the C2 body into the ring of C1
        dens = (np.hypot(u, v) <= 5.0) & (w > d.body_height / 2) & (w <= d.body_height / 2 + 15.0)
        body = body | dens
        cortex = cortex | dens
    if p.level.name == "C1":  # atlas: anterior arch and lateral masses instead of a body
        arch = (np.abs(w) <= 5.0) & (np.hypot(u, v - canal_v + 5.0) <= d.canal_radius + 14.0) & \
               (np.hypot(u, v - canal_v + 5.0) >= d.canal_radius + 8.0)
        masses = (np.abs(w) <= 7.0) & (np.abs(np.abs(u) - 15.0) <= 5.0) & (np.abs(v - 0.3 * b) <= 7.0)
        posterior = posterior | arch | masses
    if p.level.region is Region.SACRAL:  # sacrum: a tapering block tilted back, no arch
        taper = 1.0 - 0.5 * np.clip(-w / d.body_height, 0, 1)
        body = ((u / (a * taper)) ** 2 + ((v + 0.25 * np.minimum(w, 0)) / (b * taper)) ** 2 <= 1.0) & \
               (w <= d.body_height / 2) & (w >= -1.5 * d.body_height)
        cortex = body & ~ndimage.binary_erosion(body, iterations=1)
        posterior = np.zeros_like(body)
        canal_r = np.full_like(u, np.inf)
    canal = (canal_r < d.canal_radius) & in_slab
    return {"body": body, "cortex": cortex, "posterior": posterior, "canal": canal}


def _disc_mask(upper: _Placed, lower: _Placed, local_lower: np.ndarray) -> np.ndarray:
    """The disc between two bodies, in the frame of the lower one."""
    u, v, w = local_lower[..., 0], local_lower[..., 1], local_lower[..., 2]
    a = min(upper.dims.body_width, lower.dims.body_width) / 2
    b = min(upper.dims.body_depth, lower.dims.body_depth) / 2
    # From centre to centre: the bodies are painted over it, and whatever height a fracture
    # removes from a body is left as disc-like tissue, not as a hole.
    return ((u / a) ** 2 + (v / b) ** 2 <= 1.0) & (w >= 0.0) & (w <= np.linalg.norm(upper.centre - lower.centre))


def _add_ribs(p: _Placed, image: sitk.Image, hu: np.ndarray, rib_radius: float = 5.0) -> None:
    """A pair of ribs leaving the transverse processes and curving forward around the trunk."""
    d = p.dims
    canal_v = -d.body_depth / 2 - d.canal_radius - 2.0
    angles = np.linspace(0.0, np.pi * 0.8, 60)
    for side in (-1.0, 1.0):
        start_u = side * (d.canal_radius + 4.5 + d.transverse_length)
        path_local = np.stack([start_u + side * 110.0 * np.sin(angles),
                               canal_v + 90.0 * (1 - np.cos(angles)),
                               -12.0 * np.sin(angles / 2)], axis=-1)
        path = p.centre + path_local @ p.frame.T
        start, stop = _index_box(image, path, rib_radius + 2)
        if np.any(stop <= start):
            continue
        points = _physical_points(image, start, stop)
        distance, _ = cKDTree(path).query(points.reshape(-1, 3), distance_upper_bound=rib_radius + 2)
        rib = (distance <= rib_radius).reshape(points.shape[:3])
        view = hu[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]]
        view[rib & (view < HU_RIB)] = HU_RIB


def make_phantom(spec: PhantomSpec | None = None) -> Phantom:
    """Sample the phantom described by ``spec`` on its grid."""
    spec = spec or PhantomSpec()
    levels = [_level(name) for name in spec.levels]
    placed = _centreline(spec, levels)
    vessels = _vessel_geometry(placed) if spec.contrast_vessels else []
    grid = _grid(spec, placed, np.concatenate([v.extent_points() for v in vessels]) if vessels else np.zeros((0, 3)))
    shape = grid.GetSize()[::-1]
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    bodies = np.zeros(shape, dtype=np.uint8)

    _fill_trunk(grid, hu, placed)
    for upper, lower in zip(placed[:-1], placed[1:]):
        reach = (lower.dims.body_width / 2 + 1, lower.dims.body_depth / 2 + 1)
        _paint(grid, lower, hu, lambda local, lo=lower, up=upper: {"disc": _disc_mask(up, lo, local)},
               (-reach[0], -reach[1], -1.0), (reach[0], reach[1], np.linalg.norm(upper.centre - lower.centre) + 1),
               disc_hu=spec.disc_hu)
    for p in placed:
        _paint_vertebra(grid, p, hu, labels, bodies)
        if spec.ribs and p.level.region is Region.THORACIC:
            _add_ribs(p, grid, hu)
    blood = np.zeros(shape, dtype=np.uint8)
    for vessel in vessels:
        _paint_vessel(grid, vessel, hu, blood, labels)

    if spec.blur_mm > 0:
        hu = ndimage.gaussian_filter(hu, sigma=spec.blur_mm / np.asarray(grid.GetSpacing())[::-1])
    if spec.noise_hu > 0:
        hu += np.random.default_rng(spec.seed).normal(0.0, spec.noise_hu, size=hu.shape).astype(np.float32)
    ct = _image_like(np.clip(np.round(hu), -1024, 3071).astype(np.int16), grid)
    truth = {p.level.name: _truth(p) for p in placed if p.level.is_vertebra and p.level.name != "C1"}
    return Phantom(ct, _image_like(labels, grid), _image_like(bodies, grid), truth, spec,
                   _image_like(blood, grid) if spec.contrast_vessels else None)


def thick_slices(phantom: Phantom, factor: int) -> Phantom:
    """The phantom with slices ``factor`` times thicker along the grid axis closest to the
    cranio-caudal one, each the mean HU of ``factor`` point-sampled sub-slices: a CT slice integrates
    over its thickness, whereas a point-sampled 2 mm grid catches or misses a 1 mm endplate by phase.
    Labels are those of the middle sub-slice (the thick slice's centre). The noise is averaged too:
    build with noise_hu times sqrt(factor) to keep it. Sizes along that axis are cut to a multiple."""
    if factor < 1 or factor % 2 == 0:
        raise ValueError(f"factor must be odd and positive (the middle sub-slice carries the labels), got {factor}")
    direction = np.array(phantom.ct.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[2])))
    shrink = [1, 1, 1]
    shrink[axis] = factor
    size = list(phantom.ct.GetSize())
    whole = [slice(None)] * 3
    whole[axis] = slice(0, size[axis] - size[axis] % factor)
    middle = list(whole)
    middle[axis] = slice(factor // 2, whole[axis].stop, factor)
    mean_hu = sitk.BinShrink(sitk.Cast(phantom.ct[tuple(whole)], sitk.sitkFloat32), shrink)
    ct = sitk.Cast(sitk.Round(mean_hu), sitk.sitkInt16)
    vessels = phantom.vessels[tuple(middle)] if phantom.vessels is not None else None
    spacing = list(phantom.spec.spacing_mm)
    spacing[axis] *= factor
    return Phantom(ct, phantom.labels[tuple(middle)], phantom.body_labels[tuple(middle)], phantom.truth,
                   replace(phantom.spec, spacing_mm=tuple(spacing)), vessels)


def _vessel_geometry(placed: list[_Placed]) -> list[Aorta | Heart]:
    """The heart (when the mid-thoracic spine is in view), then the aorta along the thoracic and lumbar bodies."""
    trunk = [p for p in placed if p.level.region in (Region.THORACIC, Region.LUMBAR)]
    vessels: list[Aorta | Heart] = []
    mid_thoracic = [p for p in trunk if p.level.region is Region.THORACIC and 5 <= int(p.level.name[1:]) <= 9]
    if len(mid_thoracic) >= 2:
        middle = mid_thoracic[len(mid_thoracic) // 2]
        vessels.append(heart_before(np.array([p.centre for p in mid_thoracic]), middle.frame, middle.dims.body_depth))
    if len(trunk) >= 2:
        vessels.append(aorta_along(np.array([p.centre for p in trunk]), np.array([p.frame for p in trunk]),
                                   np.array([p.dims.body_depth for p in trunk])))
    return vessels


def _paint_vessel(grid: sitk.Image, vessel: Aorta | Heart, hu: np.ndarray, blood: np.ndarray,
                  labels: np.ndarray) -> None:
    start, stop = _index_box(grid, vessel.extent_points(), 1.0)
    if np.any(stop <= start):
        return
    box = (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))
    tissue_hu, is_blood = vessel.tissue(_physical_points(grid, start, stop))
    painted = np.isfinite(tissue_hu) & (labels[box] == 0)  # bone stays bone
    hu[box][painted] = tissue_hu[painted]
    blood[box][painted & is_blood] = 1


def _level(name: str) -> Level:
    try:
        return LEVEL_BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(f"unknown level '{name}'") from None


def _image_like(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return image


def _fill_trunk(grid: sitk.Image, hu: np.ndarray, placed: list[_Placed]) -> None:
    """Soft tissue inside an elliptic trunk around the spine, a fat layer under the skin, air outside."""
    spine_centre = np.mean([p.centre for p in placed], axis=0)
    trunk_centre = spine_centre + np.array([0.0, -50.0, 0.0])  # the trunk lies mostly in front of the spine
    size = grid.GetSize()
    for k in range(size[2]):  # slice by slice: coordinates of a whole grid would not fit in memory
        points = _physical_points(grid, (0, 0, k), (size[0], size[1], k + 1))[0]
        r = np.hypot((points[..., 0] - trunk_centre[0]) / 170.0, (points[..., 1] - trunk_centre[1]) / 125.0)
        hu[k][r <= 1.0] = HU_FAT
        hu[k][r <= 0.9] = HU_SOFT_TISSUE


def _paint(grid: sitk.Image, p: _Placed, hu: np.ndarray, masks_of, box_low, box_high, labels=None, bodies=None,
           disc_hu: float = HU_DISC):
    start, stop = _index_box(grid, _local_box_corners(p, np.asarray(box_low), np.asarray(box_high)), 1.0)
    if np.any(stop <= start):
        return
    local = (_physical_points(grid, start, stop) - p.centre) @ p.frame
    box = (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))
    masks = masks_of(local)
    if "disc" in masks:
        hu[box][masks["disc"]] = disc_hu
        return
    hu_box = hu[box]
    hu_box[masks["canal"]] = HU_CSF
    hu_box[masks["posterior"]] = HU_POSTERIOR_ELEMENTS
    hu_box[masks["body"]] = p.dims.trabecular_hu
    hu_box[masks["cortex"]] = p.dims.cortical_hu
    vertebra = (masks["body"] | masks["posterior"]) & (labels[box] == 0)
    labels[box][vertebra] = p.level.verse_id
    bodies[box][masks["body"] & (bodies[box] == 0)] = p.level.verse_id


def _paint_vertebra(grid, p, hu, labels, bodies) -> None:
    d = p.dims
    lateral = max(d.body_width / 2, d.canal_radius + 4.5 + d.transverse_length, 25.0) + 2
    back = d.body_depth / 2 + 2 * d.canal_radius + 2 + d.spinous_length + 2
    below = d.body_height * (1.5 if p.level.region is Region.SACRAL else 0.5) + 0.25 * d.spinous_length + 2
    above = d.body_height / 2 + 17.0  # room for the dens of C2
    _paint(grid, p, hu, lambda local: _vertebra_masks(p, local),
           (-lateral, -back, -below), (lateral, d.body_depth / 2 + 16.0, above), labels, bodies)


def _truth(p: _Placed) -> LevelTruth:
    q = np.array([-HEIGHT_SAMPLE_FRACTION, 0.0, HEIGHT_SAMPLE_FRACTION])
    bottom, top = _body_extent(p, q)
    posterior, middle, anterior = (top - bottom).tolist()
    return LevelTruth(
        level=p.level,
        centre_lps_mm=tuple(map(float, p.centre)),
        axis_superior=tuple(map(float, p.frame[:, 2])),
        axis_anterior=tuple(map(float, p.frame[:, 1])),
        dimensions=p.dims,
        fracture=p.fracture,
        height_anterior_mm=anterior,
        height_middle_mm=middle,
        height_posterior_mm=posterior,
    )
