"""DICOM output of a run: the vertebra labels as a DICOM SEG and the per-level results as a DICOM SR
(TID 1500), both referring to the source CT series, for the archive (PACS).

Only a DICOM source can be referred to: the input folder itself, or, for a CT given as a file,
the series folder named with ``--dicom-series``. Without one the run still writes everything
else and says in one line why no DICOM object was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.dicom_series import SourceSeries, missing_identifiers, on_series_grid, read_source_series
from spinefrac.io.filenames import DICOM_SEG_FILE, DICOM_SR_FILE
from spinefrac.io.images import CtVolume
from spinefrac.levels import LEVEL_BY_ID
from spinefrac.segmentation.base import VertebraSegmentation

DICOM_SERIES_FORMAT = "DICOM series"
SOURCE_OPTION = "--dicom-series"
NO_SOURCE_NOTE = (f"DICOM export needs the source DICOM series: the CT was given as a {{format}} file; name its "
                  f"series folder with {SOURCE_OPTION} FOLDER to also write a DICOM SEG and SR")
HIGHDICOM_MISSING = "DICOM export needs highdicom (pip install 'spinefrac[dicom]')"


@dataclass
class DicomExportPlan:
    """The series the DICOM objects will refer to, or why there will be none."""

    series: SourceSeries | None
    reason: str = ""


def plan_dicom_export(ct: CtVolume, dicom_series: Path | str | None = None) -> DicomExportPlan:
    """Checked before segmentation: a series named by the user that cannot be used is an InputError;
    a DICOM input that cannot be referred to (e.g. anonymised without UIDs) only gets a reason."""
    explicit = dicom_series is not None
    folder = Path(dicom_series) if explicit else (ct.source_path if ct.source_format == DICOM_SERIES_FORMAT else None)
    if folder is None:
        return DicomExportPlan(None, NO_SOURCE_NOTE.format(format=ct.source_format))
    what = SOURCE_OPTION if explicit else "source DICOM series"
    try:
        _require_highdicom()
        series = read_source_series(folder, what)
        missing = missing_identifiers(series)
        if missing:
            raise InputError(f"{what} {folder} lacks {', '.join(missing)} on some slices (anonymised?): "
                             "DICOM objects cannot refer to it")
        on_series_grid(_grid_only(ct), series, what)
    except InputError as error:
        if explicit:
            raise
        return DicomExportPlan(None, f"no DICOM SEG/SR written: {error}")
    return DicomExportPlan(series)


def write_dicom_objects(plan: DicomExportPlan, segmentation: VertebraSegmentation, report, folder: Path) -> dict:
    """Write the SEG and SR into ``folder``; returns what report.json says about them."""
    if plan.series is None:
        return {"written": False, "reason": plan.reason}
    from spinefrac.reporting.dicom_seg import build_segmentation, missing_slice_thickness
    from spinefrac.reporting.dicom_sr import build_measurement_report

    labels = on_series_grid(segmentation.label_map, plan.series, "source DICOM series")
    try:
        seg, numbers = build_segmentation(plan.series, labels, report.segmentation)
        by_name = {LEVEL_BY_ID[verse_id].name: number for verse_id, number in numbers.items()}
        sr = build_measurement_report(plan.series, seg, by_name, report.to_dict())
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # highdicom reads many attributes of the source headers; one it cannot use costs the DICOM objects,
        # never the results, which do not depend on them.
        reason = f"no DICOM SEG/SR written: highdicom cannot build them from the source series ({error})"
        report.notes.append(reason)
        return {"written": False, "reason": reason}
    seg.save_as(folder / DICOM_SEG_FILE)
    sr.save_as(folder / DICOM_SR_FILE)
    thickness = ([f"the source series has no SliceThickness (0018,0050): the SEG's slices are given the distance "
                  f"between their positions, {plan.series.grid.spacing_mm[2]:.3g} mm"]
                 if any(missing_slice_thickness(ds) for ds in plan.series.datasets) else [])
    report.notes += thickness
    return {
        "written": True,
        "segmentation_file": DICOM_SEG_FILE,
        "structured_report_file": DICOM_SR_FILE,
        "source_series_instance_uid": plan.series.series_uid,
        "source_series_folder": str(plan.series.folder),
        "segmentation_sop_instance_uid": str(seg.SOPInstanceUID),
        "structured_report_sop_instance_uid": str(sr.SOPInstanceUID),
        "segment_numbers": by_name,
        "method": "DICOM Segmentation (binary, one segment per level, SNOMED CT codes) and Comprehensive 3D SR "
                  "TID 1500 measurement report, written with highdicom; frames on the source series' slices",
        "notes": thickness,
    }


def export_dicom_objects(ct: CtVolume, segmentation: VertebraSegmentation, report, series_folder: Path | str,
                         folder: Path | str) -> dict:
    """The same SEG and SR for a caller outside a run (the Slicer module): written into a hidden folder
    inside ``folder`` and moved into place, so a failure leaves no half-written object."""
    import tempfile

    plan = plan_dicom_export(ct, series_folder)
    folder = Path(folder)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".spinefrac-dicom-") as work:
        export = write_dicom_objects(plan, segmentation, report, Path(work))
        for name in (DICOM_SEG_FILE, DICOM_SR_FILE):
            (Path(work) / name).replace(folder / name)
    return export


def _require_highdicom() -> None:
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise InputError(HIGHDICOM_MISSING) from None


def _grid_only(ct: CtVolume) -> sitk.Image:
    """An image of one byte per voxel on the CT's grid, to check the series' geometry cheaply."""
    return ct.grid.apply_to(sitk.Image(ct.grid.size, sitk.sitkUInt8))
