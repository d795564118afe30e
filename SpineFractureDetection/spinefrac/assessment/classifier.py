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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from spinefrac.assessment.morphometry import SpineMorphometry, VertebraMorphometry, VoxelGrid, sample_at
from spinefrac.errors import InputError
from spinefrac.io.filenames import MODEL_MANIFEST_FILE, MODEL_WEIGHTS_FILE
from spinefrac.io.images import CtVolume
from spinefrac.io.model_packages import require_torch, sha256_of
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
