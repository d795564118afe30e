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
    low = np.clip(np.floor(kji.min(axis=1)).astype(int) - 2, 0, np.array(volume.shape))
    high = np.clip(np.ceil(kji.max(axis=1)).astype(int) + 3, 0, np.array(volume.shape))
    if np.any(high <= low):
        return np.full(kji.shape[1], cval, dtype=np.float32)
    box = volume[tuple(slice(a, b) for a, b in zip(low, high))].astype(np.float32)
    return ndimage.map_coordinates(box, kji - low[:, None], order=order, mode="constant", cval=cval)


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
