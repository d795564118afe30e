"""The findings panel of the Slicer module: the findings text with a copy button, and the DICOM
export (SEG + SR TID 1500) of the classified segments, through the same core as ``spinefrac run``.

Mounted by the module widget in two lines (create it in ``setup``; ``showReport`` after Classify);
it needs Qt, so it is not part of the MRML logic tested on slicer-core.
"""

from __future__ import annotations

import ctk
import qt
import slicer

from SpineFractureDetectionLib.dicom_scene import export_from_scene, record_masks_corrected, source_series_folder
from SpineFractureDetectionLib.mrml_logic import labels_checksum



class FindingsPanel:
    """A collapsible section under the module's own widgets."""

    def __init__(self, layout, parameter_node_getter):
        self._parameter_node = parameter_node_getter
        self._classified_sha256 = None  # the segments the shown report describes
        self._report = None
        section = ctk.ctkCollapsibleButton()
        section.text = "Findings"
        form = qt.QVBoxLayout(section)
        self.textView = qt.QPlainTextEdit()
        self.textView.readOnly = True
        self.textView.placeholderText = "Classify to see the findings in words."
        form.addWidget(self.textView)
        buttons = qt.QHBoxLayout()
        self.copyButton = qt.QPushButton("Copy findings")
        self.copyButton.toolTip = "Copy the findings text to the clipboard (for the radiology report)"
        self.dicomButton = qt.QPushButton("Export DICOM SEG + SR...")
        self.dicomButton.toolTip = ("Write the level segments as a DICOM Segmentation and the results as a DICOM "
                                    "Structured Report (TID 1500), both referring to the CT's DICOM series")
        buttons.addWidget(self.copyButton)
        buttons.addWidget(self.dicomButton)
        form.addLayout(buttons)
        self.copyButton.connect("clicked(bool)", self.onCopy)
        self.dicomButton.connect("clicked(bool)", self.onExportDicom)
        layout.addWidget(section)
        self._update()

    def showReport(self, report, volume_node=None, segmentation_node=None):
        """Show a classified report's findings; says whether the segments were edited since the module wrote them."""
        if segmentation_node is not None:
            record_masks_corrected(report, segmentation_node, volume_node)
            self._classified_sha256 = labels_checksum(segmentation_node, volume_node)
        self._report = report
        self.textView.plainText = report.findings_text()
        self._update()

    def onCopy(self):
        qt.QApplication.clipboard().setText(self.textView.plainText)

    def onExportDicom(self):
        with slicer.util.tryWithErrorDisplay("DICOM export failed.", waitCursor=True):
            parameters = self._parameter_node()
            series_folder = source_series_folder(parameters.inputVolume)
            if series_folder is None:
                raise ValueError("DICOM export needs the CT's source DICOM series: load the CT from the DICOM "
                                 "database (DICOM module) so that its slices can be referred to")
            folder = qt.QFileDialog.getExistingDirectory(None, "Folder for the DICOM SEG and SR")
            if not folder:
                return
            ensure_highdicom()
            export = export_from_scene(self._report, parameters.inputVolume, parameters.segmentation,
                                       series_folder, folder, self._classified_sha256)
            slicer.util.showStatusMessage(f"Wrote {export['segmentation_file']} and "
                                          f"{export['structured_report_file']} in {folder}", 5000)

    def _update(self):
        self.copyButton.enabled = self._report is not None
        self.dicomButton.enabled = self._report is not None


def ensure_highdicom():
    """highdicom, installed on first use with the user's consent (never at import), and only where it can
    run beside the pydicom Slicer has loaded (dependencies.highdicom_plan); otherwise the reason."""
    from SpineFractureDetectionLib.dependencies import after_install, highdicom_plan

    plan = highdicom_plan()
    if plan.ready:
        return
    if not plan.install:
        raise RuntimeError(plan.message)
    if not slicer.util.confirmOkCancelDisplay(f"{plan.message}. Install it now (internet access required)?"):
        raise RuntimeError("highdicom is not installed: no DICOM export")
    slicer.util.pip_install(plan.install)
    after_install(highdicom_plan())
