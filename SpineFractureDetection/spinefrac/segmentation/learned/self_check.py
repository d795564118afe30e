"""A downloaded model checks itself: it labels the bundled sample CT and its lumbar levels are compared
with the sample's reference labels, level by level.

No trained weights can be downloaded where this is built and tested, so a model is checked where it
is downloaded. A model loaded the right way gives a lumbar Dice well above 0.75 on the sample (its
reference labels come from TotalSegmentator, the data set these models were trained on); a wrong
loader (channel order, orientation, intensity scaling) gives Dice near 0. Under ``MIN_LUMBAR_DICE``
on any of L1-L5 the model fails, and the figures say by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spinefrac.errors import SpineFracError
from spinefrac.io.images import load_ct
from spinefrac.levels import LEVEL_BY_ID
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import SegmentationEngine
from spinefrac.segmentation.label_maps import ExistingLabelMap

MIN_LUMBAR_DICE = 0.75
LUMBAR_IDS = (20, 21, 22, 23, 24)  # VerSe L1-L5
SAMPLE_FOLDER = Path(__file__).resolve().parents[3] / "Resources" / "SampleData"  # the module's sample data
SAMPLE_CT_FILE = "ts-example-ct.nii.gz"
SAMPLE_LABELS_FILE = "ts-example-vertebrae.nii.gz"


@dataclass(frozen=True)
class SelfCheck:
    """The outcome: passed True/False, or None when it could not run (no sample data beside the code)."""

    passed: bool | None
    dice_by_level: dict[str, float] = field(default_factory=dict)  # "L1" -> Dice, lumbar levels
    min_dice: float = MIN_LUMBAR_DICE
    note: str = ""  # why it failed to run, or which sample

    @property
    def failing_levels(self) -> dict[str, float]:
        return {name: dice for name, dice in self.dice_by_level.items() if dice < self.min_dice}

    def summary(self) -> str:
        """One line: 'failed self-check: L1 Dice 0.02, L2 Dice 0.00 (< 0.75)', 'passed self-check: ...'."""
        if self.passed is None:
            return f"self-check not run: {self.note}"
        if not self.passed and not self.dice_by_level:
            return f"failed self-check: {self.note}"
        shown = self.failing_levels if not self.passed else self.dice_by_level
        figures = ", ".join(f"{name} Dice {dice:.2f}" for name, dice in shown.items())
        return (f"failed self-check: {figures} (< {self.min_dice:.2f})" if not self.passed
                else f"passed self-check: {figures} (each >= {self.min_dice:.2f})")

    def to_dict(self) -> dict:
        return {"passed": self.passed, "dice_by_level": {k: round(v, 4) for k, v in self.dice_by_level.items()},
                "min_dice": self.min_dice, "note": self.note, "sample": SAMPLE_CT_FILE}

    @classmethod
    def from_dict(cls, record: dict) -> SelfCheck:
        return cls(record.get("passed"), {str(k): float(v) for k, v in record.get("dice_by_level", {}).items()},
                   float(record.get("min_dice", MIN_LUMBAR_DICE)), str(record.get("note", "")))


def lumbar_dice(predicted: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice per lumbar level of the reference (VerSe ids; a level the prediction lacks scores 0)."""
    dice = {}
    for verse_id in LUMBAR_IDS:
        truth = reference == verse_id
        if not truth.any():
            continue
        guess = predicted == verse_id
        dice[LEVEL_BY_ID[verse_id].name] = float(2.0 * np.count_nonzero(truth & guess)
                                                 / (np.count_nonzero(truth) + np.count_nonzero(guess)))
    return dice


def run_self_check(engine: SegmentationEngine, sample_folder: Path | None = None,
                   progress: Progress = silent) -> SelfCheck:
    """Label the sample CT with ``engine`` and score L1-L5 against the sample's reference labels. An
    engine that raises fails the check with its error; missing sample files leave it not run."""
    folder = Path(sample_folder or SAMPLE_FOLDER)
    ct_path, labels_path = folder / SAMPLE_CT_FILE, folder / SAMPLE_LABELS_FILE
    if not (ct_path.is_file() and labels_path.is_file()):
        return SelfCheck(None, note=f"the sample CT and its labels are not in {folder}")
    progress(0.0, "self-check: labelling the sample CT")
    ct = load_ct(ct_path)
    # The segmentations are held while read: array() is a view into their label map, freed with them.
    reference_segmentation = ExistingLabelMap(labels_path, "verse").segment(ct)
    reference = reference_segmentation.array()
    try:
        predicted_segmentation = engine.segment(ct)
    except (SpineFracError, RuntimeError, ValueError, OSError) as error:  # a model that does not run fails
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return SelfCheck(False, note=f"the model did not run on the sample CT ({first_line})")
    dice = lumbar_dice(predicted_segmentation.array(), reference)
    progress(1.0, "self-check done")
    if not dice:  # nothing compared must never read as a pass
        return SelfCheck(False, note=f"no lumbar level in {labels_path.name}")
    return SelfCheck(all(value >= MIN_LUMBAR_DICE for value in dice.values()), dice)
