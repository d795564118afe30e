"""Time and memory of a MONAI bundle with the exact wholeBody_ct_segmentation architecture
(SegResNet, init_filters 32, 105 channels) run through its own inference config, on a 512 x 512 x
500 CT (about 0.8 x 0.8 x 1 mm): the bundle's pre-processing, sliding-window inference and
post-processing (softmax, argmax, Invertd back to the input grid).

RANDOM weights (the real ones cannot be downloaded here): this measures speed and memory only and
says nothing about accuracy. The bundle folder is temporary. On a CPU the low-resolution (3 mm)
configuration runs, on a GPU the full-resolution (1.5 mm) one, as the engine chooses.

    python benchmarks/benchmark_monai_bundle.py --output benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "SpineFractureDetection"))
sys.path.insert(0, str(HERE.parent / "Testing" / "Python"))  # the bundle fixture of the real structure
sys.path.insert(0, str(HERE))

from benchmark_learned_engine import clinical_ct, peak_memory_and_machine  # noqa: E402

from spinefrac.device import resolve_device  # noqa: E402
from spinefrac.io.images import ct_from_image  # noqa: E402
from spinefrac.segmentation.learned.bundle import MonaiBundleEngine  # noqa: E402

from monai_bundle_fixture import network, write_bundle  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    import torch

    device = resolve_device(args.device)
    image = clinical_ct(args.slices)
    ct = ct_from_image(image, "benchmark", "phantom")
    with tempfile.TemporaryDirectory() as folder:
        state = network().state_dict()
        engine = MonaiBundleEngine(write_bundle(Path(folder) / "wholeBody_ct_segmentation", state, state), device.name)
        if device.name == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            engine.segment(ct)
        except Exception as error:  # random weights may label no vertebra: the timing still stands
            outcome = f"{type(error).__name__}: {error}"
        else:
            outcome = "labels written"
        total_s = time.perf_counter() - started
    result = {
        "input": {"size": list(image.GetSize()), "spacing_mm": [round(s, 3) for s in image.GetSpacing()]},
        "device": device.name, "mixed_precision": device.mixed_precision,
        "configuration": ("full resolution, 1.5 mm, model.pt" if engine.highres
                          else "low resolution, 3 mm, model_lowres.pt"),
        "network": "wholeBody_ct_segmentation SegResNet (init_filters 32, 105 channels), random weights: timing only",
        "seconds_per_stage": {stage: round(seconds, 2) for stage, seconds in engine.timings_s.items()},
        "seconds_total": round(total_s, 2), "outcome": outcome,
        **peak_memory_and_machine(device),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    target = args.output / f"monai-bundle-wholebody-{device.name}.json"
    target.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
