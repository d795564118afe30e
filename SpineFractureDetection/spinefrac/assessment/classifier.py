"""Optional learned fracture classifier: a MONAI 3-D network on per-vertebra crops.

Input: a cube around each vertebral body, resampled in the vertebra's own frame (so spine
curvature, tilt and scan orientation do not matter), two channels: CT (HU clipped to
[HU_MIN, HU_MAX], scaled to 0..1) and the level's mask. Output: one logit; the probability is
sigmoid(logit / T) with T fitted on held-out cases (temperature scaling, Guo et al. 2017).

Fusion with morphometry (fracture.py): a level is fractured when its Genant grade is >= 1 OR
its calibrated probability reaches the user's threshold; the grade and type always come from
morphometry. Without an installed classifier, morphometry alone decides.

A trained classifier is a model package: a folder with ``weights.pt`` (state dict) and
``manifest.json`` (network and its parameters, crop geometry, intensity normalisation,
temperature, sha256 of the weights, training summary, licence). Loading verifies the checksum
and refuses anything that does not match. No weights ship with this project.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from spinefrac.errors import InputError
from spinefrac.io.filenames import MODEL_MANIFEST_FILE, MODEL_WEIGHTS_FILE
from spinefrac.io.images import CtVolume
from spinefrac.io.model_packages import require_torch, sha256_of, write_model_package
from spinefrac.assessment.morphometry import SpineMorphometry, VertebraMorphometry, VoxelGrid, sample_at
from spinefrac.segmentation.base import VertebraSegmentation

PACKAGE_FORMAT = "spinefrac-classifier"
PACKAGE_FORMAT_VERSION = 1
HU_MIN, HU_MAX = -200.0, 1500.0


@dataclass
class CropGeometry:
    size_voxels: int = 32
    spacing_mm: float = 2.0  # a 64 mm cube: a lumbar body with its endplates and discs

    @property
    def extent_mm(self) -> float:
        return self.size_voxels * self.spacing_mm


@dataclass
class NetworkConfig:
    """MONAI DenseNet parameters (3-D, two input channels, one output logit)."""

    init_features: int = 16
    growth_rate: int = 16
    block_config: tuple[int, ...] = (4, 8, 6)
    dropout_prob: float = 0.1


@dataclass
class ClassifierManifest:
    format: str = PACKAGE_FORMAT
    format_version: int = PACKAGE_FORMAT_VERSION
    name: str = ""
    version: str = "0"
    network: str = "monai.networks.nets.DenseNet"
    network_config: NetworkConfig = field(default_factory=NetworkConfig)
    crop: CropGeometry = field(default_factory=CropGeometry)
    intensity: dict = field(default_factory=lambda: {"hu_min": HU_MIN, "hu_max": HU_MAX, "scaled_to": [0, 1]})
    temperature: float = 1.0
    weights_sha256: str = ""
    training: dict = field(default_factory=dict)
    licence: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> "ClassifierManifest":
        try:
            data = json.loads(text)
            network_data = data.pop("network_config")
            network = NetworkConfig(**{**network_data, "block_config": tuple(network_data["block_config"])})
            crop = CropGeometry(**data.pop("crop"))
            manifest = cls(**data, network_config=network, crop=crop)
        except (ValueError, TypeError, KeyError) as error:
            raise InputError(f"classifier manifest {where} is not valid ({error})") from None
        if manifest.format != PACKAGE_FORMAT or manifest.format_version != PACKAGE_FORMAT_VERSION:
            raise InputError(f"{where} is not a {PACKAGE_FORMAT} v{PACKAGE_FORMAT_VERSION} manifest")
        return manifest


def build_network(config: NetworkConfig):
    require_torch()
    from monai.networks.nets import DenseNet

    return DenseNet(spatial_dims=3, in_channels=2, out_channels=1, init_features=config.init_features,
                    growth_rate=config.growth_rate, block_config=tuple(config.block_config),
                    dropout_prob=config.dropout_prob)


# -- crops ----------------------------------------------------------------------------------


def vertebra_crop(ct: CtVolume, segmentation: VertebraSegmentation, m: VertebraMorphometry,
                  crop: CropGeometry) -> np.ndarray | None:
    """[2, n, n, n] float32 (CT 0..1, mask) in the vertebra's frame: axes superior, anterior, left."""
    if m.frame is None:
        return None
    half = 0.5 * crop.extent_mm - 0.5 * crop.spacing_mm
    axis = np.linspace(-half, half, crop.size_voxels)
    s, a, l = np.meshgrid(axis, axis, axis, indexing="ij")
    local = np.stack([l, a, s], axis=-1)
    kji = VoxelGrid(ct.image).kji(m.frame.to_lps(local)).reshape(-1, 3).T
    hu = sample_at(ct.array(), kji, order=1, cval=-1000.0)
    labels = sample_at(segmentation.array(), kji, order=0, cval=0.0)
    mask = (np.rint(labels) == m.level.verse_id).astype(np.float32)
    shape = (crop.size_voxels,) * 3
    hu = np.clip((hu - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0).reshape(shape)
    return np.stack([hu, mask.reshape(shape)]).astype(np.float32)


def level_crops(ct, segmentation, morphometry: SpineMorphometry, crop: CropGeometry) -> dict[str, np.ndarray]:
    crops = {}
    for m in morphometry.vertebrae:
        if m.level.is_vertebra:
            patch = vertebra_crop(ct, segmentation, m, crop)
            if patch is not None:
                crops[m.level.name] = patch
    return crops


# -- the trained classifier -----------------------------------------------------------------


class FractureClassifier:
    """A loaded, checksum-verified classifier package."""

    def __init__(self, manifest: ClassifierManifest, network, device: str = "cpu"):
        self.manifest = manifest
        self.network = network.eval()
        self.device = device

    @classmethod
    def load(cls, folder: Path | str, device: str = "cpu") -> "FractureClassifier":
        folder = Path(folder)
        manifest_path, weights_path = folder / MODEL_MANIFEST_FILE, folder / MODEL_WEIGHTS_FILE
        for needed in (manifest_path, weights_path):
            if not needed.is_file():
                raise InputError(f"classifier package {folder} lacks {needed.name}")
        manifest = ClassifierManifest.from_json(manifest_path.read_text(encoding="utf-8"), manifest_path)
        actual = sha256_of(weights_path)
        if actual != manifest.weights_sha256:
            raise InputError(
                f"classifier weights {weights_path} do not match the manifest's checksum "
                f"(sha256 {actual[:12]}... vs {manifest.weights_sha256[:12] or 'none'}...): refusing to use them"
            )
        require_torch()
        import torch

        network = build_network(manifest.network_config)
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            network.load_state_dict(state)
        except Exception as error:  # torch raises several types for a corrupt or foreign file
            raise InputError(f"classifier weights {weights_path} cannot be loaded ({type(error).__name__})") from None
        return cls(manifest, network.to(device), device)

    def logits(self, crops: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad(), torch.autocast(device_type="cuda", enabled=self.device == "cuda"):
            batch = torch.from_numpy(crops).to(self.device)
            return self.network(batch).float().cpu().numpy().ravel()

    def probabilities(self, ct, segmentation, morphometry) -> dict[str, float]:
        crops = level_crops(ct, segmentation, morphometry, self.manifest.crop)
        if not crops:
            return {}
        names = list(crops)
        logits = self.logits(np.stack([crops[n] for n in names]))
        return {name: float(_sigmoid(logit / self.manifest.temperature)) for name, logit in zip(names, logits)}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -- training -------------------------------------------------------------------------------


@dataclass
class TrainingExample:
    case: str
    level: str
    crop: np.ndarray
    fractured: bool


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the held-out negative log-likelihood (searched on a log grid)."""
    if len(logits) == 0 or labels.min() == labels.max():
        return 1.0
    candidates = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))

    def nll(t: float) -> float:
        p = 1.0 / (1.0 + np.exp(-logits / t))
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

    return float(min(candidates, key=nll))


def train_classifier(examples: list[TrainingExample], output: Path, epochs: int = 20, batch_size: int = 8,
                     learning_rate: float = 1e-3, network_config: NetworkConfig | None = None,
                     crop: CropGeometry | None = None, validation_fraction: float = 0.25, seed: int = 0,
                     device: str = "cpu", log=print, name: str = "fracture-classifier") -> dict:
    """Train on labelled crops, split by case; writes a model package; returns the history."""
    require_torch()
    import torch

    if len({e.fractured for e in examples}) < 2:
        raise InputError("training needs both fractured and normal vertebrae")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cases = sorted({e.case for e in examples})
    random.shuffle(cases)
    held_out = set(cases[: max(1, round(validation_fraction * len(cases)))]) if len(cases) > 1 else set()
    train = [e for e in examples if e.case not in held_out]
    valid = [e for e in examples if e.case in held_out] or train
    config = network_config or NetworkConfig()
    network = build_network(config).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    positives = sum(e.fractured for e in train)
    pos_weight = torch.tensor([(len(train) - positives) / max(positives, 1)], device=device)
    loss_function = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    history = {"train_loss": [], "valid_loss": [], "valid_accuracy": []}
    for epoch in range(epochs):
        network.train()
        order = np.random.permutation(len(train))
        epoch_loss = 0.0
        for start in range(0, len(order), batch_size):
            chosen = [train[i] for i in order[start:start + batch_size]]
            crops = torch.from_numpy(np.stack([_augment(e.crop) for e in chosen])).to(device)
            targets = torch.tensor([[float(e.fractured)] for e in chosen], device=device)
            optimiser.zero_grad()
            loss = loss_function(network(crops), targets)
            loss.backward()
            optimiser.step()
            epoch_loss += float(loss.detach()) * len(chosen)
        valid_logits, valid_labels = _predict(network, valid, device)
        valid_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(valid_logits), torch.from_numpy(valid_labels)))
        history["train_loss"].append(epoch_loss / len(train))
        history["valid_loss"].append(valid_loss)
        history["valid_accuracy"].append(float(np.mean((valid_logits > 0) == (valid_labels > 0.5))))
        log(f"epoch {epoch + 1}/{epochs}: train loss {history['train_loss'][-1]:.4f}, "
            f"validation loss {valid_loss:.4f}, accuracy {history['valid_accuracy'][-1]:.2f}")
    valid_logits, valid_labels = _predict(network, valid, device)
    temperature = fit_temperature(valid_logits, valid_labels)
    manifest = ClassifierManifest(
        name=name, network_config=config, crop=crop or CropGeometry(), temperature=temperature,
        training={"examples": len(train), "validation_examples": len(valid), "cases": len(cases),
                  "held_out_cases": sorted(held_out), "epochs": epochs, "history": history,
                  "positives": positives},
        licence="trained by the user on their own data; see the data's licence",
    )
    write_package(network, manifest, output)
    return history


def _augment(crop: np.ndarray) -> np.ndarray:
    """Left-right mirroring (anatomy is symmetric) and a small intensity jitter."""
    out = crop[:, :, :, ::-1] if np.random.rand() < 0.5 else crop
    out = out.copy()
    out[0] = np.clip(out[0] * np.random.uniform(0.95, 1.05) + np.random.normal(0, 0.01), 0, 1)
    return out


def _predict(network, examples: list[TrainingExample], device: str) -> tuple[np.ndarray, np.ndarray]:
    import torch

    network.eval()
    with torch.no_grad():
        logits = network(torch.from_numpy(np.stack([e.crop for e in examples])).to(device)).cpu().numpy().ravel()
    return logits.astype(np.float64), np.array([float(e.fractured) for e in examples])


def write_package(network, manifest: ClassifierManifest, output: Path) -> Path:
    return write_model_package(network, manifest, output, MODEL_WEIGHTS_FILE, MODEL_MANIFEST_FILE)


def examples_from_dataset(root: Path | str, crop: CropGeometry | None = None, log=print) -> list[TrainingExample]:
    """Labelled crops from a data set (VerSe layout or CT + label pairs) with Genant grade files
    (NAME_genant.csv beside each label map: level,genant_grade). Ungraded levels are skipped."""
    from spinefrac.io.datasets import read_dataset
    from spinefrac.evaluation.cases import _grade_file, read_gradings
    from spinefrac.io.images import load_ct
    from spinefrac.assessment.measurement import measure_vertebrae
    from spinefrac.assessment.morphometry import measure_morphometry
    from spinefrac.segmentation.base import ExistingLabelMap

    crop = crop or CropGeometry()
    examples = []
    for case in read_dataset(root):
        grades_path = _grade_file(case.label_path.parent, f"{case.name}_")
        if grades_path is None:
            log(f"{case.name}: no {case.name}_genant.csv beside {case.label_path.name}; skipped")
            continue
        grades = read_gradings(grades_path)
        ct = load_ct(case.ct_path)
        segmentation = ExistingLabelMap(case.label_path).segment(ct)
        morphometry = measure_morphometry(ct, segmentation, measure_vertebrae(ct, segmentation))
        crops = level_crops(ct, segmentation, morphometry, crop)
        for m in morphometry.vertebrae:
            grading = grades.get(m.level.verse_id)
            if grading is None or grading.genant_grade is None or m.level.name not in crops:
                continue
            examples.append(TrainingExample(case.name, m.level.name, crops[m.level.name], grading.genant_grade >= 1))
        log(f"{case.name}: {sum(e.case == case.name for e in examples)} graded vertebrae")
    if not examples:
        raise InputError(f"no graded vertebrae found under {root} (grade files: NAME_genant.csv, level,genant_grade)")
    return examples
