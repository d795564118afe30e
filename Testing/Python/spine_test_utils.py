"""Helpers for tests: write images in other orientations, DICOM series, run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def reoriented(image: sitk.Image, orientation: str) -> sitk.Image:
    """Same voxels, same physical positions, other axis order/directions (e.g. 'LPS', 'SAR')."""
    return sitk.DICOMOrient(image, orientation)


def write_dicom_series(image: sitk.Image, folder: Path, modality: str = "CT", series_uid: str | None = None,
                       description: str = "", compressor: str | None = None) -> list[Path]:
    """Write a 3-D image as one DICOM file per slice with geometry tags, like a scanner would."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or "1.2.826.0.1.3680043.2.1125." + str(abs(hash((str(folder), modality))) % 10**12)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    if compressor:  # GDCM: "JPEG" (lossless process 14) or "JPEG2000" (lossless)
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
    pixels = sitk.Cast(image, sitk.sitkInt16)
    paths = []
    for k in range(image.GetDepth()):
        slice_image = pixels[:, :, k]
        tags = {
            "0008|0060": modality,
            "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0008|103e": description,
            "0020|0037": "\\".join(f"{v:.9f}" for v in (direction[0], direction[3], direction[6],
                                                          direction[1], direction[4], direction[7])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1),
            "0008|0018": f"{series_uid}.{k + 1}",
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        path = folder / f"{modality}_{series_uid[-6:]}_{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(slice_image)
        paths.append(path)
    return paths


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, cwd: Path | None = None) -> CliResult:
    """Run ``python -m spinefrac`` in a child process, as a user would run the command."""
    repo = Path(__file__).resolve().parents[2]
    core = str(repo / "SpineFractureDetection")
    env = dict(os.environ, PYTHONPATH=core + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run([sys.executable, "-m", "spinefrac", *map(str, args)], capture_output=True, encoding="utf-8",
                               text=True, cwd=cwd, env=env, timeout=300)
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def label_centroids_lps(labels: sitk.Image) -> dict[int, np.ndarray]:
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(labels)
    return {int(v): np.array(shape.GetCentroid(v)) for v in shape.GetLabels()}


def elderly_chest_phantom(levels: tuple[str, ...], slice_mm: float = 2.0, seed: int = 0):
    """A chest CT of an elderly spine like POPI (0.98 x 0.98 mm in plane): fatty marrow (120 HU), thin
    osteoporotic cortex (600 HU), thin discs (0.4 x adult height, 130 HU). Slices integrate their
    thickness (three or five sub-slices), so a disc and its two endplates merge into one band brighter
    than the bodies, and the axis profile's only dips are the bodies' middles."""
    from spinefrac.synthetic.phantom import PhantomSpec, make_phantom, thick_slices

    factor = 3 if slice_mm <= 3.0 else 5
    spec = PhantomSpec(levels=levels, spacing_mm=(0.98, 0.98, slice_mm / factor), trabecular_hu=120.0,
                       cortical_hu=600.0, disc_height_factor=0.4, disc_hu=130.0, blur_mm=0.9,
                       noise_hu=15.0 * factor ** 0.5, seed=seed)
    return thick_slices(make_phantom(spec), factor)  # noise about 15 HU

