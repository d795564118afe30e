"""The one preprocessing of the learned engine's own packages, shared by inference
(engine.LearnedEngine) and training (spinefrac.training.segmentation), so that a network sees
at run time exactly what it saw in training:

  1. the canonical CT resampled to the model's spacing (linear, air outside), float32;
  2. labels carried onto a grid by nearest neighbour (onto the model grid in training, back onto
     the CT's grid after inference);
  3. intensities clipped to the manifest's ``intensity`` window and scaled to 0..1.

Cropping differs (training crops around the labelled spine, inference around the dense bone:
engine.spine_box) and happens between steps 1 and 3; scaling is per voxel, so its place does not
matter.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

OUTSIDE_HU = -1000.0  # air: what resampling puts outside the CT


def resample_to_model_spacing(image: sitk.Image, spacing_mm) -> sitk.Image:
    """The CT on a grid of the model's spacing (x, y, z mm) over the same extent, same origin and
    direction; linear interpolation, air outside, float32."""
    spacing = np.asarray(spacing_mm, dtype=float)
    size = np.maximum(np.round(np.asarray(image.GetSize()) * np.asarray(image.GetSpacing()) / spacing), 1)
    return sitk.Resample(image, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         spacing.tolist(), image.GetDirection(), OUTSIDE_HU, sitk.sitkFloat32)


def resample_labels(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A label map on ``reference``'s grid: nearest neighbour, 0 outside, uint8."""
    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def scale_intensity(hu: np.ndarray, intensity: Mapping[str, float]) -> np.ndarray:
    """HU -> network input: clipped to [hu_min, hu_max] (the manifest's ``intensity``), scaled to 0..1, float32."""
    low, high = intensity["hu_min"], intensity["hu_max"]
    scaled = (np.clip(hu.astype(np.float32), low, high) - low) / (high - low)
    return scaled.astype(np.float32, copy=False)
