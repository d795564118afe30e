"""The Slicer module's child-process segmentation: the CT is exported, ``spinefrac run`` segments it
in a separate Python process (``PythonSlicer``), so the GUI stays responsive, and the labels are
imported only when the child succeeds.

Widget-side (Qt): a timer polls the Qt-free ``child_process.SegmentationJob``, which holds all the
process handling (process tree, progress lines, errors) and is tested without Slicer.
"""

from __future__ import annotations

import qt

from SpineFractureDetectionLib.child_process import CANCELLED, ChildStartError

__all__ = ["CANCELLED", "ChildStartError", "SegmentationRun"]

POLL_INTERVAL_MS = 200


class SegmentationRun:
    """One child-process segmentation driven by a QTimer. Raises ChildStartError (nothing left
    running, the work folder removed) when the child cannot start; otherwise ``onFinished(error)``
    is called exactly once, with None, CANCELLED or the message."""

    def __init__(self, logic, volumeNode, segmentationNode, engine, device, onProgress, onFinished, overwriteEdits,
                 **points):
        """``points``: pointsNode (filled with the levels found) and fromPoints (segment from its points)."""
        self._onFinished = onFinished
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)
        self._job = logic.segmentationJob(volumeNode, segmentationNode, engine, device, onProgress, self._finished,
                                          overwriteEdits, **points)
        self._timer.start()

    @property
    def running(self):
        return not self._job.finished

    @property
    def childPid(self):
        """The launcher's pid, which also names the process group of the whole tree (POSIX)."""
        return self._job.child.pid

    @property
    def workFolder(self):
        return self._job.work_folder

    def cancel(self):
        """End the child's whole process tree; nothing is imported or written afterwards."""
        self._job.cancel()

    def _poll(self):
        if not self._job.poll():
            self._timer.stop()

    def _finished(self, error):
        self._timer.stop()
        self._onFinished(error)
