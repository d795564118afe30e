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

from spinefrac.assessment.fracture import DECISION_COLORS_RGB, Decision, FractureFindings  # noqa: E402
from spinefrac.coordinates import lps_from_ras  # noqa: E402
from spinefrac.io.images import CtVolume  # noqa: E402
from spinefrac.levels import LEVEL_BY_ID  # noqa: E402
from spinefrac.assessment.measurement import SpineMeasurements  # noqa: E402
from spinefrac.assessment.morphometry import SpineMorphometry, VertebraMorphometry, VoxelGrid, sample_at  # noqa: E402
from spinefrac.segmentation.base import VertebraSegmentation  # noqa: E402

BONE_WINDOW_LEVEL_HU = 400.0
BONE_WINDOW_WIDTH_HU = 1800.0
LABEL_SLAB_HALF_WIDTH_MM = 15.0  # curved spines leave the plane; show labels from a slab
VIEW_MARGIN_MM = 40.0
LABEL_ALPHA = 0.45


def _colour_table(findings: FractureFindings | None = None) -> np.ndarray:
    """Label id -> RGBA: the level's own colour, or its decision colour once findings exist."""
    table = np.zeros((256, 4), dtype=float)
    decisions = {f.level.verse_id: f.decision for f in findings.findings} if findings else {}
    for verse_id, level in LEVEL_BY_ID.items():
        rgb = DECISION_COLORS_RGB[decisions[verse_id]] if verse_id in decisions else level.color_rgb
        table[verse_id, :3] = np.array(rgb) / 255.0
        table[verse_id, 3] = LABEL_ALPHA
    return table


def _level_caption(name: str, findings: FractureFindings | None) -> str:
    finding = findings.by_name().get(name) if findings else None
    if finding is None or finding.genant_grade is None:
        return name
    return f"{name} G{finding.genant_grade}" if finding.genant_grade else name


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
    morphometry: SpineMorphometry | None = None,
    findings: FractureFindings | None = None,
) -> Path:
    hu = ct.array()  # [k, j, i]: k superior, j posterior, i left
    labels = segmentation.array()
    spacing_i, spacing_j, spacing_k = ct.image.GetSpacing()
    k_idx, j_idx, i_idx = np.nonzero(labels)
    centre_i, centre_j = int(np.median(i_idx)), int(np.median(j_idx))
    colours = _colour_table(findings)

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
        _name_levels(axis_plot, ct, measurements, axis, h_low, k_low, spacing_h, spacing_k, findings)
        if morphometry is not None and axis == 2:
            _draw_height_lines(axis_plot, ct, morphometry, h_low, k_low, spacing_h, spacing_k)
        axis_plot.set_title(name, color="white", fontsize=11)
        axis_plot.set_axis_off()
    figure.suptitle(title, color="white", fontsize=12)
    figure.text(
        0.5,
        0.01,
        f"Bone window L {BONE_WINDOW_LEVEL_HU:.0f} / W {BONE_WINDOW_WIDTH_HU:.0f} HU. "
        f"Labels seen through a ±{LABEL_SLAB_HALF_WIDTH_MM:.0f} mm slab around each plane."
        + (" Red: fractured (Genant grade >= 1), green: normal, grey: not assessable; "
           "white lines: measured heights." if findings else ""),
        color="lightgray",
        ha="center",
        fontsize=9,
    )
    figure.savefig(path, dpi=110, facecolor=figure.get_facecolor(), bbox_inches="tight", pad_inches=0.2)
    plt.close(figure)
    return path


def _draw_height_lines(axis_plot, ct, morphometry, h_low, k_low, spacing_h, spacing_k) -> None:
    """Anterior, middle and posterior heights as measured, projected onto the sagittal view."""
    grid = VoxelGrid(ct.image)
    for m in morphometry.vertebrae:
        if m.heights is None:
            continue
        for line in m.heights.lines:
            ends = grid.kji(np.array([line.inferior_lps_mm, line.superior_lps_mm]))
            x_mm = (ends[:, 1] - h_low + 0.5) * spacing_h
            y_mm = (ends[:, 0] - k_low + 0.5) * spacing_k
            axis_plot.plot(x_mm, y_mm, color="white", linewidth=1.2)


def _name_levels(axis_plot, ct, measurements, removed_axis, h_low, k_low, spacing_h, spacing_k,
                 findings=None) -> None:
    for m in measurements.vertebrae:
        lps = lps_from_ras(m.centroid_ras_mm)
        i, j, k = ct.image.TransformPhysicalPointToContinuousIndex(lps.tolist())
        horizontal = (j if removed_axis == 2 else i) - h_low
        x_mm, y_mm = (horizontal + 0.5) * spacing_h, (k - k_low + 0.5) * spacing_k
        text = axis_plot.text(
            x_mm, y_mm, _level_caption(m.level.name, findings),
            color="white" if findings else np.array(m.level.color_rgb) / 255.0,
            fontsize=9, fontweight="bold", ha="center", va="center",
        )
        text.set_path_effects([path_effects.withStroke(linewidth=2.5, foreground="black")])


GALLERY_COLUMNS = 4
GALLERY_HALF_WIDTH_MM = 35.0  # crop around each body centre, antero-posterior
GALLERY_HALF_HEIGHT_MM = 30.0  # and cranio-caudal
GALLERY_STEP_MM = 0.5


def write_gallery_png(
    ct: CtVolume,
    segmentation: VertebraSegmentation,
    morphometry: SpineMorphometry,
    findings: FractureFindings,
    path: Path,
) -> Path:
    """One panel per vertebra: its own mid-sagittal plane (following the spine's curve), bone
    window, mask outline, measured heights, and grade/decision in the decision's colour."""
    levels = [m for m in morphometry.vertebrae if m.frame is not None]
    rows = max(1, -(-len(levels) // GALLERY_COLUMNS))
    columns = min(GALLERY_COLUMNS, max(len(levels), 1))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows + 0.4), squeeze=False)
    figure.patch.set_facecolor("black")
    grid = VoxelGrid(ct.image)
    by_name = findings.by_name()
    for axis_plot in axes.ravel():
        axis_plot.set_axis_off()
    for axis_plot, m in zip(axes.ravel(), levels):
        _gallery_panel(axis_plot, ct, segmentation, grid, m, by_name.get(m.level.name))
    if not levels:
        axes[0, 0].text(0.5, 0.5, "no vertebral body could be measured", color="white", ha="center")
    figure.suptitle("Per-vertebra mid-sagittal planes (anterior at left); heights in mm", color="white")
    figure.savefig(path, dpi=100, facecolor=figure.get_facecolor(), bbox_inches="tight", pad_inches=0.2)
    plt.close(figure)
    return path


def _gallery_panel(axis_plot, ct, segmentation, grid, m: VertebraMorphometry, finding) -> None:
    anterior = np.arange(GALLERY_HALF_WIDTH_MM, -GALLERY_HALF_WIDTH_MM, -GALLERY_STEP_MM)  # anterior at left
    superior = np.arange(-GALLERY_HALF_HEIGHT_MM, GALLERY_HALF_HEIGHT_MM, GALLERY_STEP_MM)
    a, s = np.meshgrid(anterior, superior)
    local = np.stack([np.zeros_like(a), a, s], axis=-1)
    kji = grid.kji(m.frame.to_lps(local)).reshape(-1, 3).T
    plane_hu = sample_at(ct.array(), kji, order=1, cval=-1000.0).reshape(a.shape)
    plane_label = sample_at(segmentation.array(), kji, order=0, cval=0).reshape(a.shape)
    extent = (0, 2 * GALLERY_HALF_WIDTH_MM, 0, 2 * GALLERY_HALF_HEIGHT_MM)
    axis_plot.imshow(_window(plane_hu), cmap="gray", origin="lower", extent=extent, vmin=0, vmax=1)
    decision = finding.decision if finding else Decision.NOT_ASSESSABLE
    colour = np.array(DECISION_COLORS_RGB[decision]) / 255.0
    axis_plot.contour(plane_label == m.level.verse_id, levels=[0.5], colors=[colour], linewidths=1.0,
                      origin="lower", extent=extent)
    if m.heights is not None:
        for line in m.heights.lines:
            ends = m.frame.to_local(np.array([line.inferior_lps_mm, line.superior_lps_mm]))
            axis_plot.plot(GALLERY_HALF_WIDTH_MM - ends[:, 1], GALLERY_HALF_HEIGHT_MM + ends[:, 2],
                           color="white", linewidth=1.2)
    axis_plot.set_title(_gallery_caption(m, finding), color=colour, fontsize=9)


def _gallery_caption(m: VertebraMorphometry, finding) -> str:
    if finding is None:
        return m.level.name
    if finding.genant_grade is None:
        return f"{m.level.name}: not assessable"
    heights = f"A {finding.height_anterior_mm:.0f} / M {finding.height_middle_mm:.0f} / P {finding.height_posterior_mm:.0f}"
    grade = f"grade {finding.genant_grade}" + (f" {finding.genant_type.value}" if finding.genant_grade else "")
    score = f", p={finding.fracture_probability:.2f}" if finding.fracture_probability is not None else ""
    return f"{m.level.name}: {grade}, loss {finding.height_loss:.0%}{score}\n{heights}"
