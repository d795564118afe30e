"""Write a 3-D image as a DICOM CT series with pydicom, one CT Image Storage object per slice.

Built from the CT Image IOD (DICOM PS3.3 A.3): Patient, General Study, General Series, Frame of
Reference, General Equipment, General Image, Image Plane, Image Pixel, CT Image and SOP Common
modules, with the attributes of Type 1 and 2 those modules require. Slices are written in the
image's own k order; GDCM sorts them along the slice normal when reading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(image: sitk.Image, folder: Path, uids: dict[str, str] | None = None,
                    spacing_between_slices: str | None = None, positions_mm=None) -> list[Path]:
    """One file per slice; ``uids`` may fix study/series/frame-of-reference UIDs (else new ones);
    ``spacing_between_slices`` writes (0018,0088) as given (some scanners write it negative);
    ``positions_mm`` ([k] x 3, LPS) places slice k there instead of on the image's own grid."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid(), **(uids or {})}
    hu = sitk.GetArrayFromImage(image).astype(np.int16)  # [k, row, column]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = [*direction[:, 0], *direction[:, 1]]
    spacing = image.GetSpacing()
    paths = []
    for k in range(hu.shape[0]):
        ds = _slice_dataset(uids, k)
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        position = image.TransformIndexToPhysicalPoint((0, 0, k)) if positions_mm is None else positions_mm[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (between rows), column spacing
        ds.SliceThickness = f"{spacing[2]:.6f}"
        if spacing_between_slices is not None:
            ds.SpacingBetweenSlices = spacing_between_slices
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.PixelData = np.ascontiguousarray(hu[k]).tobytes()
        path = folder / f"CT{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_dataset(uids: dict[str, str], k: int) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Spine", "PHANTOM1", "", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = uids["study"], "20260101", "120000"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", uids["series"], 1
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["frame"], ""
    ds.Manufacturer = "spinefrac test phantom"
    ds.InstanceNumber = k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber, ds.KVP = 1, "120"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
    return ds
