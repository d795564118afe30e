"""A MONAI Model Zoo bundle folder with the structure of the real wholeBody_ct_segmentation bundle.

Read from the bundle's published configs (Project-MONAI/model-zoo,
models/wholeBody_ct_segmentation/configs/inference.json and metadata.json, versions 0.1.9-0.2.5):
the same top-level keys, ``_target_`` components, ``@`` references (``@pixdim``,
``@displayable_configs#highres``, ``@image_key``, ``@preprocessing``), ``$`` expressions, transform
chain (LoadImaged, EnsureTyped, EnsureChannelFirstd, Orientationd RAS, Spacingd at ``@pixdim``,
NormalizeIntensityd nonzero, ScaleIntensityd -1..1), SlidingWindowInferer (96^3, overlap and
batch size by reference, replicate padding, gaussian), post-processing (Activationsd softmax,
AsDiscreted argmax, Invertd, SaveImaged), the 105 output channels of TotalSegmentator v1 named in
``channel_def``, and weights of the exact network (SegResNet, init_filters 32) as
``models/model.pt`` and ``models/model_lowres.pt``. Only the weights are ours (random or set by a
test): no trained weights can be downloaded here.
"""

from __future__ import annotations

import json
from pathlib import Path

# TotalSegmentator v1 classes in the bundle's channel order (channel 0 is background).
TOTALSEGMENTATOR_V1_CHANNELS = (
    ["background", "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta",
     "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
     "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
     "lung_lower_lobe_right"]
    + [f"vertebrae_L{n}" for n in range(5, 0, -1)]
    + [f"vertebrae_T{n}" for n in range(12, 0, -1)]
    + [f"vertebrae_C{n}" for n in range(7, 0, -1)]
    + ["esophagus", "trachea", "heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
       "heart_ventricle_right", "pulmonary_artery", "brain", "iliac_artery_left", "iliac_artery_right",
       "iliac_vena_left", "iliac_vena_right", "small_bowel", "duodenum", "colon"]
    + [f"rib_left_{n}" for n in range(1, 13)] + [f"rib_right_{n}" for n in range(1, 13)]
    + ["humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right",
       "femur_left", "femur_right", "hip_left", "hip_right", "sacrum", "face", "gluteus_maximus_left",
       "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right", "gluteus_minimus_left",
       "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right",
       "urinary_bladder"]
)
SACRUM_CHANNEL = TOTALSEGMENTATOR_V1_CHANNELS.index("sacrum")  # 92
L5_CHANNEL = TOTALSEGMENTATOR_V1_CHANNELS.index("vertebrae_L5")  # 18
LIVER_CHANNEL = TOTALSEGMENTATOR_V1_CHANNELS.index("liver")  # 5

NETWORK_DEF = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 105,
               "init_filters": 32, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2}


def _keyed(target: str, **arguments) -> dict:
    return {"_target_": target, "keys": "@image_key", **arguments}


def inference_config(network_def: dict | None = None) -> dict:
    """The bundle's inference.json; ``network_def`` replaces the network's arguments (same class)."""
    return {
        "displayable_configs": {"highres": True, "sw_overlap": 0.25, "sw_batch_size": 1},
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.float32",
        "output_postfix": "trans",
        "separate_folder": True,
        "dataset_dir": "sampledata",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "pixdim": "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]",
        "modelname": "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'",
        "network_def": dict(network_def or NETWORK_DEF),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            _keyed("LoadImaged"), _keyed("EnsureTyped"), _keyed("EnsureChannelFirstd"),
            _keyed("Orientationd", axcodes="RAS"), _keyed("Spacingd", pixdim="@pixdim", mode="bilinear"),
            _keyed("NormalizeIntensityd", nonzero=True), _keyed("ScaleIntensityd", minv=-1.0, maxv=1.0)]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 1},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96],
                    "sw_batch_size": "@displayable_configs#sw_batch_size", "overlap": "@displayable_configs#sw_overlap",
                    "padding_mode": "replicate", "mode": "gaussian",
                    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
             "nearest_interp": True, "to_tensor": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": "@output_ext",
             "output_dtype": "@output_dtype", "output_postfix": "@output_postfix",
             "separate_folder": "@separate_folder"}]},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/' + @modelname",
                             "load_dict": {"model": "@network"}},
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }


def metadata(version: str = "0.2.5") -> dict:
    channels = {str(n): name for n, name in enumerate(TOTALSEGMENTATOR_V1_CHANNELS)}
    image = {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
             "spatial_shape": [96, 96, 96], "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
             "channel_def": {"0": "image"}}
    pred = {"type": "image", "format": "segmentation", "num_channels": 105, "spatial_shape": [96, 96, 96],
            "dtype": "float32", "value_range": [0, 104], "is_patch_data": True, "channel_def": channels}
    return {"version": version, "monai_version": "1.3.0", "name": "Whole body CT segmentation",
            "task": "TotalSegmentator Segmentation", "authors": "MONAI team",
            "copyright": "Copyright (c) MONAI Consortium", "data_source": "TotalSegmentator",
            "intended_use": "This is an example, not to be used for diagnostic purposes",
            "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": pred}}}


def network(network_def: dict | None = None):
    from monai.bundle import ConfigParser

    return ConfigParser({"network_def": dict(network_def or NETWORK_DEF)}).get_parsed_content("network_def")


def constant_channel_state(channel: int, seed: int = 0) -> dict:
    """Weights of the exact network whose output is ``channel`` everywhere (final bias one-hot)."""
    import torch

    torch.manual_seed(seed)
    state = network().state_dict()
    state["conv_final.2.conv.weight"] = torch.zeros_like(state["conv_final.2.conv.weight"])
    bias = torch.zeros_like(state["conv_final.2.conv.bias"])
    bias[channel] = 10.0
    state["conv_final.2.conv.bias"] = bias
    return state


def write_bundle(folder: Path, state: dict, lowres_state: dict | None = None,
                 network_def: dict | None = None) -> Path:
    """The bundle folder; ``network_def`` replaces the network's arguments (same class, e.g. a tiny one)."""
    import torch

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    config = inference_config(network_def)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata(), indent=4), encoding="utf-8")
    torch.save(state, folder / "models" / "model.pt")
    torch.save(lowres_state if lowres_state is not None else state, folder / "models" / "model_lowres.pt")
    return folder
