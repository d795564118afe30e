"""Geometry shared by the morphometry steps: a vertebra's local frame, grid index <-> LPS
conversions and interpolation of a volume at continuous indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class VertebralFrame:
    """Local axes of one vertebra (unit vectors, LPS) and its body centre (LPS mm)."""

    centre_lps_mm: np.ndarray
    left: np.ndarray
    anterior: np.ndarray
    superior: np.ndarray

    def to_local(self, points_lps: np.ndarray) -> np.ndarray:
        """[..., 3] LPS points -> [..., 3] (left, anterior, superior) mm from the centre."""
        return (points_lps - self.centre_lps_mm) @ self.axes()

    def to_lps(self, local: np.ndarray) -> np.ndarray:
        return self.centre_lps_mm + np.asarray(local) @ self.axes().T

    def axes(self) -> np.ndarray:
        """[3, 3] columns left, anterior, superior (LPS)."""
        return np.column_stack([self.left, self.anterior, self.superior])


def make_frame(centre: np.ndarray, superior: np.ndarray, anterior_hint: np.ndarray) -> VertebralFrame:
    """Right-handed frame with the given superior axis and the anterior axis nearest the hint."""
    superior = np.asarray(superior, dtype=float) / np.linalg.norm(superior)
    anterior = anterior_hint - anterior_hint.dot(superior) * superior
    anterior /= np.linalg.norm(anterior)
    left = np.cross(superior, anterior)
    return VertebralFrame(np.asarray(centre, dtype=float), left, anterior, superior)


def sample_at(volume: np.ndarray, kji: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Interpolate ``volume`` at continuous [3, N] indices, touching only the box around them
    (whole-body CTs are large; one vertebra's neighbourhood is small)."""
    low, high = _box_around(kji.min(axis=1), kji.max(axis=1), volume.shape)
    if np.any(high <= low):
        return np.full(kji.shape[1], cval, dtype=np.float32)
    box = volume[tuple(slice(a, b) for a, b in zip(low, high))].astype(np.float32)
    return ndimage.map_coordinates(box, kji - low[:, None], order=order, mode="constant", cval=cval)


def sample_lines(volume: np.ndarray, kji: np.ndarray, cval: float = 0.0) -> np.ndarray:
    """[line, sample] linear interpolation of ``volume`` at [line, sample, 3] indices: ``sample_at`` of
    each line, in one call. The same values: a point's value depends only on the voxels around it,
    never on the box it is read from (the box's corner is whole indices away), and a line wholly
    outside the volume reads ``cval`` as it does alone."""
    values = sample_at(volume, kji.reshape(-1, 3).T, order=1, cval=cval).reshape(kji.shape[:2])
    low, high = _box_around(kji.min(axis=1), kji.max(axis=1), volume.shape)
    values[np.any(high <= low, axis=1)] = cval
    return values


def _box_around(lowest_kji: np.ndarray, highest_kji: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Corners (low inclusive, high exclusive; [..., 3]) of the grid box around the points whose
    lowest and highest indices are given, with the margin interpolation reads, clipped to the grid."""
    low = np.clip(np.floor(lowest_kji).astype(int) - 2, 0, np.array(shape))
    high = np.clip(np.ceil(highest_kji).astype(int) + 3, 0, np.array(shape))
    return low, high


class VoxelGrid:
    """Index <-> LPS conversions of the canonical grid, vectorised."""

    def __init__(self, image):
        self.spacing = np.asarray(image.GetSpacing())
        self.origin = np.asarray(image.GetOrigin())
        self.direction = np.array(image.GetDirection()).reshape(3, 3)

    def lps(self, kji: np.ndarray) -> np.ndarray:
        ijk = np.asarray(kji, dtype=float)[..., ::-1]
        return self.origin + (ijk * self.spacing) @ self.direction.T

    def kji(self, lps: np.ndarray) -> np.ndarray:
        ijk = ((np.asarray(lps) - self.origin) @ self.direction) / self.spacing
        return ijk[..., ::-1]

    def voxel_along_mm(self, direction_lps: np.ndarray) -> float:
        """Voxel size along a direction: the spacing weighted by how far the direction runs
        along each grid axis."""
        along = np.abs(self.direction.T @ np.asarray(direction_lps, dtype=float))
        return float(np.dot(along / along.sum(), self.spacing))
