"""Guided segmentation: one point per vertebral body gives each vertebra's whole mask.

The points replace what the offline engine must guess: where the spine runs (the axis follows the
body centres near a curve through the points), how many vertebrae there are and where each one
lies (exactly one disc between two consecutive points), and, with one named point, which level
each is (counted by order from it; without one, from the anatomical landmarks as the offline engine
counts, with the confidence that implies). The voxels are then labelled by the offline engine's own
steps: bone in each vertebra's envelope, the borders along the discs found between the bodies,
posterior elements parted at the facet joints, ribs, pelvis and contrast-filled vessels left out.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.images import CtVolume
from spinefrac.io.points import VertebraPoint
from spinefrac.levels import LEVEL_BY_ID, SACRUM, Level
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import (
    LabelConvention,
    LevelIdentification,
    SegmentationEngine,
    VertebraSegmentation,
    label_image_on,
    labelled_box,
)
from spinefrac.segmentation.guided.naming import name_points, order_craniocaudal
from spinefrac.segmentation.guided.spine_from_points import (
    SACRUM_REACH_MM,
    PointOnAxis,
    arc_at,
    axis_through_points,
    segments_from_points,
)
from spinefrac.segmentation.offline.axis import (
    CROP_ANTERIOR_MM,
    CROP_LATERAL_MM,
    CROP_POSTERIOR_MM,
    WORK_SPACING_MM,
    WorkGrid,
    block_mean,
    local_coordinates,
)
from spinefrac.segmentation.offline.bone import bone_mask
from spinefrac.segmentation.offline.canal import canal_mask
from spinefrac.segmentation.offline.disc_surfaces import disc_surface_labels
from spinefrac.segmentation.offline.identification import identify_levels
from spinefrac.segmentation.offline.labelling import (
    assign_levels,
    levels_with_metal,
    native_labels,
    refine_boundaries,
    vessel_mask,
)

ABOVE_TOP_POINT_MM = 50.0  # room for the top vertebra's upper half and the disc above it
MAX_DISTANCE_FROM_BONE_MM = 5.0  # a point this far from any bone is not in a vertebral body
EDGE_MARGIN_VOXELS = 4  # the edge threshold's smoothing reaches this far
# The disc's surface is looked for this close to the disc found between the points (a fraction of the
# segment): the points fix which disc it is, and farther off a bright endplate band can pass for one.
DISC_SEARCH_FRACTION = 0.3


class GuidedEngine(SegmentationEngine):
    """Vertebra masks and names from one point per vertebral body."""

    name = "guided (one point per vertebra)"

    def __init__(self, points: list[VertebraPoint], source: str = "vertebra points"):
        if not points:
            raise InputError(f"{source}: no points: place one point in each vertebral body")
        self.points = order_craniocaudal(points)
        self.source = source
        self.levels = name_points(self.points)  # None: no point is named

    def segment(self, ct: CtVolume, progress: Progress = silent) -> VertebraSegmentation:
        hu = ct.array()
        spacing = np.array(ct.image.GetSpacing()[::-1], dtype=float)
        index_kji = np.array([_index_kji(ct.image, p) for p in self.points])
        progress(0.1, "extracting bone around the points")
        start, stop = _crop_box(index_kji, spacing, hu.shape, sacrum_below=self._sacrum_possible())
        work = block_mean(hu, spacing, WORK_SPACING_MM, start, stop)
        points_mm = (index_kji - work.start + 0.5) * spacing
        bone = bone_mask(work.values, work.spacing_mm)
        _require_in_bone(self.points, points_mm, bone, work.spacing_mm)
        canal = canal_mask(work.values, work.spacing_mm)
        progress(0.3, "following the spine through the points")
        axis = axis_through_points(work, bone, canal, points_mm)
        caudal_first = list(reversed(range(len(self.points))))
        arcs_mm = arc_at(axis, points_mm[caudal_first])
        on_axis = [PointOnAxis(self.points[n].label, float(a)) for n, a in zip(caudal_first, arcs_mm)]
        progress(0.45, "finding the disc between each two points")
        named_sacrum = self.levels is not None and self.levels[-1] is SACRUM
        segments = segments_from_points(work, axis, on_axis, sacrum_at_bottom=named_sacrum)
        lateral_mm, anterior_mm, arc_mm = local_coordinates(work, bone, axis)
        identification = self._name_segments(segments, lateral_mm, anterior_mm, arc_mm, work, axis, arcs_mm)
        progress(0.6, "labelling vertebrae")
        labels = _label_voxels(hu, spacing, work, axis, segments, bone, canal, (lateral_mm, anterior_mm, arc_mm))
        return self._result(ct, hu, labels, identification, progress)

    def _sacrum_possible(self) -> bool:
        return self.levels is None or self.levels[-1] is SACRUM

    def _name_segments(self, segments, lateral_mm, anterior_mm, arc_mm, work: WorkGrid, axis,
                       arcs_mm: np.ndarray) -> LevelIdentification:
        if self.levels is not None:
            for segment, level in zip(segments, reversed(self.levels)):
                segment.verse_id = level.verse_id
            return _named_identification(self.points, self.levels)
        identification = identify_levels(segments, lateral_mm, anterior_mm, arc_mm, float(np.prod(work.spacing_mm)))
        if segments[0].verse_id == SACRUM.verse_id and not segments[0].cut_below:  # the sacrum reaches further down
            segments[0].low_mm = max(float(arcs_mm[0]) - SACRUM_REACH_MM, float(axis.arc_mm[0]))
            segments[0].cut_below = segments[0].low_mm <= axis.arc_mm[0]
        return LevelIdentification(identification.anchors, identification.confidence,
                                   "no point named: " + identification.summary + "; name one point you are sure of "
                                   "to fix the numbering")

    def _result(self, ct: CtVolume, hu: np.ndarray, labels: np.ndarray, identification: LevelIdentification,
                progress: Progress) -> VertebraSegmentation:
        image, present_ids = label_image_on(labels, ct.image)
        found = [LEVEL_BY_ID[v].name for v in sorted(present_ids, key=lambda v: LEVEL_BY_ID[v].craniocaudal_rank)]
        progress(1.0, f"{len(found)} levels labelled from {len(self.points)} points ({', '.join(found)})")
        notes = [f"guided by {len(self.points)} vertebra points ({self.source})", identification.summary]
        missing = [level.name for level in self.levels or [] if level.verse_id not in present_ids]
        if missing:
            notes.append(f"no bone labelled at {', '.join(missing)}")
        metal = levels_with_metal(hu, labels, present_ids)
        if metal:
            notes.append(f"metal in {', '.join(metal)}: the masks there follow the implant and its streaks as well")
        return VertebraSegmentation(
            label_map=image, engine=self.name, source=f"guided segmentation from {self.source}",
            convention=LabelConvention.VERSE, notes=notes, masks_fit_for_density=False, grading_needs_clean_qc=True,
            identification=identification,
        )


def _index_kji(image: sitk.Image, point: VertebraPoint) -> np.ndarray:
    """The point's continuous voxel index (k, j, i) on the CT's grid; outside the image is an error."""
    index_ijk = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in point.position_lps_mm]))
    size = np.array(image.GetSize())
    if np.any(index_ijk < -0.5) or np.any(index_ijk > size - 0.5):
        raise InputError(f"point '{point.label}' at {_lps_text(point)} lies outside the CT "
                         "(points are read as LPS mm: check the file's coordinate system)")
    return index_ijk[::-1]


def _lps_text(point: VertebraPoint) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in point.position_lps_mm) + ") LPS mm"


def _crop_box(index_kji: np.ndarray, spacing: np.ndarray, shape: tuple[int, ...],
              sacrum_below: bool) -> tuple[np.ndarray, np.ndarray]:
    """Native index box around the points with room for the end vertebrae (the sacrum's length below
    when the lowest point may be S1), posterior elements and transverse processes."""
    below_mm = SACRUM_REACH_MM + 10.0 if sacrum_below else ABOVE_TOP_POINT_MM
    low_mm = index_kji.min(axis=0) * spacing - np.array([below_mm, CROP_ANTERIOR_MM, CROP_LATERAL_MM])
    high_mm = index_kji.max(axis=0) * spacing + np.array([ABOVE_TOP_POINT_MM, CROP_POSTERIOR_MM, CROP_LATERAL_MM])
    start = np.clip(np.floor(low_mm / spacing).astype(int), 0, shape)
    stop = np.clip(np.ceil(high_mm / spacing).astype(int) + 1, 0, shape)
    return start, stop


def _require_in_bone(points: list[VertebraPoint], points_mm: np.ndarray, bone: np.ndarray,
                     spacing_mm: np.ndarray) -> None:
    """Every point within a few mm of bone: a point in soft tissue or air is not in a vertebral body."""
    reach = np.ceil(MAX_DISTANCE_FROM_BONE_MM / spacing_mm).astype(int)
    for point, where_mm in zip(points, points_mm):
        centre = np.floor(where_mm / spacing_mm).astype(int)
        low, high = np.clip(centre - reach, 0, bone.shape), np.clip(centre + reach + 1, 0, bone.shape)
        box = bone[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
        offsets_mm = (np.argwhere(box) + low + 0.5) * spacing_mm - where_mm
        if offsets_mm.size == 0 or np.linalg.norm(offsets_mm, axis=1).min() > MAX_DISTANCE_FROM_BONE_MM:
            raise InputError(f"point '{point.label}' at {_lps_text(point)} is not on bone (none within "
                             f"{MAX_DISTANCE_FROM_BONE_MM:.0f} mm): place it inside the vertebral body")


def _label_voxels(hu: np.ndarray, spacing: np.ndarray, work: WorkGrid, axis, segments, bone: np.ndarray,
                  canal: np.ndarray, coordinates: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """The offline engine's labelling steps on the segments the points gave: native-grid labels."""
    lateral_mm, anterior_mm, arc_mm = coordinates
    vessels = vessel_mask(work, bone, lateral_mm, anterior_mm, [s.length_mm for s in segments])
    work_labels = assign_levels(segments, bone, lateral_mm, anterior_mm, arc_mm)
    work_labels[vessels] = 0
    work_labels, in_bodies = disc_surface_labels(work, axis, segments, work_labels, canal, DISC_SEARCH_FRACTION)
    work_labels = refine_boundaries(work, segments, bone, work_labels, arc_mm, in_bodies)
    # The half-maximum edge only where there are labels (with a margin for the smoothing): a tenth of the crop.
    box = tuple(slice(max(b.start - EDGE_MARGIN_VOXELS, 0), b.stop + EDGE_MARGIN_VOXELS) for b in labelled_box(work_labels))
    work_labels[box][~bone_mask(work.values[box], work.spacing_mm, edge=True)] = 0
    return native_labels(hu, spacing, work, work_labels, vessels)


def _named_identification(points: list[VertebraPoint], levels: list[Level]) -> LevelIdentification:
    named = [f"'{p.label}' ({p.level.name})" for p in points if p.level is not None]
    return LevelIdentification(
        tuple(f"the named point {text}" for text in named), "high",
        f"levels named from the clinician's point{'s' if len(named) > 1 else ''} {', '.join(named)}, the others "
        f"counted by their order ({levels[0].name} to {levels[-1].name})")

