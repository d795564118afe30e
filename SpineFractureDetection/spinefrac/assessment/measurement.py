"""Stage 2: per-vertebra measurements from the label map and the CT.

Geometry comes from ITK's LabelShapeStatisticsImageFilter (voxel counts, physical centroid,
index bounding box); HU statistics are exact (NumPy on each level's bounding box), since
ITK's label median is histogram-binned. Coordinates are reported in RAS (3D Slicer's frame):
ITK works in LPS, so x and y change sign.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from itertools import product

import numpy as np
import SimpleITK as sitk

from spinefrac.coordinates import LPS_RAS_SIGNS, ras_from_lps
from spinefrac.io.images import CtVolume
from spinefrac.levels import LEVEL_BY_ID, Level, sort_craniocaudal
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import VertebraSegmentation

# Faces of the canonical (closest-to-LPS) grid: (axis, side) -> patient side of that face.
_FACE_NAMES = {
    (0, 0): "right", (0, 1): "left",
    (1, 0): "anterior", (1, 1): "posterior",
    (2, 0): "inferior", (2, 1): "superior",
}
# A level touching the border whose volume is under this fraction of its neighbours' is "cut".
CUT_VOLUME_FRACTION = 0.5


class FovStatus(str, Enum):
    INSIDE = "inside"  # no voxel on the image border
    TOUCHES_BORDER = "touches_border"  # reaches the border, volume comparable to its neighbours
    CUT = "cut"  # reaches the border and is much smaller than its neighbours: partly outside


@dataclass(frozen=True)
class VertebraMeasurement:
    level: Level
    voxel_count: int
    volume_mm3: float
    centroid_ras_mm: tuple[float, float, float]
    bbox_min_ras_mm: tuple[float, float, float]
    bbox_max_ras_mm: tuple[float, float, float]
    hu_mean: float
    hu_median: float
    fov_border_faces: tuple[str, ...]  # image faces the level touches, e.g. ("superior",)
    fov_status: FovStatus
    fov_note: str = ""

    @property
    def extent_ras_mm(self) -> tuple[float, float, float]:
        return tuple(float(b - a) for a, b in zip(self.bbox_min_ras_mm, self.bbox_max_ras_mm))


@dataclass
class SpineMeasurements:
    """Stage 2 result: one measurement per labelled level, cranial to caudal."""

    vertebrae: list[VertebraMeasurement]
    voxel_volume_mm3: float
    spacing_mm: tuple[float, float, float]
    notes: list[str] = field(default_factory=list)

    def by_name(self) -> dict[str, VertebraMeasurement]:
        return {m.level.name: m for m in self.vertebrae}


def measure_vertebrae(
    ct: CtVolume, segmentation: VertebraSegmentation, progress: Progress = silent
) -> SpineMeasurements:
    labels = segmentation.label_map
    label_array = segmentation.array()  # before the filter holds the image: a view then would copy it
    hu = ct.array()
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputePerimeterOff()
    shape.Execute(labels)
    voxel_volume_mm3 = float(np.prod(labels.GetSpacing()))
    levels = sort_craniocaudal(LEVEL_BY_ID[v] for v in shape.GetLabels() if v in LEVEL_BY_ID)

    raw = []
    for index, level in enumerate(levels):
        progress(index / max(len(levels), 1), f"measuring {level.name}")
        label = level.verse_id
        bbox = shape.GetBoundingBox(label)  # (i0, j0, k0, ni, nj, nk)
        start, size = np.array(bbox[:3]), np.array(bbox[3:])
        crop = tuple(slice(s, s + n) for s, n in zip(start[::-1], size[::-1]))  # array is [k, j, i]
        values = hu[crop][label_array[crop] == label]
        raw.append(
            dict(
                level=level,
                voxel_count=int(shape.GetNumberOfPixels(label)),
                centroid_ras_mm=ras_from_lps(shape.GetCentroid(label)),
                bbox=_bbox_ras(labels, start, size),
                hu_mean=float(values.mean()),
                hu_median=float(np.median(values)),
                faces=_border_faces(start, size, labels.GetSize()),
            )
        )
    progress(1.0, f"{len(raw)} levels measured")
    vertebrae = [_finish(entry, raw, voxel_volume_mm3) for entry in raw]
    return SpineMeasurements(vertebrae, voxel_volume_mm3, tuple(labels.GetSpacing()))


def _bbox_ras(image: sitk.Image, start: np.ndarray, size: np.ndarray):
    """Axis-aligned RAS box around the voxel centres of an index box (exact for oblique grids too)."""
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(s + c * (n - 1)) for s, n, c in zip(start, size, pick)])
        for pick in product((0, 1), repeat=3)
    ]
    ras = np.array(corners) * LPS_RAS_SIGNS
    return tuple(map(float, ras.min(axis=0))), tuple(map(float, ras.max(axis=0)))


def _border_faces(start: np.ndarray, size: np.ndarray, image_size) -> tuple[str, ...]:
    faces = []
    for axis in range(3):
        if start[axis] == 0:
            faces.append(_FACE_NAMES[(axis, 0)])
        if start[axis] + size[axis] == image_size[axis]:
            faces.append(_FACE_NAMES[(axis, 1)])
    return tuple(faces)


def _finish(entry: dict, everything: list[dict], voxel_volume_mm3: float) -> VertebraMeasurement:
    status, note = _fov_status(entry, everything)
    bbox_min, bbox_max = entry["bbox"]
    return VertebraMeasurement(
        level=entry["level"],
        voxel_count=entry["voxel_count"],
        volume_mm3=entry["voxel_count"] * voxel_volume_mm3,
        centroid_ras_mm=entry["centroid_ras_mm"],
        bbox_min_ras_mm=bbox_min,
        bbox_max_ras_mm=bbox_max,
        hu_mean=entry["hu_mean"],
        hu_median=entry["hu_median"],
        fov_border_faces=entry["faces"],
        fov_status=status,
        fov_note=note,
    )


def _fov_status(entry: dict, everything: list[dict]) -> tuple[FovStatus, str]:
    """Inside, touching the border, or cut: compare with the nearest levels of the same kind."""
    if not entry["faces"]:
        return FovStatus.INSIDE, ""
    touched = "touches the " + " and ".join(entry["faces"]) + " image border"
    neighbours = _nearest_comparable(entry, everything)
    if not neighbours:
        return FovStatus.TOUCHES_BORDER, touched + "; no complete neighbour to compare its volume with"
    reference = float(np.median([n["voxel_count"] for n in neighbours]))
    fraction = entry["voxel_count"] / reference
    names = "/".join(n["level"].name for n in neighbours)
    detail = f"{touched}; volume {fraction:.0%} of {names}"
    if fraction < CUT_VOLUME_FRACTION:
        return FovStatus.CUT, detail + ": partly outside the field of view"
    return FovStatus.TOUCHES_BORDER, detail


def _nearest_comparable(entry: dict, everything: list[dict], count: int = 2) -> list[dict]:
    """Up to ``count`` vertebrae nearest in rank that do not touch the border (no sacrum)."""
    rank = entry["level"].craniocaudal_rank
    candidates = [
        other
        for other in everything
        if other is not entry and not other["faces"] and other["level"].is_vertebra == entry["level"].is_vertebra
    ]
    candidates.sort(key=lambda other: abs(other["level"].craniocaudal_rank - rank))
    return candidates[:count]
