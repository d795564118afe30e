"""MONAI Auto3DSeg SegResNet models, as the SlicerMONAIAuto3DSeg extension distributes them.

A model is a folder (found anywhere below the unpacked archive) with ``labels.csv`` and
``model.pt``. ``model.pt`` is ``{"config": {...}, "state_dict": ..., "epoch", "best_metric"}``; the
config holds the network as a ConfigParser dict and the inference settings: ``roi_size``,
``resample_resolution``, ``normalize_mode``, ``intensity_bounds``, ``orientation_ras``,
``crop_foreground``, ``sigmoid``. ``labels.csv`` has one row per label: ``LabelValue``, ``Name`` and
the DICOM code sequences (``SegmentedPropertyTypeCodeSequence.CodeValue`` ... SNOMED CT).

The pre-processing and sliding window follow the extension's inference script: load channel
first, RAS when asked, crop to the foreground (10 voxels margin), resample, normalise by mode;
SlidingWindowInfererAdapt with overlap 0.625 and Gaussian blending (the window capped at the image's
size). Unlike the script, the argmax (or the sigmoid threshold) is taken at the model's resolution
and the labels, not the probabilities, go back onto the input grid (nearest neighbour, as the MONAI
bundles do): memory one label volume instead of one float volume per class. Labels map to VerSe ids by
their SNOMED CT code, by name when the code is not one of ours (S1 and the sacrum both go to the
sacrum); a label that names no vertebral level is refused by name. Each level keeps its largest
piece: the pieces are found at the model's resolution and sized on the input grid
(engine.largest_pieces_on_grid), which gives what a clean-up on the input grid would, on a fraction of
the voxels.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.images import CtVolume
from spinefrac.io.model_packages import require_torch
from spinefrac.levels import LEVEL_BY_ID, LEVELS, SNOMED_SCHEME, level_for_name
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import LabelConvention, SegmentationEngine, VertebraSegmentation
from spinefrac.segmentation.learned.bundle import load_state
from spinefrac.segmentation.learned.engine import (
    box_on_grid,
    largest_pieces_on_grid,
    order_violations,
    predict_from_file,
    refuse_empty,
    to_verse_ids,
    verse_lookup,
)

LABELS_FILE = "labels.csv"
CHECKPOINT_FILE = "model.pt"
CONFIG_KEYS = ("network", "roi_size", "normalize_mode")  # without these a checkpoint cannot be run
CODE_COLUMNS = ("SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator",
                "SegmentedPropertyTypeCodeSequence.CodeValue")
FOREGROUND_MARGIN_VOXELS = 10
SLIDING_WINDOW_OVERLAP = 0.625
SEGRESNETDS_BLOCKS_DOWN = (1, 2, 2, 4)  # MONAI's default when a config does not say
LEVEL_BY_SNOMED = {level.snomed_code: level for level in LEVELS if not level.is_transitional}


def model_files(folder: Path) -> tuple[Path, Path] | None:
    """(labels.csv, model.pt) of an Auto3DSeg model below ``folder``, or None."""
    for labels in sorted(Path(folder).rglob(LABELS_FILE)):
        if (labels.parent / CHECKPOINT_FILE).is_file():
            return labels, labels.parent / CHECKPOINT_FILE
    return None


def is_auto3dseg_model(folder: Path) -> bool:
    return Path(folder).is_dir() and model_files(folder) is not None


def read_label_map(path: Path) -> dict[int, int]:
    """labels.csv -> {label value: VerSe id}, by SNOMED CT code, by name when the code is not ours."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path} is unreadable ({error})") from None
    if not rows or not {"LabelValue", "Name"} <= set(rows[0]):
        raise InputError(f"{path} has no LabelValue and Name columns: not an Auto3DSeg labels.csv")
    mapping = {}
    for row in rows:
        level = _level_of(row)
        if level is None:
            code = ":".join(row.get(column) or "" for column in CODE_COLUMNS)
            raise InputError(f"{path}: label '{row['Name']}' (code {code or 'none'}) is not a vertebral level")
        try:
            mapping[int(row["LabelValue"])] = level.verse_id
        except ValueError:
            raise InputError(f"{path}: LabelValue '{row['LabelValue']}' of '{row['Name']}' is not a number") from None
    return mapping


def _level_of(row: dict):
    scheme, code = (row.get(column) or "" for column in CODE_COLUMNS)
    if scheme == SNOMED_SCHEME and code in LEVEL_BY_SNOMED:
        return LEVEL_BY_SNOMED[code]
    return level_for_name(row.get("Name") or "")


def read_checkpoint(path: Path) -> dict:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or not plain data
        raise InputError(f"{path} is not a readable torch checkpoint ({type(error).__name__})") from None
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        raise InputError(f"{path} has no config: not an Auto3DSeg SegResNet checkpoint")
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise InputError(f"{path}: its config lacks {', '.join(missing)}")
    return checkpoint


def preprocessing(config: dict):
    """The image -> network-input chain the extension's inference script builds from the config."""
    from monai.transforms import Compose

    onto_input_grid, onto_model_grid = preprocessing_stages(config)
    return Compose([onto_input_grid, onto_model_grid])


def preprocessing_stages(config: dict):
    """That chain in two parts: loading (channel first, RAS, foreground crop), whose grid the labels go
    back to; then resampling to the model's resolution and intensity normalisation."""
    import torch
    from monai.transforms import Compose, CropForegroundd, EnsureTyped, LoadImaged, Orientationd, Spacingd

    steps = [LoadImaged(keys="image", ensure_channel_first=True, dtype=None, image_only=False),
             EnsureTyped(keys="image", data_type="tensor", dtype=torch.float)]
    if config.get("orientation_ras", False):
        steps.append(Orientationd(keys="image", axcodes="RAS"))
    if config.get("crop_foreground", True):
        steps.append(CropForegroundd(keys="image", source_key="image", margin=FOREGROUND_MARGIN_VOXELS,
                                     allow_smaller=True))
    resampling = []
    if config.get("resample_resolution") is not None:
        spacing = np.array(config["resample_resolution"], dtype=float)
        resampling.append(Spacingd(keys="image", pixdim=list(spacing), mode="bilinear", dtype=torch.float,
                                   min_pixdim=spacing * 0.75, max_pixdim=spacing * 1.25))
    resampling += _normalisation(config["normalize_mode"], config.get("intensity_bounds"))
    return Compose(steps), Compose(resampling)


def _normalisation(mode: str, bounds) -> list:
    import torch
    from monai.transforms import Lambdad, NormalizeIntensityd, ScaleIntensityRanged

    if mode == "none":
        return []
    if mode in ("range", "ct"):
        return [ScaleIntensityRanged(keys="image", a_min=bounds[0], a_max=bounds[1], b_min=-1, b_max=1, clip=False),
                Lambdad(keys="image", func=torch.sigmoid)]
    if mode in ("meanstd", "mri"):
        return [NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]
    if mode == "meanstdtanh":
        return [NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
                Lambdad(keys="image", func=lambda x: 3 * torch.tanh(x / 3))]
    raise InputError(f"Auto3DSeg normalize_mode '{mode}' is not supported here")


class Auto3DSegEngine(SegmentationEngine):
    """Vertebra labels from an Auto3DSeg SegResNet model folder (labels.csv + model.pt)."""

    name = "MONAI Auto3DSeg SegResNet"

    def __init__(self, folder: Path | str, device: str = "cpu"):
        require_torch()
        from monai.bundle import ConfigParser

        files = model_files(Path(folder))
        if files is None:
            raise InputError(f"{folder} holds no Auto3DSeg model ({LABELS_FILE} beside {CHECKPOINT_FILE})")
        self.labels_path, self.checkpoint_path = files
        self.device = device
        self.label_to_verse = read_label_map(self.labels_path)
        checkpoint = read_checkpoint(self.checkpoint_path)
        self.config = checkpoint["config"]
        self.network = ConfigParser(self.config["network"]).get_parsed_content()
        load_state(self.network, checkpoint, self.checkpoint_path, "the network of its config")
        self.network = self.network.to(device).eval()
        self.title = f"{Path(folder).name} (epoch {checkpoint.get('epoch', '?')})"
        self.timings_s: dict[str, float] = {}  # per stage of the last prediction

    def predict(self, image_path: Path, reference: sitk.Image) -> tuple[sitk.Image, list[str]]:
        """VerSe ids on ``reference``'s grid (the grid of ``image_path``), each level's largest piece
        kept (found at the model's resolution, see largest_pieces_on_grid); notes on what was dropped."""
        started = time.perf_counter()
        onto_input_grid, onto_model_grid = preprocessing_stages(self.config)
        data = onto_input_grid({"image": str(image_path)})
        box = box_on_grid(reference, data["image"].affine.numpy(), data["image"].shape[1:])
        image = onto_model_grid(data)["image"]
        del data  # the input-resolution crop: not needed past here
        self.timings_s = {"preprocessing": time.perf_counter() - started}
        logits = self._logits(image)
        self.timings_s["inference"] = time.perf_counter() - started - self.timings_s["preprocessing"]
        verse_ids = to_verse_ids(self._labels_at_model_resolution(logits), verse_lookup(self.label_to_verse))
        del logits
        labels, dropped = largest_pieces_on_grid(verse_ids, image.affine.numpy(), reference, box)
        self.timings_s["postprocessing"] = time.perf_counter() - started - sum(self.timings_s.values())
        return labels, dropped

    def _logits(self, image):
        """Sliding-window logits at the model's resolution; the window never larger than the image
        (rounded up to what the network's levels divide), so no time is spent on padding."""
        import torch
        from monai.inferers import SlidingWindowInfererAdapt

        levels = len(self.config["network"].get("blocks_down", SEGRESNETDS_BLOCKS_DOWN))
        divisor = 2 ** (levels - 1)  # each level halves the size
        image_shape = np.asarray(image.shape[1:])
        roi = np.minimum(self.config["roi_size"], np.ceil(image_shape / divisor) * divisor).astype(int)
        inferer = SlidingWindowInfererAdapt(roi_size=roi.tolist(), sw_batch_size=1, overlap=SLIDING_WINDOW_OVERLAP,
                                            mode="gaussian")
        with torch.no_grad(), torch.autocast(device_type="cuda", enabled=self.device == "cuda"):
            logits = inferer(image[None].to(self.device), self.network)
        return logits[0] if isinstance(logits, (list, tuple)) else logits

    def _labels_at_model_resolution(self, logits):
        """Label values from the logits before going back to the input grid: softmax and argmax (or,
        for a sigmoid model, the first label above one half) at the model's resolution, then one
        nearest-neighbour resampling of the labels instead of one linear resampling per class (the
        extension's script resamples the probabilities: 27 classes on a 512 x 512 x 500 CT are 14 GB)."""
        import torch

        if self.config.get("sigmoid", False):
            above = torch.sigmoid(logits[0].float()) >= 0.5
            labels = torch.where(above.any(0), above.int().argmax(0) + 1, 0)
        else:
            labels = logits[0].float().argmax(0)  # the argmax of the softmax is the argmax of the logits
        return labels.to(torch.int32).cpu().numpy()

    def segment(self, ct: CtVolume, progress: Progress = silent) -> VertebraSegmentation:
        progress(0.05, f"{self.title}: pre-processing and sliding-window inference")
        image, dropped = predict_from_file(ct, lambda path: self.predict(path, ct.image), "spinefrac-auto3dseg-")
        image = refuse_empty(image, self.title)
        verse_ids = sitk.GetArrayViewFromImage(image)
        present = sorted({LEVEL_BY_ID[int(v)].name for v in np.unique(verse_ids) if v})
        return VertebraSegmentation(
            label_map=image, engine=self.name, convention=LabelConvention.VERSE,
            source=f"Auto3DSeg SegResNet {self.title}, {self.config.get('resample_resolution')} mm",
            notes=[f"segmented by {self.title} on {self.device}: {len(present)} levels", *dropped,
                   *order_violations(image)],
        )
