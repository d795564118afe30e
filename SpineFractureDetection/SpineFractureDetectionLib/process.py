"""The Slicer module's child-process segmentation: the CT is exported, ``spinefrac run`` segments it
in a separate Python process (``PythonSlicer``), so the GUI stays responsive, and the labels are
imported only when the child succeeds.

Widget-side (Qt); the MRML steps it calls live in ``mrml_logic`` so that they can be tested on
``slicer-core`` without Qt.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import qt

from spinefrac.io.filenames import LABEL_MAP_FILE
from SpineFractureDetectionLib.mrml_logic import import_segmentation_result, parse_progress

CANCELLED = "cancelled"


class SegmentationRun:
    """One child-process segmentation: progress from its '[k/n] stage ...' lines, Cancel kills
    it and deletes its files, success imports the labels (the scene changes only then)."""

    def __init__(self, logic, volumeNode, segmentationNode, engine, device, onProgress, onFinished, overwriteEdits):
        self._work = tempfile.TemporaryDirectory(prefix="spinefrac-")
        self._volume, self._segmentation = volumeNode, segmentationNode
        self._onProgress, self._onFinished, self._overwrite = onProgress, onFinished, overwriteEdits
        self._cancelled = False
        self._lastError = ""
        command, env = logic.childCommand(volumeNode, self._work.name, engine, device)
        self._process = qt.QProcess()
        self._process.setProcessEnvironment(env)
        self._process.connect("readyReadStandardError()", self._readProgress)
        self._process.connect("finished(int,QProcess::ExitStatus)", self._finished)
        self._process.start(command[0], command[1:])

    def cancel(self):
        self._cancelled = True
        self._process.kill()

    def _readProgress(self):
        text = bytes(self._process.readAllStandardError().data()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.startswith("spinefrac: error:"):
                self._lastError = line
            progress = parse_progress(line)
            if progress:
                self._onProgress(*progress)

    def _finished(self, exitCode, exitStatus):
        error = None
        try:
            if self._cancelled:
                return
            if exitCode != 0:
                error = self._lastError or f"segmentation process ended with code {exitCode}"
                return
            import_segmentation_result(self._segmentation, self._volume,
                                       Path(self._work.name) / "out" / LABEL_MAP_FILE, self._overwrite)
        except Exception as exception:
            error = str(exception)
        finally:
            self._work.cleanup()
            self._onFinished(CANCELLED if self._cancelled else error)
