"""An Auto3DSeg SegResNet model folder in the format the SlicerMONAIAuto3DSeg extension distributes
("Vertebrae TS2", vertebrae-3mm-v2.0.x.zip): ``labels.csv`` with LabelValue, Name and the DICOM code
sequence columns its module reads, and ``model.pt`` = {"config": ..., "state_dict": ..., "epoch",
"best_metric"}, the config holding the network as a ConfigParser dict and the inference keys its
inference script reads. Label order, names and SNOMED CT codes as in the extension's Models.json
and terminology (TotalSegmentator v2 class_map_part_vertebrae). The weights are ours (set by the
test); the network is small so the tests run on a CPU.
"""

from __future__ import annotations

import csv
from pathlib import Path

SCT = "SCT"
# (label value, name, SNOMED CT code) in the model's order.
VERTEBRAE_TS2 = [(1, "Sacrum", "54735007"), (2, "S1 vertebra", "65985001")] + [
    (value, f"{name} vertebra", code) for value, (name, code) in enumerate([
        ("L5", "49668003"), ("L4", "11994002"), ("L3", "36470004"), ("L2", "14293000"), ("L1", "66794005"),
        ("T12", "23215003"), ("T11", "12989004"), ("T10", "7610001"), ("T9", "82687006"), ("T8", "11068009"),
        ("T7", "62487009"), ("T6", "45296009"), ("T5", "56401006"), ("T4", "73071006"), ("T3", "1626008"),
        ("T2", "53733008"), ("T1", "64864005"), ("C7", "87391001"), ("C6", "36054005"), ("C5", "36978003"),
        ("C4", "5329002"), ("C3", "113205007"), ("C2", "39976000"), ("C1", "14806007")], start=3)]
SEQUENCES = ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence",
             "SegmentedPropertyTypeModifierCodeSequence", "AnatomicRegionSequence", "AnatomicRegionModifierSequence")
FIELDS = ("CodingSchemeDesignator", "CodeValue", "CodeMeaning")
COLUMNS = ["LabelValue", "Name"] + [f"{sequence}.{field}" for sequence in SEQUENCES for field in FIELDS]


def config(out_channels: int = len(VERTEBRAE_TS2) + 1) -> dict:
    network = {"_target_": "SegResNetDS", "init_filters": 8, "blocks_down": [1, 2, 2, 4], "norm": "INSTANCE",
               "in_channels": 1, "out_channels": out_channels, "dsdepth": 1}
    return {"network": network, "roi_size": [64, 64, 64], "resample_resolution": [3.0, 3.0, 3.0],
            "normalize_mode": "range", "intensity_bounds": [-250.0, 1250.0], "orientation_ras": True,
            "crop_foreground": True, "sigmoid": False, "bundle_root": "vertebrae-3mm", "output_classes": out_channels}


def network(model_config: dict):
    from monai.bundle import ConfigParser

    return ConfigParser(model_config["network"]).get_parsed_content()


def constant_label_state(model_config: dict, label_value: int) -> dict:
    """Weights whose output is ``label_value`` everywhere (head weights zero, bias one-hot)."""
    import torch

    torch.manual_seed(0)
    state = network(model_config).state_dict()
    head = [name for name in state if name.endswith("head.weight")][-1]
    state[head] = torch.zeros_like(state[head])
    bias = torch.zeros_like(state[head.replace("weight", "bias")])
    bias[label_value] = 10.0
    state[head.replace("weight", "bias")] = bias
    return state


def write_labels(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for value, name, code in rows:
            category = [SCT, "123037004", "Anatomical Structure"]
            writer.writerow([value, name, *category, SCT, code, name, "", "", "", "", "", "", "", "", ""])
    return path


def write_model(folder: Path, label_value: int = 3, rows=VERTEBRAE_TS2, checkpoint: dict | None = None) -> Path:
    """The unpacked archive: ``folder/vertebrae-3mm/{labels.csv, model.pt}``."""
    import torch

    model = folder / "vertebrae-3mm"
    model.mkdir(parents=True, exist_ok=True)
    write_labels(model / "labels.csv", rows)
    model_config = config()
    if checkpoint is None:
        checkpoint = {"config": model_config, "state_dict": constant_label_state(model_config, label_value),
                      "epoch": 300, "best_metric": 0.91}
    torch.save(checkpoint, model / "model.pt")
    return folder
