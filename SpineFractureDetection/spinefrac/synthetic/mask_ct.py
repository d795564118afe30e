"""A CT-like image built around a real vertebra label map (VerSe masks come without their CT).

Inside each vertebra: trabecular bone, with a cortical shell along the mask's border; outside:
soft tissue (the discs between bodies are soft tissue too, as dense as a disc is on CT). The
image is blurred by a Gaussian point-spread function and given noise, so the bone/disc edge
is where a scanner would put it: on the mask's border, blurred over about a millimetre.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

SOFT_TISSUE_HU = 40.0
TRABECULAR_HU = 220.0
CORTICAL_HU = 700.0
CORTEX_MM = 1.0
PSF_SIGMA_MM = 0.6
NOISE_SD_HU = 15.0


def ct_from_label_map(labels: sitk.Image, seed: int = 0) -> sitk.Image:
    """Float32 CT on the label map's grid: vertebrae as bone (cortex + marrow), soft tissue around."""
    label_array = sitk.GetArrayFromImage(labels)
    spacing_kji = np.array(labels.GetSpacing()[::-1], dtype=float)
    bone = label_array > 0
    # A shell at each vertebra's own border (also where two vertebrae touch, as endplates do).
    eroded = np.zeros_like(bone)
    for value in np.unique(label_array[bone]):
        one = label_array == value
        depth = ndimage.distance_transform_edt(one, sampling=spacing_kji)
        eroded |= depth > CORTEX_MM
    hu = np.full(label_array.shape, SOFT_TISSUE_HU, dtype=np.float32)
    hu[bone] = CORTICAL_HU
    hu[eroded] = TRABECULAR_HU
    hu = ndimage.gaussian_filter(hu, PSF_SIGMA_MM / spacing_kji)
    hu += np.random.default_rng(seed).normal(0.0, NOISE_SD_HU, hu.shape).astype(np.float32)
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    image.CopyInformation(labels)
    return image


def each_label_morphed(labels: sitk.Image, operation) -> sitk.Image:
    """Each label dilated or eroded by one voxel on its own, as a clinician's one-voxel edit would be.

    ``operation`` is ``sitk.BinaryDilate`` or ``sitk.BinaryErode``; where a dilated label grows
    into a neighbour, the label met first in ascending value keeps the voxel (touching levels keep
    their shared border).
    """
    array = sitk.GetArrayFromImage(labels)
    out = np.zeros_like(array)
    for value in np.unique(array[array > 0]):
        one = sitk.GetImageFromArray((array == value).astype(np.uint8))
        changed = sitk.GetArrayFromImage(operation(one, [1, 1, 1])) > 0
        out[changed & (out == 0)] = value
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(labels)
    return image
