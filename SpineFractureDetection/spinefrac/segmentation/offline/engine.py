"""Offline classical vertebra segmentation: no trained weights, only thresholds and anatomy.

Steps, all in physical millimetres (one module each: axis, bone, discs, labelling,
identification) so that 0.7-5 mm voxels behave alike:
  1. a coarse (about 4 mm) copy of the CT; the spine axis is tracked through it by dynamic
     programming over axial slices (compact bone mass near the body's left-right middle,
     moving smoothly from slice to slice), which ignores the table, ribs and pelvis;
  2. a working copy (about 1.2-1.6 mm) cropped around the axis; bone = lightly smoothed HU
     above a threshold, with the marrow inside each axial cortical ring filled in;
  3. the axis is refined to the vertebral body centres, and the mean HU on small disks
     perpendicular to it gives a profile whose low-HU dips are the intervertebral discs; a
     segment much longer than the shorter of its neighbours is cut at its best endplate-flanked
     dips (thin discs vanish in partial volume at 3 mm, several in a row in the neck); where
     the marrow is fatty and thin discs merge with their endplates into bands brighter than the
     bodies, the dips are the bodies' middles and the discs are read from the bands instead
     (endplate_bands.py);
     a column counts as the spine only with a spinal canal (soft tissue enclosed by bone in its
     plane) just behind the axis in enough of its segments: a contrast-filled aorta or heart,
     however bright and however parted, has none (canal.py);
  4. every bone voxel takes the disc-bounded slab of its nearest axis point (cut planes
     perpendicular to the spine), limited to a vertebra-sized envelope around the axis so
     that ribs and iliac bones fall away; bone near a cut is then re-assigned to the level it
     is most cheaply joined to through dense bone (so facet joints, not planes, part the
     posterior elements), the partial-volume shell outside the half-maximum edge is dropped,
     marrow enclosed by each level's cortex is filled in, and unconnected fragments go;
  5. levels are counted from landmarks: the sacrum (upwards), the atlas at the top of a spine
     that ends in view (downwards), the last and the first rib-bearing vertebra (T12, T1); each
     level from its nearest landmark, and the note and ``LevelIdentification`` say which were
     used, whether they agree, and when none is in view that the levels are uncertain.
"""

from __future__ import annotations

import numpy as np

from spinefrac.errors import InputError
from spinefrac.hounsfield import METAL_HU
from spinefrac.io.images import CtVolume
from spinefrac.levels import LEVEL_BY_ID
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import LabelConvention, SegmentationEngine, VertebraSegmentation, label_image_on
from spinefrac.segmentation.offline.axis import (
    COARSE_SPACING_MM,
    WORK_SPACING_MM,
    block_mean,
    crop_box,
    local_coordinates,
    refine_axis,
    track_axis_coarse,
)
from spinefrac.segmentation.offline.bone import bone_mask
from spinefrac.segmentation.offline.canal import canal_mask, require_canal, segments_with_canal
from spinefrac.segmentation.offline.disc_surfaces import disc_surface_labels
from spinefrac.segmentation.offline.discs import find_segments, mark_field_of_view_cuts, mark_lateral_view
from spinefrac.segmentation.offline.identification import identify_levels
from spinefrac.segmentation.offline.labelling import (
    assign_levels,
    levels_with_metal,
    native_labels,
    refine_boundaries,
    segment_index,
    vessel_mask,
)


class OfflineEngine(SegmentationEngine):
    """Classical vertebra segmentation for machines without a trained model."""

    name = "offline classical"

    def __init__(self, fallback_reason: str = ""):
        self.fallback_reason = fallback_reason  # why a requested learned model is not used instead

    def segment(self, ct: CtVolume, progress: Progress = silent) -> VertebraSegmentation:
        hu = ct.array()
        spacing = np.array(ct.image.GetSpacing()[::-1], dtype=float)
        progress(0.05, "tracking the spine axis")
        coarse = block_mean(hu, spacing, COARSE_SPACING_MM, np.zeros(3, int), np.array(hu.shape))
        coarse_path_mm, spine_slices = track_axis_coarse(coarse)
        progress(0.25, "extracting bone around the spine")
        crop_start, crop_stop = crop_box(coarse, coarse_path_mm, spine_slices, spacing, hu.shape)
        work = block_mean(hu, spacing, WORK_SPACING_MM, crop_start, crop_stop)
        bone = bone_mask(work.values, work.spacing_mm)
        canal = canal_mask(work.values, work.spacing_mm)
        axis = refine_axis(work, bone, coarse, coarse_path_mm, spine_slices, canal)
        progress(0.45, "finding intervertebral discs")
        segments = find_segments(work, axis, bone)
        native_k_mm = spacing[0]  # working-grid k mm of the image's faces: the grid starts at work.start
        mark_field_of_view_cuts(segments, axis, -work.start[0] * native_k_mm, (hu.shape[0] - work.start[0]) * native_k_mm)
        native_i_mm = spacing[2]
        mark_lateral_view(segments, axis, -work.start[2] * native_i_mm, (hu.shape[2] - work.start[2]) * native_i_mm)
        if len(segments) < 3:
            raise InputError("no spine found in the CT: no sequence of vertebrae separated by discs "
                             "along the bone column (is the spine in the field of view?)")
        progress(0.55, "checking for the spinal canal")
        require_canal(_segments_with_canal(work, canal, axis, segments))
        progress(0.6, "identifying levels")
        lateral_mm, anterior_mm, arc_mm = local_coordinates(work, bone, axis)
        identification = identify_levels(segments, lateral_mm, anterior_mm, arc_mm, float(np.prod(work.spacing_mm)))
        progress(0.75, "labelling vertebrae")
        vessels = vessel_mask(work, bone, lateral_mm, anterior_mm, [s.length_mm for s in segments])
        work_labels = assign_levels(segments, bone, lateral_mm, anterior_mm, arc_mm)
        work_labels[vessels] = 0
        work_labels, in_bodies = disc_surface_labels(work, axis, segments, work_labels, canal)
        work_labels = refine_boundaries(work, segments, bone, work_labels, arc_mm, in_bodies)
        work_labels[~bone_mask(work.values, work.spacing_mm, edge=True)] = 0
        labels = native_labels(hu, spacing, work, work_labels, vessels)
        image, present_ids = label_image_on(labels, ct.image)
        found = [LEVEL_BY_ID[verse_id].name for verse_id in reversed(present_ids)]
        progress(1.0, f"{len(found)} levels labelled ({', '.join(found)})")
        notes = ([f"learned model unavailable ({self.fallback_reason}): offline engine used"]
                 if self.fallback_reason else [])
        notes.append(identification.summary)
        metal = levels_with_metal(hu, labels, present_ids)
        if metal:
            notes.append(f"metal (>= {METAL_HU:.0f} HU) in {', '.join(metal)}: the masks there follow the implant "
                         "and its streaks as well as the bone")
        return VertebraSegmentation(
            label_map=image, engine=self.name, source="offline classical segmentation (no trained model)",
            convention=LabelConvention.VERSE, notes=notes, masks_fit_for_density=False, grading_needs_clean_qc=True,
            identification=identification,
        )


def _segments_with_canal(work, canal, axis, segments) -> np.ndarray:
    lateral_mm, anterior_mm, arc_mm = local_coordinates(work, canal, axis)
    return segments_with_canal(canal, float(np.prod(work.spacing_mm)), segment_index(segments, arc_mm),
                               lateral_mm, anterior_mm, len(segments))
