"""Self-checks for tests that download a model whose weights cannot be real here: an engine that
returns the bundled sample's reference labels (a model that reproduces them, so the check passes)
through the real comparison, in about a second instead of a network run."""

from __future__ import annotations

from pathlib import Path

from spinefrac.segmentation.base import SegmentationEngine
from spinefrac.segmentation.label_maps import ExistingLabelMap
from spinefrac.segmentation.learned import registry, self_check

SAMPLE_LABELS = Path(self_check.SAMPLE_FOLDER) / self_check.SAMPLE_LABELS_FILE


class ReferenceEngine(SegmentationEngine):
    """Labels the sample CT exactly as its reference does."""

    name = "reference labels"

    def __init__(self, folder=None, device: str = "cpu"):
        self.folder, self.device = folder, device

    def segment(self, ct, progress=None):
        return ExistingLabelMap(SAMPLE_LABELS, "verse").segment(ct)


def check_with_reference_engine(monkeypatch) -> None:
    """Downloads self-check with ReferenceEngine in place of the downloaded model (the model itself
    is still what engine_from_registry opens afterwards)."""
    monkeypatch.setattr(registry, "run_self_check",
                        lambda engine, sample_folder=None, progress=None: self_check.run_self_check(ReferenceEngine()))
