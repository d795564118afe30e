"""Compute device choice: CUDA with mixed precision when present, otherwise the CPU.

torch is optional for the core (the existing-segmentation path and the measurements need
none), so it is imported only when a device is actually resolved.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from dataclasses import dataclass

from spinefrac.errors import EngineUnavailableError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceChoice:
    name: str  # "cpu" or "cuda"
    mixed_precision: bool
    reason: str
    cpu_threads: int


# Device files of the GPU drivers through which PyTorch can see a CUDA device on Linux: NVIDIA (also in
# containers), Jetson, ROCm (torch.cuda runs on AMD GPUs) and WSL2.
GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/nvhost-ctrl-gpu", "/dev/nvmap", "/dev/kfd", "/dev/dxg")


def _no_gpu_driver() -> bool:
    """True on Linux without any GPU driver's device file: torch.cuda would find no device, so importing
    torch (about 2 s of CPU) to ask it is skipped."""
    return sys.platform.startswith("linux") and not any(glob.glob(pattern) for pattern in GPU_DEVICE_FILES)


def _cuda_available() -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, "PyTorch is not installed"
    if _no_gpu_driver():
        return False, "no GPU driver's device file (/dev/nvidia*, /dev/kfd, /dev/dxg) on this machine"
    try:
        import torch
    except ImportError:
        return False, "PyTorch is not installed"

    if not torch.cuda.is_available():
        return False, f"PyTorch {torch.__version__} sees no CUDA device"
    return True, f"CUDA device {torch.cuda.get_device_name(0)}"


def resolve_device(requested: str = "auto") -> DeviceChoice:
    """Turn --device auto|cpu|cuda into a device; 'cuda' without a GPU is an error, not a fallback."""
    if requested not in DEVICE_CHOICES:
        raise EngineUnavailableError(f"unknown device '{requested}' (choose from {', '.join(DEVICE_CHOICES)})")
    threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if requested == "cpu":
        return DeviceChoice("cpu", False, "CPU requested", threads)
    available, detail = _cuda_available()
    if available:
        return DeviceChoice("cuda", True, detail, threads)
    if requested == "cuda":
        raise EngineUnavailableError(f"--device cuda was requested but {detail}; use --device cpu or auto")
    return DeviceChoice("cpu", False, f"no GPU: {detail}", threads)
