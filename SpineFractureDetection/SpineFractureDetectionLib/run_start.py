"""What the module decides before a segmentation child starts (no Qt; tested on slicer-core): whether the
CT can be segmented at all, which segmentation node receives the result, and whether a learned model may
run (so that MONAI and torch are made ready first).

Everything here is checked before the child runs: a CT under a transform would be segmented on its
untransformed grid and refused only after the whole run; a segmentation written by another tool
(TotalSegmentator's organs, say) must never be emptied by this module's result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from SpineFractureDetectionLib.mrml_logic import CHECKSUM_ATTRIBUTE, has_unsaved_edits, require_scalar_volume

WRITE = "write"
NEW = "new"
CONFIRM = "confirm"
# --device auto lets the child take the GPU when one is there: a model for either device may run.
DEVICES_OF_SETTING = {"auto": ("cpu", "cuda"), "cpu": ("cpu",), "cuda": ("cuda",)}


@dataclass(frozen=True)
class RunTarget:
    """Where the result goes: WRITE into the selected node, NEW into a new node (``reason`` says why
    when one was selected), CONFIRM before replacing ``segment_names`` (``question``)."""

    action: str
    segment_names: list[str] = field(default_factory=list)
    reason: str = ""
    question: str = ""


def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments())]


def check_ct_before_run(volume_node) -> None:
    """Refuse, before a child starts, a CT the result could not be imported onto (no voxels, not scalar,
    under a transform that is not hardened): InputError with the way out."""
    require_scalar_volume(volume_node)


def run_target(segmentation_node, volume_node) -> RunTarget:
    """Only this module's own segmentations are replaced, and edited ones only once the user has seen
    which segments go. A segmentation another tool wrote is left whole: the result goes into a new one."""
    if segmentation_node is None:
        return RunTarget(NEW)
    names = segment_names(segmentation_node)
    if not names:
        return RunTarget(WRITE)
    if segmentation_node.GetAttribute(CHECKSUM_ATTRIBUTE) is None:
        return RunTarget(NEW, names, reason=(
            f"'{segmentation_node.GetName()}' was not written by this module ({len(names)} segments: "
            f"{_listed(names)}); it is left as it is and the result goes into a new segmentation"))
    if not has_unsaved_edits(segmentation_node, volume_node):
        return RunTarget(WRITE, names)
    return RunTarget(CONFIRM, names, question=(
        f"'{segmentation_node.GetName()}' holds segments edited since this module wrote them. Replace them? "
        f"These {len(names)} segments will be removed: {_listed(names)}."))


def _listed(names: list[str], most: int = 30) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def learned_model_may_run(engine: str, device: str, from_points: bool,
                          installed: Callable[[str], list] | None = None) -> bool:
    """Whether the child may run a learned model, so MONAI and torch must be ready: engine monai, or
    auto (not from points, which runs the guided engine) with a model installed for a device the Device
    setting allows; auto allows the GPU, so a GPU-only model counts (the CPU alone was asked before)."""
    if engine == "monai":
        return True
    if engine != "auto" or from_points:
        return False
    if installed is None:
        from spinefrac.segmentation.learned.registry import installed_engines as installed
    return any(installed(name) for name in DEVICES_OF_SETTING.get(device, ("cpu",)))
