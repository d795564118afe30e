"""The module's "Segmentation models" section (Qt): a table of the registry models and their state in
the cache, Download (after the user's consent) with a progress dialog and Cancel, Remove.

Built in code so that it adds nothing to the module's .ui file. The logic is ``models.py`` (no Qt,
tested with pytest); a download runs in its worker thread while a QTimer polls its state, so
Slicer's GUI stays responsive for the minutes a large model takes.
"""

from __future__ import annotations

import ctk
import qt
import slicer

from SpineFractureDetectionLib import models

COLUMNS = ("Model", "Version", "Status", "Details")
POLL_MS = 200


class ModelsPanel:
    """``ModelsPanel(parentLayout)`` adds the collapsible section to the module's layout."""

    def __init__(self, parentLayout):
        self.section = ctk.ctkCollapsibleButton()
        self.section.text = "Segmentation models"
        self.section.collapsed = True
        parentLayout.addWidget(self.section)
        layout = qt.QVBoxLayout(self.section)
        self.table = qt.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.table.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.table)
        buttons = qt.QHBoxLayout()
        self.downloadButton = qt.QPushButton("Download")
        self.removeButton = qt.QPushButton("Remove")
        self.refreshButton = qt.QPushButton("Refresh")
        for button, slot in ((self.downloadButton, self.onDownload), (self.removeButton, self.onRemove),
                             (self.refreshButton, self.refresh)):
            button.connect("clicked(bool)", lambda _checked=False, slot=slot: slot())
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self._task = None
        self._dialog = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._poll)
        self.section.connect("contentsCollapsed(bool)", lambda collapsed: None if collapsed else self.refresh())

    def refresh(self):
        """Re-read the registry and the cache (installed files are re-hashed: done on expand, not at start)."""
        rows = models.model_rows()
        self.table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            for column, text in enumerate((row.name, row.version, row.status, row.detail)):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(f"{row.description}\nLicence: {row.licence}")
                self.table.setItem(index, column, item)
        self.table.resizeColumnsToContents()

    def _selectedName(self):
        selected = self.table.selectedItems()
        if not selected:
            slicer.util.warningDisplay("Select a model in the table first.")
            return None
        return self.table.item(selected[0].row(), 0).text()

    def onDownload(self):
        name = self._selectedName()
        if name is None or self._task is not None:
            return
        entry = models.read_registry()[name]
        if not slicer.util.confirmOkCancelDisplay(models.consent_text(entry), windowTitle="Download a model"):
            return
        self._dialog = qt.QProgressDialog(f"Downloading {name}...", "Cancel", 0, 1000, slicer.util.mainWindow())
        self._dialog.setWindowTitle("Segmentation model")
        self._dialog.setWindowModality(qt.Qt.WindowModal)
        self._dialog.setMinimumDuration(0)
        self._dialog.connect("canceled()", self._cancel)
        self._task = models.DownloadTask(name).start()
        self._timer.start()

    def _cancel(self):
        if self._task is not None:
            self._task.cancel()

    def _poll(self):
        state = self._task.state()
        if not state.done:
            self._dialog.setValue(int(state.fraction * 1000))
            self._dialog.setLabelText(state.message)
            return
        self._timer.stop()
        self._dialog.close()
        self._task = self._dialog = None
        self.refresh()
        if state.error:
            slicer.util.errorDisplay(f"Download failed: {state.error}")
        elif state.warning:
            slicer.util.warningDisplay(state.warning)
        elif state.cancelled:
            slicer.util.infoDisplay(state.message)

    def onRemove(self):
        name = self._selectedName()
        if name is not None and slicer.util.confirmOkCancelDisplay(f"Remove {name} from {models.cache_folder()}?"):
            models.remove(name)
            self.refresh()
