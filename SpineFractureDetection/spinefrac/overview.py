"""The overview picture: mid-sagittal and coronal CT planes through the spine, bone window,
with the level labels overlaid and named. Written as PNG with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.patheffects as path_effects  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .image_io import CtVolume  # noqa: E402
from .levels import LEVEL_BY_ID  # noqa: E402
from .measurement import LPS_TO_RAS, SpineMeasurements  # noqa: E402
from .segmentation import VertebraSegmentation  # noqa: E402

BONE_WINDOW_LEVEL_HU = 400.0
BONE_WINDOW_WIDTH_HU = 1800.0
LABEL_SLAB_HALF_WIDTH_MM = 15.0  # curved spines leave the plane; show labels from a slab
VIEW_MARGIN_MM = 40.0
LABEL_ALPHA = 0.45


def _colour_table() -> np.ndarray:
    table = np.zeros((256, 4), dtype=float)
    for verse_id, level in LEVEL_BY_ID.items():
        table[verse_id, :3] = np.array(level.color_rgb) / 255.0
        table[verse_id, 3] = LABEL_ALPHA
    return table


def _window(hu: np.ndarray) -> np.ndarray:
    low = BONE_WINDOW_LEVEL_HU - BONE_WINDOW_WIDTH_HU / 2
    return np.clip((hu.astype(np.float32) - low) / BONE_WINDOW_WIDTH_HU, 0.0, 1.0)


def _slab_labels(labels: np.ndarray, axis: int, centre: int, half_width: int) -> np.ndarray:
    """Label seen through a slab: per pixel, the label of the voxel nearest the plane."""
    out = np.take(labels, centre, axis=axis).copy()
    for offset in range(1, half_width + 1):
        for index in (centre - offset, centre + offset):
            if 0 <= index < labels.shape[axis]:
                layer = np.take(labels, index, axis=axis)
                empty = out == 0
                out[empty] = layer[empty]
    return out


def write_overview_png(
    ct: CtVolume,
    segmentation: VertebraSegmentation,
    measurements: SpineMeasurements,
    path: Path,
    title: str = "",
) -> Path:
    hu = ct.array()  # [k, j, i]: k superior, j posterior, i left
    labels = segmentation.array()
    spacing_i, spacing_j, spacing_k = ct.image.GetSpacing()
    k_idx, j_idx, i_idx = np.nonzero(labels)
    centre_i, centre_j = int(np.median(i_idx)), int(np.median(j_idx))
    colours = _colour_table()

    views = [
        # title, array axis cut through, plane index, spacing across the plane,
        # array axis shown horizontally, its spacing, label voxel indices along it
        ("Sagittal (anterior at left)", 2, centre_i, spacing_i, 1, spacing_j, j_idx),
        ("Coronal (patient right at left)", 1, centre_j, spacing_j, 2, spacing_i, i_idx),
    ]
    k_low = max(int(k_idx.min()) - int(20 / spacing_k), 0)
    k_high = min(int(k_idx.max()) + int(20 / spacing_k), hu.shape[0] - 1)
    height_mm = (k_high - k_low + 1) * spacing_k
    widths_mm = []
    crops = []
    for _, _, _, _, h_axis, spacing_h, h_idx in views:
        margin = int(VIEW_MARGIN_MM / spacing_h)
        h_low = max(int(h_idx.min()) - margin, 0)
        h_high = min(int(h_idx.max()) + margin, hu.shape[h_axis] - 1)
        crops.append((h_low, h_high))
        widths_mm.append((h_high - h_low + 1) * spacing_h)

    figure_height_in = 8.0
    figure_width_in = max(figure_height_in * sum(widths_mm) / height_mm + 1.5, 6.0)
    figure, axes = plt.subplots(
        1, 2, figsize=(figure_width_in, figure_height_in + 0.8), gridspec_kw={"width_ratios": widths_mm}
    )
    figure.patch.set_facecolor("black")
    for axis_plot, (name, axis, plane, slab_spacing, _, spacing_h, _), (h_low, h_high) in zip(axes, views, crops):
        ct_plane = np.take(hu, plane, axis=axis)[k_low : k_high + 1, h_low : h_high + 1]
        label_plane = _slab_labels(labels, axis, plane, int(LABEL_SLAB_HALF_WIDTH_MM / slab_spacing))
        label_plane = label_plane[k_low : k_high + 1, h_low : h_high + 1]
        extent = (0, (h_high - h_low + 1) * spacing_h, 0, height_mm)
        axis_plot.imshow(_window(ct_plane), cmap="gray", origin="lower", extent=extent, vmin=0, vmax=1)
        axis_plot.imshow(colours[label_plane], origin="lower", extent=extent, interpolation="nearest")
        _name_levels(axis_plot, ct, measurements, axis, h_low, k_low, spacing_h, spacing_k)
        axis_plot.set_title(name, color="white", fontsize=11)
        axis_plot.set_axis_off()
    figure.suptitle(title, color="white", fontsize=12)
    figure.text(
        0.5,
        0.01,
        f"Bone window L {BONE_WINDOW_LEVEL_HU:.0f} / W {BONE_WINDOW_WIDTH_HU:.0f} HU. "
        f"Labels seen through a ±{LABEL_SLAB_HALF_WIDTH_MM:.0f} mm slab around each plane.",
        color="lightgray",
        ha="center",
        fontsize=9,
    )
    figure.savefig(path, dpi=110, facecolor=figure.get_facecolor(), bbox_inches="tight", pad_inches=0.2)
    plt.close(figure)
    return path


def _name_levels(axis_plot, ct, measurements, removed_axis, h_low, k_low, spacing_h, spacing_k) -> None:
    for m in measurements.vertebrae:
        lps = np.asarray(m.centroid_ras_mm) * LPS_TO_RAS
        i, j, k = ct.image.TransformPhysicalPointToContinuousIndex(lps.tolist())
        horizontal = (j if removed_axis == 2 else i) - h_low
        x_mm, y_mm = (horizontal + 0.5) * spacing_h, (k - k_low + 0.5) * spacing_k
        text = axis_plot.text(
            x_mm, y_mm, m.level.name, color=np.array(m.level.color_rgb) / 255.0,
            fontsize=9, fontweight="bold", ha="center", va="center",
        )
        text.set_path_effects([path_effects.withStroke(linewidth=2.5, foreground="black")])
