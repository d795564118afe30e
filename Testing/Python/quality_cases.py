"""Broken segmentations built from the real sample CT and its reference labels, one per fault that
quality control must catch (Testing/Python/test_quality.py). Arrays are on the canonical grid
[k, j, i]: k superior, j posterior, i left."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spinefrac.io.images import CtVolume
from spinefrac.levels import LEVEL_BY_NAME
from spinefrac.segmentation.base import LABEL_PIXEL_TYPE, LabelConvention, VertebraSegmentation


def level_id(name: str) -> int:
    return LEVEL_BY_NAME[name.lower()].verse_id


def segmentation_from(ct: CtVolume, labels: np.ndarray, source: str) -> VertebraSegmentation:
    image = sitk.Cast(sitk.GetImageFromArray(labels.astype(np.uint8)), LABEL_PIXEL_TYPE)
    image.CopyInformation(ct.image)
    return VertebraSegmentation(image, "test case", source, LabelConvention.VERSE)


def ct_from(ct: CtVolume, hu: np.ndarray) -> CtVolume:
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.CopyInformation(ct.image)
    return replace(ct, image=image)


def flipped_head_to_foot(ct: CtVolume) -> CtVolume:
    """The CT's voxels reversed cranio-caudally under an unchanged header: what a header flipped
    head-to-foot does to a label map drawn on the true anatomy."""
    return ct_from(ct, np.asarray(ct.array())[::-1])


def shifted(labels: np.ndarray, offset_mm: float, axis: int, spacing_mm: float) -> np.ndarray:
    """Labels moved by ``offset_mm`` along one array axis (background comes in behind)."""
    voxels = round(offset_mm / spacing_mm)
    moved = np.zeros_like(labels)
    source = [slice(None)] * 3
    target = [slice(None)] * 3
    if voxels >= 0:
        source[axis], target[axis] = slice(0, labels.shape[axis] - voxels), slice(voxels, None)
    else:
        source[axis], target[axis] = slice(-voxels, None), slice(0, labels.shape[axis] + voxels)
    moved[tuple(target)] = labels[tuple(source)]
    return moved


def merged(labels: np.ndarray, keep: str, absorbed: str) -> np.ndarray:
    out = labels.copy()
    out[out == level_id(absorbed)] = level_id(keep)
    return out


def split_in_two(labels: np.ndarray, name: str) -> np.ndarray:
    """One axial slice removed through the middle of a level: the label falls into two pieces."""
    out = labels.copy()
    k = np.nonzero(out == level_id(name))[0]
    middle = (int(k.min()) + int(k.max())) // 2
    out[middle][out[middle] == level_id(name)] = 0
    return out


def grown(labels: np.ndarray, name: str, factor: float) -> np.ndarray:
    """A level grown into the background around it until its volume is ``factor`` times larger."""
    out = labels.copy()
    mask = out == level_id(name)
    target = factor * mask.sum()
    while mask.sum() < target:
        mask = ndimage.binary_dilation(mask) & ((out == 0) | mask)
    out[mask] = level_id(name)
    return out


def swapped(labels: np.ndarray, first: str, second: str) -> np.ndarray:
    out = labels.copy()
    a, b = labels == level_id(first), labels == level_id(second)
    out[a], out[b] = level_id(second), level_id(first)
    return out


def with_contrast_vessel(ct: CtVolume, labels: np.ndarray, name: str, seed: int = 0):
    """An aorta filled with contrast (380 HU, 20 HU noise, 24 mm wide, its wall blurred by partial
    volume) painted in front of the vertebral bodies on the left, and ``name``'s label moved onto
    the vessel over the same slices: the offline engine's failure on enhanced CT."""
    spacing_i, spacing_j, _ = ct.image.GetSpacing()
    hu = np.asarray(ct.array()).astype(np.float32)
    spine = labels > 0
    _, j_idx, i_idx = np.nonzero(spine)
    centre_j = j_idx.min() - 14.0 / spacing_j  # 14 mm in front of the most anterior bone
    centre_i = np.median(i_idx) + 20.0 / spacing_i  # 20 mm to the patient's left
    jj, ii = np.mgrid[0:hu.shape[1], 0:hu.shape[2]]
    inside = (((jj - centre_j) * spacing_j) ** 2 + ((ii - centre_i) * spacing_i) ** 2) <= 12.0 ** 2
    fraction = ndimage.gaussian_filter(inside.astype(np.float32), 0.7)  # partial volume at the wall
    rng = np.random.default_rng(seed)
    blood = 380.0 + rng.normal(0.0, 20.0, hu.shape)
    hu = hu * (1 - fraction) + blood * fraction
    out = labels.copy()
    level = out == level_id(name)
    k_range = np.unique(np.nonzero(level)[0])
    out[level] = 0
    vessel = fraction >= 0.5
    for k in k_range:
        out[k][vessel] = level_id(name)
    return ct_from(ct, np.round(hu)), out


def renamed(labels: np.ndarray, names: dict[str, str]) -> np.ndarray:
    """Levels given other names all at once (``{"L3": "L4", "L4": "L5"}``)."""
    out = labels.copy()
    for old, new in names.items():
        out[labels == level_id(old)] = level_id(new)
    return out


def split_between_labels(labels: np.ndarray, name: str, lower_name: str) -> np.ndarray:
    """The caudal half of a level given the next label (what an engine does when it takes an
    endplate gap for a disc); the levels below are assumed already renamed out of the way."""
    out = labels.copy()
    level = labels == level_id(name)
    k = np.nonzero(level)[0]
    middle = (int(k.min()) + int(k.max())) // 2
    caudal = level.copy()
    caudal[middle:] = False  # k increases superiorly: below the middle slice
    out[caudal] = level_id(lower_name)
    return out


def border_moved_into(labels: np.ndarray, upper_name: str, lower_name: str, fraction: float) -> np.ndarray:
    """The border between two neighbours moved ``fraction`` of the lower level's body height into
    that body: the lower level's voxels above the new border plane are given the upper label (what
    an engine does when it cuts the spine half-way between discs). The body is the front 30 % of
    the level's antero-posterior extent; k increases superiorly."""
    out = labels.copy()
    lower = labels == level_id(lower_name)
    k, j, _ = np.nonzero(lower)
    front = j <= j.min() + 0.3 * (j.max() - j.min())
    body_bottom, body_top = int(k[front].min()), int(k[front].max())
    border_k = body_top + 1 - round(fraction * (body_top + 1 - body_bottom))
    moved = lower.copy()
    moved[:border_k] = False
    out[moved] = level_id(upper_name)
    return out
