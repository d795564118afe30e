"""SpineFractureDetection: label, correct and measure every vertebra of a CT in 3D Slicer.

Module, Widget, Logic and Test in the structure of Slicer's ScriptedLoadableModule template.
The Widget only connects GUI to parameters; the Logic wraps the MRML logic of
SpineFractureDetectionLib.mrml_logic, which wraps the ``spinefrac`` core.
"""

import logging
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


logger = logging.getLogger(__name__)

# Packages the core needs beyond what Slicer ships, at tested versions; installed on first use
# with the user's consent (never at import). Slicer bundles scipy: it is only checked, and never
# pinned (a pip pin would replace Slicer's own build). torch comes from the PyTorch extension
# (PyTorchUtils, in EXTENSION_DEPENDS) so that its CUDA build matches the machine, at the version
# the pinned MONAI requires (its package metadata: torch>=2.8.0).
PIP_REQUIREMENTS = {"scipy": "scipy", "matplotlib": "matplotlib==3.11.2"}
LEARNED_PIP_REQUIREMENTS = {"monai": "monai==1.6.1", "nibabel": "nibabel==5.4.2"}
TORCH_REQUIREMENT = ">=2.8.0"
SUPPORTED_SLICER = "3D Slicer 5.10 and 5.12"


class SpineFractureDetection(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Spine Fracture Detection"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups"]  # Markups: its point list widget
        self.parent.contributors = ["SpineFractureDetection developers"]
        self.parent.helpText = (
            "Labels, measures and grades every vertebra of a CT. Select a CT and a segmentation whose "
            "segments are named after levels (C1..L5, T13, L6, sacrum; TotalSegmentator's vertebrae_* names "
            "work too), correct the masks in Segment Editor, then Classify: each level turns red (fractured, "
            "Genant grade 1-3), green (normal) or grey (not assessable, with the reason), and the table lists "
            "heights (mm), ratios, grade, type, trabecular HU and the reason. Click a row to centre the views "
            "on that vertebra. Every column carries its unit and description. Vertebra points: place one point "
            "per vertebral body, name one (its label, e.g. L1) and Segment from points; every run fills the "
            "points with the levels it found. 'This segment is' renames the levels by counting from the "
            "selected segment. "
            f"Supported: {SUPPORTED_SLICER}."
        )
        self.parent.acknowledgementText = (
            "Sample data: TotalSegmentator example CT (Wasserthal et al., Radiology: AI 2023; CC BY 4.0). "
            "Level conventions: VerSe challenge (Sekuboyina et al., Med Image Anal 2021)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)
        slicer.app.connect("startupCompleted()", loadVertebraTerminology)


def loadVertebraTerminology():
    """Load the vertebra SNOMED CT codes the segments carry into Slicer's terminologies (once)."""
    from SpineFractureDetectionLib.terminology import load_terminology

    terminologies = getattr(slicer.modules, "terminologies", None)
    if terminologies is None:
        logger.warning("SpineFractureDetection: the Terminologies module is not loaded; segment codes stay unlisted")
        return None
    return load_terminology(terminologies.logic())


# Bundled with the module (Resources/SampleData), registered with the Sample Data module.
# The vertebra label map beside it is for the command line and the tests: loaded in Slicer its
# segments would be named after label values, not levels.
SAMPLE_FILES = {
    "SpineFractureDetectionCT": ("ts-example-ct.nii.gz",
                                 "SHA256:dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"),
}


def registerSampleData():
    """The lumbar CT and its vertebra labels, from the module's own resources, checksum-verified."""
    import pathlib

    import SampleData

    folder = pathlib.Path(__file__).parent / "Resources" / "SampleData"
    for nodeName, (fileName, checksum) in SAMPLE_FILES.items():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="SpineFractureDetection",
            sampleName=nodeName,
            thumbnailFileName=str(pathlib.Path(__file__).parent / "Resources" / "Icons" / "SpineFractureDetection.png"),
            uris=(folder / fileName).as_uri(),
            fileNames=fileName,
            nodeNames=nodeName,
            checksums=checksum,
            loadFileType="VolumeFile",
        )


@parameterNodeWrapper
class SpineFractureDetectionParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    measurementTable: vtkMRMLTableNode
    vertebraPoints: vtkMRMLMarkupsFiducialNode
    fractureThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    engine: Annotated[str, Choice(["auto", "offline", "monai"])] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


class SpineFractureDetectionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpineFractureDetection.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpineFractureDetectionLogic()
        from SpineFractureDetectionLib.models_panel import ModelsPanel  # registry models: list, download

        self.modelsPanel = ModelsPanel(self.layout)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.classifyButton.connect("clicked(bool)", self.onClassifyButton)
        self.ui.correctButton.connect("clicked(bool)", self.onCorrectButton)
        self.ui.shiftUpButton.connect("clicked(bool)", lambda: self.onShiftLevels(-1))
        self.ui.shiftDownButton.connect("clicked(bool)", lambda: self.onShiftLevels(+1))
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.segmentFromPointsButton.connect("clicked(bool)", self.onSegmentFromPointsButton)
        self.ui.renameSegmentButton.connect("clicked(bool)", self.onRenameSegmentButton)
        from SpineFractureDetectionLib.points_logic import LEVEL_CHOICES, POINTS_NODE_NAME

        self.ui.levelSelector.addItems(list(LEVEL_CHOICES))
        self.ui.levelSelector.setCurrentIndex(LEVEL_CHOICES.index("L1"))
        self.ui.pointsWidget.setNodeBaseName(POINTS_NODE_NAME)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.cancelButton.enabled = False
        self._segmentationRun = None
        self.ui.tableView.connect("clicked(QModelIndex)", self.onTableClicked)
        self._lastReport = None
        from SpineFractureDetectionLib.findings_panel import FindingsPanel  # findings text, copy, DICOM export

        self.findingsPanel = FindingsPanel(self.layout, lambda: self._parameterNode)
        self.initializeParameterNode()

    def cleanup(self):
        self.onCancelButton()  # a closing module or application leaves no child process behind
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event):
        self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None):
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._parameterNode.segmentation)
        running = self._segmentationRun is not None
        for button in (self.ui.classifyButton, self.ui.correctButton, self.ui.shiftUpButton, self.ui.shiftDownButton,
                       self.ui.renameSegmentButton):
            button.enabled = ready and not running
        self.ui.segmentButton.enabled = bool(self._parameterNode and self._parameterNode.inputVolume) and not running
        self.ui.segmentFromPointsButton.enabled = self.ui.segmentButton.enabled
        self.ui.segmentsTable.setSegmentationNode(self._parameterNode.segmentation if self._parameterNode else None)
        self.ui.cancelButton.enabled = running
        self.ui.exportButton.enabled = self._lastReport is not None
        self.ui.classifyButton.toolTip = ("Grade every level segment (Genant) and colour it: red fractured, "
                                          "green normal, grey not assessable" if ready
                                          else "Select a CT and a segmentation")

    def onCorrectButton(self):
        """Open Segment Editor on this segmentation and CT, so masks can be corrected."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(self._parameterNode.segmentation)
        editor.setSourceVolumeNode(self._parameterNode.inputVolume)

    def onClassifyButton(self):
        with slicer.util.tryWithErrorDisplay("Classifying the vertebrae failed.", waitCursor=True):
            self.logic.ensureDependencies()
            if not self._parameterNode.measurementTable:
                self._parameterNode.measurementTable = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLTableNode", "Vertebra findings")
            report = self.logic.classify(self._parameterNode.inputVolume, self._parameterNode.segmentation,
                                         self._parameterNode.measurementTable, self._parameterNode.fractureThreshold)
            self._lastReport = report
            self.findingsPanel.showReport(report, self._parameterNode.inputVolume, self._parameterNode.segmentation)
            self.ui.tableView.setMRMLTableNode(self._parameterNode.measurementTable)
            fractured = [row["level"] for row in report.rows if row.get("decision") == "fractured"]
            summary = f"{len(report.rows)} levels; fractured: {', '.join(fractured) or 'none'}."
            notes = "; ".join(report.notes)
            self.ui.statusLabel.text = summary + (f" {notes}" if notes else "")
            self._updateButtons()

    def onSegmentButton(self):
        with slicer.util.tryWithErrorDisplay("Segmentation could not start.", waitCursor=True):
            self.startSegmentation(fromPoints=False)

    def onSegmentFromPointsButton(self):
        with slicer.util.tryWithErrorDisplay("Segmentation could not start.", waitCursor=True):
            self.startSegmentation(fromPoints=True)

    def startSegmentation(self, fromPoints):
        """Segment in a child process (from the vertebra points with fromPoints); progress from its stage
        lines; Cancel kills it. Either run fills the point list with the levels it found. Raises what
        stops the start (the buttons show it; the self-test calls this directly, without a dialog)."""
        from SpineFractureDetectionLib.points_logic import new_points_node
        from SpineFractureDetectionLib.run_start import (CONFIRM, NEW, check_ct_before_run, learned_model_may_run,
                                                         run_target)

        volume = self._parameterNode.inputVolume
        check_ct_before_run(volume)  # a CT under a transform is refused now, not after the whole run
        target = run_target(self._parameterNode.segmentation, volume)
        if target.action == CONFIRM and not slicer.util.confirmYesNoDisplay(target.question):
            return
        if target.action == NEW:  # never into another tool's segmentation
            self._parameterNode.segmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{volume.GetName()} vertebrae")
            self.ui.statusLabel.text = target.reason
        if not self._parameterNode.vertebraPoints:
            self._parameterNode.vertebraPoints = new_points_node(slicer.mrmlScene, volume)
        segmentation, overwrite = self._parameterNode.segmentation, target.action == CONFIRM
        self.logic.ensureDependencies()
        engine = self._parameterNode.engine  # with points, auto runs the guided engine (no model)
        if learned_model_may_run(engine, self._parameterNode.device, fromPoints):
            self.logic.ensureLearnedDependencies()
        self.ui.progressBar.value = 0
        try:  # a child that cannot start raises here: no run is recorded, the buttons come back
            self._segmentationRun = self.logic.startSegmentation(
                volume, segmentation, engine, self._parameterNode.device,
                onProgress=self._onSegmentationProgress, onFinished=self._onSegmentationFinished,
                overwriteEdits=overwrite, pointsNode=self._parameterNode.vertebraPoints, fromPoints=fromPoints)
        finally:
            self._updateButtons()

    def onRenameSegmentButton(self):
        """'This segment is ...': the selected segment named, the other level segments counted from it."""
        with slicer.util.tryWithErrorDisplay("Renaming the levels failed."):
            selected = self.ui.segmentsTable.selectedSegmentIDs()
            if len(selected) != 1:
                raise ValueError("Select one segment in the table, then choose its level")
            renamed = self.logic.renameSegmentAs(self._parameterNode.segmentation, selected[0],
                                                 self.ui.levelSelector.currentText, self._parameterNode.inputVolume)
            changes = ", ".join(f"{a} to {b}" for a, b in renamed.items())
            self.ui.statusLabel.text = (f"Renamed {changes}. Classify again: the findings were for the old names."
                                        if renamed else "Every segment already had that name.")

    def onCancelButton(self):
        """End the child's whole process tree (launcher, Python, workers); finished() follows."""
        if getattr(self, "_segmentationRun", None) is not None:
            self._segmentationRun.cancel()

    def _onSegmentationProgress(self, fraction, message):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message

    def _onSegmentationFinished(self, error):
        from SpineFractureDetectionLib.process import CANCELLED

        self._segmentationRun = None
        self.ui.progressBar.value = 0 if error else 100
        if error == CANCELLED:
            self.ui.statusLabel.text = "Segmentation cancelled; the scene is unchanged."
        elif error:
            slicer.util.errorDisplay(error)
        else:
            self.ui.statusLabel.text = ("Segmented; the vertebra points show the levels found. Correct the masks "
                                        "or the points if needed, then Classify.")
        self._updateButtons()

    def onShiftLevels(self, offset):
        with slicer.util.tryWithErrorDisplay("Renaming the levels failed."):
            renamed = self.logic.shiftLevels(self._parameterNode.segmentation, offset)
            self.ui.statusLabel.text = ("Renamed " + ", ".join(f"{a} to {b}" for a, b in renamed.items())
                                        + ". Classify again: the findings were for the old names.")

    def onExportButton(self):
        folder = qt.QFileDialog.getExistingDirectory(self.parent, "Folder for report.json and report.csv")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Writing the report failed."):
            json_path, csv_path = self.logic.exportReport(self._lastReport, folder)
            self.ui.statusLabel.text = f"Wrote {json_path} and {csv_path}."

    def onTableClicked(self, index):
        """Centre the slice views on the vertebra of the clicked row of the table the view shows (the last
        classified one), not the selector's, which may have been changed since."""
        table = self.ui.tableView.mrmlTableNode()
        if table is None:
            return
        from SpineFractureDetectionLib.mrml_logic import centroid_ras_of_row

        location = centroid_ras_of_row(table, self.tableRowOfIndex(table, index))
        if location is not None:  # None: the header row, or a level without a centroid (NaN)
            slicer.modules.markups.logic().JumpSlicesToLocation(*location, True)

    def tableRowOfIndex(self, table, index):
        """The table node's row behind a clicked view index (through the view's sort proxy)."""
        from SpineFractureDetectionLib.mrml_logic import table_row_of_view_row

        proxy = self.ui.tableView.sortFilterProxyModel()
        source = proxy.mapToSource(index) if proxy is not None else index
        row = table_row_of_view_row(table, source.row())
        return -1 if row is None else row


class SpineFractureDetectionLogic(ScriptedLoadableModuleLogic):
    """Scene-level operations; the MRML translation lives in SpineFractureDetectionLib.mrml_logic."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        loadVertebraTerminology()  # also when the module is loaded after startup

    def getParameterNode(self):
        return SpineFractureDetectionParameterNode(super().getParameterNode())

    @staticmethod
    def missingPackages():
        import importlib.util

        return [pip for module, pip in PIP_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]

    def ensureLearnedDependencies(self, askUser=True):
        """torch through Slicer's PyTorch extension, then MONAI, for learned engines and the classifier."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("The PyTorch extension is required for learned models: install it from the "
                                   "Extensions Manager, restart Slicer, and try again") from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if torchLogic.installTorch(askConfirmation=askUser, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                raise RuntimeError("PyTorch was not installed; learned models cannot run (the offline engine can)")
        self.requireTorchVersion()
        missing = [pip for module, pip in LEARNED_PIP_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
        if missing:
            self._pipInstall(missing, askUser)

    @staticmethod
    def requireTorchVersion():
        """Refuse an installed torch older than MONAI needs, with the way out (PyTorch Utils)."""
        import re

        import torch

        minimum = tuple(int(part) for part in TORCH_REQUIREMENT.lstrip(">=").split("."))
        installed = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:3])
        if installed < minimum:
            raise RuntimeError(f"PyTorch {torch.__version__} is installed; MONAI needs torch{TORCH_REQUIREMENT}. "
                               "Update it in the PyTorch Utils module (version requirement "
                               f"'{TORCH_REQUIREMENT}'), restart Slicer, and try again")

    def ensureDependencies(self, askUser=True):
        """Install missing Python packages with the user's consent; raise with a clear message on refusal."""
        missing = self.missingPackages()
        if not missing:
            return
        self._pipInstall(missing, askUser)

    def _pipInstall(self, missing, askUser):
        if askUser and not slicer.util.confirmOkCancelDisplay(
            "Spine Fracture Detection needs these Python packages: " + ", ".join(missing)
            + ". Install them now (internet access required)?"
        ):
            raise RuntimeError("Required Python packages are not installed: " + ", ".join(missing))
        from SpineFractureDetectionLib.dependencies import pins_for_loaded

        try:  # Slicer's loaded packages pinned: pip installs beside them, never replaces one under Slicer
            slicer.util.pip_install([*missing, *pins_for_loaded()])
        except Exception as error:
            raise RuntimeError(f"Installing {', '.join(missing)} failed: {error}") from error

    def measure(self, volumeNode, segmentationNode, tableNode):
        """Measure the level segments of segmentationNode on volumeNode into tableNode."""
        from SpineFractureDetectionLib.mrml_logic import SpineMrmlLogic

        report = SpineMrmlLogic().measure(volumeNode, segmentationNode, tableNode)
        logger.info(f"SpineFractureDetection: measured {len(report.rows)} levels")
        return report

    def classify(self, volumeNode, segmentationNode, tableNode, fractureThreshold=0.5):
        """Grade the current (possibly edited) level segments; colours and table follow."""
        from SpineFractureDetectionLib.mrml_logic import SpineMrmlLogic

        report = SpineMrmlLogic().classify(volumeNode, segmentationNode, tableNode,
                                           probability_threshold=fractureThreshold)
        logger.info(f"SpineFractureDetection: classified {len(report.rows)} levels")
        return report

    @staticmethod
    def childCommand(volumeNode, workFolder, engine, device, pointsNode=None):
        """Export the CT (and the point list, to segment from it) and build the PythonSlicer command."""
        import os
        import pathlib
        import shutil
        import sys

        from SpineFractureDetectionLib.points_logic import child_command

        python = shutil.which("PythonSlicer") or sys.executable
        command = child_command(python, volumeNode, pathlib.Path(workFolder), engine, device, pointsNode)
        # The environment Slicer started in (the launcher sets up its own paths), plus the core.
        environment = slicer.util.startupEnvironment() if hasattr(slicer.util, "startupEnvironment") else {}
        env = dict(environment or os.environ, PYTHONPATH=str(pathlib.Path(__file__).parent))
        return command, env

    def segmentationJob(self, volumeNode, segmentationNode, engine, device, onProgress, onFinished,
                        overwriteEdits=False, pointsNode=None, fromPoints=False):
        """Start ``spinefrac run`` on the exported CT in a child process (``SegmentationJob``, Qt-free);
        with ``fromPoints`` it segments from pointsNode's points. Its labels are imported into
        segmentationNode, and the level points it found into pointsNode, only when the child succeeds.
        The work folder is removed when the job ends, or here when the CT cannot be exported."""
        import pathlib
        import tempfile

        from SpineFractureDetectionLib.child_process import SegmentationJob
        from SpineFractureDetectionLib.points_logic import import_run_result

        work = tempfile.TemporaryDirectory(prefix="spinefrac-")
        try:
            command, env = self.childCommand(volumeNode, work.name, engine, device,
                                             pointsNode if fromPoints else None)
        except Exception:
            work.cleanup()
            raise

        def importResult(folder):
            return import_run_result(segmentationNode, volumeNode, pointsNode, pathlib.Path(folder) / "out",
                                     overwriteEdits)

        return SegmentationJob(command, env, work, importResult, onProgress, onFinished)

    def segment(self, volumeNode, segmentationNode, engine="auto", device="auto", overwriteEdits=False,
                pointsNode=None, fromPoints=False):
        """Blocking segmentation for scripting: the same child process, waited for. Returns the
        segment ids in cranio-caudal order; raises with the child's error line."""
        outcome = {}

        def finished(error):
            outcome["error"] = error

        job = self.segmentationJob(volumeNode, segmentationNode, engine, device,
                                   lambda fraction, message: None, finished, overwriteEdits, pointsNode, fromPoints)
        job.wait()
        if outcome.get("error"):
            raise RuntimeError(outcome["error"])
        return job.imported

    def startSegmentation(self, volumeNode, segmentationNode, engine, device, onProgress, onFinished,
                          overwriteEdits=False, pointsNode=None, fromPoints=False):
        """Non-blocking segmentation in a QProcess; returns a handle with cancel()."""
        from SpineFractureDetectionLib.process import SegmentationRun

        return SegmentationRun(self, volumeNode, segmentationNode, engine, device, onProgress, onFinished,
                                overwriteEdits, pointsNode=pointsNode, fromPoints=fromPoints)

    def shiftLevels(self, segmentationNode, offset):
        from SpineFractureDetectionLib.mrml_logic import shift_levels

        return shift_levels(segmentationNode, offset)

    def renameSegmentAs(self, segmentationNode, segmentId, levelName, volumeNode):
        """"This segment is L1": the segment and, counted from it, every other level segment renamed."""
        from SpineFractureDetectionLib.points_logic import rename_segment_as

        return rename_segment_as(segmentationNode, segmentId, levelName, volumeNode)

    @staticmethod
    def exportReport(report, folder):
        """report.json and report.csv, each written to a temporary name and renamed into place."""
        import pathlib
        import tempfile

        if report is None:
            raise ValueError("Classify first: there is no report to export")
        folder = pathlib.Path(folder)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".spinefrac-report-") as work:
            written = report.write(pathlib.Path(work))
            finals = [folder / path.name for path in written]
            for path, final in zip(written, finals):
                path.replace(final)
        return tuple(finals)


class SpineFractureDetectionTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: a phantom CT and its labels through the logic, with real assertions."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_levels_are_named_ordered_and_measured,
                     self.test_segment_in_a_child_process_with_the_offline_engine,
                     self.test_widget_flow, self.test_vertebra_points_flow,
                     self.test_cancel_ends_the_segmentation_process_tree,
                     self.test_a_child_that_cannot_start_gives_the_buttons_back):
            self.setUp()
            test()
        self.delayDisplay("All tests passed")

    def moduleWidget(self):
        """The module's widget, entered, with a fresh parameter node."""
        slicer.util.selectModule("SpineFractureDetection")
        widget = slicer.util.getModuleWidget("SpineFractureDetection")
        widget.initializeParameterNode()
        self.assertIsNotNone(widget._parameterNode)
        return widget

    def test_widget_flow(self):
        """Parameter node, Segment (blocking), shift down/up, Classify, table click, export."""
        from SpineFractureDetectionLib import self_test

        self.delayDisplay("Driving the widget: segment, shift, classify, click, export")
        self_test.widget_flow(self, self.moduleWidget())

    def test_vertebra_points_flow(self):
        """An automatic run fills the points; one named, Segment from points; 'This segment is'."""
        from SpineFractureDetectionLib import self_test

        self.delayDisplay("Vertebra points: filled by a run, segmented from, segment renamed")
        self_test.points_flow(self, self.moduleWidget())

    def test_cancel_ends_the_segmentation_process_tree(self):
        from SpineFractureDetectionLib import self_test

        self.delayDisplay("Cancelling a running segmentation")
        self_test.cancel_flow(self, self.moduleWidget())

    def test_a_child_that_cannot_start_gives_the_buttons_back(self):
        from SpineFractureDetectionLib import self_test

        self_test.start_failure_flow(self, self.moduleWidget())

    def test_segment_in_a_child_process_with_the_offline_engine(self):
        from SpineFractureDetectionLib import self_test

        self.delayDisplay("Segmenting a phantom in a child process")
        self_test.segment_offline_in_a_child(self, SpineFractureDetectionLogic())

    def test_levels_are_named_ordered_and_measured(self):
        from SpineFractureDetectionLib import self_test

        self.delayDisplay("Writing, classifying and tabulating a fractured phantom")
        self_test.levels_named_ordered_and_measured(self, SpineFractureDetectionLogic())
