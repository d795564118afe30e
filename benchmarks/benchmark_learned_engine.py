"""Time and memory of the learned segmentation engine on a 512 x 512 x 500 CT (about 0.8 x 0.8
x 1 mm), per stage (resample, spine ROI crop, network, post-processing), on the CPU here and on
CUDA when present (mixed precision).

The network is SegResNet at the size of MONAI's wholeBody_ct_segmentation (init_filters 32,
blocks_down 1-2-2-4) with RANDOM weights: this measures speed and memory only and says nothing
about accuracy; the temporary package is deleted afterwards.

    python benchmarks/benchmark_learned_engine.py --output benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SpineFractureDetection"))

from spinefrac.device import resolve_device  # noqa: E402
from spinefrac.io.filenames import MODEL_MANIFEST_FILE  # noqa: E402
from spinefrac.io.images import ct_from_image  # noqa: E402
from spinefrac.io.model_packages import sha256_of  # noqa: E402
from spinefrac.segmentation.learned.engine import LearnedEngine, SegmentationManifest  # noqa: E402
from spinefrac.synthetic.phantom import PhantomSpec, make_phantom  # noqa: E402

LEVELS = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "sacrum")


def clinical_ct(slices: int) -> sitk.Image:
    """A thoraco-lumbar phantom resampled onto a 512 x 512 x N grid, 400 mm field of view."""
    phantom = make_phantom(PhantomSpec(levels=LEVELS, spacing_mm=(1.5, 1.5, 1.5), margin_mm=60.0, noise_hu=0.0))
    return on_clinical_grid(phantom.ct, slices)


def on_clinical_grid(source: sitk.Image, slices: int) -> sitk.Image:
    """``source`` resampled onto a 512 x 512 x N grid about its centre, 400 mm field of view, its whole height."""
    extent = np.asarray(source.GetSize()) * np.asarray(source.GetSpacing())
    spacing = (400.0 / 512, 400.0 / 512, extent[2] / slices)
    centre = np.asarray(source.TransformContinuousIndexToPhysicalPoint((np.asarray(source.GetSize()) - 1) / 2))
    origin = centre - np.array([200.0, 200.0, extent[2] / 2])
    return sitk.Resample(source, [512, 512, slices], sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing,
                         (1, 0, 0, 0, 1, 0, 0, 0, 1), -1000.0, sitk.sitkInt16)


def random_package(folder: Path) -> Path:
    import torch
    from monai.networks.nets import SegResNet

    parameters = dict(spatial_dims=3, in_channels=1, out_channels=26, init_filters=32, blocks_down=(1, 2, 2, 4),
                      blocks_up=(1, 1, 1))
    torch.save(SegResNet(**parameters).state_dict(), folder / "weights.pt")
    manifest = SegmentationManifest(
        name="benchmark-random-weights", version="0", network="SegResNet", network_parameters=parameters,
        spacing_mm=(1.5, 1.5, 1.5), patch_size=(96, 96, 96),
        label_map={str(channel): channel if channel < 25 else 26 for channel in range(1, 26)},
        weights_sha256=sha256_of(folder / "weights.pt"), licence="benchmark only: random weights, not a model")
    (folder / MODEL_MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return folder


def peak_memory_and_machine(device) -> dict:
    """Peak memory of this process (and of the GPU) and what it ran on: the tail of every result."""
    import torch

    cuda = device.name == "cuda"
    return {
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        # other processes' load slows every figure: a shared 2-core machine at load 12 runs ~6x slower
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 0) if cuda else None,
        "machine": {"cpu_threads": device.cpu_threads, "platform": platform.platform(),
                    "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    import torch

    device = resolve_device(args.device)
    image = clinical_ct(args.slices)
    ct = ct_from_image(image, "benchmark", "phantom")
    with tempfile.TemporaryDirectory() as folder:
        engine = LearnedEngine(random_package(Path(folder)), device.name, overlap=args.overlap)
        if device.name == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        engine.segment(ct)
        total_s = time.perf_counter() - started
    result = {
        "input": {"size": list(image.GetSize()), "spacing_mm": [round(s, 3) for s in image.GetSpacing()]},
        "device": device.name, "mixed_precision": device.mixed_precision, "overlap": args.overlap,
        "network": "SegResNet init_filters 32, blocks_down 1-2-2-4, random weights (timing only)",
        "seconds_per_stage": {k: round(v, 2) for k, v in engine.timings_s.items()},
        "seconds_total": round(total_s, 2),
        **peak_memory_and_machine(device),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    target = args.output / f"learned-engine-{device.name}.json"
    target.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
