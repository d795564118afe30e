"""Training of the learned vertebra segmentation (``spinefrac train-seg``), exported as a package.

Data: a VerSe-layout data set (rawdata/derivatives, ``_ct.nii.gz`` + ``_seg-vert_msk.nii.gz``)
or CT + label pairs (spinefrac.datasets). Each case is brought to canonical orientation and the
model spacing, cropped around its labelled spine plus a margin, and HU-clipped to 0..1 (the
preprocessing the learned engine applies at run time: segmentation/learned/preprocessing.py).
Patches are sampled around the spine (MONAI RandCropByPosNegLabel: most patches centred on a
vertebra), mirrored left-right at random; loss Dice + cross-entropy; AdamW. After each epoch,
held-out cases (split by case) are segmented by sliding-window inference and scored per level
(Dice); a checkpoint with network, optimiser, epoch and history allows ``--resume``. The end
product is a model package (weights + manifest with its sha256) for ``spinefrac run --engine``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.datasets import SpineCase, read_dataset
from spinefrac.io.filenames import MODEL_MANIFEST_FILE, TRAINING_CHECKPOINT_FILE
from spinefrac.io.images import load_ct
from spinefrac.io.model_packages import require_torch, write_model_package
from spinefrac.levels import LEVEL_BY_ID, sort_craniocaudal
from spinefrac.segmentation.label_maps import ExistingLabelMap
from spinefrac.segmentation.learned.engine import SegmentationManifest, build_segmentation_network
from spinefrac.segmentation.learned.preprocessing import resample_labels, resample_to_model_spacing, scale_intensity

CROP_MARGIN_MM = 20.0


@dataclass
class TrainingCase:
    name: str
    image: np.ndarray  # [1, z, y, x] float32, 0..1
    labels: np.ndarray  # [1, z, y, x] uint8 VerSe ids


@dataclass
class SegmentationTrainingConfig:
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    patch_size: tuple[int, int, int] = (96, 96, 96)  # x, y, z voxels
    network: str = "SegResNet"
    init_filters: int = 16
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    hu_min: float = -1000.0
    hu_max: float = 2000.0
    epochs: int = 100
    steps_per_epoch: int = 50
    batch_size: int = 2
    learning_rate: float = 2e-4
    validation_fraction: float = 0.2
    seed: int = 0


def prepare_case(case: SpineCase, config: SegmentationTrainingConfig) -> TrainingCase:
    ct = load_ct(case.ct_path)
    labels = ExistingLabelMap(case.label_path).segment(ct).label_map
    image = resample_to_model_spacing(ct.image, config.spacing_mm)
    labels = resample_labels(labels, image)
    hu = sitk.GetArrayFromImage(image)
    ids = sitk.GetArrayFromImage(labels)
    k, j, i = np.nonzero(ids)
    margin = np.ceil(CROP_MARGIN_MM / np.asarray(config.spacing_mm)[::-1]).astype(int)
    box = tuple(slice(max(int(a.min()) - m, 0), min(int(a.max()) + m + 1, n))
                for a, m, n in zip((k, j, i), margin, ids.shape))
    scaled = scale_intensity(hu[box], _intensity(config))
    return TrainingCase(case.name, scaled[None], ids[box][None])


def label_channels(cases: list[TrainingCase]) -> dict[str, int]:
    """Output channel -> VerSe id for every level seen in training, cranial first; 0 is background."""
    seen = set()
    for case in cases:
        seen.update(int(v) for v in np.unique(case.labels) if v in LEVEL_BY_ID)
    return {str(channel): level.verse_id
            for channel, level in enumerate(sort_craniocaudal(LEVEL_BY_ID[v] for v in seen), start=1)}


def train_segmentation(data: Path | str | list[TrainingCase], output: Path | str,
                       config: SegmentationTrainingConfig | None = None, device: str = "cpu",
                       resume: bool = False, log=print, name: str = "spine-segresnet") -> dict:
    """Train, validate per level, checkpoint each epoch, export the package; returns the history."""
    require_torch()
    import torch
    from monai.losses import DiceCELoss

    config = config or SegmentationTrainingConfig()
    output = Path(output)
    cases = data if isinstance(data, list) else [prepare_case(c, config) for c in read_dataset(data)]
    if len(cases) < 2:
        raise InputError("training needs at least two labelled cases (one is held out for validation)")
    output.mkdir(parents=True, exist_ok=True)  # made once the data are read: a refused data set leaves nothing
    label_map = label_channels(cases)
    to_channel = _channel_table(label_map)
    _seed_everything(config.seed)
    training, held_out = split_cases(cases, config.validation_fraction)
    manifest = training_manifest(config, label_map, name)
    network = build_segmentation_network(manifest).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=1e-5)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    sampler = _patch_sampler(config)
    history = {"train_loss": [], "validation_dice": [], "validation_dice_per_level": []}
    start_epoch = 0
    checkpoint_path = output / TRAINING_CHECKPOINT_FILE
    if resume and checkpoint_path.is_file():
        start_epoch, history = load_checkpoint(checkpoint_path, network, optimiser, device)
        log(f"resumed after epoch {start_epoch}")

    for epoch in range(start_epoch, config.epochs):
        loss = train_one_epoch(network, optimiser, loss_function, sampler, training, to_channel, config, device)
        dice, per_level = _validate(network, held_out, manifest, to_channel, device)
        history["train_loss"].append(loss)
        history["validation_dice"].append(dice)
        history["validation_dice_per_level"].append(per_level)
        log(f"epoch {epoch + 1}/{config.epochs}: loss {history['train_loss'][-1]:.4f}, "
            f"validation Dice {dice:.3f} ({', '.join(f'{k} {v:.2f}' for k, v in per_level.items())})")
        save_checkpoint(checkpoint_path, network, optimiser, epoch + 1, history)
    manifest.training = {"cases": len(training), "held_out_cases": [c.name for c in held_out],
                         "epochs": config.epochs, "history": history}
    export_package(network, manifest, output)
    return history


def _channel_table(label_map: dict[str, int]) -> np.ndarray:
    """VerSe id -> output channel (0 for ids the model does not label)."""
    to_channel = np.zeros(max(LEVEL_BY_ID) + 1, dtype=np.int64)
    for channel, verse_id in label_map.items():
        to_channel[verse_id] = int(channel)
    return to_channel


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_cases(cases: list[TrainingCase], validation_fraction: float) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """(training, held out), split by case with Python's ``random`` (seeded by the caller); at least one held out."""
    order = sorted(cases, key=lambda c: c.name)
    random.shuffle(order)
    held_out = order[: max(1, round(validation_fraction * len(order)))]
    training = [c for c in order if c not in held_out]
    return training, held_out


def training_manifest(config: SegmentationTrainingConfig, label_map: dict[str, int], name: str) -> SegmentationManifest:
    """The package manifest of the network this configuration trains (weights and history added later)."""
    return SegmentationManifest(
        name=name, version="1", network=config.network,
        network_parameters=dict(spatial_dims=3, in_channels=1, out_channels=len(label_map) + 1,
                                init_filters=config.init_filters, blocks_down=tuple(config.blocks_down),
                                blocks_up=tuple(config.blocks_up)),
        spacing_mm=tuple(config.spacing_mm), patch_size=tuple(config.patch_size), label_map=label_map,
        intensity=_intensity(config),
        licence="trained by the user on their own data; see the data's licence",
    )


def _intensity(config: SegmentationTrainingConfig) -> dict[str, float]:
    """The intensity window as the manifest declares it (and preprocessing.scale_intensity reads it)."""
    return {"hu_min": config.hu_min, "hu_max": config.hu_max}


def _patch_sampler(config: SegmentationTrainingConfig):
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

    sampler = Compose([
        RandCropByPosNegLabeld(keys=("image", "label"), label_key="label",
                               spatial_size=tuple(config.patch_size[::-1]), pos=3, neg=1,
                               num_samples=config.batch_size, allow_smaller=True),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=2),  # left-right: anatomy is symmetric
    ])
    sampler.set_random_state(seed=config.seed)  # MONAI transforms keep their own generators
    return sampler


def train_one_epoch(network, optimiser, loss_function, sampler, training: list[TrainingCase], to_channel,
                    config: SegmentationTrainingConfig, device: str) -> float:
    """``steps_per_epoch`` optimiser steps on patches of random training cases; the mean loss."""
    import torch

    network.train()
    losses = []
    for _ in range(config.steps_per_epoch):
        case = training[np.random.randint(len(training))]
        channels = to_channel[case.labels].astype(np.int64)
        patches = sampler({"image": case.image, "label": channels})
        images = torch.stack([torch.as_tensor(p["image"]) for p in patches]).float().to(device)
        targets = torch.stack([torch.as_tensor(p["label"]) for p in patches]).long().to(device)
        images, targets = _pad_to(images, targets, config.patch_size[::-1])
        optimiser.zero_grad()
        loss = loss_function(network(images), targets)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def save_checkpoint(path: Path, network, optimiser, epochs_done: int, history: dict) -> None:
    """Network, optimiser, epochs done and history: what ``--resume`` continues from."""
    import torch

    partial = path.with_name(f".{path.name}.partial")  # renamed when whole: Ctrl-C mid-save keeps the last one
    torch.save({"network": network.state_dict(), "optimiser": optimiser.state_dict(), "epoch": epochs_done,
                "history": history}, partial)
    partial.replace(path)


def load_checkpoint(path: Path, network, optimiser, device: str) -> tuple[int, dict]:
    """Restore network and optimiser from a checkpoint in place; returns (epochs done, history)."""
    import torch

    state = torch.load(path, map_location=device, weights_only=False)
    network.load_state_dict(state["network"])
    optimiser.load_state_dict(state["optimiser"])
    return state["epoch"], state["history"]


def _pad_to(images, targets, size_zyx):
    """Patches near the volume border may come out smaller: pad to the full patch size."""
    import torch.nn.functional as functional

    pad = []
    for dim, size in zip((4, 3, 2), size_zyx[::-1]):
        missing = max(size - images.shape[dim], 0)
        pad += [0, missing]
    if any(pad):
        images = functional.pad(images, pad)
        targets = functional.pad(targets, pad)
    return images, targets


def _validate(network, cases: list[TrainingCase], manifest: SegmentationManifest, to_channel, device):
    import torch
    from monai.inferers import sliding_window_inference

    network.eval()
    per_level: dict[str, list[float]] = {}
    with torch.no_grad():
        for case in cases:
            volume = torch.as_tensor(case.image[None]).to(device)
            logits = sliding_window_inference(volume, roi_size=tuple(manifest.patch_size[::-1]), sw_batch_size=2,
                                              predictor=network, overlap=0.25, mode="gaussian")
            predicted = logits.argmax(dim=1)[0].cpu().numpy()
            truth = to_channel[case.labels[0]]
            for channel, verse_id in manifest.label_map.items():
                reference = truth == int(channel)
                if not reference.any():
                    continue
                found = predicted == int(channel)
                dice = 2 * np.count_nonzero(reference & found) / (reference.sum() + found.sum())
                per_level.setdefault(LEVEL_BY_ID[verse_id].name, []).append(float(dice))
    means = {name: float(np.mean(values)) for name, values in per_level.items()}
    return (float(np.mean(list(means.values()))) if means else 0.0), means


def export_package(network, manifest: SegmentationManifest, output: Path) -> Path:
    return write_model_package(network, manifest, output, manifest.weights_file, MODEL_MANIFEST_FILE)
