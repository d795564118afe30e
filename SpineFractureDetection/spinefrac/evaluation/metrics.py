"""Evaluation metrics on masks and ratings: Dice, surface voxels, 95th-percentile Hausdorff distance,
AUC (Mann-Whitney) and weighted Cohen's kappa."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from spinefrac.io.grades import GENANT_GRADES

HAUSDORFF_PERCENTILE = 95.0
_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


# -- metrics on arrays ----------------------------------------------------------------------


def dice_coefficient(overlap_voxels: int, reference_voxels: int, predicted_voxels: int) -> float | None:
    """Dice from voxel counts; None when both masks are empty."""
    total = reference_voxels + predicted_voxels
    return 2.0 * overlap_voxels / total if total else None


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face neighbour outside it (the array border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def hausdorff95_mm(reference_mask: np.ndarray, predicted_mask: np.ndarray,
                   array_spacing_mm: Sequence[float]) -> float | None:
    """95th-percentile symmetric surface distance in mm; None when either mask is empty.

    ``array_spacing_mm`` is the spacing along the array's axes, i.e. (k, j, i) for a
    SimpleITK array. Crop both masks to their common bounding box first: the cost is that of
    a distance transform of the arrays given.
    """
    if not reference_mask.any() or not predicted_mask.any():
        return None
    reference_surface = surface_voxels(reference_mask)
    predicted_surface = surface_voxels(predicted_mask)
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=array_spacing_mm)[predicted_surface]
    to_prediction = ndimage.distance_transform_edt(~predicted_surface, sampling=array_spacing_mm)[reference_surface]
    return float(max(np.percentile(to_reference, HAUSDORFF_PERCENTILE),
                     np.percentile(to_prediction, HAUSDORFF_PERCENTILE)))


def auc_mann_whitney(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve as P(score of a positive > score of a negative), ties 1/2."""
    scores = np.asarray(scores, dtype=float)
    positives = np.asarray(positives, dtype=bool)
    positive_count = int(positives.sum())
    negative_count = positives.size - positive_count
    if positive_count == 0 or negative_count == 0:
        return None
    ranks = rankdata(scores)  # average ranks: a tie between classes adds one half
    u_statistic = ranks[positives].sum() - positive_count * (positive_count + 1) / 2.0
    return float(u_statistic / (positive_count * negative_count))


def weighted_kappa(reference: Sequence[int], predicted: Sequence[int], weighting: str = "linear",
                   categories: Sequence[int] = GENANT_GRADES) -> float | None:
    """Cohen's kappa with linear or quadratic disagreement weights; None when undefined.

    Undefined when chance disagreement is zero: no pairs, or every grade in one category in
    both ratings (then the agreement is perfect but carries no information beyond chance).
    """
    if weighting not in ("linear", "quadratic"):
        raise ValueError(f"weighting must be 'linear' or 'quadratic', not {weighting!r}")
    reference = np.asarray(reference, dtype=int)
    predicted = np.asarray(predicted, dtype=int)
    if reference.shape != predicted.shape:
        raise ValueError("reference and predicted grades differ in length")
    if reference.size == 0:
        return None
    index = {category: position for position, category in enumerate(categories)}
    count = len(categories)
    observed = np.zeros((count, count))
    np.add.at(observed, ([index[g] for g in reference], [index[g] for g in predicted]), 1.0)
    observed /= reference.size
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    distance = np.abs(np.subtract.outer(np.arange(count), np.arange(count))) / (count - 1)
    weights = distance if weighting == "linear" else distance**2
    chance_disagreement = float((weights * expected).sum())
    if chance_disagreement == 0.0:
        return None
    return 1.0 - float((weights * observed).sum()) / chance_disagreement


# -- small helpers --------------------------------------------------------------------------


def mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
