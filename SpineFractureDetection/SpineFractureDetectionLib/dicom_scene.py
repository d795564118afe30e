"""Findings and DICOM export from the scene (no Qt, tested on slicer-core): whether the segments were
corrected by hand, where the CT's DICOM files are, and the SEG + SR written by the core's exporter.
"""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import slicer

from spinefrac.errors import InputError
from spinefrac.reporting.dicom_export import export_dicom_objects
from spinefrac.reporting.findings import MASKS_CORRECTED_KEY
from SpineFractureDetectionLib.mrml_logic import (
    CHECKSUM_ATTRIBUTE,
    ct_from_volume,
    has_unsaved_edits,
    segmentation_from_node,
)


def record_masks_corrected(report, segmentation_node, volume_node) -> None:
    """Tell the findings whether the segments were edited since the module wrote them (unknown, and not
    recorded, for segments the module did not write)."""
    if segmentation_node.GetAttribute(CHECKSUM_ATTRIBUTE) is not None:
        report.segmentation[MASKS_CORRECTED_KEY] = has_unsaved_edits(segmentation_node, volume_node)


def source_series_folder(volume_node):
    """The folder of the DICOM files a volume was loaded from (Slicer's DICOM database keeps one
    folder per series), or None for a volume not loaded from DICOM."""
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split() if volume_node else []
    database = getattr(slicer, "dicomDatabase", None)
    path = database.fileForInstance(uids[0]) if uids and database else ""
    return pathlib.Path(path).parent if path else None


def export_from_scene(report, volume_node, segmentation_node, series_folder, folder, classified_sha256=None):
    """The classified segments and their report as DICOM SEG + SR, by the core's exporter.
    ``classified_sha256`` (``mrml_logic.labels_checksum`` when the report was made): segments edited
    since then are refused, so that the SEG and the SR describe the same masks."""
    if report is None:
        raise InputError("Classify first: there is no report to export")
    ct = ct_from_volume(volume_node)
    segmentation = segmentation_from_node(segmentation_node, volume_node, ct)
    labels_sha256 = hashlib.sha256(np.ascontiguousarray(segmentation.array()).tobytes()).hexdigest()
    if classified_sha256 is not None and labels_sha256 != classified_sha256:
        raise InputError("the segments changed since they were classified: classify again, then export")
    return export_dicom_objects(ct, segmentation, report, series_folder, folder)
