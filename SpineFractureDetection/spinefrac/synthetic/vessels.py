"""Contrast-enhanced vessels for the phantoms: what makes real chest and abdominal CT hard for a
spine finder that looks for bright columns.

A descending aorta (a tube of contrast-filled blood on the left front of the vertebral bodies) and
a heart (contrast-filled chambers inside a myocardial wall, with papillary muscles: low-HU channels
enclosed by bright blood, the look-alike of a spinal canal) in front of the mid-thoracic spine.
Arterial-phase blood is 300-500 HU, as bright as trabecular bone. Geometry in LPS millimetres.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

HU_CONTRAST_BLOOD = 420.0
HU_MYOCARDIUM = 100.0
HU_PAPILLARY = 70.0
AORTA_RADIUS_MM = 12.0
AORTA_GAP_MM = 3.0  # fat between the aortic wall and the body's surface
AORTA_LEFT_MM = 18.0  # the descending aorta lies left of the midline
HEART_SEMI_AXES_MM = np.array([55.0, 45.0, 50.0])  # outer surface: left-right, antero-posterior, cranio-caudal
HEART_GAP_MM = 22.0  # from the front of the vertebral bodies to the back of the heart
MYOCARDIUM_MM = 9.0
PAPILLARY_RADIUS_MM = 5.0
PAPILLARY_LENGTH_MM = 30.0


@dataclass(frozen=True)
class Aorta:
    path_lps_mm: np.ndarray  # [n, 3], densely sampled centre line

    def extent_points(self) -> np.ndarray:
        return np.concatenate([self.path_lps_mm + AORTA_RADIUS_MM * sign * np.eye(3)[axis]
                               for axis in range(3) for sign in (-1, 1)])

    def tissue(self, points_lps_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HU at the points (NaN: not this vessel) and where the blood is."""
        distance, _ = cKDTree(self.path_lps_mm).query(points_lps_mm.reshape(-1, 3),
                                                       distance_upper_bound=AORTA_RADIUS_MM + 1)
        blood = (distance <= AORTA_RADIUS_MM).reshape(points_lps_mm.shape[:-1])
        return np.where(blood, HU_CONTRAST_BLOOD, np.nan), blood


@dataclass(frozen=True)
class Heart:
    centre_lps_mm: np.ndarray
    frame: np.ndarray  # columns: left, anterior, superior (LPS)

    def extent_points(self) -> np.ndarray:
        signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
        return self.centre_lps_mm + (signs * HEART_SEMI_AXES_MM) @ self.frame.T

    def tissue(self, points_lps_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        local = (points_lps_mm - self.centre_lps_mm) @ self.frame
        outer = np.sum((local / HEART_SEMI_AXES_MM) ** 2, axis=-1) <= 1.0
        inner_axes = HEART_SEMI_AXES_MM - MYOCARDIUM_MM
        cavity = np.sum((local / inner_axes) ** 2, axis=-1) <= 1.0
        papillary = np.zeros_like(cavity)
        for side in (-1.0, 1.0):  # two muscles rising from the posterior wall into the cavity
            offset = local - np.array([side * 15.0, -inner_axes[1] + 12.0, 0.0])
            papillary |= (np.hypot(offset[..., 0], offset[..., 1]) <= PAPILLARY_RADIUS_MM) & \
                (np.abs(offset[..., 2]) <= PAPILLARY_LENGTH_MM / 2)
        blood = cavity & ~papillary
        hu = np.where(outer, HU_MYOCARDIUM, np.nan)
        hu[cavity & papillary] = HU_PAPILLARY
        hu[blood] = HU_CONTRAST_BLOOD
        return hu, blood


def aorta_along(body_centres_lps_mm: np.ndarray, frames: np.ndarray, body_depths_mm: np.ndarray) -> Aorta:
    """The descending aorta in front of and left of the given bodies (caudal or cranial first)."""
    forward = body_depths_mm / 2 + AORTA_GAP_MM + AORTA_RADIUS_MM
    anchors = body_centres_lps_mm + np.einsum("nij,nj->ni", frames,
                                              np.column_stack([np.full_like(forward, AORTA_LEFT_MM), forward,
                                                               np.zeros_like(forward)]))
    steps = [np.linspace(a, b, max(int(np.linalg.norm(b - a)), 2)) for a, b in itertools.pairwise(anchors)]
    return Aorta(np.concatenate(steps) if steps else anchors)


def heart_before(body_centres_lps_mm: np.ndarray, frame: np.ndarray, body_depth_mm: float) -> Heart:
    """A heart in front of the given (mid-thoracic) bodies, slightly right of the aorta."""
    forward = body_depth_mm / 2 + HEART_GAP_MM + HEART_SEMI_AXES_MM[1]
    centre = body_centres_lps_mm.mean(axis=0) + frame @ np.array([-5.0, forward, 0.0])
    return Heart(centre, frame)
