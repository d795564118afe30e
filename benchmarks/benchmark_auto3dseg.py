"""Time and memory of an Auto3DSeg SegResNetDS model with the architecture of SlicerMONAIAuto3DSeg's
"Low Res Vertebrae TS2 - 3mm" (or, with --full-resolution, "Vertebrae TS2") on a 512 x 512 x 500 CT
(about 0.8 x 0.8 x 1 mm), through our loader: pre-processing (load, RAS, foreground crop, resampling,
intensity range), sliding-window inference, post-processing (argmax, labels -> VerSe ids, each level's
largest piece, labels back onto the input grid).

RANDOM weights: this measures speed and memory only and says nothing about accuracy.

The architecture is inferred, not read: the network config lives inside model.pt in the release zips,
which cannot be downloaded here. What the numbers rest on (each also written into the JSON):
- network: the Auto3DSeg segresnet algorithm template (Project-MONAI/research-contributions,
  auto3dseg/algorithm_templates/segresnet/configs/hyper_parameters.yaml): SegResNetDS, init_filters
  32, blocks_down [1, 2, 2, 4, 4], dsdepth 4, instance norm (INSTANCE_NVFUSER on a GPU; same weights);
  its auto_adjust_network_settings keeps 32 filters and 5 levels unless the image is smaller than 16
  voxels a side and auto_scale_filters is on (off by default);
- classes: 27 = background + the 26 rows of TotalSegmentator v2's class_map_part_vertebrae that the
  extension's labels.csv lists (sacrum, S1, L5..C1);
- roi_size: the template's default [224, 224, 144] (auto_scale_roi is off by default, so the
  window is at most that many voxels; smaller training images give a smaller one);
- resample_resolution: 3 mm for the "3mm" model (its name), 1.5 mm assumed for the full-resolution
  one (TotalSegmentator's own resolution); normalize_mode "range" (the template's CT choice).

    python benchmarks/benchmark_auto3dseg.py --output benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "SpineFractureDetection"))
sys.path.insert(0, str(HERE.parent / "Testing" / "Python"))  # the Auto3DSeg fixture of the real format
sys.path.insert(0, str(HERE))

from benchmark_learned_engine import clinical_ct, peak_memory_and_machine  # noqa: E402

from spinefrac.device import resolve_device  # noqa: E402
from spinefrac.io.images import ct_from_image  # noqa: E402
from spinefrac.segmentation.learned.auto3dseg import Auto3DSegEngine  # noqa: E402

from auto3dseg_fixture import VERTEBRAE_TS2, config, network, write_model  # noqa: E402

SOURCES = {
    "network": "Auto3DSeg segresnet template hyper_parameters.yaml + algo/utils auto_adjust_network_settings "
               "(Project-MONAI/research-contributions)",
    "classes": "SlicerMONAIAuto3DSeg labels.csv format; TotalSegmentator v2 class_map_part_vertebrae (26 labels)",
    "roi_size": "template default [224, 224, 144] (auto_scale_roi off by default)",
    "resample_resolution": "model title ('3mm'); 1.5 mm for the full-resolution model is an assumption",
    "inference": "SlicerMONAIAuto3DSeg Scripts/auto3dseg_segresnet_inference.py (overlap 0.625, gaussian)",
}


def process_cpu_s() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    times = os.times()
    return times.user + times.system


def real_architecture_config(spacing_mm: float) -> dict:
    model_config = config(out_channels=len(VERTEBRAE_TS2) + 1)
    model_config["network"].update(init_filters=32, blocks_down=[1, 2, 2, 4, 4], norm="INSTANCE", dsdepth=4)
    model_config.update(roi_size=[224, 224, 144], resample_resolution=[spacing_mm] * 3,
                        intensity_bounds=[-1000.0, 1500.0])
    return model_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--full-resolution", action="store_true", help="the 'Vertebrae TS2' model (1.5 mm)")
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    import torch

    device = resolve_device(args.device)
    model_config = real_architecture_config(1.5 if args.full_resolution else 3.0)
    ct = ct_from_image(clinical_ct(args.slices), "benchmark", "phantom")
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = {"config": model_config, "state_dict": network(model_config).state_dict(), "epoch": 0,
                      "best_metric": 0.0}
        engine = Auto3DSegEngine(write_model(Path(folder), checkpoint=checkpoint), device.name)
        if device.name == "cuda":
            torch.cuda.reset_peak_memory_stats()
        load_at_start = os.getloadavg()[0]
        cpu_started, started = process_cpu_s(), time.perf_counter()
        try:
            engine.segment(ct)
        except Exception as error:  # noqa: BLE001  random weights may label no vertebra: the timing still stands
            outcome = f"{type(error).__name__}: {error}"
        else:
            outcome = "labels written"
        total_s, cpu_s = time.perf_counter() - started, process_cpu_s() - cpu_started
    name = "vertebrae-ts2" if args.full_resolution else "vertebrae-ts2-3mm"
    result = {
        "input": {"size": list(ct.image.GetSize()), "spacing_mm": [round(s, 3) for s in ct.image.GetSpacing()]},
        "device": device.name, "mixed_precision": device.mixed_precision, "model": name,
        "network": {**model_config["network"], "roi_size": model_config["roi_size"],
                    "resample_resolution_mm": model_config["resample_resolution"],
                    "weights": "random: timing only, no accuracy", "inferred_from": SOURCES},
        "seconds_per_stage": {stage: round(seconds, 2) for stage, seconds in engine.timings_s.items()},
        "seconds_total": round(total_s, 2),
        "seconds_outside_the_model": round(total_s - sum(engine.timings_s.values()), 2),
        # user + sys seconds of this process over the whole segmentation: less than wall time
        # swayed by other processes on a shared machine (torch uses every core: it can exceed the wall)
        "cpu_seconds_user_plus_sys": round(cpu_s, 1),
        "load_average_1min_at_start": round(load_at_start, 1),
        "outside_the_model": "the CT written for MONAI's loader, the order check and the label map's notes "
                             "(labels -> VerSe ids and the largest piece per level are in postprocessing; random "
                             "weights give noisy labels: that stage is slower than with a trained model)",
        "outcome": outcome,
        **peak_memory_and_machine(device),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    target = args.output / f"auto3dseg-{name}-{device.name}.json"
    target.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
