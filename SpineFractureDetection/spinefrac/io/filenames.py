"""Every file name the project writes and reads back, in one place.

A run's output folder (``spinefrac run``, each case of ``spinefrac batch``, the Slicer module's
child process) holds the first six, findings.txt, points.mrk.json, heights.mrk.json and, for a DICOM source series, the two DICOM objects; evaluation, the module and batch summaries read them back
by these names.
"""

LABEL_MAP_FILE = "vertebrae.nii.gz"  # VerSe ids on the input CT's grid
BODY_LABEL_MAP_FILE = "vertebral_bodies.nii.gz"  # the bodies as isolated for the heights
REPORT_JSON_FILE = "report.json"
REPORT_CSV_FILE = "report.csv"
OVERVIEW_FILE = "overview.png"
GALLERY_FILE = "gallery.png"
FINDINGS_FILE = "findings.txt"  # the findings in words, as report.json's findings_text
DICOM_SEG_FILE = "vertebrae_seg.dcm"  # DICOM Segmentation on the source series (DICOM input only)
DICOM_SR_FILE = "measurements_sr.dcm"  # DICOM SR TID 1500 measurement report (DICOM input only)

BATCH_SUMMARY_JSON_FILE = "batch_summary.json"
BATCH_SUMMARY_CSV_FILE = "batch_summary.csv"
COHORT_CSV_FILE = "cohort.csv"  # a row per case and level: the report columns plus the case
COHORT_SUMMARY_JSON_FILE = "cohort_summary.json"
BATCH_LOCK_FILE = ".spinefrac-batch.lock"  # in a batch output folder while a batch writes it: the pid
EVALUATION_JSON_FILE = "evaluation.json"
EVALUATION_CSV_FILE = "evaluation.csv"

# Model packages (segmentation and classifier): a manifest naming the network and pinning the weights.
MODEL_MANIFEST_FILE = "manifest.json"
MODEL_WEIGHTS_FILE = "weights.pt"
TRAINING_CHECKPOINT_FILE = "checkpoint.pt"

# Vertebra points (one per vertebral body, Slicer markups point list, LPS mm): the points a guided run used
# or found, to check and correct in Slicer.
POINTS_FILE = "points.mrk.json"
# Genant's six points per measured level (Slicer markups point list, LPS mm: '<level> anterior superior', ...), each
# pair the reported height apart: to see and move in Slicer, and to give back with spinefrac run --heights.
HEIGHTS_FILE = "heights.mrk.json"
