"""The overview picture: mid-sagittal and coronal CT planes through the spine, bone window,
with the level labels overlaid and named. Written as PNG with matplotlib's Agg backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.patheffects as path_effects  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402  (not pyplot: its import costs a third of a second)

from spinefrac.assessment.fracture import FractureFindings  # noqa: E402
from spinefrac.assessment.measurement import SpineMeasurements  # noqa: E402
from spinefrac.assessment.morphometry import SpineMorphometry, VoxelGrid  # noqa: E402
from spinefrac.assessment.quality import SegmentationQuality  # noqa: E402
from spinefrac.coordinates import lps_from_ras  # noqa: E402
from spinefrac.io.images import CtVolume  # noqa: E402
from spinefrac.reporting.drawing import (  # noqa: E402
    BONE_WINDOW_LEVEL_HU,
    BONE_WINDOW_WIDTH_HU,
    PNG_OPTIONS,
    bone_window,
    colour_table,
    height_line_colour,
    level_caption,
    qc_marked,
    user_heights_levels,
)
from spinefrac.segmentation.base import VertebraSegmentation, labelled_box  # noqa: E402

LABEL_SLAB_HALF_WIDTH_MM = 15.0  # curved spines leave the plane; show labels from a slab
VIEW_MARGIN_MM = 40.0
VERTICAL_MARGIN_MM = 20.0
FIGURE_HEIGHT_IN = 8.0


@dataclass(frozen=True)
class _View:
    """One panel: a plane cut through the volume, shown with a horizontal array axis, cropped."""

    title: str
    cut_axis: int  # array axis cut through
    plane: int  # plane index along it
    slab_spacing: float  # spacing across the plane
    h_axis: int  # array axis shown horizontally
    spacing_h: float  # its spacing
    h_low: int  # crop along it, inclusive
    h_high: int

    @property
    def width_mm(self) -> float:
        return (self.h_high - self.h_low + 1) * self.spacing_h


@dataclass(frozen=True)
class _Rows:
    """The cranio-caudal crop shared by both panels (array axis 0, inclusive)."""

    k_low: int
    k_high: int
    spacing_k: float

    @property
    def height_mm(self) -> float:
        return (self.k_high - self.k_low + 1) * self.spacing_k


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One plane as a view (np.take copies, and first copies a strided volume whole)."""
    return volume[(slice(None),) * axis + (index,)]


def _slab_labels(labels: np.ndarray, axis: int, centre: int, half_width: int) -> np.ndarray:
    """Label seen through a slab: per pixel, the label of the voxel nearest the plane."""
    out = _plane(labels, axis, centre).copy()
    for offset in range(1, half_width + 1):
        for index in (centre - offset, centre + offset):
            if 0 <= index < labels.shape[axis]:
                layer = _plane(labels, axis, index)
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
    quality: SegmentationQuality | None = None,
) -> Path:
    hu = ct.array()  # [k, j, i]: k superior, j posterior, i left
    labels = segmentation.array()
    views, rows = _plan_views(labels, hu.shape, ct.image.GetSpacing())
    colours = colour_table(findings)
    figure, axes = _open_figure(views, rows)
    for axis_plot, view in zip(axes, views):
        _draw_planes(axis_plot, view, rows, hu, labels, colours)
        _name_levels(axis_plot, ct, measurements, view.cut_axis, view.h_low, rows.k_low, view.spacing_h,
                     rows.spacing_k, findings, quality)
        if morphometry is not None and view.cut_axis == 2:
            _draw_height_lines(axis_plot, ct, morphometry, view.h_low, rows.k_low, view.spacing_h, rows.spacing_k)
        axis_plot.set_title(view.title, color="white", fontsize=11, y=1.0)  # y given: no search for tick labels
        axis_plot.set_axis_off()
    figure.suptitle(title, color="white", fontsize=12)
    _add_legend(figure, findings, quality)
    figure.savefig(path, dpi=110, facecolor=figure.get_facecolor(), bbox_inches="tight", pad_inches=0.2,
                   pil_kwargs=PNG_OPTIONS)
    return path


def _plan_views(labels: np.ndarray, shape: tuple[int, ...], spacing_ijk) -> tuple[list[_View], _Rows]:
    """Sagittal and coronal planes through the labels' median column, each cropped to the labels
    plus a margin; both share the labels' cranio-caudal extent plus a margin."""
    spacing_i, spacing_j, spacing_k = spacing_ijk
    box = labelled_box(labels)  # np.nonzero over the whole grid costs half a second
    k_idx, j_idx, i_idx = (found + part.start for found, part in zip(np.nonzero(labels[box]), box))
    centre_i, centre_j = int(np.median(i_idx)), int(np.median(j_idx))
    views = [
        _cropped_view("Sagittal (anterior at left)", 2, centre_i, spacing_i, 1, spacing_j, j_idx, shape),
        _cropped_view("Coronal (patient right at left)", 1, centre_j, spacing_j, 2, spacing_i, i_idx, shape),
    ]
    k_low = max(int(k_idx.min()) - int(VERTICAL_MARGIN_MM / spacing_k), 0)
    k_high = min(int(k_idx.max()) + int(VERTICAL_MARGIN_MM / spacing_k), shape[0] - 1)
    return views, _Rows(k_low, k_high, spacing_k)


def _cropped_view(title: str, cut_axis: int, plane: int, slab_spacing: float, h_axis: int, spacing_h: float,
                  h_idx: np.ndarray, shape: tuple[int, ...]) -> _View:
    margin = int(VIEW_MARGIN_MM / spacing_h)
    h_low = max(int(h_idx.min()) - margin, 0)
    h_high = min(int(h_idx.max()) + margin, shape[h_axis] - 1)
    return _View(title, cut_axis, plane, slab_spacing, h_axis, spacing_h, h_low, h_high)


def _open_figure(views: list[_View], rows: _Rows):
    """Black figure, one panel per view, panel widths in proportion to their millimetres."""
    widths_mm = [view.width_mm for view in views]
    figure_width_in = max(FIGURE_HEIGHT_IN * sum(widths_mm) / rows.height_mm + 1.5, 6.0)
    figure = Figure(figsize=(figure_width_in, FIGURE_HEIGHT_IN + 0.8))
    axes = figure.subplots(1, len(views), gridspec_kw={"width_ratios": widths_mm})
    figure.patch.set_facecolor("black")
    return figure, axes


def _draw_planes(axis_plot, view: _View, rows: _Rows, hu: np.ndarray, labels: np.ndarray,
                 colours: np.ndarray) -> None:
    """The CT plane in the bone window, with the labels seen through a slab laid over it."""
    crop = (slice(rows.k_low, rows.k_high + 1), slice(view.h_low, view.h_high + 1))
    ct_plane = _plane(hu, view.cut_axis, view.plane)[crop]
    in_view = [slice(rows.k_low, rows.k_high + 1), slice(None), slice(None)]  # the slab is cropped first
    in_view[view.h_axis] = slice(view.h_low, view.h_high + 1)
    label_plane = _slab_labels(labels[tuple(in_view)], view.cut_axis, view.plane,
                               int(LABEL_SLAB_HALF_WIDTH_MM / view.slab_spacing))
    extent = (0, view.width_mm, 0, rows.height_mm)
    axis_plot.imshow(bone_window(ct_plane), cmap="gray", origin="lower", extent=extent, vmin=0, vmax=1)
    axis_plot.imshow(colours[label_plane], origin="lower", extent=extent, interpolation="nearest")


def _add_legend(figure, findings: FractureFindings | None, quality: SegmentationQuality | None = None) -> None:
    user_levels = user_heights_levels(findings)
    if quality is not None:
        figure.text(0.5, 0.035, f"Quality control: {quality.summary()}. Orange 'QC fail': mask implausible, "
                    "not graded; yellow 'QC warn': check the mask, graded unless offline-engine (reasons in report.json).",
                    color="lightgray", ha="center", fontsize=9)
    figure.text(
        0.5,
        0.01,
        f"Bone window L {BONE_WINDOW_LEVEL_HU:.0f} / W {BONE_WINDOW_WIDTH_HU:.0f} HU. "
        f"Labels seen through a ±{LABEL_SLAB_HALF_WIDTH_MM:.0f} mm slab around each plane."
        + (" Red: fractured (Genant grade >= 1), green: normal, grey: not assessable; "
           "white lines: measured heights." if findings else "")
        + (f" Cyan lines: heights from points placed or moved by the user ({', '.join(user_levels)})."
           if user_levels else ""),
        color="lightgray",
        ha="center",
        fontsize=9,
    )


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
            axis_plot.plot(x_mm, y_mm, color=height_line_colour(m.heights.source), linewidth=1.2)


def _name_levels(axis_plot, ct, measurements, removed_axis, h_low, k_low, spacing_h, spacing_k,
                 findings=None, quality=None) -> None:
    verdicts = quality.verdicts() if quality else {}
    for m in measurements.vertebrae:
        lps = lps_from_ras(m.centroid_ras_mm)
        i, j, k = ct.image.TransformPhysicalPointToContinuousIndex(lps.tolist())
        horizontal = (j if removed_axis == 2 else i) - h_low
        x_mm, y_mm = (horizontal + 0.5) * spacing_h, (k - k_low + 0.5) * spacing_k
        caption, colour = qc_marked(level_caption(m.level.name, findings),
                                    "white" if findings else np.array(m.level.color_rgb) / 255.0,
                                    verdicts.get(m.level.name))
        text = axis_plot.text(
            x_mm, y_mm, caption,
            color=colour,
            fontsize=9, fontweight="bold", ha="center", va="center",
        )
        text.set_path_effects([path_effects.withStroke(linewidth=2.5, foreground="black")])
