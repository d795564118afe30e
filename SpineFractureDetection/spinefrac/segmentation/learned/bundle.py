"""MONAI Model Zoo bundles, run as their authors configured them.

A bundle is a folder with ``configs/inference.json`` (the network, pre-processing, inferer and
post-processing as ``_target_`` components with ``@`` references and ``$`` expressions),
``configs/metadata.json`` (version, licence, and the name of every output channel) and its
weights in ``models/``. ``monai.bundle.ConfigParser`` resolves the config, so the bundle's own
``network_def``, ``preprocessing``, ``inferer`` and ``postprocessing`` run unchanged: nothing is
re-implemented here, and the prediction is inverted back onto the input grid by the bundle's own
``Invertd``. Only ``SaveImaged`` is left out (the labels are returned, not written by MONAI).

Output channels are mapped to VerSe ids by their names in ``metadata.json`` (``vertebrae_L5``,
``sacrum``, ...); every channel that names no vertebral level is background.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spinefrac.errors import InputError
from spinefrac.io.images import CtVolume
from spinefrac.io.model_packages import require_torch
from spinefrac.levels import LEVEL_BY_ID, level_for_name
from spinefrac.progress import Progress, silent
from spinefrac.segmentation.base import LabelConvention, SegmentationEngine, VertebraSegmentation
from spinefrac.segmentation.learned.engine import (
    label_values,
    order_violations,
    predict_from_file,
    verse_labels_on_ct_grid,
)

INFERENCE_CONFIG = Path("configs") / "inference.json"
METADATA_CONFIG = Path("configs") / "metadata.json"
HIGHRES_SWITCH = ("displayable_configs", "highres")  # wholeBody_ct_segmentation: 1.5 mm (True) or 3 mm
WRITER_TARGETS = ("SaveImaged", "SaveImage")  # post-processing steps that write files: not run here
CHECKPOINT_WRAPPERS = ("model", "state_dict", "network")  # keys trainers wrap a state dict in


def is_monai_bundle(folder: Path) -> bool:
    return (Path(folder) / INFERENCE_CONFIG).is_file() and (Path(folder) / METADATA_CONFIG).is_file()


@dataclass(frozen=True)
class BundleDescription:
    """What a bundle says about itself in ``metadata.json``."""

    name: str
    version: str
    licence: str
    channel_names: dict[int, str]  # output channel -> class name, 0 = background

    def verse_ids(self) -> dict[int, int]:
        """Channel -> VerSe id, for the channels that name a vertebral level (all others are background)."""
        levels = {channel: level_for_name(name) for channel, name in self.channel_names.items()}
        return {channel: level.verse_id for channel, level in levels.items() if level is not None}


def read_description(folder: Path) -> BundleDescription:
    path = Path(folder) / METADATA_CONFIG
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
        channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        channels = {int(channel): str(name) for channel, name in channel_def.items()}
    except (OSError, ValueError) as error:
        raise InputError(f"MONAI bundle {folder}: {METADATA_CONFIG} unreadable ({error})") from None
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"MONAI bundle {folder}: {METADATA_CONFIG} names no output channels "
                         "(network_data_format.outputs.pred.channel_def)") from None
    licence = metadata.get("license") or metadata.get("copyright") or "see the bundle's LICENSE"
    return BundleDescription(str(metadata.get("name", Path(folder).name)), str(metadata.get("version", "unknown")),
                             str(licence), channels)


def state_dict_of(checkpoint, path: Path) -> dict:
    """The network weights in a checkpoint, as MONAI's CheckpointLoader and trainers write them: a
    plain state dict, one wrapped under ``model`` (or ``state_dict``), and ``module.`` prefixes of
    DataParallel / DistributedDataParallel."""
    if not isinstance(checkpoint, dict):
        raise InputError(f"{path} holds no state dict (a {type(checkpoint).__name__})")
    for key in CHECKPOINT_WRAPPERS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {(name[len("module."):] if name.startswith("module.") else name): value
            for name, value in checkpoint.items()}


def load_weights(network, path: Path) -> None:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"MONAI bundle weights {path} are missing") from None
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors
        raise InputError(f"{path} is not a readable torch checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'truncated'})") from None
    load_state(network, checkpoint, path)


def load_state(network, checkpoint, path: Path, declared_by: str = "the bundle's network_def") -> None:
    """Put a checkpoint already read from ``path`` into ``network`` (strict: every weight must fit)."""
    try:
        network.load_state_dict(state_dict_of(checkpoint, path), strict=True)
    except RuntimeError as error:
        raise InputError(f"{path} does not fit {declared_by} ({str(error).splitlines()[0]})") from None


class MonaiBundleEngine(SegmentationEngine):
    """Vertebra labels from a MONAI bundle's own inference config."""

    name = "MONAI bundle"

    def __init__(self, folder: Path | str, device: str = "cpu", highres: bool | None = None):
        require_torch()
        from monai.bundle import ConfigParser

        self.folder = Path(folder)
        if not is_monai_bundle(self.folder):
            raise InputError(f"{self.folder} is not a MONAI bundle ({INFERENCE_CONFIG} and {METADATA_CONFIG} needed)")
        self.device = device
        self.timings_s: dict[str, float] = {}  # per stage of the last prediction
        self.description = read_description(self.folder)
        self.parser = ConfigParser()
        try:
            self.parser.read_config(str(self.folder / INFERENCE_CONFIG))
        except ValueError as error:
            raise InputError(f"MONAI bundle {self.folder}: {INFERENCE_CONFIG} unreadable ({error})") from None
        self.highres = self._select_resolution(highres)
        self.parser["bundle_root"] = str(self.folder)
        self.network = self._network()

    def _select_resolution(self, highres: bool | None) -> bool | None:
        """Full resolution on a GPU, the bundle's low-resolution weights on a CPU, unless asked."""
        section, key = HIGHRES_SWITCH
        switches = self.parser.get(section)
        if not isinstance(switches, dict) or key not in switches:
            return None
        chosen = self.device == "cuda" if highres is None else bool(highres)
        self.parser[f"{section}#{key}"] = chosen
        return chosen

    def weights_path(self) -> Path:
        name = self.parser.get_parsed_content("modelname") if "modelname" in self.parser else "model.pt"
        return self.folder / "models" / str(name)

    def _network(self):
        network = self.parser.get_parsed_content("network_def")
        channels = getattr(network, "out_channels", None) or self.parser.get("network_def", {}).get("out_channels")
        if channels is not None and int(channels) != len(self.description.channel_names):
            raise InputError(f"MONAI bundle {self.folder}: the network has {channels} output channels, "
                             f"{METADATA_CONFIG} names {len(self.description.channel_names)}")
        load_weights(network, self.weights_path())
        return network.to(self.device).eval()

    def network_input(self, image_path: Path) -> dict:
        """The bundle's own pre-processing of one image file: {"image": MetaTensor, ...}."""
        preprocessing = self.parser.get_parsed_content("preprocessing", instantiate=True)
        return preprocessing({self._image_key(): str(image_path)})

    def _image_key(self) -> str:
        return str(self.parser.get_parsed_content("image_key")) if "image_key" in self.parser else "image"

    def _postprocessing(self):
        from monai.transforms import Compose

        chain = self.parser.get_parsed_content("postprocessing", instantiate=True)
        steps = chain.transforms if isinstance(chain, Compose) else [chain]
        return Compose([step for step in steps if type(step).__name__ not in WRITER_TARGETS])

    def predict_channels(self, image_path: Path) -> np.ndarray:
        """Per-voxel output channel on the grid of ``image_path`` ([x, y, z], as MONAI loads it)."""
        import torch

        key = self._image_key()
        started = time.perf_counter()
        data = self.network_input(image_path)
        self.timings_s["preprocessing"] = time.perf_counter() - started
        inferer = self.parser.get_parsed_content("inferer", instantiate=True)
        with torch.no_grad(), torch.autocast(device_type="cuda", enabled=self.device == "cuda"):
            prediction = inferer(data[key][None].to(self.device), self.network)
        self.timings_s["inference"] = time.perf_counter() - started - self.timings_s["preprocessing"]
        data["pred"] = prediction[0].float()
        del prediction  # the post-processing replaces data["pred"]: the logits (105 channels) can go
        data = self._postprocessing()(data)
        self.timings_s["postprocessing"] = time.perf_counter() - started - sum(
            self.timings_s[stage] for stage in ("preprocessing", "inference"))
        return label_values(np.asarray(data["pred"].detach().cpu().numpy()[0]))

    def segment(self, ct: CtVolume, progress: Progress = silent) -> VertebraSegmentation:
        progress(0.05, f"{self.description.name} v{self.description.version}: pre-processing and inference")
        channels = predict_from_file(ct, self.predict_channels, "spinefrac-bundle-")
        progress(0.9, "mapping output channels to levels")
        image, dropped = verse_labels_on_ct_grid(channels, self.description.verse_ids(), ct, self.description.name)
        verse_ids = sitk.GetArrayViewFromImage(image)
        return VertebraSegmentation(
            label_map=image, engine=self.name, convention=LabelConvention.VERSE,
            source=f"{self.description.name} v{self.description.version} ({self._resolution()}), "
                   f"licence: {self.description.licence}",
            notes=self._notes(dropped, order_violations(image), verse_ids),
        )

    def _resolution(self) -> str:
        if self.highres is None:
            return f"weights {self.weights_path().name}"
        return ("full-resolution" if self.highres else "low-resolution") + f" weights {self.weights_path().name}"

    def _notes(self, dropped: list[str], violations: list[str], verse_ids: np.ndarray) -> list[str]:
        present = {LEVEL_BY_ID[int(v)].name for v in np.unique(verse_ids) if v}
        notes = [f"segmented by the MONAI bundle {self.description.name} v{self.description.version} "
                 f"on {self.device}: {len(present)} levels"]
        notes += dropped + violations
        return notes
