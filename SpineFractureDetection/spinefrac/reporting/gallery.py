"""The gallery picture: one panel per vertebra on its own mid-sagittal plane (following the
spine's curve), bone window, mask outline, measured heights, and grade/decision in the
decision's colour. Written as PNG with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402  (not pyplot: its import costs a third of a second)

from spinefrac.assessment.fracture import DECISION_COLORS_RGB, Decision, FractureFindings  # noqa: E402
from spinefrac.assessment.geometry import VoxelGrid, sample_at  # noqa: E402
from spinefrac.assessment.morphometry import SpineMorphometry, VertebraMorphometry  # noqa: E402
from spinefrac.assessment.quality import SegmentationQuality  # noqa: E402
from spinefrac.io.images import CtVolume  # noqa: E402
from spinefrac.reporting.drawing import (  # noqa: E402
    PNG_OPTIONS,
    USER_HEIGHTS_COLOUR,
    bone_window,
    height_line_colour,
    qc_marked,
)
from spinefrac.segmentation.base import VertebraSegmentation  # noqa: E402

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
    quality: SegmentationQuality | None = None,
) -> Path:
    """One panel per vertebra: its own mid-sagittal plane (following the spine's curve), bone
    window, mask outline, measured heights, the expected (pre-fracture) outline from the
    neighbours (dashed), and grade/decision in the decision's colour; a mask flagged by quality
    control has 'QC fail' (orange) or 'QC warn' (yellow) in its title."""
    levels = [m for m in morphometry.vertebrae if m.frame is not None]
    rows = max(1, -(-len(levels) // GALLERY_COLUMNS))
    columns = min(GALLERY_COLUMNS, max(len(levels), 1))
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    figure.patch.set_facecolor("black")
    grid = VoxelGrid(ct.image)
    by_name = findings.by_name()
    verdicts = quality.verdicts() if quality else {}
    for axis_plot in axes.ravel():
        axis_plot.set_axis_off()
    for axis_plot, m in zip(axes.ravel(), levels):
        _gallery_panel(axis_plot, ct, segmentation, grid, m, by_name.get(m.level.name), verdicts.get(m.level.name))
    if not levels:
        axes[0, 0].text(0.5, 0.5, "no vertebral body could be measured", color="white", ha="center")
    figure.suptitle("Per-vertebra mid-sagittal planes (anterior at left); heights in mm; "
                    "dashed: expected outline from the neighbours", color="white")
    figure.savefig(path, dpi=100, facecolor=figure.get_facecolor(), bbox_inches="tight", pad_inches=0.2,
                   pil_kwargs=PNG_OPTIONS)
    return path


def _gallery_panel(axis_plot, ct, segmentation, grid, m: VertebraMorphometry, finding, verdict) -> None:
    anterior = np.arange(GALLERY_HALF_WIDTH_MM, -GALLERY_HALF_WIDTH_MM, -GALLERY_STEP_MM)  # anterior at left
    superior = np.arange(-GALLERY_HALF_HEIGHT_MM, GALLERY_HALF_HEIGHT_MM, GALLERY_STEP_MM)
    a, s = np.meshgrid(anterior, superior)
    local = np.stack([np.zeros_like(a), a, s], axis=-1)
    kji = grid.kji(m.frame.to_lps(local)).reshape(-1, 3).T
    plane_hu = sample_at(ct.array(), kji, order=1, cval=-1000.0).reshape(a.shape)
    plane_label = sample_at(segmentation.array(), kji, order=0, cval=0).reshape(a.shape)
    extent = (0, 2 * GALLERY_HALF_WIDTH_MM, 0, 2 * GALLERY_HALF_HEIGHT_MM)
    axis_plot.imshow(bone_window(plane_hu), cmap="gray", origin="lower", extent=extent, vmin=0, vmax=1)
    decision = finding.decision if finding else Decision.NOT_ASSESSABLE
    colour = np.array(DECISION_COLORS_RGB[decision]) / 255.0
    axis_plot.contour(plane_label == m.level.verse_id, levels=[0.5], colors=[colour], linewidths=1.0,
                      origin="lower", extent=extent)
    if m.heights is not None:
        for line in m.heights.lines:
            ends = m.frame.to_local(np.array([line.inferior_lps_mm, line.superior_lps_mm]))
            axis_plot.plot(GALLERY_HALF_WIDTH_MM - ends[:, 1], GALLERY_HALF_HEIGHT_MM + ends[:, 2],
                           color=height_line_colour(m.heights.source), linewidth=1.2)
        if finding is not None and finding.genant_grade is not None:
            _expected_outline(axis_plot, m, finding)
    # y given: matplotlib then skips placing the title above tick labels (a hidden axis has none; 0.2 s a picture)
    caption, title_colour = qc_marked(_gallery_caption(m, finding), colour, verdict)
    axis_plot.set_title(caption, color=title_colour, fontsize=9, y=1.0)


def _expected_outline(axis_plot, m: VertebraMorphometry, finding) -> None:
    """The body as its undeformed neighbours say it should be: from the measured inferior
    endplate points, the expected anterior, middle and posterior heights, dashed."""
    expected = {"anterior": finding.height_anterior_expected_mm, "middle": finding.height_middle_expected_mm,
                "posterior": finding.height_posterior_expected_mm}
    lines = {line.name: line for line in m.heights.lines}
    if not all(np.isfinite(list(expected.values()))) or set(lines) != set(expected):
        return
    order = ("posterior", "middle", "anterior")
    bottoms = np.array([m.frame.to_local(np.array(lines[name].inferior_lps_mm)) for name in order])
    tops = bottoms + np.outer([expected[name] for name in order], [0.0, 0.0, 1.0])
    outline = np.vstack([bottoms[:1], tops, bottoms[-1:]])
    axis_plot.plot(GALLERY_HALF_WIDTH_MM - outline[:, 1], GALLERY_HALF_HEIGHT_MM + outline[:, 2],
                   color="yellow", linewidth=1.0, linestyle="--")


def _gallery_caption(m: VertebraMorphometry, finding) -> str:
    if finding is None:
        return m.level.name
    if finding.genant_grade is None:
        return f"{m.level.name}: not assessable"
    heights = (f"A {finding.height_anterior_mm:.0f} / M {finding.height_middle_mm:.0f} "
               f"/ P {finding.height_posterior_mm:.0f}")
    if height_line_colour(finding.height_source) == USER_HEIGHTS_COLOUR:
        heights += " (user's points)"
    grade = f"grade {finding.genant_grade}" + (f" {finding.genant_type.value}" if finding.genant_grade else "")
    score = f", p={finding.fracture_probability:.2f}" if finding.fracture_probability is not None else ""
    return f"{m.level.name}: {grade}, loss {finding.height_loss:.0%}{score}\n{heights}"
